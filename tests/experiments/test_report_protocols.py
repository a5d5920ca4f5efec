"""The suite report shows bits per character only where a run defines it (or the paper
quotes it) and says how each number was measured (batch sizes, state carried or reset)."""

from __future__ import annotations

from pathlib import Path

from lm_flipout.config import Recipe
from lm_flipout.experiments.report import Row, markdown, table
from lm_flipout.experiments.suite import PlannedRun, Suite, SuiteRun

PROTOCOL = {"eval_carries_state": True, "valid_batch_size": 10, "test_batch_size": 1}


def row(tmp_path: Path, label: str, results: dict, paper: dict | None = None) -> Row:
    recipe_path = tmp_path / f"{label}.yaml"
    recipe_path.write_text("{}\n")
    run = PlannedRun(label, str(recipe_path), Recipe(), tmp_path / "runs" / label, paper or {})
    return Row(run, "finished", results)


def suite(*labels: str) -> Suite:
    return Suite("g", [SuiteRun(f"{label}.yaml", label) for label in labels])


def scores(ppl: float, bpc: bool) -> dict:
    out = {"valid_ppl": ppl, "test_ppl": ppl + 1}
    if bpc:
        out.update(valid_bpc=1.1, test_bpc=1.2)
    return out


def test_no_bpc_column_when_no_run_defines_it(tmp_path: Path) -> None:
    rows = [row(tmp_path, "a", {**scores(60.0, False), **PROTOCOL}),
            row(tmp_path, "b", {**scores(55.0, False), **PROTOCOL})]
    header = table(suite("a", "b"), rows, tmp_path)[0]
    assert "bpc" not in header and "valid ppl" in header and "test ppl" in header
    text = markdown(suite("a", "b"), "s", rows, "cmd", tmp_path / "p.png", tmp_path)
    assert ("Evaluation protocol: valid at batch size 10, test at batch size 1, the state "
            "carried across the whole split.") in text


def test_bpc_column_where_defined_or_quoted(tmp_path: Path) -> None:
    rows = [row(tmp_path, "a", {**scores(3.5, True), **PROTOCOL})]
    assert "test bpc" in table(suite("a"), rows, tmp_path)[0]
    quoted = [row(tmp_path, "a", scores(60.0, False), paper={"test_bpc": 1.227})]
    header = table(suite("a"), quoted, tmp_path)[0]
    assert "paper test bpc" in header


def test_protocol_per_run_when_runs_differ_or_did_not_record_it(tmp_path: Path) -> None:
    reset = {**PROTOCOL, "eval_carries_state": False, "test_batch_size": 10}
    rows = [row(tmp_path, "new", {**scores(60.0, False), **reset}),
            row(tmp_path, "old", scores(61.0, False))]
    text = markdown(suite("new", "old"), "s", rows, "cmd", tmp_path / "p.png", tmp_path)
    assert ("new: valid at batch size 10, test at batch size 10, the state reset every "
            "data.bptt tokens") in text
    assert "old: not recorded" in text
