"""Thread counts chosen by timing (lm_flipout/training/threads.py), with a fake clock that
decides which count is fast: nothing here measures real time."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from helpers import tiny_recipe
from lm_flipout.config import Recipe, from_dict
from lm_flipout.errors import ConfigError
from lm_flipout.model import LanguageModel, ModelConfig, NoiseConfig
from lm_flipout.tracking import read_metrics
from lm_flipout.training import Trainer, loop, threads
from lm_flipout.training.threads import (
    ThreadChooser,
    candidate_counts,
    processes_sharing,
    scoring_step,
    time_counts,
    training_step,
)

CPU = torch.device("cpu")


class StepClock:
    """Reads later by ``cost[thread count in use]`` at every reading, so a step timed between
    two readings seems to take that long at that count."""

    def __init__(self, cost: dict[int, float]) -> None:
        self.now, self.cost = 0.0, cost

    def __call__(self) -> float:
        self.now += self.cost.get(torch.get_num_threads(), 1.0)
        return self.now

    def wait(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def auto_env(monkeypatch, one_thread):
    """No OMP_NUM_THREADS, and four cores (whatever the machine has)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "machine_cores", lambda: 4)


def test_candidates_are_one_all_and_the_powers_of_two_between():
    assert candidate_counts(1) == [1]
    assert candidate_counts(2) == [1, 2]
    assert candidate_counts(6) == [1, 2, 4, 6]
    assert candidate_counts(8) == [1, 2, 4, 8]


def test_processes_on_one_machine_multiply():
    assert processes_sharing(1, {}) == 1
    assert processes_sharing(2, {}) == 2
    assert processes_sharing(2, {"LM_FLIPOUT_PROCESSES": "3"}) == 6
    assert processes_sharing(1, {"LM_FLIPOUT_PROCESSES": "zero"}) == 1


def test_time_counts_takes_the_median_of_rotated_rounds(one_thread):
    order: list[int] = []
    clock = StepClock({1: 3.0, 2: 1.0, 4: 2.0})
    timings = time_counts(lambda: order.append(torch.get_num_threads()), [1, 2, 4], 3, clock)
    assert timings == {1: 3.0, 2: 1.0, 4: 2.0}
    assert order == [1, 2, 4] + [1, 2, 4] + [2, 4, 1] + [4, 1, 2]  # warm-up, then rotated


def test_auto_uses_the_fastest_count_and_reports_it(auto_env):
    heard = []
    clock = StepClock({1: 0.5, 2: 0.2, 4: 0.9})
    chooser = ThreadChooser("auto", CPU, timer=clock)
    choice = chooser.use("training", lambda: None, lambda *args: heard.append(args))
    assert (choice.threads, choice.how, torch.get_num_threads()) == (2, "timed", 2)
    assert choice.timings_ms == pytest.approx({1: 500.0, 2: 200.0, 4: 900.0})
    assert heard == [("training", choice, None)]
    assert "threads for training: 2 (timed: 1 thread 500.0 ms" in choice.line("training")
    summary = chooser.summary()
    assert summary["training"]["threads"] == 2 and summary["cores"] == 4
    assert json.loads(json.dumps(summary))["training"]["timings_ms"]["4"] == pytest.approx(900)


def test_a_choice_is_kept_until_it_has_aged_by_twenty_times_its_cost(auto_env):
    clock = StepClock({1: 0.5, 2: 0.2, 4: 0.9})
    chooser = ThreadChooser("auto", CPU, timer=clock)
    chooser.use("valid", lambda: None)
    cost = clock.now
    calls = []
    chooser.use("valid", lambda: calls.append(1))
    assert calls == [] and chooser.timings == 1
    clock.wait(threads.OVERHEAD * cost)
    clock.cost = {1: 0.1, 2: 0.2, 4: 0.9}  # another process now keeps cores busy
    assert chooser.use("valid", lambda: calls.append(1)).threads == 1
    assert calls and chooser.timings == 2


def test_a_drifting_step_time_asks_for_a_new_timing(auto_env):
    clock = StepClock({1: 0.5, 2: 0.2, 4: 0.9})
    chooser = ThreadChooser("auto", CPU, timer=clock)
    assert not chooser.drifted(0.1)  # nothing chosen yet
    chooser.use("training", lambda: None)
    window = threads.DRIFT_WINDOW
    assert not any(chooser.drifted(0.2) for _ in range(window))  # the reference
    assert not any(chooser.drifted(0.22) for _ in range(window))  # within the band
    clock.wait(threads.OVERHEAD * clock.now)
    assert [chooser.drifted(0.5) for _ in range(window)][-1]  # 2.5x slower


def test_given_counts_and_omp_num_threads_are_used_without_timing(monkeypatch, one_thread):
    never = lambda: pytest.fail("timed a fixed choice")  # noqa: E731
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    chooser = ThreadChooser(3, CPU, timer=never)
    assert chooser.use("training", never).threads == 3 == torch.get_num_threads()
    assert chooser.summary()["all"] == {"threads": 3, "how": "train.threads", "timings_ms": {}}
    assert not chooser.drifted(1.0)
    torch.set_num_threads(1)
    chooser = ThreadChooser("auto", CPU, timer=never, environ={"OMP_NUM_THREADS": "1"})
    assert chooser.use("test", never).how == "OMP_NUM_THREADS"


def test_processes_divide_the_cores(auto_env):
    never = lambda: pytest.fail("timed with one core")  # noqa: E731
    chooser = ThreadChooser("auto", CPU, processes=4, timer=never)
    choice = chooser.use("training", never)
    assert (choice.threads, choice.how) == (1, "one core for this process of 4")
    clock = StepClock({1: 0.5, 2: 0.2})
    chooser = ThreadChooser("auto", CPU, processes=2, timer=clock)
    assert set(chooser.use("training", lambda: None).timings_ms) == {1, 2}


def test_a_gpu_run_takes_its_share_of_cores_untimed(auto_env):
    chooser = ThreadChooser("auto", torch.device("cuda"), processes=2)
    assert chooser.fixed is not None and chooser.fixed.threads == 2


def test_timing_steps_leave_no_trace(one_thread):
    model = LanguageModel(ModelConfig(
        vocab_size=11, embedding_size=8, hidden_size=8, num_layers=1, dropout_output=0.3,
        noise=NoiseConfig("gaussian", "flipout", sigma=0.5))).train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    training_step(model, 5, 3, CPU)()
    scoring_step(model, 5, 1, CPU)()
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert model.training


@pytest.mark.parametrize("value", [0, "two", 1.5, True])
def test_train_threads_must_be_auto_or_a_positive_count(value):
    with pytest.raises(ConfigError, match="train.threads"):
        from_dict(Recipe, {"train": {"threads": value}}, "test recipe")


def test_a_run_on_auto_repeats_a_run_on_its_chosen_count(tmp_path: Path, auto_env, monkeypatch):
    """The timing steps disturb nothing: a run whose (fake) timings choose one thread gives
    exactly the numbers of a run told to use one thread, and it reports its choices."""
    def train(name: str, setting) -> dict:
        recipe = from_dict(Recipe, tiny_recipe(tmp_path, train={"threads": setting,
                                                                "epochs": 2}), "test")
        return Trainer(recipe, tmp_path / "runs" / name, echo=said.append).run()

    said: list[str] = []
    given = train("given", 1)
    monkeypatch.setattr(loop, "ThreadChooser", functools.partial(
        ThreadChooser, timer=StepClock({1: 0.01, 2: 0.03, 4: 0.05})))
    timed = train("timed", "auto")
    for key in ("valid_ppl", "test_ppl", "valid_bpc", "test_bpc", "steps"):
        assert timed[key] == given[key]
    assert given["threads"]["all"]["threads"] == 1
    assert {timed["threads"][work]["threads"] for work in ("training", "valid", "test")} == {1}
    assert "threads for every step: 1 (train.threads)" in said
    assert any(line.startswith("threads for training: 1 (timed: ") for line in said)
    events = [e for e in read_metrics(tmp_path / "runs" / "timed") if e["event"] == "threads"]
    assert {e["work"] for e in events} == {"training", "valid", "test"}
    for results in (given, timed):
        assert results["wall_s"] >= results["train_s"] + results["valid_s"] + results["test_s"]
        assert min(results["train_s"], results["valid_s"], results["test_s"]) > 0
    on_disk = json.loads((tmp_path / "runs" / "timed" / "results.json").read_text())
    assert on_disk["threads"]["training"]["how"] == "timed"
