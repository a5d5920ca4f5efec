"""The benchmark's timing harness (lm_flipout/experiments/bench_timing.py): interleaving and
paired ratios."""

import torch

from lm_flipout.experiments.bench_timing import BASELINE, Timings, interleaved_times


def test_interleaved_times_runs_every_task_once_per_repeat_in_rotated_order():
    calls: list[str] = []
    tasks = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    timings = interleaved_times(tasks, torch.device("cpu"), warmup=2, repeats=4)
    measured = calls[6:]  # after two warm-up runs of each
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]
    assert measured == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert {name: len(values) for name, values in timings.samples.items()} == {
        "a": 4, "b": 4, "c": 4}


def test_ratio_pairs_each_repeat_with_its_own_baseline():
    # Load drifts: the machine gets 3x slower halfway. Within every repeat the variant takes
    # 1.5x the baseline, which the paired ratio recovers; a ratio of medians would not.
    baseline = [1.0, 1.0, 3.0, 3.0, 3.0]
    variant = [1.5, 1.5, 4.5, 4.5, 4.5]
    shifted = [1.5, 1.5, 1.5, 4.5, 4.5]  # in repeat 3 it ran just before the slowdown
    timings = Timings({BASELINE: baseline, "variant": variant, "shifted": shifted})
    assert timings.ratio("variant") == 1.5
    assert timings.median("variant") == 4.5
    assert timings.ratio("shifted") == 1.5
    assert timings.median("shifted") / timings.median(BASELINE) == 0.5
