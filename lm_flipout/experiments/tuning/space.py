"""Search-space files: dotted recipe keys mapped to distributions, plus the study's settings.

    study: {trials: 20, pruner: median, sampler: tpe, seed: 0}   # all optional
    optim.lr: {float: [0.001, 0.01], log: true}
    model.num_layers: {int: [1, 2]}            # optional step: 1
    model.noise.family: {choice: [gaussian, dropconnect]}

A space is checked like a recipe, before anything trains: every key must be a setting of
the recipe schema, the distribution must fit the setting's type, and the recipe (with the
command's overrides) must accept each bound and each choice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ...config import (
    Recipe,
    apply_overrides,
    from_dict,
    read_yaml,
    recipe_to_dict,
    setting_type,
)
from ...config.convert import convert_value
from ...config.messages import describe_type, show_value
from ...errors import ConfigError

KINDS = ("float", "int", "choice")
EXTRAS = {"float": ("log", "step"), "int": ("log", "step"), "choice": ()}
PRUNERS = ("median", "successive_halving", "none")
SAMPLERS = ("tpe", "random")
# set by the tuner for every trial (its run directory and W&B group)
TUNER_KEYS = ("train.out_dir", "train.run_name", "wandb.group")
Scalar = Union[None, bool, int, float, str]


@dataclass
class Distribution:
    """One key's distribution: ``kind`` float or int with ``low``/``high`` (and ``log`` or
    ``step``), or choice with ``choices``."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: Optional[float] = None
    choices: list[Scalar] = field(default_factory=list)

    def suggest(self, trial: Any, name: str) -> Any:
        """The value Optuna's ``trial`` suggests for ``name`` (the same on a resumed trial)."""
        if self.kind == "float":
            return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return trial.suggest_categorical(name, self.choices)

    def as_plain(self) -> dict[str, Any]:
        """The distribution as it is written in a space file."""
        if self.kind == "choice":
            return {"choice": list(self.choices)}
        plain: dict[str, Any] = {self.kind: [self.low, self.high]}
        if self.log:
            plain["log"] = True
        if self.step is not None:
            plain["step"] = self.step
        return plain


@dataclass
class StudySettings:
    """The space file's optional ``study:`` section."""

    trials: Optional[int] = None  # the command's --trials wins
    pruner: Any = "median"  # a name, or {name: {Optuna's keyword arguments}}
    sampler: str = "tpe"
    seed: Optional[int] = None  # default: the recipe's train.seed

    def validate(self) -> None:
        if self.trials is not None and self.trials < 1:
            raise ConfigError(f"study.trials={self.trials} must be at least 1.")
        name = pruner_name(self.pruner)
        if name not in PRUNERS:
            raise ConfigError(
                f"study.pruner={show_value(self.pruner)} is not a pruner. Use one of "
                f"{', '.join(PRUNERS)}, or a mapping such as {{median: {{n_warmup_steps: 2}}}}."
            )
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"study.sampler={self.sampler!r} is not a sampler. Use one of "
                              f"{', '.join(SAMPLERS)}.")


def pruner_name(pruner: Any) -> Any:
    """The pruner's name in ``median`` or ``{median: {...}}`` form (anything else as it is)."""
    if isinstance(pruner, Mapping) and len(pruner) == 1:
        return next(iter(pruner))
    return pruner


@dataclass
class SearchSpace:
    """A checked space file: its path, its settings and its distributions in file order."""

    path: Path
    study: StudySettings
    params: dict[str, Distribution]

    def as_plain(self) -> dict[str, Any]:
        """The distributions as plain data (stored in the study to recognise its space)."""
        return {key: dist.as_plain() for key, dist in self.params.items()}


def read_space(path: Union[str, Path], base: Recipe) -> SearchSpace:
    """Read and check a space file against the recipe ``base`` (with its overrides applied);
    every problem is a ConfigError naming the file, the key and the fix."""
    path = Path(path)
    return space_from_data(read_yaml(path), base, f"Search space {path}", path)


def space_from_data(data: Any, base: Recipe, where: str, path: Path) -> SearchSpace:
    """Check a space given as plain data (a space file's contents, or a suite row's shared
    and own keys); ``where`` begins each error message, ``path`` is the file it came from."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            f"{where} must map dotted recipe keys to distributions, e.g. `optim.lr: {{float: "
            f"[0.001, 0.01], log: true}}`, but it holds {show_value(data)}."
        )
    study = from_dict(StudySettings, data.get("study"), where)
    params: dict[str, Distribution] = {}
    base_data = recipe_to_dict(base)
    for key, spec in data.items():
        if key == "study":
            continue
        if not isinstance(key, str) or "." not in key:
            raise ConfigError(
                f"{where}: the key {key!r} is neither a dotted recipe key (section.key, e.g. "
                "optim.lr) nor `study`. Fix the spelling, or move study settings under study:."
            )
        if key in TUNER_KEYS:
            raise ConfigError(f"{where}: '{key}' is set by the tuner for each trial and cannot "
                              "be searched. Remove it from the space.")
        dist = _distribution(where, key, spec)
        _check_fits(where, key, dist, setting_type(key, where))
        values = dist.choices if dist.kind == "choice" else [dist.low, dist.high]
        for value in values:
            _check_accepted(where, key, value, base_data)
        params[key] = dist
    if not params:
        raise ConfigError(f"{where} has study settings but no keys to search. Add at least one, "
                          "e.g. `optim.lr: {float: [0.001, 0.01], log: true}`.")
    return SearchSpace(path, study, params)


def _distribution(where: str, key: str, spec: Any) -> Distribution:
    example = "{float: [0.001, 0.01], log: true}, {int: [1, 3]} or {choice: [a, b]}"
    kinds = [k for k in KINDS if isinstance(spec, Mapping) and k in spec]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: '{key}' must be one distribution such as {example}, but it "
                          f"is {show_value(spec)}.")
    kind = kinds[0]
    extra = [k for k in spec if k not in (kind, *EXTRAS[kind])]
    if extra:
        allowed = ", ".join(EXTRAS[kind]) or "nothing else"
        raise ConfigError(f"{where}: '{key}' has the unknown option {extra[0]!r} for a {kind} "
                          f"distribution (allowed: {allowed}). Remove it or fix its spelling.")
    value = spec[kind]
    if kind == "choice":
        if not isinstance(value, list) or not value or any(
                isinstance(v, (list, dict)) for v in value) or len(set(map(repr, value))) < len(
                value):
            raise ConfigError(f"{where}: '{key}' choice must be a list of distinct plain values "
                              f"(numbers, strings, true/false, null), but it is "
                              f"{show_value(value)}.")
        return Distribution("choice", choices=list(value))
    number = int if kind == "int" else (int, float)
    if (not isinstance(value, list) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, number) for v in value)):
        what = "whole numbers" if kind == "int" else "numbers"
        raise ConfigError(f"{where}: '{key}' {kind} must be a list of two {what} [low, high], "
                          f"but it is {show_value(value)}.")
    low, high = value
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"{where}: '{key}' has the bounds [{low}, {high}]; the low bound "
                          "must be below the high one. Swap or widen them.")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: '{key}' log must be true or false, not {show_value(log)}.")
    if log and low <= 0:
        raise ConfigError(f"{where}: '{key}' is searched on a log scale, so its low bound must "
                          f"be above 0, not {low}. Raise it or drop `log: true`.")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, number) or step <= 0:
            raise ConfigError(f"{where}: '{key}' step must be a positive "
                              f"{'whole number' if kind == 'int' else 'number'}, not "
                              f"{show_value(step)}.")
        if log:
            raise ConfigError(f"{where}: '{key}' cannot have both log and step (Optuna samples "
                              "one or the other). Remove one.")
    return Distribution(kind, float(low) if kind == "float" else low,
                        float(high) if kind == "float" else high, log, step)


def _check_fits(where: str, key: str, dist: Distribution, tp: Any) -> None:
    """The distribution must produce values of the setting's type."""
    scalar = tp in (bool, int, float, str) or getattr(tp, "__origin__", None) is not None
    if dist.kind == "choice":
        if not scalar and tp is not Any:
            raise ConfigError(f"{where}: '{key}' is {describe_type(tp)}; search its keys "
                              "(e.g. model.noise.sigma) rather than the whole section.")
        for value in dist.choices:
            convert_value(tp, value, where, key)
        return
    if tp is not (float if dist.kind == "float" else int):
        fix = {float: "float: [low, high]", int: "int: [low, high]"}.get(tp, "choice: [...]")
        raise ConfigError(f"{where}: '{key}' is {describe_type(tp)}, which a {dist.kind} "
                          f"distribution does not fit. Write it as {{{fix}}}.")


def _check_accepted(where: str, key: str, value: Any, base_data: dict) -> None:
    """The recipe with ``key`` set to ``value`` passes every recipe check."""
    try:
        from_dict(Recipe, apply_overrides(base_data, {key: value}), f"{where}, {key}={value!r}")
    except ConfigError as err:
        raise ConfigError(f"{err} Keep '{key}' within the values the recipe accepts.") from None
