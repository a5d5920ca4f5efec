"""The suite runner and its report, end to end on a tiny suite: a finished run is skipped,
the others train (and an unfinished one resumes), the report's numbers are the runs'
results.json, --report-only trains nothing; and clear errors for bad suites and failed runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO, run_script, script_env, snapshot, tiny_recipe, write_recipe
from lm_flipout.cli import compare
from lm_flipout.config import load_recipe, recipe_to_yaml
from lm_flipout.experiments import compare as compare_runner
from lm_flipout.experiments.suite import PlannedRun
from lm_flipout.training.run_lock import LOCK_FILE, RunLock, lock_holder

GROUP = "tiny_suite"



def without_wandb_logs(files: dict[str, bytes]) -> dict[str, bytes]:
    """A `snapshot` without the debug logs of W&B's service (written on its own schedule)."""
    return {name: data for name, data in files.items()
            if not (name.split("/")[-2:-1] == ["logs"] and name.endswith(".log"))}


def make_suite(root: Path, epochs: int = 2) -> Path:
    """Two tiny recipes (plain, and flipout with locked dropout) and a suite over them."""
    for name, model in (("plain", {"noise": {"family": "none"}, "dropout_input": 0.0,
                                   "dropout_output": 0.0}),
                        ("flipout", {})):
        recipe = tiny_recipe(root, train={"epochs": epochs, "run_name": None},
                             wandb={"mode": "offline"})
        recipe["model"].update(model)
        write_recipe(root / "recipes" / f"{name}.yaml", recipe)
    suite = {"group": GROUP, "description": "Two tiny runs.", "paper_source": "made up",
             "baseline": "plain",
             "runs": [{"recipe": "../recipes/plain.yaml", "label": "plain"},
                      {"recipe": "../recipes/flipout.yaml", "label": "flipout",
                       "paper": {"valid_bpc": 1.5, "test_bpc": 1.25}}]}
    return write_recipe(root / "suites" / "tiny.yaml", suite)


def run_compare(root: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m lm_flipout compare ARGS`` run from ``root``, outside the checkout, as an
    installed package runs (the checkout on PYTHONPATH instead of installed)."""
    env = {**script_env(root), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "lm_flipout", "compare", *args,
         "--reports-dir", str(root / "reports")],
        cwd=root, env=env, capture_output=True, text=True, timeout=180)


def report_rows(report: str) -> dict[str, dict[str, str]]:
    """The Markdown table as {label: {column: cell}}."""
    lines = [line for line in report.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        rows[cells["run"].split("]")[0].lstrip("[")] = cells
    return rows


def assert_report_matches_results(report: str, runs: Path) -> None:
    rows = report_rows(report)
    assert set(rows) == {"plain", "flipout"}
    for label, cells in rows.items():
        results = json.loads((runs / label / "results.json").read_text())
        for column, key in (("valid ppl", "valid_ppl"), ("test ppl", "test_ppl"),
                            ("valid bpc", "valid_bpc"), ("test bpc", "test_bpc")):
            assert float(cells[column]) == pytest.approx(results[key], abs=0.0051)
        assert int(cells["params"].replace(",", "")) == results["params"]
        assert float(cells["tokens/s"].replace(",", "")) == pytest.approx(
            results["tokens_per_s"], abs=0.51)
        assert cells["epochs (best)"] == f"{results['epochs']} ({results['best_epoch']})"
    assert rows["flipout"]["paper valid bpc"] == "1.500"
    assert rows["flipout"]["paper test bpc"] == "1.250"
    assert rows["plain"]["paper valid bpc"] == ""
    plain = json.loads((runs / "plain" / "results.json").read_text())["test_ppl"]
    flip = json.loads((runs / "flipout" / "results.json").read_text())["test_ppl"]
    assert rows["flipout"]["test ppl vs plain"] == f"{(flip / plain - 1) * 100:+.1f}%"


def test_suite_skips_finished_runs_trains_the_rest_and_reports_their_results(
        tmp_path: Path) -> None:
    suite = make_suite(tmp_path)
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    # One run finished before the suite starts, trained by train.py as a user would.
    done = run_script("train.py", [str(tmp_path / "recipes" / "plain.yaml"),
                                   "wandb.mode=disabled"], tmp_path)
    assert done.returncode == 0, done.stderr
    before = snapshot(runs / "plain")
    results_mtime = (runs / "plain" / "results.json").stat().st_mtime_ns

    proc = run_compare(tmp_path, str(suite))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[1/2] plain: finished, skipped" in proc.stdout
    assert "[2/2] flipout: starting" in proc.stdout
    started = proc.stdout[proc.stdout.index("[2/2] flipout: starting"):].splitlines()[1]
    assert started.strip().startswith("python -m lm_flipout train ") and "flipout.yaml" in started
    assert snapshot(runs / "plain") == before  # not retrained, not even touched
    assert (runs / "plain" / "results.json").stat().st_mtime_ns == results_mtime
    config = yaml.safe_load((runs / "flipout" / "config.yaml").read_text())
    assert config["wandb"]["group"] == GROUP and config["wandb"]["mode"] == "offline"
    assert list((runs / "flipout" / "wandb").glob("offline-run-*"))

    report = (reports / "tiny.md").read_text()
    assert_report_matches_results(report, runs)
    assert f"python -m lm_flipout compare {suite}" in report
    assert "![Validation perplexity per epoch](tiny_valid_ppl.png)" in report
    plot = reports / "tiny_valid_ppl.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --report-only rebuilds the same report and plot from the run directories alone.
    # W&B's background service may still append to its own debug logs after a run ended:
    # those are W&B's files, not the run's, so the comparison leaves them out.
    everything = without_wandb_logs(snapshot(runs))
    plot.unlink()
    (reports / "tiny.md").unlink()
    proc = run_compare(tmp_path, str(suite), "--report-only")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "starting" not in proc.stdout and "skipped" not in proc.stdout
    assert (reports / "tiny.md").read_text() == report
    assert plot.is_file()
    assert without_wandb_logs(snapshot(runs)) == everything

    # A run with last.pt but no results.json is unfinished: the suite resumes it.
    first = json.loads((runs / "flipout" / "results.json").read_text())
    (runs / "flipout" / "results.json").unlink()
    proc = run_compare(tmp_path, str(suite), "wandb.mode=disabled")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[2/2] flipout: resuming from last.pt" in proc.stdout
    again = json.loads((runs / "flipout" / "results.json").read_text())
    assert (again["valid_ppl"], again["test_ppl"]) == (first["valid_ppl"], first["test_ppl"])
    assert_report_matches_results((reports / "tiny.md").read_text(), runs)


def test_a_failed_run_is_reported_and_the_other_runs_still_train(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    for name, value in script_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    suite = make_suite(tmp_path, epochs=1)
    text = suite.read_text().replace("../recipes/plain.yaml", "../recipes/broken.yaml")
    suite.write_text(text)
    broken = yaml.safe_load((tmp_path / "recipes" / "plain.yaml").read_text())
    broken["data"]["path"] = str(tmp_path / "no_such_corpus")
    write_recipe(tmp_path / "recipes" / "broken.yaml", broken)
    status = compare.main([str(suite), "wandb.mode=disabled",
                           "--reports-dir", str(tmp_path / "reports")])
    out, err = capfd.readouterr()
    assert status == 2
    assert "[1/2] plain: training failed with exit status 2" in err
    assert (tmp_path / "runs" / "flipout" / "results.json").is_file()
    message = " ".join(err[err.rindex("error: "):].split())
    assert message.startswith("error: 1 of 2 runs of the suite failed: plain (the training output")
    assert "Traceback" not in err
    report = (tmp_path / "reports" / "tiny.md").read_text()
    assert "| [plain](../recipes/broken.yaml) (failed) |" in report


def one_paragraph_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert compare.main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and "Traceback" not in err and not out
    return " ".join(err.split())


def test_a_missing_suite_file_is_a_clear_error(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    message = one_paragraph_error(capsys, [str(tmp_path / "nope.yaml")])
    assert f"Suite file {tmp_path / 'nope.yaml'} does not exist" in message


def test_a_suite_listing_a_missing_recipe_is_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    suite = make_suite(tmp_path)
    suite.write_text(suite.read_text().replace("flipout.yaml", "flipuot.yaml"))
    message = one_paragraph_error(capsys, [str(suite)])
    assert "lists the recipe '../recipes/flipuot.yaml' (runs[1].recipe)" in message
    assert "relative to the suite file's folder" in message


@pytest.mark.parametrize("edit, expected", [
    ({"runz": []}, "unknown key 'runz'. Did you mean 'runs'?"),
    ({"baseline": "nobody"}, "baseline 'nobody' is not the label of one of its runs"),
    ({"runs": []}, "runs is empty"),
    ({"runs": [{"recipe": "../recipes/plain.yaml", "paper": {"test_acc": 1}}]},
     "a paper number must be one of valid_ppl, test_ppl, valid_bpc, test_bpc"),
    ({"runs": [{"recipe": "../recipes/plain.yaml"}, {"recipe": "../recipes/plain.yaml"}]},
     "two runs labelled 'plain'"),
])
def test_malformed_suites_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture,
                                           edit: dict, expected: str) -> None:
    suite = make_suite(tmp_path)
    data = yaml.safe_load(suite.read_text())
    data.update(edit)
    if "runz" in edit:
        del data["runs"]
    write_recipe(suite, data)
    assert expected in one_paragraph_error(capsys, [str(suite)])


def test_overrides_are_checked_before_anything_trains(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    suite = make_suite(tmp_path)
    message = one_paragraph_error(capsys, [str(suite), "model.hiden_size=8"])
    assert "unknown key 'model.hiden_size'" in message
    message = one_paragraph_error(capsys, [str(suite), "train.run_name=same"])
    assert "would both train in" in message
    assert not (tmp_path / "runs").exists()


def test_help_describes_the_suite_format_and_options(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for words in ("--report-only", "--reports-dir", "key=value", "group:", "paper:",
                  "results.json is finished", "last.pt is", "_valid_ppl.png"):
        assert words in out


def test_the_package_entry_point_runs_the_command() -> None:
    done = subprocess.run([sys.executable, "-m", "lm_flipout", "compare", "--help"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m lm_flipout compare")
    assert "--report-only" in done.stdout


def test_report_only_shows_unfinished_runs_and_settings_that_differ_from_the_recipe(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Run directories written by hand: 'plain' finished with train.epochs=1 although its
    recipe says 2 (say, a smoke test), 'flipout' has a last.pt and two validated epochs."""
    suite = make_suite(tmp_path)
    runs = tmp_path / "runs"
    # train.device and train.log_every differ too, but they do not change the experiment
    plain = load_recipe(tmp_path / "recipes" / "plain.yaml",
                        ["train.epochs=1", "train.device=cpu", "train.log_every=3"])
    (runs / "plain").mkdir(parents=True)
    (runs / "plain" / "config.yaml").write_text(recipe_to_yaml(plain))
    results = {"valid_ppl": 3.14159, "test_ppl": 2.71828, "valid_bpc": 1.23456,
               "test_bpc": 1.5, "params": 1234567, "tokens_per_s": 4321.6, "wall_s": 3725.0,
               "epochs": 1, "best_epoch": 1, "device": "cpu", "git_rev": "abc1234"}
    (runs / "plain" / "results.json").write_text(json.dumps(results))
    (runs / "flipout").mkdir()
    (runs / "flipout" / "last.pt").write_bytes(b"")
    (runs / "flipout" / "metrics.jsonl").write_text("".join(
        json.dumps({"event": "valid", "step": 10 * e, "epoch": e, "valid_ppl": 9.0 / e}) + "\n"
        for e in (1, 2)))

    assert compare.main([str(suite), "--report-only", "wandb.mode=disabled", "--reports-dir",
                         str(tmp_path / "reports")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "note: plain finished with settings that differ from its recipe now " \
           "(train.epochs=1 (recipe: 2))" in err
    report = (tmp_path / "reports" / "tiny.md").read_text()
    rows = report_rows(report)
    assert rows["plain"] == {
        "run": "[plain](../recipes/plain.yaml)", "valid ppl": "3.14", "test ppl": "2.72",
        "valid bpc": "1.235", "paper valid bpc": "", "test bpc": "1.500", "paper test bpc": "",
        "test ppl vs plain": "", "params": "1,234,567", "tokens/s": "4,322",
        "wall time": "1h 02m", "epochs (best)": "1 (1)"}
    assert rows["flipout"]["run"] == "[flipout](../recipes/flipout.yaml) (unfinished)"
    assert rows["flipout"]["valid ppl"] == "—" and rows["flipout"]["paper test bpc"] == "1.250"
    assert "- flipout: unfinished (last.pt in" in report
    assert "- plain ran with settings that differ from its recipe now: train.epochs=1" in report
    assert "1 of 2 runs finished, 1h 02m of wall time in all, on cpu, git abc1234." in report


def test_a_run_another_process_is_training_is_skipped_not_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def planned(name: str) -> PlannedRun:
        return PlannedRun(label=name, recipe_path=f"{name}.yaml", recipe=None,
                          run_dir=tmp_path / name, paper={})

    busy, free, fresh = planned("busy"), planned("free"), planned("fresh")
    lock = RunLock(busy.run_dir)
    lock.acquire()  # another open file on run.lock: flock treats it as another process
    free.run_dir.mkdir()
    (free.run_dir / LOCK_FILE).write_text("pid 1 on host gone\n")  # left by a killed run
    started: list[list[str]] = []
    sharing: list[int] = []

    def train(args: list[str], processes: int) -> tuple[int, None]:
        started.append(args)
        sharing.append(processes)
        return 0, None

    monkeypatch.setattr(compare_runner, "_train", train)
    failed: list[str] = []
    try:
        assert compare_runner.train_unfinished([busy, free, fresh], failed) is None
        assert lock_holder(busy.run_dir) is not None
    finally:
        lock.release()
    out = capsys.readouterr().out
    assert f"[1/3] busy: being trained by another process (pid {os.getpid()} on host" in out
    assert [args[0] for args in started] == ["free.yaml", "fresh.yaml"]
    assert sharing == [2, 2]  # each beside the busy run: they divide the cores
    assert failed == []
    assert lock_holder(busy.run_dir) is None and not (fresh.run_dir).exists()


def test_a_run_that_another_process_started_first_is_not_counted_as_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    run = PlannedRun(label="raced", recipe_path="raced.yaml", recipe=None,
                     run_dir=tmp_path / "raced", paper={})
    lock = RunLock(run.run_dir)

    def lose_the_race(args: list[str], processes: int) -> tuple[int, None]:
        lock.acquire()  # the other process took the lock just before this one's train did
        return 2, None

    monkeypatch.setattr(compare_runner, "_train", lose_the_race)
    failed: list[str] = []
    try:
        compare_runner.train_unfinished([run], failed)
    finally:
        lock.release()
    assert failed == []
    assert "[1/1] raced: another process started it first, skipped" in capsys.readouterr().out


def test_each_run_learns_how_many_processes_share_the_machine(
        monkeypatch: pytest.MonkeyPatch) -> None:
    environments: list[dict] = []

    class Child:
        def __init__(self, command: list[str], env: dict) -> None:
            environments.append(env)

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(compare_runner.subprocess, "Popen", Child)
    monkeypatch.delenv("LM_FLIPOUT_PROCESSES", raising=False)
    assert compare_runner._train(["run.yaml"], processes=3) == (0, None)
    monkeypatch.setenv("LM_FLIPOUT_PROCESSES", "1")  # the user's own word wins
    compare_runner._train(["run.yaml"], processes=3)
    assert [env["LM_FLIPOUT_PROCESSES"] for env in environments] == ["3", "1"]
