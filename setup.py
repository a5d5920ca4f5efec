"""Build script. Everything lives in pyproject.toml except what its tables cannot say: the
repository's `recipes/` folder ships inside the package as `lm_flipout/recipes/` (its files
are listed as package data there), so that an installed toolkit has its built-in recipes."""

from setuptools import find_namespace_packages, find_packages, setup

RECIPES = ["lm_flipout.recipes",
           *(f"lm_flipout.recipes.{name}" for name in find_namespace_packages("recipes"))]

setup(
    packages=[*find_packages(include=["lm_flipout", "lm_flipout.*"]), *RECIPES],
    package_dir={"lm_flipout.recipes": "recipes"},
)
