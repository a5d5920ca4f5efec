"""`python -m lm_flipout.data stats <recipe.yaml> [key=value ...]`: load (and cache) the
recipe's corpus and print a JSON summary: per-split tokens, characters and words,
vocabulary size and cache path.

`python -m lm_flipout.data synthetic DIR`: write the synthetic HMM corpus to DIR and print
its metadata (token counts, entropy rate, Bayes-optimal perplexity) as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from lm_flipout.data.hmm import HMMSpec
from lm_flipout.data.hmm_corpus import DEFAULT_SIZES, write_corpus
from lm_flipout.errors import UserError


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m lm_flipout.data", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    stats = commands.add_parser("stats", help="print corpus statistics as JSON")
    stats.add_argument("recipe", help="recipe YAML file")
    stats.add_argument("overrides", nargs="*", help="recipe overrides, e.g. data.tokenizer=char")
    synthetic = commands.add_parser("synthetic", help="write the synthetic HMM corpus to DIR")
    synthetic.add_argument("directory", help="where train.txt, valid.txt and test.txt go")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--train-tokens", type=int, default=DEFAULT_SIZES["train"])
    synthetic.add_argument("--eval-tokens", type=int, default=DEFAULT_SIZES["valid"])
    args = parser.parse_args(argv)
    if args.command == "synthetic":
        sizes = {"train": args.train_tokens, "valid": args.eval_tokens, "test": args.eval_tokens}
        metadata = write_corpus(HMMSpec(seed=args.seed), args.directory, sizes)
        metadata.pop("vocab")
        print(json.dumps(metadata, indent=2))
        return 0

    from lm_flipout.config import load_recipe
    from lm_flipout.data.corpus import load_corpus
    from lm_flipout.data.stats import corpus_stats

    try:
        recipe = load_recipe(args.recipe, list(args.overrides))
        corpus = load_corpus(recipe.data)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(corpus_stats(corpus), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
