"""Every recipe in recipes/ loads and validates; every suite names the base recipe of its
scale and lists existing recipes built on it that differ only in their regularization, with
the paper's numbers written the same way in the suite and in the recipe's comment; the
paper-sized recipes have the paper's sizes.

A base (recipes/ptb/word_cpu.yaml, ...) is itself a full recipe: the scale's shared settings
without a regularizer. What marks it as a base is that a suite names it as ``base:``."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from helpers import local_ptb
from lm_flipout.config import load_recipe, read_recipe_data, recipe_to_dict
from lm_flipout.data.root import resolve_data_path
from lm_flipout.experiments.suite import load_suite, plan_runs
from lm_flipout.model import LanguageModel

REPO = Path(__file__).resolve().parents[2]
RECIPES_DIR = REPO / "recipes"
SUITES_DIR = RECIPES_DIR / "suites"
SPACES_DIR = RECIPES_DIR / "spaces"
NOT_RECIPES = (SUITES_DIR, RECIPES_DIR / "sweeps", SPACES_DIR)  # suites, W&B sweeps, spaces
RECIPES = sorted(p for p in RECIPES_DIR.rglob("*.yaml")
                 if not any(folder in p.parents for folder in NOT_RECIPES))
SUITES = sorted(SUITES_DIR.glob("*.yaml"))
# A tuned suite searches some rows of an untuned suite at the same scale, on the same base.
TUNED = [p for p in SUITES if "tune" in yaml.safe_load(p.read_text(encoding="utf-8"))]
BASES = {(SUITES_DIR / yaml.safe_load(p.read_text(encoding="utf-8"))["base"]).resolve()
         for p in SUITES}

# What may differ between the rows of one suite: the regularizer and the run's name.
REGULARIZATION = re.compile(
    r"model\.(dropout_\w+|zoneout_\w+|noise\.\w+)|train\.run_name|wandb\.\w+")
PAPER_COMMENT = re.compile(
    r"^# (?:.*Paper|Reference)[^:\n]*: valid ([\d.]+) / test ([\d.]+) "
    r"(perplexity|bits per character)", re.M)


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(RECIPES_DIR)) for p in paths]


def flat(data: object, prefix: str = "") -> dict:
    if isinstance(data, dict):
        out: dict = {}
        for key, value in data.items():
            out.update(flat(value, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: data}


def test_the_recipe_and_suite_lists_are_not_empty() -> None:
    assert RECIPES_DIR / "quickstart.yaml" in RECIPES
    assert {p.stem for p in SUITES} >= {"ptb_word_medium", "ptb_char", "ptb_awd", "ptb_word_cpu"}


@pytest.mark.parametrize("path", RECIPES, ids=ids(RECIPES))
def test_every_recipe_loads_and_validates(path: Path) -> None:
    assert load_recipe(path).train.run_name == path.stem


@pytest.mark.parametrize("path", RECIPES, ids=ids(RECIPES))
def test_local_corpora_are_named_under_the_data_root(path: Path) -> None:
    recipe = load_recipe(path)
    if recipe.data.source != "files":
        return
    assert recipe.data.path == "ptb"  # a bare name: <data root>/ptb, never a machine's path
    ptb = local_ptb()
    if ptb is None:
        pytest.skip("no Penn Treebank in $LM_FLIPOUT_DATA/ptb")
    assert Path(resolve_data_path(recipe.data.path)) == ptb


@pytest.mark.parametrize("path", SUITES, ids=ids(SUITES))
def test_every_suite_lists_existing_recipes_under_its_group(path: Path) -> None:
    suite, recipe_paths = load_suite(path)
    runs = plan_runs(suite, recipe_paths, [])
    assert len({run.run_dir for run in runs}) == len(runs)
    for run in runs:
        assert Path(run.recipe_path).resolve().is_relative_to(RECIPES_DIR)
        assert run.recipe.wandb.group == suite.group
    assert suite.paper_source


@pytest.mark.parametrize("path", SUITES, ids=ids(SUITES))
def test_a_suite_lists_every_recipe_of_its_family(path: Path) -> None:
    """Recipes beside a suite's recipes whose names share the rows' common prefix (e.g.
    word_medium_) belong in that suite; a forgotten row would silently miss the report."""
    listed = [Path(p).resolve() for p in load_suite(path)[1]]
    prefix = os.path.commonprefix([p.stem for p in listed])
    family = {p for p in RECIPES if p.parent == listed[0].parent and p.stem.startswith(prefix)}
    if path in TUNED:  # a chosen few of its family's rows
        assert set(listed) <= family - BASES
        return
    assert family - listed_by_other_suites(path) - BASES == set(listed)


def listed_by_other_suites(path: Path) -> set[Path]:
    """The recipes the other suites list (e.g. char_cpu_* beside ptb_char's char_*)."""
    listed = set()
    for other in SUITES:
        if other != path and other not in TUNED:
            listed |= {Path(p).resolve() for p in load_suite(other)[1]}
    return listed


def test_every_suite_names_a_base_that_is_no_row() -> None:
    assert len(BASES) == len(SUITES) - len(TUNED)
    for path in SUITES:
        suite, recipe_paths = load_suite(path)
        assert suite.base is not None and Path(suite.base).resolve() in BASES
        assert not BASES & {Path(p).resolve() for p in recipe_paths}


@pytest.mark.parametrize("path", SUITES, ids=ids(SUITES))
def test_every_row_builds_on_its_suites_base_and_changes_only_its_regularizer(
        path: Path) -> None:
    suite, recipe_paths = load_suite(path)
    for run, recipe_path in zip(plan_runs(suite, recipe_paths, []), recipe_paths):
        chain = [p.resolve() for p in read_recipe_data(recipe_path)[1]]
        assert Path(str(suite.base)).resolve() in chain[1:], f"{recipe_path} is not built on it"
        changed = {key for key in run.changes if not REGULARIZATION.fullmatch(key)}
        assert not changed, f"{recipe_path} changes {sorted(changed)} of {suite.base}"


@pytest.mark.parametrize("path", sorted(BASES), ids=ids(sorted(BASES)))
def test_a_base_has_no_regularizer(path: Path) -> None:
    """A scale's base holds no weight noise; the AWD base keeps AWD-LSTM's activation
    dropouts, which both of its rows share."""
    model = load_recipe(path).model
    assert model.noise.family == "none"
    assert (model.dropout_hidden, model.dropout_cell, model.zoneout_cell,
            model.zoneout_hidden) == (0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("path", SUITES, ids=ids(SUITES))
def test_rows_of_a_suite_differ_only_in_regularization(path: Path) -> None:
    suite, recipe_paths = load_suite(path)
    settings = [flat(recipe_to_dict(load_recipe(p))) for p in recipe_paths]
    for other, recipe_path in zip(settings[1:], recipe_paths[1:]):
        differ = {k for k in settings[0].keys() | other.keys()
                  if settings[0].get(k) != other.get(k) and not REGULARIZATION.fullmatch(k)}
        assert not differ, f"{recipe_path} differs from {recipe_paths[0]} in {sorted(differ)}"


@pytest.mark.parametrize("path", SUITES, ids=ids(SUITES))
def test_paper_numbers_agree_between_suite_and_recipe_comment(path: Path) -> None:
    suite, recipe_paths = load_suite(path)
    for run, recipe_path in zip(suite.runs, recipe_paths):
        found = PAPER_COMMENT.search(Path(recipe_path).read_text(encoding="utf-8"))
        if not run.paper:
            assert found is None, f"{recipe_path} quotes the paper but {path.name} does not"
            continue
        assert found is not None, f"{recipe_path} lacks '# Paper: valid X / test Y ...'"
        unit = "ppl" if found.group(3) == "perplexity" else "bpc"
        assert run.paper == {f"valid_{unit}": float(found.group(1)),
                             f"test_{unit}": float(found.group(2))}


@pytest.mark.parametrize("name, vocab, millions", [
    ("word_medium_wd_flipout", 10000, 19.8),  # Wen et al. 2018, Table 3: 19.8M
    ("awd_wd", 10000, 24.2),  # AWD-LSTM: 24M
])
def test_paper_sized_recipes_have_the_papers_parameter_count(
        name: str, vocab: int, millions: float) -> None:
    recipe = load_recipe(RECIPES_DIR / "ptb" / f"{name}.yaml")
    recipe.model.vocab_size = vocab
    assert round(LanguageModel(recipe.model).num_parameters() / 1e6, 1) == millions


def test_table_recipes_use_the_papers_training_setups() -> None:
    word = load_recipe(RECIPES_DIR / "ptb" / "word_medium_wd_flipout.yaml")
    assert (word.data.batch_size, word.data.bptt, word.optim.name, word.optim.lr,
            word.optim.clip, word.optim.plateau_factor, word.train.epochs) == \
        (40, 35, "sgd", 30.0, 0.25, 0.25, 100)
    char = load_recipe(RECIPES_DIR / "ptb" / "char_gauss_flipout.yaml")
    assert (char.model.num_layers, char.model.hidden_size, char.model.orthogonal_init) == \
        (1, 1000, True)
    assert (char.data.tokenizer, char.data.char_ptb, char.data.bptt_mode, char.data.bptt,
            char.data.batch_size) == ("char", True, "sequences", 100, 32)
    assert (char.optim.name, char.optim.lr, char.optim.clip) == ("amsgrad", 0.002, 1.0)
    assert char.train.early_stopping > 0
    awd = load_recipe(RECIPES_DIR / "ptb" / "awd_wd_flipout.yaml")
    assert (awd.optim.name, awd.optim.ar, awd.optim.tar, awd.optim.weight_decay) == \
        ("nt_asgd", 2.0, 1.0, 1.2e-6)
    assert (awd.data.batch_size, awd.data.bptt, awd.data.variable_bptt) == (20, 70, True)
    assert (awd.model.noise.family, awd.model.noise.p, awd.model.noise.estimator) == \
        ("dropconnect", 0.5, "flipout")



def test_every_search_space_fits_the_recipe_it_is_named_after() -> None:
    from lm_flipout.experiments.tuning import read_space

    spaces = sorted(SPACES_DIR.glob("*.yaml"))
    assert spaces
    for path in spaces:
        [recipe] = [p for p in RECIPES if p.stem == path.stem]
        assert read_space(path, load_recipe(recipe)).params


def test_the_tuned_cpu_suite_gives_every_row_the_same_budget_and_shared_space() -> None:
    """Every row of ptb_word_cpu_tuned is searched over the suite's shared space plus only
    its own strength, in a study of the same trials, pruner and sampler, then trained with
    three seeds under the untuned budget; WD + Flipout keeps p = 0.5."""
    from lm_flipout.experiments.tuned_suite import plan_studies

    path = SUITES_DIR / "ptb_word_cpu_tuned.yaml"
    assert path in TUNED
    suite, recipe_paths = load_suite(path)
    assert suite.tune is not None and suite.seeds == [1, 2, 3] and suite.tune.trials >= 8
    shared = {"optim.lr", "model.dropout_input", "model.dropout_output"}
    assert set(suite.tune.space) == shared
    studies = plan_studies(suite, path, recipe_paths, [])
    assert [s.label for s in studies] == [
        "WD", "WD + Flipout", "Gaussian shared", "Gaussian + Flipout",
        "Gal (variational dropout)", "Zaremba (naive dropout)"]
    own = {s.label: set(s.space.params) - shared for s in studies}
    assert own == {"WD": {"model.noise.p"}, "WD + Flipout": set(),
                   "Gaussian shared": {"model.noise.sigma"},
                   "Gaussian + Flipout": {"model.noise.sigma"},
                   "Gal (variational dropout)": {"model.dropout_hidden"},
                   "Zaremba (naive dropout)": set()}
    first = studies[0]
    for study in studies:
        assert list(study.space.params)[:3] == list(suite.tune.space)  # the same shared space
        assert {k: study.space.params[k] for k in shared} == {
            k: first.space.params[k] for k in shared}
        assert study.space.study == first.space.study  # the same trials, pruner, sampler
        assert study.space.study.trials == suite.tune.trials
        assert study.base.train.epochs < load_recipe(SUITES_DIR / str(suite.base)).train.epochs
    flipout = studies[1].base.model.noise
    assert (flipout.family, flipout.p, flipout.estimator) == ("dropconnect", 0.5, "flipout")
    runs = plan_runs(suite, recipe_paths, [])
    assert len(runs) == 18 and all(run.recipe.train.epochs == 20 for run in runs)
