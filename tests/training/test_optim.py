"""Optimizers and schedules: the non-monotonic learning-rate cut, NT-ASGD's switch and exact
iterate averaging (also inside a real training run), Adam/AMSGrad flags, AR/TAR penalties."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_recipe
from lm_flipout.config import OptimConfig, Recipe, from_dict
from lm_flipout.tracking import read_metrics
from lm_flipout.training import Trainer
from lm_flipout.training.checkpoint import load_checkpoint
from lm_flipout.training.objective import activation_penalty
from lm_flipout.training.optimizers import AveragedSGD, averaged_weights, build_optimizer
from lm_flipout.training.schedules import Schedule


def optim_config(**values) -> OptimConfig:
    return from_dict(OptimConfig, values, "test")


def from_dict_recipe(root, **sections) -> Recipe:
    return from_dict(Recipe, tiny_recipe(root, **sections), "test recipe")


def test_sgd_divides_lr_by_4_when_validation_stalls_beyond_the_nonmono_window() -> None:
    cfg = optim_config(name="sgd", lr=20.0, nonmono=2)
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = build_optimizer(cfg, [param])
    schedule = Schedule(cfg)
    # Hand-derived: a loss stalls when more than 2 are recorded since the start or the last
    # cut and it is worse than the best of them from before the last 2. 3.5 is worse than the
    # previous epoch but better than 5.0, so no cut; 4.5 (> 4.0) cuts. After the cut 3.2, 3.3
    # and 3.4 are all worse than the old best 3.0, but the history starts afresh: only 3.6,
    # worse than 3.2 with three new losses recorded, cuts again.
    losses = [5.0, 4.0, 3.0, 3.5, 4.5, 3.2, 3.3, 3.4, 3.6, 2.9]
    expected = [(None, 20.0)] * 4 + [("lr", 5.0)] + [(None, 5.0)] * 3 + [("lr", 1.25),
                                                                        (None, 1.25)]
    seen = [(schedule.step(loss, optimizer), optimizer.param_groups[0]["lr"]) for loss in losses]
    assert seen == expected
    restored = Schedule(cfg)
    restored.load_state_dict(schedule.state_dict())
    assert restored.history == [2.9] and not restored.stalled(9.0)


def test_sgd_plateau_waits_nonmono_epochs_after_a_cut_instead_of_collapsing() -> None:
    # A run stuck at the same loss: the old rule compared every later epoch with the same old
    # best and cut on consecutive epochs (30 -> 7.5 -> 1.9 -> 0.47 -> 0.12).
    cfg = optim_config(name="sgd", lr=30.0, nonmono=5)
    optimizer = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    schedule = Schedule(cfg)
    losses = [3.0, 2.0, 1.5, 1.4, 1.3, 1.2] + [1.25 + 0.01 * k for k in range(1, 15)]
    cuts = [epoch for epoch, loss in enumerate(losses, 1) if schedule.step(loss, optimizer)]
    # Epoch 12 (1.31) is the first worse than the best before the 5-epoch window (1.2). Then
    # the history restarts: epochs 13-18 are recorded, and epoch 19 (1.38) is worse than the
    # first of them (1.32): the next cut, 7 epochs later instead of at epoch 13.
    assert cuts == [12, 19]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(30.0 / 16)


def awd_lstm_switch(logs: list[float], val_loss: float, nonmono: int) -> bool:
    """AWD-LSTM's NT-ASGD trigger, written out: t > nonmono and val_loss > min(logs[:-nonmono])."""
    return len(logs) > nonmono and val_loss > min(logs[:-nonmono])


@pytest.mark.parametrize("nonmono", [1, 3, 5])
def test_nt_asgd_trigger_is_awd_lstms_rule(nonmono: int) -> None:
    gen = torch.Generator().manual_seed(nonmono)
    for _ in range(20):
        losses = (5.0 - torch.arange(15) * 0.05 + torch.rand(15, generator=gen)).tolist()
        cfg = optim_config(name="nt_asgd", lr=30.0, nonmono=nonmono)
        optimizer = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
        schedule = Schedule(cfg)
        seen = [schedule.step(loss, optimizer) for loss in losses]
        logs, expected = [], None
        for epoch, loss in enumerate(losses):
            if expected is None and awd_lstm_switch(logs, loss, nonmono):
                expected = epoch
            logs.append(loss)
        assert (seen.index("averaging") if "averaging" in seen else None) == expected
        assert seen.count("averaging") == (expected is not None)


def test_nt_asgd_switches_to_averaging_once_without_touching_the_lr() -> None:
    cfg = optim_config(name="nt_asgd", lr=30.0, nonmono=1)
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = build_optimizer(cfg, [param])
    assert type(optimizer) is torch.optim.SGD
    schedule = Schedule(cfg)
    # 2.5 is worse than 2.0 but not than 3.0, the best from before the 1-epoch window; 2.6 is
    # worse than min(3.0, 2.0): the switch. After it nothing changes any more.
    changes = [schedule.step(loss, optimizer) for loss in [3.0, 2.0, 2.5, 2.6, 2.7, 1.0]]
    assert changes == [None, None, None, "averaging", None, None]
    assert schedule.averaging and optimizer.param_groups[0]["lr"] == 30.0
    adam = Schedule(optim_config(name="adam", lr=1e-3, nonmono=1))
    adam_opt = build_optimizer(adam.cfg, [param])
    assert [adam.step(loss, adam_opt) for loss in [3.0, 2.0, 2.5, 2.6]] == [None] * 4
    assert adam_opt.param_groups[0]["lr"] == 1e-3


def test_averaged_sgd_keeps_the_arithmetic_mean_of_the_iterates_and_resumes_it() -> None:
    cfg = optim_config(name="nt_asgd", lr=0.1, weight_decay=0.01)
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(cfg, model.parameters(), averaging=True)
    assert isinstance(optimizer, AveragedSGD)
    assert optimizer.param_groups[0]["weight_decay"] == 0.01
    gen = torch.Generator().manual_seed(0)
    iterates = []

    def sgd_step(opt) -> None:
        x = torch.randn(4, 3, generator=gen)
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
        iterates.append([p.detach().clone() for p in model.parameters()])

    for _ in range(3):
        sgd_step(optimizer)
    # A resumed run rebuilds the optimizer and loads its state: the average must continue.
    resumed = build_optimizer(cfg, model.parameters(), averaging=True)
    resumed.load_state_dict(optimizer.state_dict())
    for _ in range(4):
        sgd_step(resumed)
    # SGD with weight decay computed by hand reproduces the last iterate ...
    current = [p.detach().clone() for p in model.parameters()]
    means = [torch.stack([it[i] for it in iterates]).mean(0) for i in range(len(current))]
    with averaged_weights(model, resumed):
        for p, mean in zip(model.parameters(), means):
            torch.testing.assert_close(p.detach(), mean, rtol=0, atol=1e-6)
    for p, value in zip(model.parameters(), current):  # ... and is put back afterwards
        assert torch.equal(p.detach(), value)
    assert not torch.allclose(means[0], current[0])  # the check above is not vacuous


def test_averaged_sgd_takes_plain_sgd_steps_and_starts_the_average() -> None:
    cfg = optim_config(name="nt_asgd", lr=0.5, weight_decay=0.1)
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = build_optimizer(cfg, [w], averaging=True)
    w.grad = torch.tensor([0.2, 0.4])
    optimizer.step()
    # w - lr * (g + wd * w) = [1 - .5*(.2+.1), -2 - .5*(.4-.2)]
    torch.testing.assert_close(w.detach(), torch.tensor([0.85, -2.1]))
    torch.testing.assert_close(optimizer.state[w]["ax"], torch.tensor([0.85, -2.1]))


def test_adam_and_amsgrad_are_built_with_the_recipe_flags() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    adam = build_optimizer(optim_config(name="adam", lr=2e-3, betas=[0.8, 0.99],
                                        weight_decay=1e-5), params)
    amsgrad = build_optimizer(optim_config(name="amsgrad", lr=1e-3), params)
    sgd = build_optimizer(optim_config(name="sgd", lr=5.0, momentum=0.9), params)
    assert type(adam) is torch.optim.Adam and type(amsgrad) is torch.optim.Adam
    group = adam.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"], group["amsgrad"]) == (
        2e-3, (0.8, 0.99), 1e-5, False)
    assert amsgrad.param_groups[0]["amsgrad"] is True
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["momentum"] == 0.9


def test_activation_penalties_add_ar_and_tar_as_defined() -> None:
    raw = torch.tensor([[[1.0, 2.0]], [[3.0, 0.0]], [[3.0, 1.0]]])  # (T=3, B=1, D=2)
    dropped = torch.tensor([[[2.0, 0.0]], [[0.0, 0.0]], [[6.0, 2.0]]])
    # AR: mean of dropped² = (4 + 36 + 4) / 6; TAR: mean of steps² = (4 + 4 + 0 + 1) / 4
    assert activation_penalty(raw, dropped, 2.0, 0.0).item() == pytest.approx(2.0 * 44 / 6)
    assert activation_penalty(raw, dropped, 0.0, 3.0).item() == pytest.approx(3.0 * 9 / 4)
    torch.testing.assert_close(activation_penalty(raw, dropped, 2.0, 3.0),
                               torch.tensor(2.0 * 44 / 6 + 3.0 * 9 / 4))
    assert activation_penalty(raw, dropped, 0.0, 0.0).item() == 0.0
    # A one-step window (the last variable-length window can be that short) has no
    # temporal difference: TAR adds nothing instead of the NaN of an empty mean.
    assert activation_penalty(raw[:1], dropped[:1], 0.0, 3.0).item() == 0.0


def test_training_step_adds_the_penalty_on_the_last_layer_outputs(tmp_path, monkeypatch,
                                                                  one_thread) -> None:
    from lm_flipout.training import objective

    calls = []

    def spy(raw, dropped, ar, tar):
        calls.append((raw.shape, dropped.shape, ar, tar, raw.requires_grad))
        return activation_penalty(raw, dropped, ar, tar)

    monkeypatch.setattr(objective, "activation_penalty", spy)
    recipe = from_dict_recipe(tmp_path, optim={"ar": 2.0, "tar": 1.0},
                              train={"epochs": 1, "max_steps": 2})
    Trainer(recipe, tmp_path / "run", echo=lambda _: None).run()
    assert len(calls) == 2
    shape, dropped_shape, ar, tar, grad = calls[0]
    assert shape == dropped_shape and shape[1:] == (4, 16) and (ar, tar, grad) == (2.0, 1.0, True)


def test_nt_asgd_run_evaluates_and_saves_the_averaged_weights(tmp_path, monkeypatch,
                                                             one_thread) -> None:
    """Force the switch after epoch 1; record every iterate of epoch 2; best.pt (epoch 2 is
    the best) must hold their arithmetic mean, and epoch 2's validation score is that of
    the mean, not of the last iterate."""
    monkeypatch.setattr(Schedule, "stalled", lambda self, loss: True)  # switch after epoch 1
    iterates = []
    original_step = AveragedSGD.step

    def recording_step(self, closure=None):
        loss = original_step(self, closure)
        iterates.append([p.detach().clone() for p in self.param_groups[0]["params"]])
        return loss

    monkeypatch.setattr(AveragedSGD, "step", recording_step)
    recipe = from_dict_recipe(tmp_path, optim={"name": "nt_asgd", "lr": 2.0, "clip": 0.5},
                              train={"epochs": 2})
    trainer = Trainer(recipe, tmp_path / "run", echo=lambda _: None)
    trainer.run()
    assert isinstance(trainer.optimizer, AveragedSGD) and iterates
    valid = [e for e in read_metrics(tmp_path / "run") if e["event"] == "valid"]
    assert valid[1]["valid_loss"] < valid[0]["valid_loss"]  # epoch 2 is the best
    best = load_checkpoint(tmp_path / "run" / "best.pt")["model"]
    names = [name for name, _ in trainer.model.named_parameters()]
    for i, name in enumerate(names):
        mean = torch.stack([it[i] for it in iterates]).mean(0)
        torch.testing.assert_close(best[name], mean, rtol=0, atol=1e-6)
    last = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert not torch.allclose(last[names[0]], best[names[0]])  # raw iterate differs
    # Scoring the mean weights reproduces the logged validation loss of epoch 2.
    trainer.model.load_state_dict(best)
    assert trainer._evaluate("valid")["valid_loss"] == valid[1]["valid_loss"]
