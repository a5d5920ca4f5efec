"""The benchmark's timing harness (lm_flipout/experiments/bench_timing.py): interleaving and
paired ratios; the contended benchmark and its helper process."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lm_flipout.cli import bench as bench_cli
from lm_flipout.experiments.bench_timing import BASELINE, Timings, interleaved_times
from lm_flipout.experiments.contention import one_core_busy

REPO = Path(__file__).resolve().parents[2]


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


def test_layout_options_time_stacks_built_in_that_layout():
    """--batch-first / --bidirectional: every variant's stack (and torch.nn.LSTM's) takes the
    layout, keeps its regularizer, and the run reports the stack alone."""
    from torch import nn

    from lm_flipout.experiments.bench import (
        VARIANTS,
        Shape,
        StackLayout,
        build_stack,
        format_table,
        measure_shape,
    )
    from lm_flipout.nn import LSTM

    shape, layout = Shape(2, 8, 3, 4, 20), StackLayout(batch_first=True, bidirectional=True)
    for settings in VARIANTS.values():
        stack = build_stack(settings, shape, layout)
        assert isinstance(stack, nn.LSTM if settings is None else LSTM)
        assert stack.batch_first and stack.bidirectional
        y, _ = stack(torch.randn(3, 4, 8))
        assert tuple(y.shape) == (3, 4, 16)
    flipout = build_stack(VARIANTS["gaussian flipout"], shape, layout)
    assert all(layer.recurrent_noise.estimator == "flipout" for layer in flipout.layers)
    zoneout = build_stack(VARIANTS["zoneout 0.5 / 0.05"], shape, layout)
    assert zoneout.layers[3].cell_masks.zoneout_cell == 0.5
    rows = measure_shape(shape, torch.device("cpu"), warmup=0, repeats=1,
                         independent_limit_gib=1.0, layout=layout)
    assert [row["variant"] for row in rows] == list(VARIANTS)
    assert all(row["step_ms"] is None and row["stack_ms"] > 0 for row in rows)
    assert "batch_first + bidirectional (stack alone)" in format_table("char", rows,
                                                                        torch.device("cpu"),
                                                                        layout)


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie nobody has reaped yet has ended too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_the_contended_benchmark_runs_and_stops_its_helper(tmp_path, one_thread, capsys):
    out = tmp_path / "bench.json"
    assert bench_cli.main(["--contend", "--shapes", "tiny", "--warmup", "1", "--repeats", "1",
                           "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert gone(results["helper_pid"]) and results["contended"] is True
    table = results["shapes"]["tiny"]
    assert [row["model"] for row in table["rows"]] == [BASELINE, "gaussian flipout"]
    for row in table["rows"]:
        assert 1 <= row["auto_threads"] <= table["cores"]
        assert row["best_fixed"] in ("1", "all") and row["auto_vs_best_fixed"] > 0
    assert table["ours_auto_vs_torch_default"] > 0
    assert "one core kept busy by a helper process" in capsys.readouterr().out


def test_the_helper_stops_however_the_block_ends():
    with pytest.raises(KeyboardInterrupt):
        with one_core_busy() as helper:
            assert helper.poll() is None  # spinning
            raise KeyboardInterrupt
    assert helper.returncode is not None and gone(helper.pid)


def test_the_helper_ends_by_itself_when_its_parent_is_killed():
    parent = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom lm_flipout.experiments.contention import "
         "one_core_busy\nwith one_core_busy() as helper:\n    print(helper.pid, flush=True)\n"
         "    time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    helper_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    for _ in range(600):  # the helper notices within milliseconds; allow a busy machine
        if gone(helper_pid):
            break
        time.sleep(0.1)
    assert gone(helper_pid)
