"""DataConfig defaults and value checks: each bad value is a DataError naming data.<key>."""

import pytest

from lm_flipout.data import DataConfig
from lm_flipout.errors import DataError, UserError


def test_defaults():
    cfg = DataConfig()
    assert (cfg.source, cfg.tokenizer) == ("files", "word")
    assert (cfg.batch_size, cfg.eval_batch_size, cfg.bptt) == (20, 10, 35)
    assert (cfg.test_batch_size, cfg.eval_protocol) == (1, "carry")
    assert cfg.hf_splits == {"train": "train", "valid": "validation", "test": "test"}
    assert cfg.hf_splits is not DataConfig().hf_splits  # no shared mutable default
    assert cfg.cache_dir is None and cfg.bptt_mode == "stream"
    assert not cfg.variable_bptt


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"batch_size": 0}, "data.batch_size=0"),
        ({"eval_batch_size": -2}, "data.eval_batch_size=-2"),
        ({"bptt": 1.5}, "data.bptt=1.5"),
        ({"min_freq": 0}, "data.min_freq=0"),
        ({"vocab_size": 1}, "data.vocab_size=1"),
        ({"sp_vocab_size": 2}, "data.sp_vocab_size=2"),
        ({"sp_character_coverage": 1.5}, "data.sp_character_coverage=1.5"),
        ({"tokenizer": "bytes"}, "data.tokenizer='bytes'"),
        ({"source": "s3"}, "data.source='s3'"),
        ({"bptt_mode": "docs"}, "data.bptt_mode='docs'"),
        ({"eval_protocol": "zero"}, "data.eval_protocol='zero'"),
        ({"test_batch_size": 0}, "data.test_batch_size=0"),
        ({"char_ptb": True}, "data.char_ptb=true only applies to data.tokenizer=char"),
        ({"tokenizer": "sentencepiece", "vocab_size": 100}, "data.vocab_size=100 has no effect"),
        (
            {"bptt_mode": "sequences", "variable_bptt": True},
            "data.variable_bptt=true needs data.bptt_mode=stream",
        ),
        ({"hf_splits": {"train": "train"}}, "data.hf_splits="),
    ],
)
def test_bad_values_name_the_key(kwargs, key):
    with pytest.raises(DataError) as err:
        DataConfig(**kwargs).validate()
    assert key in str(err.value)
    assert isinstance(err.value, UserError)


def test_validate_rechecks_after_mutation():
    cfg = DataConfig()
    cfg.bptt = 0
    with pytest.raises(DataError, match=r"data\.bptt=0"):
        cfg.validate()
