"""``lm-flipout data stats|synthetic|fetch``: corpus statistics, the synthetic HMM corpus,
and downloads of public corpora into the data root."""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Sequence

from ..errors import UserError
from . import fail, parse_in_any_order

PROG = "lm-flipout data"

ACTIONS = {
    "stats": "load (and cache) a recipe's corpus and print its statistics as JSON",
    "synthetic": "write the synthetic HMM corpus to a folder",
    "fetch": "download a public corpus (ptb) into the data root and check it",
}


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The parser that lists the data actions (each action has a parser of its own)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Corpus tools.",
        epilog="actions:\n" + "\n".join(f"  {name:<10} {text}" for name, text in ACTIONS.items())
        + f"\n\n`{prog} ACTION --help` describes each.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=ACTIONS, help="what to do")
    return parser


def build_stats_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Load (and cache) the recipe's corpus and print a JSON summary: "
        "per-split tokens, characters and words, vocabulary size, cache path and the cache "
        "root ($LM_FLIPOUT_CACHE).")
    parser.add_argument("recipe", help="recipe YAML file, or a built-in recipe's name")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="recipe overrides, e.g. data.tokenizer=char")
    return parser


def build_synthetic_parser(prog: str) -> argparse.ArgumentParser:
    from ..data.hmm_corpus import DEFAULT_SIZES

    parser = argparse.ArgumentParser(
        prog=prog, description="Write the synthetic HMM corpus to DIRECTORY and print its "
        "metadata (token counts, entropy rate, Bayes-optimal perplexity) as JSON.")
    parser.add_argument("directory", help="where train.txt, valid.txt and test.txt go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-tokens", type=int, default=DEFAULT_SIZES["train"])
    parser.add_argument("--eval-tokens", type=int, default=DEFAULT_SIZES["valid"])
    return parser


def build_fetch_parser(prog: str) -> argparse.ArgumentParser:
    from ..data.fetch import DOWNLOADS
    from ..data.root import DATA_ROOT_ENV, DEFAULT_DATA_ROOT

    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            f"Download a public corpus into <data root>/NAME, check every split's "
        f"SHA-256 and token count, and write train.txt, valid.txt and test.txt together. The "
        f"data root is ${DATA_ROOT_ENV}, default {DEFAULT_DATA_ROOT}; recipes name the corpus "
        "as data.path: NAME. A corpus already there is left as it is.", width=90),
        epilog="corpora:\n" + "\n".join(f"  {d.name:<6} {d.title}, from {d.url}"
                                        for d in DOWNLOADS.values()))
    parser.add_argument("corpus", choices=DOWNLOADS, help="which corpus")
    parser.add_argument("--url", default=None,
                        help="download the same archive from here instead (a mirror)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="give up when the server does not answer for this long "
                             "(default 10)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def stats(args: argparse.Namespace) -> int:
    from ..config import load_recipe
    from ..config.builtin_recipes import recipe_file
    from ..data.corpus import load_corpus
    from ..data.stats import corpus_stats

    recipe = load_recipe(recipe_file(args.recipe), list(args.overrides))
    print(json.dumps(corpus_stats(load_corpus(recipe.data)), indent=2))
    return 0


def synthetic(args: argparse.Namespace) -> int:
    from ..data.hmm import HMMSpec
    from ..data.hmm_corpus import write_corpus

    sizes = {"train": args.train_tokens, "valid": args.eval_tokens, "test": args.eval_tokens}
    metadata = write_corpus(HMMSpec(seed=args.seed), args.directory, sizes)
    metadata.pop("vocab")
    print(json.dumps(metadata, indent=2))
    return 0


def fetch(args: argparse.Namespace) -> int:
    from ..data.fetch import DOWNLOADS
    from ..data.fetch import fetch as fetch_corpus
    from ..data.root import data_root

    if not args.timeout > 0:
        raise UserError(f"--timeout {args.timeout} must be a positive number of seconds.")
    download = DOWNLOADS[args.corpus]
    folder, fetched = fetch_corpus(download, data_root(), args.url, args.timeout,
                                   progress=not args.no_progress)
    state = "downloaded and checked" if fetched else "already there and checked"
    print(f"{download.title}: {state} in {folder}. Recipes read it as data.path: {args.corpus}.")
    return 0


RUNNERS = {"stats": (build_stats_parser, stats), "synthetic": (build_synthetic_parser, synthetic),
           "fetch": (build_fetch_parser, fetch)}


def main(argv: Sequence[str], prog: str = PROG) -> int:
    """Entry point; returns the process exit status."""
    argv = list(argv)
    if not argv or argv[0] not in ACTIONS:
        build_parser(prog).parse_args(argv[:1])  # --help, or an error naming the actions
    build, run = RUNNERS[argv[0]]
    args = parse_in_any_order(build(f"{prog} {argv[0]}"), argv[1:])
    try:
        return run(args)
    except UserError as error:
        return fail(error)
