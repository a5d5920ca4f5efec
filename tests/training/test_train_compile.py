"""train.compile (lm_flipout/training/compilation.py): when a run compiles its LSTM stack,
that the choice and the compile time are reported, that compiling changes no number of the
run, and that a compiled run killed mid-epoch resumes exactly."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from helpers import tiny_recipe
from lm_flipout.config import Recipe, from_dict
from lm_flipout.errors import ConfigError
from lm_flipout.nn.compiled import compile_stack, is_compiled
from lm_flipout.training import Trainer, compilation
from lm_flipout.training.compilation import choose_compile

COMPARED = ("valid_ppl", "test_ppl", "valid_bpc", "test_bpc", "steps", "epochs", "best_epoch")
# fixed windows: a handful of shapes to trace
SETTINGS = {"data": {"variable_bptt": False}, "train": {"checkpoint_every_steps": 1, "epochs": 2}}


@pytest.mark.parametrize("setting, device, expected", [
    (True, "cpu", True), (False, "cpu", False), ("auto", "cpu", False),
    (True, "cuda", True), (False, "cuda", False), ("auto", "cuda", True),
    ("auto", "mps", False),
])
def test_auto_compiles_on_cuda_only_and_an_explicit_setting_wins(setting, device, expected):
    enabled, reason = choose_compile(setting, torch.device(device))
    assert enabled is expected
    assert f"train.compile={str(setting).lower()}" in reason


def test_train_compile_accepts_true_false_auto_only(tmp_path):
    for value in (True, False, "auto"):
        recipe = from_dict(Recipe, tiny_recipe(tmp_path, train={"compile": value}), "r")
        assert recipe.train.compile == value
    with pytest.raises(ConfigError, match="train.compile"):
        from_dict(Recipe, tiny_recipe(tmp_path, train={"compile": "yes"}), "r")


class Crash(Exception):
    """Stands for the process dying."""


def train_run(root: Path, run: str, compile_setting, resume: bool = False,
              messages: list | None = None) -> dict:
    sections = {key: dict(values) for key, values in SETTINGS.items()}
    sections["train"]["compile"] = compile_setting
    recipe = from_dict(Recipe, tiny_recipe(root, **sections), "test recipe")
    torch._dynamo.reset()  # every run compiles afresh, as a new process would
    echo = messages.append if messages is not None else (lambda _: None)
    return Trainer(recipe, root / "runs" / run, resume=resume, echo=echo).run()


@pytest.fixture
def traced_only(monkeypatch):
    """Compile through AOTAutograd without generating code (``aot_eager``): the same graphs
    and the same numbers as eager, in seconds rather than minutes."""
    monkeypatch.setattr(compilation, "compile_stack",
                        functools.partial(compile_stack, backend="aot_eager"))


def test_compiled_run_gives_the_eager_numbers_reports_and_resumes_exactly(
        tmp_path, one_thread, traced_only, monkeypatch):
    """The warm-up compilation leaves every random generator as it was: a compiled run
    gives the eager run's results (to rounding: AOTAutograd decomposes some ops),
    results.json and the console say it compiled and how long that took, and a compiled
    run killed mid-epoch resumes to the same end."""
    eager = train_run(tmp_path, "eager", False)
    assert eager["compiled"] is False and eager["compile_s"] == 0.0
    messages: list[str] = []
    compiled = train_run(tmp_path, "compiled", True, messages=messages)
    assert {k: compiled[k] for k in COMPARED} == pytest.approx(
        {k: eager[k] for k in COMPARED}, rel=1e-6)
    written = json.loads((tmp_path / "runs" / "compiled" / "results.json").read_text())
    assert written["compiled"] is True and written["compile_s"] > 0
    assert written["compile_choice"].startswith("train.compile=true")
    assert any(m.startswith("torch.compile: on (train.compile=true") and "compiled in" in m
               for m in messages)

    original = Trainer._train_step
    crash_at = compiled["steps"] // 2 + 1

    def dying(self, batch):
        assert is_compiled(self.model.lstm)
        if self.progress.step == crash_at:
            raise Crash
        return original(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", dying)
    with pytest.raises(Crash):
        train_run(tmp_path, "crashed", True)
    monkeypatch.setattr(Trainer, "_train_step", original)
    resumed = train_run(tmp_path, "crashed", True, resume=True)
    assert {k: resumed[k] for k in COMPARED} == {k: compiled[k] for k in COMPARED}
