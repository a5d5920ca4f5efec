"""``python -m lm_flipout.synthetic DIR [--seed S] [--train-tokens N] [--eval-tokens N]``:
write the synthetic HMM corpus (`lm_flipout.data.hmm_corpus`) to DIR and print its metadata
as JSON."""

from lm_flipout.data.hmm_corpus import main

if __name__ == "__main__":
    main()
