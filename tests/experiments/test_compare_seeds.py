"""Suites over seeds: which (row, seed) runs a suite plans, a tiny 2-row x 2-seed suite end
to end (run directories, seeds, W&B tags, the report's statistics against the runs'
results.json, the W&B summary run), resuming it half finished, and clear errors."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import yaml
from test_compare import GROUP, make_suite
from test_tracking import item_key, read_wandb_records

from helpers import REPO, script_env, snapshot, write_recipe
from lm_flipout.cli import compare
from lm_flipout.experiments.suite import load_suite, plan_runs

T1 = 12.706  # Student's t 0.975 quantile for one degree of freedom (two seeds)


def with_seeds(suite: Path, seeds: list, row_seeds: Optional[dict] = None) -> Path:
    data = yaml.safe_load(suite.read_text())
    data["seeds"] = seeds
    for run in data["runs"]:
        if run["label"] in (row_seeds or {}):
            run["seeds"] = row_seeds[run["label"]]
    return write_recipe(suite, data)


def run_compare(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lm_flipout", "compare", *args,
         "--reports-dir", str(root / "reports")],
        cwd=REPO, env=script_env(root), capture_output=True, text=True, timeout=300)


def tables(report: str) -> list[list[dict[str, str]]]:
    """Every Markdown table of the report, each as a list of {column: cell}."""
    found, lines = [], report.splitlines() + [""]
    current: list[str] = []
    for line in lines:
        if line.startswith("|"):
            current.append(line)
        elif current:
            header = [cell.strip() for cell in current[0].strip("|").split("|")]
            found.append([dict(zip(header, (c.strip() for c in row.strip("|").split("|"))))
                          for row in current[2:]])
            current = []
    return found


def label(cell: str) -> str:
    return cell.split("]")[0].lstrip("[")


def test_seeds_come_from_the_command_line_the_row_or_the_suite(tmp_path: Path) -> None:
    suite = with_seeds(make_suite(tmp_path), [1, 2], {"flipout": [3]})
    plan = plan_runs(*load_suite(suite), [])
    assert [(run.label, run.seed, run.run_dir.name) for run in plan] == [
        ("plain", 1, "plain-seed1"), ("plain", 2, "plain-seed2"), ("flipout", 3, "flipout-seed3")]
    for run in plan:
        assert run.recipe.train.seed == run.seed
        assert run.recipe.wandb.tags == [f"seed:{run.seed}"]
        assert run.recipe.wandb.group == GROUP
        assert run.name == f"{run.label} (seed {run.seed})"
    plan = plan_runs(*load_suite(suite), ["wandb.tags=[ptb]"], seeds=[5])
    assert [(run.run_dir.name, run.recipe.wandb.tags) for run in plan] == [
        ("plain-seed5", ["ptb", "seed:5"]), ("flipout-seed5", ["ptb", "seed:5"])]
    # Without seeds a row is one run with the recipe's own seed, as before.
    plan = plan_runs(*load_suite(make_suite(tmp_path / "plain_suite")), [])
    assert [(run.run_dir.name, run.seed, run.recipe.train.seed) for run in plan] == [
        ("plain", None, 7), ("flipout", None, 7)]


def test_two_rows_by_two_seeds_end_to_end_then_resumed_half_finished(tmp_path: Path) -> None:
    suite = with_seeds(make_suite(tmp_path), [1, 2])
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    proc = run_compare(tmp_path, str(suite), "wandb.mode=disabled")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[3/4] flipout (seed 1): starting" in proc.stdout
    results = {}
    for row in ("plain", "flipout"):
        for seed in (1, 2):
            run = runs / f"{row}-seed{seed}"
            config = yaml.safe_load((run / "config.yaml").read_text())
            assert config["train"]["seed"] == seed and config["wandb"]["group"] == GROUP
            assert config["wandb"]["tags"] == [f"seed:{seed}"]
            results[row, seed] = json.loads((run / "results.json").read_text())
    assert results["plain", 1]["test_ppl"] != results["plain", 2]["test_ppl"]
    report = (reports / "tiny.md").read_text()
    check_report(report, results)
    assert "![Validation perplexity per epoch: mean over the seeds" in report
    assert (reports / "tiny_valid_ppl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (reports / "tiny_wandb").exists()  # W&B disabled: no summary run

    # Half finished: plain seed 2 has last.pt but no results.json, flipout seed 2 never ran.
    (runs / "plain-seed2" / "results.json").unlink()
    shutil.rmtree(runs / "flipout-seed2")
    finished = {name: snapshot(runs / name) for name in ("plain-seed1", "flipout-seed1")}
    proc = run_compare(tmp_path, str(suite))  # the recipes' W&B mode: offline
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in ("[1/4] plain (seed 1): finished, skipped",
                 "[2/4] plain (seed 2): resuming from last.pt",
                 "[3/4] flipout (seed 1): finished, skipped",
                 "[4/4] flipout (seed 2): starting"):
        assert line in proc.stdout
    assert {name: snapshot(runs / name) for name in finished} == finished
    for row in ("plain", "flipout"):
        again = json.loads((runs / f"{row}-seed2" / "results.json").read_text())
        assert (again["valid_ppl"], again["test_ppl"]) == (
            results[row, 2]["valid_ppl"], results[row, 2]["test_ppl"])
    check_report((reports / "tiny.md").read_text(), results)
    [offline] = (runs / "flipout-seed2" / "wandb").glob("offline-run-*")
    [run] = [r.run for r in read_wandb_records(next(offline.glob("*.wandb")))
             if r.WhichOneof("record_type") == "run"][:1]
    assert list(run.tags) == ["seed:2"] and run.run_group == GROUP
    check_summary_run(reports / "tiny_wandb", results)


def check_report(report: str, results: dict) -> None:
    """Each statistic of the report recomputed here from the runs' results.json."""
    summary, differences, per_seed = tables(report)
    for row in summary:
        name = label(row["run"])
        for metric, column in (("valid_ppl", "valid ppl"), ("test_ppl", "test ppl")):
            a, b = results[name, 1][metric], results[name, 2][metric]
            centre, sd = (a + b) / 2, abs(a - b) / math.sqrt(2)
            half = T1 * sd / math.sqrt(2)
            assert row[column] == f"{centre:.2f} ± {sd:.2f}"
            assert row[f"{column} 95% CI"] == f"[{centre - half:.2f}, {centre + half:.2f}]"
        assert row["seeds"] == "2 of 2"
    assert [(d["run"], d["metric"]) for d in differences] == [
        ("flipout", m) for m in ("valid ppl", "test ppl", "valid bpc", "test bpc")]
    for diff, metric in zip(differences, ("valid_ppl", "test_ppl", "valid_bpc", "test_bpc")):
        d = [results["flipout", s][metric] - results["plain", s][metric] for s in (1, 2)]
        centre, half = sum(d) / 2, T1 * abs(d[0] - d[1]) / 2
        base = (results["plain", 1][metric] + results["plain", 2][metric]) / 2
        assert diff["seeds"] == "2"
        places = 3 if metric.endswith("bpc") else 2
        assert diff["difference"] == f"{centre:+.{places}f} ({centre / base * 100:+.1f}%)"
        interval = f"[{centre - half:.{places}f}, {centre + half:.{places}f}]"
        assert diff["95% CI (per comparison)"] == interval
        expected = ("better" if centre + half < 0 else "worse" if centre - half > 0
                    else "not resolved at 2 seeds")
        assert diff["verdict"] == expected
    assert [(r["run"], r["seed"], r["status"]) for r in per_seed] == [
        ("plain", "1", "finished"), ("plain", "2", "finished"),
        ("flipout", "1", "finished"), ("flipout", "2", "finished")]
    for r in per_seed:
        res = results[r["run"], int(r["seed"])]
        assert r["test ppl"] == f"{res['test_ppl']:.2f}"
        assert r["epochs (best)"] == f"{res['epochs']} ({res['best_epoch']})"


def check_summary_run(folder: Path, results: dict) -> None:
    """The offline summary run: in the suite's group, with the comparison table and plot."""
    [offline] = (folder / "wandb").glob("offline-run-*")
    records = read_wandb_records(next(offline.glob("*.wandb")))
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"][:1]
    assert run.run_group == GROUP and list(run.tags) == ["suite-summary"]
    logged = {item_key(item): json.loads(item.value_json) for r in records
              if r.WhichOneof("record_type") == "history" for item in r.history.item}
    assert (logged["comparison/_type"], logged["per_seed/_type"],
            logged["valid_ppl_plot/_type"]) == ("table-file", "table-file", "image-file")
    [table_file] = (offline / "files" / "media" / "table").glob("comparison_*.table.json")
    table = json.loads(table_file.read_text())
    rows = {row[0]: dict(zip(table["columns"], row)) for row in table["data"]}
    assert set(rows) == {"plain", "flipout"}
    a, b = results["flipout", 1]["test_ppl"], results["flipout", 2]["test_ppl"]
    assert rows["flipout"]["test_ppl mean"] == pytest.approx((a + b) / 2)
    assert rows["flipout"]["test_ppl sd"] == pytest.approx(abs(a - b) / math.sqrt(2))
    d = [results["flipout", s]["test_ppl"] - results["plain", s]["test_ppl"] for s in (1, 2)]
    assert rows["flipout"]["test_ppl diff"] == pytest.approx(sum(d) / 2)
    assert rows["flipout"]["test_ppl diff ci high"] == pytest.approx(
        sum(d) / 2 + T1 * abs(d[0] - d[1]) / 2, abs=1e-9)
    assert rows["plain"]["test_ppl verdict"] == ""
    [image] = (offline / "files" / "media" / "images").glob("valid_ppl_plot_*.png")
    assert image.read_bytes() == (folder.parent / "tiny_valid_ppl.png").read_bytes()


def test_report_of_hand_written_runs_shows_single_values_where_one_seed_finished(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    suite = with_seeds(make_suite(tmp_path), [1, 2])
    runs = tmp_path / "runs"
    values = {("plain", 1): 80.0, ("plain", 2): 84.0, ("flipout", 1): 75.0}
    for (row, seed), ppl in values.items():
        (runs / f"{row}-seed{seed}").mkdir(parents=True)
        (runs / f"{row}-seed{seed}" / "results.json").write_text(json.dumps(
            {"valid_ppl": ppl + 1, "test_ppl": ppl, "params": 100, "tokens_per_s": 10.0,
             "wall_s": 60.0, "epochs": 2, "best_epoch": 1 if (row, seed) == ("plain", 2) else 2}))
    (runs / "flipout-seed2").mkdir()
    (runs / "flipout-seed2" / "last.pt").write_bytes(b"")
    assert compare.main([str(suite), "--report-only", "wandb.mode=disabled",
                         "--reports-dir", str(tmp_path / "reports")]) == 0
    report = (tmp_path / "reports" / "tiny.md").read_text()
    summary, differences, per_seed = tables(report)
    plain, flipout = summary
    # plain: mean 82, sd √8 = 2.83, half-width 12.706 · 2 = 25.41
    assert (plain["test ppl"], plain["test ppl 95% CI"]) == ("82.00 ± 2.83", "[56.59, 107.41]")
    assert (flipout["seeds"], flipout["test ppl"], flipout["test ppl 95% CI"]) == (
        "1 of 2", "75.00", "")
    assert flipout["paper test bpc"] == "1.250" and flipout["test bpc"] == "—"
    test = next(d for d in differences if d["metric"] == "test ppl")
    assert (test["seeds"], test["difference"], test["95% CI (per comparison)"],
            test["verdict"]) == (
        "1", "-5.00 (-6.2%)", "", "not resolved at 1 seed")
    assert per_seed[3]["status"] == "unfinished"
    assert "- flipout (seed 2): unfinished (last.pt in" in report
    assert plain["wall time (sum over seeds)"] == "2m 00s"  # 60 s for each of two seeds
    assert ("- Best at the last epoch of the budget, so still improving when it ended (a longer "
            "budget may do better): plain (seed 1), flipout (seed 1).") in report

    # The same runs paired against another row, in a report of its own.
    assert compare.main([str(suite), "--report-only", "--baseline", "flipout",
                         "wandb.mode=disabled", "--reports-dir", str(tmp_path / "reports")]) == 0
    other = (tmp_path / "reports" / "tiny-vs-flipout.md").read_text()
    assert "Paired differences to flipout (row − flipout" in other
    assert "--baseline flipout" in other
    test = next(d for d in tables(other)[1] if d["metric"] == "test ppl")
    assert (test["run"], test["seeds"], test["difference"]) == ("plain", "1", "+5.00 (+6.7%)")
    assert (tmp_path / "reports" / "tiny.md").read_text() == report  # left as it was
    assert compare.main([str(suite), "--report-only", "--baseline", "Plain"]) == 2
    message = " ".join(capsys.readouterr().err.split())
    assert message.startswith("error: --baseline 'Plain' is not the label of one of the suite's "
                              "rows: 'plain', 'flipout'.")


@pytest.mark.parametrize("edit, args, expected", [
    ({"seeds": []}, [], "seeds is empty"),
    ({"seeds": [1, 1]}, [], "repeats the seed(s) 1"),
    ({"seeds": [-1]}, [], "seeds=-1 is out of range"),
    ({"seeds": [1]}, ["train.seed=3"], "Choose the seeds with --seeds"),
    ({}, ["--seeds", "1,x"], "'1,x' is not a comma-separated list of whole numbers"),
])
def test_bad_seeds_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture,
                                    edit: dict, args: list, expected: str) -> None:
    suite = make_suite(tmp_path)
    write_recipe(suite, {**yaml.safe_load(suite.read_text()), **edit})
    assert exit_status([str(suite), *args]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def exit_status(argv: list[str]) -> int:
    """compare.main's status, or argparse's when it rejects an argument."""
    try:
        return compare.main(argv)
    except SystemExit as exit_info:
        return int(exit_info.code)


def test_a_suite_missing_several_recipes_names_them_all(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    suite = make_suite(tmp_path)
    data = yaml.safe_load(suite.read_text())
    data["runs"] += [{"recipe": "../recipes/semeniuta.yaml"}, {"recipe": "../recipes/zoneout.yaml"}]
    write_recipe(suite, data)
    assert compare.main([str(suite)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert ("lists the recipes '../recipes/semeniuta.yaml' (runs[2].recipe), "
            "'../recipes/zoneout.yaml' (runs[3].recipe), but") in err


def test_help_describes_seeds(capsys: pytest.CaptureFixture) -> None:
    assert exit_status(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for words in ("--seeds K,K,...", "seeds: [1, 2, 3]", "tagged seed:<k>", "paired difference",
                  "summary run in the suite's W&B group"):
        assert words in out


def test_report_names_every_option_and_survives_a_null_metric(tmp_path: Path) -> None:
    """The report's command reproduces the report (--seeds included), and a metric stored as
    null (a non-finite number in strict JSON) shows as missing instead of failing."""
    suite = make_suite(tmp_path)
    runs = tmp_path / "runs"
    for row, ppl in (("plain", 80.0), ("flipout", None)):
        (runs / f"{row}-seed3").mkdir(parents=True)
        (runs / f"{row}-seed3" / "results.json").write_text(json.dumps(
            {"valid_ppl": 81.0, "test_ppl": ppl, "params": 100, "tokens_per_s": 10.0,
             "wall_s": 60.0, "epochs": 2, "best_epoch": 2}))
    assert compare.main([str(suite), "--report-only", "--seeds", "3", "wandb.mode=disabled",
                         "--reports-dir", str(tmp_path / "reports")]) == 0
    report = (tmp_path / "reports" / "tiny.md").read_text()
    assert "--seeds 3" in report
    plain, flipout = tables(report)[0]
    assert (plain["test ppl"], flipout["test ppl"], flipout["valid ppl"]) == ("80.00", "—", "81.00")


def test_the_summary_run_starts_where_no_run_directory_exists_yet(tmp_path: Path,
                                                                   wandb_env: None) -> None:
    from lm_flipout.config import WandbConfig
    from lm_flipout.tracking import start_wandb

    settings = WandbConfig(mode="offline", dir=str(tmp_path / "elsewhere"))
    run = start_wandb(settings, tmp_path / "reports" / "suite_wandb", {}, resume=False)
    try:
        assert (tmp_path / "reports" / "suite_wandb" / "wandb_id.txt").is_file()
    finally:
        run.finish()


def test_report_of_three_rows_corrects_its_verdicts_by_holm(tmp_path: Path) -> None:
    """Two rows against one baseline, from hand-written results: each difference is resolved
    by its own interval, neither after Holm's correction, and the report says so."""
    suite = with_seeds(make_suite(tmp_path), [1, 2, 3])
    data = yaml.safe_load(suite.read_text())
    shutil.copy(tmp_path / "recipes" / "flipout.yaml", tmp_path / "recipes" / "other.yaml")
    data["runs"].append({"recipe": "../recipes/other.yaml", "label": "other"})
    write_recipe(suite, data)
    base = {1: 100.0, 2: 101.0, 3: 99.0}
    diffs = {"flipout": (-1.3, -1.0, -0.7), "other": (-1.32, -1.0, -0.68)}
    runs = tmp_path / "runs"
    for row in ("plain", "flipout", "other"):
        for seed in (1, 2, 3):
            ppl = base[seed] + (diffs[row][seed - 1] if row in diffs else 0.0)
            (runs / f"{row}-seed{seed}").mkdir(parents=True)
            (runs / f"{row}-seed{seed}" / "results.json").write_text(json.dumps(
                {"valid_ppl": ppl, "test_ppl": ppl, "params": 100, "epochs": 2,
                 "best_epoch": 1}))
    assert compare.main([str(suite), "--report-only", "wandb.mode=disabled",
                         "--reports-dir", str(tmp_path / "reports")]) == 0
    report = (tmp_path / "reports" / "tiny.md").read_text()
    assert "Holm's correction over the 2 rows compared with the baseline" in report
    differences = {(d["run"], d["metric"]): d for d in tables(report)[1]}
    # By hand, df = 2: p = 1 - |t| / sqrt(2 + t^2) with t = -1 / (sd / √3), sd 0.3 and 0.32.
    # Holm over two: the smaller p doubled (above 0.05), the larger raised to it.
    p_flipout, p_other = (1 - abs(t) / math.sqrt(2 + t * t)
                          for t in (-1 / (0.3 / math.sqrt(3)), -1 / (0.32 / math.sqrt(3))))
    assert 0.025 < p_flipout < p_other < 0.05
    flipout, other = differences["flipout", "test ppl"], differences["other", "test ppl"]
    assert (flipout["p"], flipout["Holm p"]) == (f"{p_flipout:.3f}", f"{2 * p_flipout:.3f}")
    assert (other["p"], other["Holm p"]) == (f"{p_other:.3f}", f"{2 * p_flipout:.3f}")
    for diff in (flipout, other):
        assert diff["verdict"] == "not resolved after correction (better per comparison)"
    assert other["95% CI (per comparison)"] == "[-1.79, -0.21]"  # -1 ± 4.303 · 0.32/√3
