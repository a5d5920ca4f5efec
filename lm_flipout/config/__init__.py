"""Typed recipes: the schema (`Recipe` and its sections), conversion from and to plain data,
``key=value`` overrides, and recipe files (which may build on a base recipe)."""

from .compose import load_recipe, read_recipe_data, recipe_with_run_name
from .convert import from_dict, to_dict
from .overrides import apply_overrides, parse_overrides, setting_type
from .recipe_dict import changed_settings, recipe_from_dict, recipe_to_dict, with_defaults
from .schema import OptimConfig, Recipe, TrainConfig, WandbConfig
from .yaml_io import read_yaml, recipe_to_yaml, save_recipe

__all__ = [
    "OptimConfig",
    "Recipe",
    "TrainConfig",
    "WandbConfig",
    "apply_overrides",
    "changed_settings",
    "from_dict",
    "load_recipe",
    "parse_overrides",
    "read_recipe_data",
    "read_yaml",
    "recipe_from_dict",
    "recipe_to_dict",
    "recipe_to_yaml",
    "recipe_with_run_name",
    "save_recipe",
    "setting_type",
    "to_dict",
    "with_defaults",
]
