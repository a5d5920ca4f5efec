"""Everything between a corpus on disk (or the Hugging Face Hub) and (T, B) token batches:
`load_corpus(DataConfig) -> Corpus`, then `make_batches(...)` per split."""

from lm_flipout.data.batching import (
    Batch,
    SequenceBatches,
    StreamBatches,
    epoch_seed,
    make_batches,
    make_streams,
    window_schedule,
)
from lm_flipout.data.config import DataConfig
from lm_flipout.data.corpus import Corpus, Split, check_vocab, load_corpus
from lm_flipout.data.metrics import bits_per_char, undefined_char_metrics_note, word_perplexity
from lm_flipout.data.stats import corpus_stats
from lm_flipout.data.tokenizers import EOS, UNK

__all__ = [
    "Batch",
    "Corpus",
    "DataConfig",
    "EOS",
    "SequenceBatches",
    "Split",
    "StreamBatches",
    "UNK",
    "bits_per_char",
    "check_vocab",
    "corpus_stats",
    "epoch_seed",
    "load_corpus",
    "make_batches",
    "make_streams",
    "undefined_char_metrics_note",
    "window_schedule",
    "word_perplexity",
]
