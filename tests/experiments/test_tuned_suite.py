"""Tuned suites: `lm-flipout compare` completes each row's study with the same budget and
shared space, trains every row's best parameters with the suite's seeds, reports the search,
refuses a bad row space before anything trains, and a rerun retrains nothing."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import tiny_recipe, write_recipe
from lm_flipout.cli import compare
from lm_flipout.errors import ConfigError
from lm_flipout.experiments.suite import load_suite, plan_runs
from lm_flipout.experiments.tuned_suite import plan_studies, tuning_lines

TUNE = {"trials": 2, "pruner": "none", "seed": 0,
        "trial_overrides": {"train.max_steps": 2},
        "space": {"optim.lr": {"float": [0.001, 0.03], "log": True},
                  "model.dropout_output": {"float": [0.0, 0.4]}}}
ROWS = [
    {"label": "WD", "overrides": {"model.noise": {"family": "dropconnect", "p": 0.5}},
     "space": {"model.noise.p": {"float": [0.1, 0.6]}}},
    {"label": "Gaussian", "overrides": {"model.noise": {"family": "gaussian", "sigma": 0.5}},
     "space": {"model.noise.sigma": {"float": [0.1, 1.0]}}},
]


def make_suite(root: Path, runs: list[dict[str, Any]] = ROWS, tune: dict = TUNE) -> Path:
    base = tiny_recipe(root, train={"epochs": 1, "max_steps": 3, "run_name": None})
    base["model"]["noise"] = {"family": "none"}
    write_recipe(root / "recipes" / "base.yaml", base)
    suite = {"group": "tiny_tuned", "base": "../recipes/base.yaml", "seeds": [1, 2],
             "tune": tune, "runs": runs}
    return write_recipe(root / "suites" / "tuned.yaml", suite)


def compare_args(suite: Path, root: Path, *extra: str) -> list[str]:
    return [str(suite), "--reports-dir", str(root / "reports"), *extra]


def trials(study_dir: Path) -> list[dict]:
    with open(study_dir / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_two_row_tuned_suite_end_to_end_then_resumes_without_retraining(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    suite = make_suite(tmp_path)
    assert compare.main(compare_args(suite, tmp_path)) == 0
    runs_dir = tmp_path / "runs"
    for row, own in (("wd", "model.noise.p"), ("gaussian", "model.noise.sigma")):
        study = runs_dir / f"base-{row}-tune"
        table = trials(study)  # exactly the budget, over the shared keys and the row's own
        assert [t["number"] for t in table] == ["0", "1"]
        assert list(table[0])[3:] == ["optim.lr", "model.dropout_output", own]
        for trial in table:  # the trial overrides apply to trials only
            ran = yaml.safe_load((study / f"trial-{int(trial['number']):04d}" / "config.yaml")
                                 .read_text())
            assert ran["train"]["max_steps"] == 2
        best = min(table, key=lambda t: float(t["value"]))
        for seed in (1, 2):  # each seed trains the best parameters under the suite's budget
            run = runs_dir / f"base-{row}-best-seed{seed}"
            ran = yaml.safe_load((run / "config.yaml").read_text())
            assert ran["optim"]["lr"] == pytest.approx(float(best["optim.lr"]))
            section, key = own.split(".")[1:]
            assert ran["model"][section][key] == pytest.approx(float(best[own]))
            assert ran["train"]["seed"] == seed and ran["train"]["max_steps"] == 3
            assert (run / "results.json").is_file()
    report = (tmp_path / "reports" / "tuned.md").read_text()
    assert "## Tuning" in report and "the same budget, 2 trials" in report
    assert "same shared space: `optim.lr`" in report
    assert "| WD | 2 of 2 (2, 0) |" in report and "| Gaussian | 2 of 2 (2, 0) |" in report
    assert "`model.noise.sigma=" in report
    stamps = {p: p.stat().st_mtime_ns for p in runs_dir.rglob("results.json")}
    capsys.readouterr()
    assert compare.main(compare_args(suite, tmp_path)) == 0  # resume: nothing retrains
    assert {p: p.stat().st_mtime_ns for p in runs_dir.rglob("results.json")} == stamps
    assert capsys.readouterr().out.count("finished, skipped") == 4
    assert len(trials(runs_dir / "base-wd-tune")) == 2
    (tmp_path / "reports" / "tuned.md").unlink()
    assert compare.main(compare_args(suite, tmp_path, "--report-only")) == 0
    assert (tmp_path / "reports" / "tuned.md").read_text() == report


@pytest.mark.parametrize("row_space, expected", [
    ({"optim.lr": {"float": [0.001, 0.01]}}, r"runs\[0\]\.space repeats 'optim\.lr'"),
    ({"model.noise.pp": {"float": [0.1, 0.5]}}, r"runs\[0\]\.space\).*model\.noise\.pp"),
    ({"model.noise.p": {"float": [0.1, 1.5]}}, r"model\.noise\.p=1\.5"),
])
def test_a_bad_row_space_is_refused_before_anything_trains(
        tmp_path: Path, capsys: pytest.CaptureFixture, row_space: dict, expected: str) -> None:
    suite = make_suite(tmp_path, [{**ROWS[0], "space": row_space}, ROWS[1]])
    with pytest.raises(ConfigError, match=expected) as info:
        suite_data, paths = load_suite(suite)
        plan_studies(suite_data, suite, paths, [])
    assert str(suite) in str(info.value) and "\n" not in str(info.value)
    assert compare.main(compare_args(suite, tmp_path)) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_an_override_of_a_searched_key_is_refused(tmp_path: Path) -> None:
    suite_data, paths = load_suite(make_suite(tmp_path))
    with pytest.raises(ConfigError, match=r"optim\.lr name keys that the suite"):
        plan_studies(suite_data, "tuned.yaml", paths, ["optim.lr=0.002"])


def test_a_row_space_needs_a_tuned_suite(tmp_path: Path) -> None:
    suite = make_suite(tmp_path)
    data = yaml.safe_load(suite.read_text())
    del data["tune"]
    write_recipe(suite, data)
    with pytest.raises(ConfigError, match=r"runs\[0\]\.space is searched only in a tuned"):
        load_suite(suite)


def test_untrained_rows_of_a_tuned_suite_plan_their_best_directories(tmp_path: Path) -> None:
    suite_data, paths = load_suite(make_suite(tmp_path))
    runs = plan_runs(suite_data, paths, [], best={"WD": {"optim.lr": 0.002}})
    assert [run.run_dir.name for run in runs] == [
        "base-wd-best-seed1", "base-wd-best-seed2", "base-gaussian-best-seed1",
        "base-gaussian-best-seed2"]
    assert [run.recipe.optim.lr for run in runs] == [0.002, 0.002, 0.01, 0.01]


def test_report_only_before_any_study_trains_nothing_and_says_so(tmp_path: Path) -> None:
    suite = make_suite(tmp_path)
    assert compare.main(compare_args(suite, tmp_path, "--report-only")) == 0
    report = (tmp_path / "reports" / "tuned.md").read_text()
    assert "| WD | 0 of 2 (0, 0) | — | — | study not complete |" in report
    assert not list(tmp_path.rglob("results.json"))


def test_the_tuning_table_counts_pruned_trials_and_names_each_rows_keys(
        tmp_path: Path) -> None:
    suite_data, paths = load_suite(make_suite(tmp_path))
    studies = plan_studies(suite_data, "tuned.yaml", paths, [])
    studies[0].finished, studies[0].pruned = 1, 1
    studies[0].best_params, studies[0].best_value, studies[0].best_number = (
        {"optim.lr": 0.0123456, "model.dropout_output": 0.25, "model.noise.p": 0.3}, 9.876, 0)
    lines = "\n".join(tuning_lines(suite_data.tune, studies))
    assert "| WD | 2 of 2 (1, 1) | 0 | 9.88 | `optim.lr=0.01235`, " in lines
    assert "- WD also searches `model.noise.p` float [0.1, 0.6]." in lines
    assert "- Gaussian also searches `model.noise.sigma` float [0.1, 1.0]." in lines
    assert "`optim.lr` float [0.001, 0.03] (log)" in lines
    assert "Trials ran with `train.max_steps=2`." in lines


def test_a_row_whose_study_is_not_complete_trains_no_seed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Another process may still be training a study's last trials: its row's seeds wait
    (here no study trains at all), and the next run of the command trains them."""
    import lm_flipout.experiments.tuned_suite as tuned_suite

    monkeypatch.setattr(tuned_suite, "tune", lambda *args, **kwargs: None)
    suite = make_suite(tmp_path)
    assert compare.main(compare_args(suite, tmp_path)) == 0
    assert "The studies of WD, Gaussian are not complete" in capsys.readouterr().err
    assert not list(tmp_path.rglob("results.json"))


@pytest.mark.parametrize("trial_overrides, expected", [
    ({"train.epoch": 2}, r"tune\.trial_overrides.*train\.epoch"),
    ({"train.run_name": "x"}, r"trial_overrides sets 'train\.run_name'"),
])
def test_bad_trial_overrides_are_refused(tmp_path: Path, trial_overrides: dict,
                                         expected: str) -> None:
    suite_data, paths = load_suite(make_suite(tmp_path, tune={
        **TUNE, "trial_overrides": trial_overrides}))
    with pytest.raises(ConfigError, match=expected):
        plan_studies(suite_data, "tuned.yaml", paths, [])
