"""The compiled path's benchmark (lm_flipout/experiments/bench_compiled.py): operation
counts, the rows it reports, and `lm-flipout bench --compile`."""

import torch

from lm_flipout.cli.bench import parse_args
from lm_flipout.experiments import bench_compiled
from lm_flipout.experiments.bench import Shape

TINY = Shape(layers=1, hidden=8, batch=2, steps=3, vocab=20)


def test_operation_counts_count_each_aten_call():
    a, b = torch.ones(3), torch.ones(3)

    def task() -> None:
        for _ in range(5):
            torch.add(a, b)
        torch.mul(a, b)

    counts = bench_compiled.operation_counts(task, torch.device("cpu"))
    assert counts == {"aten_ops": 6, "generated": 0}
    assert bench_compiled.kernels(counts) == 6
    assert bench_compiled.kernels({"aten_ops": 6, "generated": 2, "device_kernels": 4}) == 4


def test_measure_compiled_reports_every_way_of_running_each_regularizer():
    rows = bench_compiled.measure_compiled(TINY, torch.device("cpu"), warmup=1, repeats=2,
                                           compile_backend="aot_eager")
    names = [row["variant"] for row in rows]
    assert names == ["torch.nn.LSTM",
                     "gaussian flipout, eager", "gaussian flipout, eager reference",
                     "gaussian flipout, compiled",
                     "recurrent dropout 0.25, eager", "recurrent dropout 0.25, compiled",
                     "zoneout 0.5 / 0.05, eager", "zoneout 0.5 / 0.05, compiled"]
    by_name = {row["variant"]: row for row in rows}
    for name in bench_compiled.REGULARIZERS:
        compiled = by_name[f"{name}, compiled"]
        eager = by_name.get(f"{name}, eager reference", by_name[f"{name}, eager"])
        assert "compile_s" in compiled and eager["aten_ops"] > 0 and compiled["aten_ops"] > 0
        assert compiled["ops_eager_over_compiled"] == eager["aten_ops"] / compiled["aten_ops"]
    table = bench_compiled.format_compiled("tiny", TINY, rows)
    assert table.count("\n") == len(rows) + 3 and "| zoneout 0.5 / 0.05, compiled |" in table


def test_bench_takes_compile():
    assert parse_args(["--compile", "--device", "cpu"]).compile
    assert not parse_args(["--device", "cpu"]).compile


def test_bench_compile_on_cuda_is_accepted_where_pytorch_sees_a_gpu(monkeypatch):
    """The device check faked: ``--device cuda --compile`` is the GPU comparison with
    cuDNN's torch.nn.LSTM as the baseline row."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = parse_args(["--device", "cuda", "--compile"])
    assert (args.device, args.compile) == ("cuda", True)
