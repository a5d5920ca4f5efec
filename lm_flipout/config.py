"""Typed recipes: the YAML schema, loading, ``key=value`` overrides and range checks.

A recipe is a tree of dataclasses (`Recipe`); every default lives in the schema. `from_dict`
builds any such dataclass from plain data and refuses unknown keys and wrong types with a
message that names the file, the dotted key and the allowed values (style.md: a typo is an
error, never silently ignored). Each dataclass may define ``validate()``; it runs after the
instance is built, and its ValueError / UserError becomes a ConfigError naming the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, TypeVar, Union

import yaml

from .atomic import atomic_write
from .data import DataConfig
from .errors import ConfigError, UserError, first_line
from .model import ModelConfig, NoiseConfig
from .nn.noise import flipout_asymmetry

T = TypeVar("T")


# ----------------------------------------------------------------------------- the schema


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (the recipe's ``optim:`` section)."""

    name: Literal["sgd", "nt_asgd", "adam", "amsgrad"] = "sgd"
    lr: float = 20.0
    weight_decay: float = 0.0
    momentum: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    clip: float = 0.25  # gradient-norm clipping; 0 = off
    plateau_factor: float = 0.25  # SGD: lr *= factor when validation stops improving
    nonmono: int = 5  # non-monotonic window (AWD-LSTM): SGD divides lr; nt_asgd starts averaging
    ar: float = 0.0  # activation regularization (AWD-LSTM alpha)
    tar: float = 0.0  # temporal activation regularization (AWD-LSTM beta)

    def validate(self) -> None:
        _check_range("optim.lr", self.lr, low=0.0, low_open=True)
        _check_range("optim.weight_decay", self.weight_decay, low=0.0)
        _check_range("optim.momentum", self.momentum, low=0.0, high=1.0)
        if len(self.betas) != 2:
            raise ConfigError(
                f"optim.betas={self.betas!r} must hold exactly two numbers (Adam's beta1 and "
                "beta2), e.g. [0.9, 0.999]."
            )
        for i, beta in enumerate(self.betas):
            _check_range(f"optim.betas[{i}]", beta, low=0.0, high=1.0)
        _check_range("optim.clip", self.clip, low=0.0, hint="Use 0 to turn clipping off.")
        _check_range(
            "optim.plateau_factor", self.plateau_factor, low=0.0, low_open=True, high=1.0,
            high_open=False, hint="It multiplies the learning rate, e.g. 0.25.",
        )
        _check_range("optim.nonmono", self.nonmono, low=1)
        _check_range("optim.ar", self.ar, low=0.0)
        _check_range("optim.tar", self.tar, low=0.0)


@dataclass
class TrainConfig:
    """The training run itself (the recipe's ``train:`` section)."""

    epochs: int = 40
    seed: int = 1111
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    out_dir: str = "checkpoints"
    run_name: Optional[str] = None  # default: the recipe file's stem (set by load_recipe)
    checkpoint_every_s: float = 60.0  # write last.pt at least this often within an epoch
    checkpoint_every_steps: int = 0  # and/or every N steps (0 = off)
    early_stopping: int = 0  # stop after N epochs without a validation improvement (0 = off)
    log_every: int = 50  # steps between metrics.jsonl lines
    max_steps: int = 0  # stop after N optimizer steps in total (0 = off; for smoke tests)

    def validate(self) -> None:
        _check_range("train.epochs", self.epochs, low=1)
        _check_range("train.seed", self.seed, low=0, high=2**32, hint="NumPy seeds are 32-bit.")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(
                f"train.device={self.device!r} is not a device. Use auto (CUDA when available), "
                "cpu, cuda, cuda:N (e.g. cuda:1) or mps."
            )
        if not self.out_dir:
            raise ConfigError("train.out_dir is empty. Give the directory that holds run folders.")
        name = self.run_name
        if name is not None and (not name or name in (".", "..") or re.search(r"[/\\]", name)):
            raise ConfigError(
                f"train.run_name={name!r} cannot be a folder name inside train.out_dir. Use a "
                "plain name without slashes, or null for the recipe file's name."
            )
        _check_range("train.checkpoint_every_s", self.checkpoint_every_s, low=0.0)
        _check_range("train.checkpoint_every_steps", self.checkpoint_every_steps, low=0)
        _check_range("train.early_stopping", self.early_stopping, low=0)
        _check_range("train.log_every", self.log_every, low=1)
        _check_range("train.max_steps", self.max_steps, low=0)


@dataclass
class WandbConfig:
    """Weights & Biases logging (the recipe's ``wandb:`` section)."""

    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "lm_flipout"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    name: Optional[str] = None  # default: train.run_name
    dir: Optional[str] = None  # default: the run directory

    def validate(self) -> None:
        if not self.project:
            raise ConfigError("wandb.project is empty. Name the W&B project, e.g. lm_flipout.")
        for i, tag in enumerate(self.tags):
            if not 1 <= len(tag) <= 64:
                raise ConfigError(
                    f"wandb.tags[{i}]={tag!r} has {len(tag)} characters; W&B accepts tags of "
                    "1 to 64 characters. Shorten or remove it."
                )


@dataclass
class Recipe:
    """One experiment: everything `train.py` needs, and what a run saves as config.yaml."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


# ------------------------------------------------------------ range checks of model.py


def validate_model_config(config: ModelConfig) -> None:
    """Range checks for ``model:`` (ModelConfig lives in model.py and does no checking)."""
    for key in ("vocab_size", "embedding_size", "hidden_size", "num_layers"):
        _check_range(f"model.{key}", getattr(config, key), low=1)
    for key in ("input", "between", "output", "hidden", "embedding"):
        _check_range(f"model.dropout_{key}", getattr(config, f"dropout_{key}"), low=0.0, high=1.0)
    _check_range("model.forget_bias", config.forget_bias)
    _check_range("model.init_range", config.init_range, low=0.0, low_open=True)
    if config.tie_weights and config.num_layers == 1 and config.hidden_size != config.embedding_size:
        raise ConfigError(
            f"model.hidden_size={config.hidden_size} would be ignored: with model.tie_weights=true "
            "the last LSTM layer has model.embedding_size units so the decoder can share the "
            f"embedding, and with model.num_layers=1 that is the only layer. Set "
            f"model.hidden_size={config.embedding_size}, add layers, or set model.tie_weights=false."
        )


def validate_noise_config(config: NoiseConfig) -> None:
    """Range checks for ``model.noise:``, including the flipout × DropConnect constraint."""
    _check_range("model.noise.sigma", config.sigma, low=0.0)
    _check_range("model.noise.p", config.p, low=0.0, high=1.0)
    problem = flipout_asymmetry(config.family, config.estimator, config.p)
    if problem:
        raise ConfigError(
            f"model.noise.p={config.p!r} cannot be used with model.noise.family=dropconnect and "
            f"model.noise.estimator=flipout: {problem}"
        )


# Checks for dataclasses owned elsewhere, run by from_dict after their own validate().
EXTRA_VALIDATORS: dict[type, Callable[[Any], None]] = {
    ModelConfig: validate_model_config,
    NoiseConfig: validate_noise_config,
}


def _check_range(
    key: str,
    value: float,
    low: Optional[float] = None,
    high: Optional[float] = None,
    *,
    low_open: bool = False,
    high_open: bool = True,
    hint: str = "",
) -> None:
    """Raise ConfigError unless ``value`` is finite and in the interval (default [low, high))."""
    inside = math.isfinite(value)
    if low is not None:
        inside = inside and (value > low if low_open else value >= low)
    if high is not None:
        inside = inside and (value < high if high_open else value <= high)
    if inside:
        return
    if low is not None and high is not None:
        want = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        want = f"{'>' if low_open else '>='} {low}"
    elif high is not None:
        want = f"{'<' if high_open else '<='} {high}"
    else:
        want = "a finite number"
    raise ConfigError(f"{key}={value!r} is out of range: it must be {want}. {hint}".rstrip())


# ------------------------------------------------------------------ dicts <-> dataclasses


def from_dict(cls: type[T], data: Optional[Mapping[str, Any]], where: str) -> T:
    """Build dataclass ``cls`` from plain (YAML) data; missing keys and sections take defaults.

    ``where`` names the source (a file, or "command-line overrides") in error messages.
    """
    return _build(cls, data, where, "")


def to_dict(instance: Any) -> dict[str, Any]:
    """The plain-data form of a dataclass tree (dicts, lists, scalars), for YAML and W&B."""
    if not dataclasses.is_dataclass(instance) or isinstance(instance, type):
        raise TypeError(f"to_dict: expected a dataclass instance, got {type(instance).__name__}.")
    return _plain_data(instance)


def _plain_data(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {key: _plain_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_data(item) for item in value]
    return value


def _build(cls: type[T], data: Any, where: str, section: str) -> T:
    if data is None:  # an empty YAML section (`model:`) means "all defaults"
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{where}: {_name(section)} must be a mapping of keys to values, but it is "
            f"{_show(data)}. Write it as indented `key: value` lines."
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(_unknown_key_message(where, section, key, list(fields)))
    kwargs = {
        key: _convert(hints[key], value, where, _join(section, key)) for key, value in data.items()
    }
    for name, f in fields.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in kwargs and no_default:
            raise ConfigError(f"{where}: required key '{_join(section, name)}' is missing. Add it.")
    try:
        instance = cls(**kwargs)
        validate = getattr(instance, "validate", None)
        if callable(validate):
            validate()
        extra = EXTRA_VALIDATORS.get(cls)
        if extra is not None:
            extra(instance)
    except (ValueError, UserError) as err:
        context = f" in section '{section}'" if section else ""
        raise ConfigError(f"{where}: invalid setting{context}: {err}") from None
    return instance


def _convert(tp: Any, value: Any, where: str, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in that type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union or origin is getattr(types, "UnionType", Union):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        for option in options:
            try:
                return _convert(option, value, where, key)
            except ConfigError:
                if len(options) == 1 and option not in (bool, int, float, str):
                    raise  # keep the inner message, which names the inner key
        raise _type_error(where, key, tp, value)
    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return value
        raise ConfigError(
            f"{where}: '{key}' must be one of {', '.join(map(repr, args))}, but it is "
            f"{_show(value)}.{_suggest(value, [str(a) for a in args])}"
        )
    if origin in (list, typing.List) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise _type_error(where, key, tp, value)
        item_type = args[0] if args else Any
        return [_convert(item_type, item, where, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin in (dict, typing.Dict) or tp is dict:
        if not isinstance(value, Mapping):
            raise _type_error(where, key, tp, value)
        key_type, value_type = args if args else (Any, Any)
        out = {}
        for k, v in value.items():
            if key_type is str and not isinstance(k, str):
                raise ConfigError(
                    f"{where}: '{key}' has the key {k!r}, but its keys must be strings. "
                    "Quote it in YAML."
                )
            out[k] = _convert(value_type, v, where, f"{key}.{k}")
        return out
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML reads `1e-3` (no dot) as a string; accept any float literal here.
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"from_dict: field '{key}' has an unsupported type {tp!r}.")
    raise _type_error(where, key, tp, value)


def _type_error(where: str, key: str, tp: Any, value: Any) -> ConfigError:
    hint = {
        bool: " Use true or false.",
        str: ' Quote the value in YAML, e.g. key: "123".',
        int: " Write a whole number without a decimal point.",
        float: " Write a number, e.g. 20 or 1e-3.",
    }.get(tp, "")
    return ConfigError(
        f"{where}: '{key}' must be {_describe(tp)}, but it is {_show(value)}.{hint}"
    )


def _describe(tp: Any) -> str:
    """A type annotation in words, for error messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if tp in simple:
        return simple[tp]
    if origin is Union or origin is getattr(types, "UnionType", Union):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (list, typing.List) or tp is list:
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin in (dict, typing.Dict) or tp is dict:
        return f"a mapping from strings to {_plural(args[1])}" if args else "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping of keys to values"
    return repr(tp)


def _plural(tp: Any) -> str:
    words = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
    return words.get(tp, f"({_describe(tp)})")


def _unknown_key_message(where: str, section: str, key: Any, allowed: list[str]) -> str:
    return (
        f"{where}: unknown key '{_join(section, str(key))}'."
        f"{_suggest(key, allowed, prefix=section)} Allowed keys in {_name(section)}: "
        f"{', '.join(allowed)}. Fix the spelling or remove the key."
    )


def _suggest(value: Any, choices: list[str], prefix: str = "") -> str:
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    return f" Did you mean '{_join(prefix, close[0])}'?" if close else ""


def _join(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def _name(section: str) -> str:
    return f"section '{section}'" if section else "the recipe"


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


# -------------------------------------------------------------------- overrides


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` items into ``{dotted_key: value}``; values are read as YAML, so
    ``optim.lr=20`` is a number, ``wandb.tags=[a,b]`` a list and ``x=null`` None."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[^.\s=]+(\.[^.\s=]+)*", key):
            raise ConfigError(
                f"Override {item!r} is not of the form key=value with a dotted key, e.g. "
                "model.hidden_size=650 or optim.lr=20 (no spaces around '=')."
            )
        try:
            overrides[key] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(
                f"Override {item!r}: the value {text!r} is not valid YAML "
                f"({first_line(err)}). Fix the brackets, or quote a text value: {key}='\"...\"'."
            ) from None
    return overrides


def apply_overrides(
    data: Mapping[str, Any], overrides: Mapping[str, Any], schema: type = Recipe
) -> dict[str, Any]:
    """Return a copy of the recipe data with each dotted override set.

    Keys are checked against ``schema`` here, so an unknown key or a wrong-typed value is
    reported as coming from the command line (range checks run when the recipe is built).
    A dotted key sets one entry; a mapping value merges into a section (``model.noise={p: 0.5}``)
    and replaces a dict-valued setting.
    """
    result = _deep_copy(data)
    for dotted, value in overrides.items():
        where = f"command-line override '{dotted}'"
        parts = dotted.split(".")
        defaults, tp, section = [], schema, ""
        for part in parts:  # check the whole key against the schema before touching data
            tp, default = _child_type(tp, part, section, where)
            defaults.append(default)
            section = _join(section, part)
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:  # absent in the file: start from the schema default
                default = _plain_data(defaults[depth])
                child = node[part] = default if isinstance(default, dict) else {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"{where}: '{'.'.join(parts[:depth + 1])}' is {_show(child)} in the recipe, "
                    "not a section, so it has no keys to set. Fix the recipe file."
                )
            node = child
        last = parts[-1]
        is_section = dataclasses.is_dataclass(_strip_optional(tp))
        if not is_section:
            _convert(tp, value, where, dotted)
        if is_section and isinstance(value, Mapping) and isinstance(node.get(last), dict):
            node[last] = _merge(node[last], value)
        else:
            node[last] = _deep_copy(value)
    return result


def _child_type(tp: Any, part: str, section: str, where: str) -> tuple[Any, Any]:
    """The annotation and default of key ``part`` inside a value of type ``tp``."""
    tp = _strip_optional(tp)
    if dataclasses.is_dataclass(tp):
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        if part not in fields:
            raise ConfigError(_unknown_key_message(where, section, part, list(fields)))
        f = fields[part]
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        return typing.get_type_hints(tp)[part], default
    if typing.get_origin(tp) is dict:
        args = typing.get_args(tp)
        return (args[1] if args else Any), None
    raise ConfigError(
        f"{where}: '{section}' is {_describe(tp)}, not a section, so it has no key '{part}'. "
        f"Set '{section}' itself instead."
    )


def _strip_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (Union, getattr(types, "UnionType", Union)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _merge(base: dict, update: Mapping) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = _deep_copy(value)
    return merged


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


# -------------------------------------------------------------------- files


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (YAML keeps the last)."""


def _construct_unique_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (the later value would silently win)",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def read_yaml(path: Union[str, Path]) -> Any:
    """Parse a YAML file; a missing file or a syntax error is a ConfigError with the line."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(
            f"Recipe file {path} {what}. Check the path, e.g. recipes/ptb/<name>.yaml."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"Recipe file {path} is not UTF-8 text. Save it as UTF-8 YAML.") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or first_line(err)
        if problem.startswith("duplicate key"):
            fix = "Keep only one of the two entries."
        else:
            fix = (
                "Fix the syntax there; wrong indentation, a missing ':' or an unclosed bracket "
                "or quote are the usual causes."
            )
        raise ConfigError(f"Recipe file {path} has a YAML error{at}: {problem}. {fix}") from None


def load_recipe(path: Union[str, Path], overrides: Iterable[str] = ()) -> Recipe:
    """Read a recipe file, apply ``key=value`` overrides, check everything.

    ``train.run_name`` left null becomes the file's stem, so the result is fully resolved.
    """
    path = Path(path)
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Recipe file {path} must hold a mapping of sections (model:, data:, optim:, "
            f"train:, wandb:) at the top level, but it holds {_show(data)}."
        )
    parsed = parse_overrides(overrides)
    where = str(path)
    if parsed:
        data = apply_overrides(data, parsed)
        where = f"{path} with command-line overrides"
    recipe = from_dict(Recipe, data, where)
    if recipe.train.run_name is None:
        recipe.train.run_name = path.stem
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain data (for checkpoints and the W&B config)."""
    return to_dict(recipe)


def recipe_from_dict(data: Mapping[str, Any], where: str) -> Recipe:
    """Rebuild and check a recipe from `recipe_to_dict` data, e.g. a checkpoint's config;
    ``where`` names the source in error messages."""
    return from_dict(Recipe, data, where)


def recipe_to_yaml(recipe: Recipe) -> str:
    """The recipe as YAML text, sections and keys in schema order; reloads to an equal recipe."""
    return yaml.safe_dump(to_dict(recipe), sort_keys=False, allow_unicode=True)


def save_recipe(recipe: Recipe, path: Union[str, Path]) -> None:
    """Write the recipe as YAML atomically (a crash leaves the old file or the new one)."""
    with atomic_write(path) as handle:
        handle.write(recipe_to_yaml(recipe).encode("utf-8"))


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """A recipe dict as {dotted key: value} (``data.hf_data_files`` stays one value)."""
    if isinstance(data, dict) and not (prefix and prefix.endswith("hf_data_files")):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def changed_settings(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """The dotted keys whose values differ between two recipe dicts, sorted, each with its
    (old, new) value (None where a side lacks the key)."""
    before, after = _flatten(old), _flatten(new)
    return {key: (before.get(key), after.get(key)) for key in sorted(before.keys() | after.keys())
            if before.get(key) != after.get(key)}
