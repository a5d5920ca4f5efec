"""`lm-flipout tune`: the search space is checked like a recipe, a study of tiny trials runs
end to end, pruned trials are recorded as such, a killed study resumes to exactly the
requested trials, several processes share one study, and best.yaml trains as it is."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from helpers import REPO, script_env, tiny_recipe, write_recipe
from lm_flipout.cli import main as cli_main
from lm_flipout.config import load_recipe
from lm_flipout.errors import ConfigError
from lm_flipout.experiments.tuning import read_space

SPACE = {
    "optim.lr": {"float": [0.001, 0.03], "log": True},
    "model.dropout_output": {"float": [0.0, 0.5]},
    "model.noise.family": {"choice": ["gaussian", "dropconnect"]},
}


def setup(root: Path, space: dict = SPACE, **train) -> tuple[Path, Path]:
    recipe = write_recipe(root / "tiny.yaml", tiny_recipe(root, train={"epochs": 2, **train}))
    space_path = root / "space.yaml"
    space_path.write_text(yaml.safe_dump(space, sort_keys=False))
    return recipe, space_path


def study_dir(root: Path) -> Path:
    return root / "runs" / "run-tune"


def read_trials(root: Path) -> list[dict]:
    with open(study_dir(root) / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def tune_args(recipe: Path, space: Path, trials: int, *extra: str) -> list[str]:
    return ["tune", str(recipe), "--space", str(space), "--trials", str(trials), *extra]


def start_tune(args: list[str], root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lm_flipout", *args], cwd=REPO,
                            env=script_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


# -- the space ----------------------------------------------------------------------------

@pytest.mark.parametrize("entry, expected", [
    ({"optim.lrr": {"float": [0.001, 0.01]}}, r"unknown key 'optim\.lrr'.*mean 'optim\.lr'"),
    ({"model.dropout_output": {"float": [0.0, 1.5]}}, r"model\.dropout_output=1\.5.*Keep"),
    ({"model.num_layers": {"float": [1.0, 2.0]}}, r"'model\.num_layers' is an integer.*int: \["),
    ({"model.noise.family": {"choice": ["gaussian", "gausian"]}}, r"must be one of"),
    ({"optim.lr": {"float": [0.0, 0.01], "log": True}}, r"log scale.*above 0"),
    ({"optim.lr": {"floot": [0.001, 0.01]}}, r"must be one distribution"),
    ({"train.run_name": {"choice": ["a", "b"]}}, r"set by the tuner"),
    ({"lr": {"float": [0.001, 0.01]}}, r"neither a dotted recipe key"),
])
def test_a_bad_space_is_one_paragraph_naming_file_and_key(tmp_path: Path, entry: dict,
                                                           expected: str) -> None:
    recipe, space = setup(tmp_path, entry)
    with pytest.raises(ConfigError, match=expected) as info:
        read_space(space, load_recipe(recipe))
    assert str(space) in str(info.value) and "\n" not in str(info.value)


def test_a_space_with_a_typo_is_refused_before_anything_trains(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe, space = setup(tmp_path, {**SPACE, "model.dropout_outptu": {"float": [0.0, 0.5]}})
    assert cli_main.main(tune_args(recipe, space, 2)) == 2
    err = capsys.readouterr().err
    assert "model.dropout_outptu" in err and str(space.name) in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_a_good_space_keeps_its_distributions(tmp_path: Path) -> None:
    recipe, space = setup(tmp_path, {**SPACE, "model.num_layers": {"int": [1, 3], "step": 2},
                                     "study": {"pruner": "successive_halving", "trials": 5}})
    read = read_space(space, load_recipe(recipe))
    assert list(read.params) == [*SPACE, "model.num_layers"]
    assert read.params["optim.lr"].log and read.params["model.num_layers"].step == 2
    assert read.study.pruner == "successive_halving" and read.study.trials == 5


# -- a study ------------------------------------------------------------------------------

def test_four_trials_end_to_end_and_best_yaml_trains_as_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    recipe, space = setup(tmp_path, {**SPACE, "study": {"pruner": "none"}})
    assert cli_main.main(tune_args(recipe, space, 4)) == 0
    rows = read_trials(tmp_path)
    assert [row["number"] for row in rows] == ["0", "1", "2", "3"]
    assert list(rows[0]) == ["number", "state", "value", *SPACE]
    assert all(row["state"] == "complete" for row in rows)
    for row in rows:  # each trial is an ordinary run with its own parameters
        run = study_dir(tmp_path) / f"trial-{int(row['number']):04d}"
        ran = yaml.safe_load((run / "config.yaml").read_text())
        assert ran["optim"]["lr"] == pytest.approx(float(row["optim.lr"]))
        assert ran["model"]["noise"]["family"] == row["model.noise.family"]
        results = (run / "results.json").read_text()
        assert f"{float(row['value']):.3f}"[:4] in results  # value: the run's valid_ppl
    best = min(rows, key=lambda row: float(row["value"]))
    best_yaml = study_dir(tmp_path) / "best.yaml"
    written = yaml.safe_load(best_yaml.read_text())
    assert written["optim"]["lr"] == pytest.approx(float(best["optim.lr"]))
    assert written["train"]["run_name"] == "run-best"
    assert (study_dir(tmp_path) / "report.md").is_file()
    assert (study_dir(tmp_path) / "optimization_history.png").is_file()
    assert cli_main.main(["train", str(best_yaml)]) == 0  # the recipe as it is
    assert (tmp_path / "runs" / "run-best" / "results.json").is_file()


def test_a_pruned_trial_is_recorded_as_pruned(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished trial with perplexity 1 at every epoch makes any real trial worse than the
    median at its first epoch, so the median pruner stops it there."""
    import optuna

    from lm_flipout.experiments.tuning.study import default_storage, open_study

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    space_data = {**SPACE, "study": {"pruner": {"median": {"n_startup_trials": 1}}}}
    recipe, space = setup(tmp_path, space_data, epochs=3)
    read = read_space(space, load_recipe(recipe))
    study = open_study("run-tune", default_storage(study_dir(tmp_path)), read, seed=0)
    dists = {key: optuna.distributions.FloatDistribution(0.001, 0.03, log=True)
             if key == "optim.lr" else None for key in SPACE}
    dists["model.dropout_output"] = optuna.distributions.FloatDistribution(0.0, 0.5)
    dists["model.noise.family"] = optuna.distributions.CategoricalDistribution(
        ["gaussian", "dropconnect"])
    study.add_trial(optuna.trial.create_trial(
        params={"optim.lr": 0.01, "model.dropout_output": 0.1, "model.noise.family": "gaussian"},
        distributions=dists, value=1.0, intermediate_values={1: 1.0, 2: 1.0, 3: 1.0}))
    assert cli_main.main(tune_args(recipe, space, 2)) == 0
    rows = read_trials(tmp_path)
    assert [(row["number"], row["state"]) for row in rows] == [("0", "complete"),
                                                               ("1", "pruned")]
    states = {t.number: t.state for t in optuna.load_study(
        study_name="run-tune", storage=default_storage(study_dir(tmp_path))).trials}
    assert states[1] == optuna.trial.TrialState.PRUNED
    epochs = [line for line in (study_dir(tmp_path) / "trial-0001" / "metrics.jsonl")
              .read_text().splitlines() if '"event": "epoch"' in line]
    assert len(epochs) == 1  # stopped after its first epoch, not at its budget of 3


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the study ended before {path} appeared:\n{proc.stdout.read()}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"{path} did not appear")
        time.sleep(0.02)


def test_a_killed_study_resumes_to_exactly_the_requested_trials(tmp_path: Path) -> None:
    recipe, space = setup(tmp_path, {**SPACE, "study": {"pruner": "none"}}, epochs=12)
    args = tune_args(recipe, space, 3)
    proc = start_tune(args, tmp_path)
    wait_for(study_dir(tmp_path) / "trial-0001" / "last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (study_dir(tmp_path) / "best.yaml").exists()
    again = subprocess.run([sys.executable, "-m", "lm_flipout", *args], cwd=REPO,
                           env=script_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "Resuming" in again.stdout + again.stderr and "trial-0001" in again.stdout
    assert "Trial 0 in" not in again.stdout  # the finished trial is kept, not trained again
    rows = read_trials(tmp_path)
    assert [row["number"] for row in rows] == ["0", "1", "2"]
    assert all(row["state"] == "complete" for row in rows)
    assert (study_dir(tmp_path) / "best.yaml").is_file()


def trained_trials(output: str) -> list[str]:
    return [line.split()[1] for line in output.splitlines() if line.startswith("Trial ")]


def run_two_processes(tmp_path: Path, trials: int, *extra: str) -> list[str]:
    recipe, space = setup(tmp_path, {**SPACE, "study": {"pruner": "none"}})
    args = tune_args(recipe, space, trials, *extra)
    procs = [start_tune(args, tmp_path) for _ in range(2)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    return [number for output in outputs for number in trained_trials(output)]


def test_processes_that_share_a_study_draw_different_parameters(tmp_path: Path) -> None:
    """Two processes open one study with the study's seed; each new trial's sampler is seeded
    by the trial's number, so their first draws differ (with the seed alone they would be
    equal), and one process alone draws the same parameters on every run."""
    from lm_flipout.experiments.tuning.study import default_storage, next_trial, open_study

    recipe, space = setup(tmp_path, SPACE)
    read = read_space(space, load_recipe(recipe))

    def first_draws(folder: Path, seed: int) -> list[float]:
        folder.mkdir()
        draws, claims = [], []
        for _ in range(2):  # a process each, on one storage, each training its trial
            study = open_study("run-tune", default_storage(folder), read, seed=0)
            trial, claim = next_trial(study, folder, total=4, seed=seed)
            draws.append(trial.suggest_float("optim.lr", 0.001, 0.03, log=True))
            claims.append(claim)
        for claim in claims:
            claim.release()
        return draws

    first, second = first_draws(tmp_path / "a", 0)
    assert first != second
    assert first_draws(tmp_path / "b", 0) == [first, second]  # repeatable
    assert first_draws(tmp_path / "c", 7)[0] != first  # the seed matters


def test_two_processes_share_the_default_storage(tmp_path: Path) -> None:
    trained = run_two_processes(tmp_path, 4)
    assert sorted(trained) == ["0", "1", "2", "3"]  # each trial trained once, by one process
    assert [row["number"] for row in read_trials(tmp_path)] == ["0", "1", "2", "3"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def postgres_url(tmp_path: Path):
    """A PostgreSQL server of its own on 127.0.0.1, for the test's life."""
    pytest.importorskip("psycopg", reason="psycopg (SQLAlchemy's PostgreSQL driver) is missing")
    tools = {name: shutil.which(name) for name in ("initdb", "pg_ctl")}
    if not all(tools.values()):
        pytest.skip("no PostgreSQL server here (initdb and pg_ctl are not on PATH)")
    holder = Path(tempfile.mkdtemp(prefix="lm_flipout_pg_"))  # pytest's tmp_path is private
    data = holder / "pgdata"
    data.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        as_user = ["runuser", "-u", "postgres", "--"]
        holder.chmod(0o755)
        shutil.chown(data, "postgres")
    port = free_port()
    init = subprocess.run([*as_user, tools["initdb"], "-D", str(data), "-U", "postgres",
                           "--auth=trust"], capture_output=True, text=True)
    if init.returncode != 0:
        shutil.rmtree(holder, ignore_errors=True)
        pytest.skip(f"initdb could not make a database cluster: {init.stderr.strip()[:300]}")
    start = subprocess.run([*as_user, tools["pg_ctl"], "-D", str(data), "-w", "-l",
                            str(data / "log"), "-o", f"-h 127.0.0.1 -p {port} -k {data}",
                            "start"], capture_output=True, text=True)
    if start.returncode != 0:
        shutil.rmtree(holder, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {start.stderr.strip()[:300]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, tools["pg_ctl"], "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(holder, ignore_errors=True)


def test_two_processes_share_a_postgresql_study(tmp_path: Path, postgres_url: str) -> None:
    trained = run_two_processes(tmp_path, 3, "--storage", postgres_url)
    assert sorted(trained) == ["0", "1", "2"]
    assert [row["number"] for row in read_trials(tmp_path)] == ["0", "1", "2"]
    assert not (study_dir(tmp_path) / "study.journal").exists()  # the database holds the study


def test_trials_are_wandb_runs_in_the_study_group_tagged_with_their_state(
        tmp_path: Path, wandb_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import wandb
    from test_tracking import item_key, read_wandb_records

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    recipe, space = setup(tmp_path, {**SPACE, "study": {"pruner": "none"}}, epochs=1)
    assert cli_main.main(tune_args(recipe, space, 1, "wandb.mode=offline")) == 0
    wandb.teardown()
    trial_dir = study_dir(tmp_path) / "trial-0000"
    runs: dict[str, list] = {}  # record type -> records, over the run's offline segments
    for path in sorted((trial_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        for record in read_wandb_records(path):
            runs.setdefault(record.WhichOneof("record_type"), []).append(record)
    first = runs["run"][0].run
    assert first.run_group == "run-tune" and first.display_name == "run-tune/trial-0000"
    config = {item_key(item): json.loads(item.value_json) for item in first.config.update}
    row = read_trials(tmp_path)[0]
    assert config["optim"]["lr"] == pytest.approx(float(row["optim.lr"]))
    assert "finished" in [tag for record in runs["run"] for tag in record.run.tags]
    summary_runs = list((study_dir(tmp_path) / "summary" / "wandb").glob("offline-run-*"))
    assert len(summary_runs) == 1
    records = read_wandb_records(next(summary_runs[0].glob("run-*.wandb")))
    summary = {item_key(item): json.loads(item.value_json) for record in records
               if record.WhichOneof("record_type") == "summary" for item in record.summary.update}
    assert summary["best_trial"] == 0
    assert summary["best_params"]["optim.lr"] == pytest.approx(float(row["optim.lr"]))
    assert summary["trials/_type"] == "table-file" and summary["trials/nrows"] == 1


def test_a_study_refuses_another_space(tmp_path: Path) -> None:
    from lm_flipout.experiments.tuning.study import default_storage, open_study

    recipe, space = setup(tmp_path)
    base = load_recipe(recipe)
    storage = default_storage(study_dir(tmp_path))
    open_study("run-tune", storage, read_space(space, base), seed=0)
    open_study("run-tune", storage, read_space(space, base), seed=0)  # the same: reopened
    space.write_text(yaml.safe_dump({"optim.lr": {"float": [0.001, 0.02]}}))
    with pytest.raises(ConfigError, match="started with another search space"):
        open_study("run-tune", storage, read_space(space, base), seed=0)
