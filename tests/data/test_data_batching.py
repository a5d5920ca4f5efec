"""Stream layout, windows, exact resume and rank sharding on small arange tensors."""

import pytest
import torch

from lm_flipout.data import (
    DataConfig,
    SequenceBatches,
    StreamBatches,
    make_batches,
    make_streams,
    window_schedule,
)
from lm_flipout.errors import DataError


def as_lists(batches):
    return [(b.inputs.tolist(), b.targets.tolist(), b.lr_scale, b.position) for b in batches]


def test_make_streams_layout_trims_tail():
    s = make_streams(torch.arange(11), 3)  # 11 // 3 = 3 rows, token 9 and 10 dropped
    assert s.tolist() == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]


def test_make_streams_rank_sharding_matches_single_process():
    tokens = torch.arange(26)
    full = make_streams(tokens, 4)  # 6 rows; column b = tokens [6b, 6b+6)
    r0 = make_streams(tokens, 4, rank=0, world_size=2)
    r1 = make_streams(tokens, 4, rank=1, world_size=2)
    assert r1.tolist() == [[12, 18], [13, 19], [14, 20], [15, 21], [16, 22], [17, 23]]
    assert torch.equal(torch.cat([r0, r1], dim=1), full)
    with pytest.raises(DataError, match=r"data\.batch_size=4 is not divisible by the 3"):
        make_streams(tokens, 4, rank=0, world_size=3)


def test_fixed_windows_inputs_targets_positions():
    sb = StreamBatches(torch.arange(20), batch_size=2, bptt=4)  # streams 0..9 and 10..19
    assert sb.carries_state is True
    got = as_lists(sb)
    assert got == [
        ([[0, 10], [1, 11], [2, 12], [3, 13]], [[1, 11], [2, 12], [3, 13], [4, 14]], 1.0, 0),
        ([[4, 14], [5, 15], [6, 16], [7, 17]], [[5, 15], [6, 16], [7, 17], [8, 18]], 1.0, 4),
        ([[8, 18]], [[9, 19]], 1.0, 8),
    ]
    assert sb.num_batches() == 3
    assert as_lists(sb.iterate(start=4)) == got[1:]
    assert list(sb.iterate(start=9)) == []  # the end of the pass: nothing left
    with pytest.raises(DataError, match="position 3"):
        list(sb.iterate(start=3))


def test_stream_sharding_across_ranks():
    tokens = torch.arange(40)
    full = list(StreamBatches(tokens, 4, 3))
    parts = [list(StreamBatches(tokens, 4, 3, rank=r, world_size=2)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(full) == 3
    for b, p0, p1 in zip(full, *parts):
        assert torch.equal(torch.cat([p0.inputs, p1.inputs], 1), b.inputs)
        assert torch.equal(torch.cat([p0.targets, p1.targets], 1), b.targets)
        assert p0.position == p1.position == b.position


def test_variable_windows_awd_lengths_and_lr_scale():
    bptt = 70
    windows = window_schedule(200_000, bptt, variable=True, seed=3, epoch=0)
    starts = [s for s, _ in windows]
    lengths = [n for _, n in windows]
    assert starts[0] == 0 and all(a + n == b for (a, n), b in zip(windows, starts[1:]))
    assert starts[-1] + lengths[-1] == 200_000 - 1  # tiles every row that has a target
    body = lengths[:-1]
    assert min(body) >= 5 and max(body) <= bptt + 20
    short = sum(n < 52 for n in body) / len(body)  # half-base windows: N(35, 5), p = 0.05
    assert 0.03 < short < 0.07
    full = [n for n in body if n >= 52]
    assert abs(sum(full) / len(full) - bptt) < 0.5
    assert windows == window_schedule(200_000, bptt, variable=True, seed=3, epoch=0)
    assert windows != window_schedule(200_000, bptt, variable=True, seed=3, epoch=1)
    assert windows != window_schedule(200_000, bptt, variable=True, seed=4, epoch=0)

    sb = StreamBatches(torch.arange(2000), 4, 20, variable=True, seed=1)
    for b in sb.iterate(epoch=2):
        assert b.lr_scale == pytest.approx(b.inputs.size(0) / 20)


def test_variable_resume_reproduces_uninterrupted_pass():
    tokens = torch.arange(3000)
    uninterrupted = as_lists(StreamBatches(tokens, 5, 12, variable=True, seed=7).iterate(epoch=4))
    assert len({len(b[0]) for b in uninterrupted}) > 3  # lengths really vary
    for k, (_, _, _, position) in enumerate(uninterrupted):
        fresh = StreamBatches(tokens, 5, 12, variable=True, seed=7)  # as after a restart
        assert as_lists(fresh.iterate(epoch=4, start=position)) == uninterrupted[k:]


def test_stream_too_small():
    msg = r"valid split has 100 tokens.*data\.eval_batch_size=10 and data\.bptt=35"
    with pytest.raises(DataError, match=msg):
        StreamBatches(torch.arange(100), 10, 35, split="valid", batch_key="data.eval_batch_size")
    StreamBatches(torch.arange(36 * 10), 10, 35)  # exactly bptt+1 rows: fine


def test_sequences_unshuffled_layout():
    sq = SequenceBatches(torch.arange(23), batch_size=2, seq_len=4, shuffle=False)
    # (23 - 1) // 4 = 5 sequences: k holds tokens 4k..4k+4; 2 full batches, the 5th dropped
    assert sq.carries_state is False and sq.n_sequences == 5 and sq.num_batches() == 2
    assert as_lists(sq) == [
        ([[0, 4], [1, 5], [2, 6], [3, 7]], [[1, 5], [2, 6], [3, 7], [4, 8]], 1.0, 0),
        ([[8, 12], [9, 13], [10, 14], [11, 15]], [[9, 13], [10, 14], [11, 15], [12, 16]], 1.0, 1),
    ]


def test_sequences_shuffle_resume_and_sharding():
    tokens = torch.arange(61)  # 60 // 3 = 20 sequences of 3+1 tokens, 5 batches of 4
    sq = SequenceBatches(tokens, 4, 3, seed=11)
    epoch0 = list(sq.iterate(epoch=0))
    assert len(epoch0) == 5
    seen = []
    for j, b in enumerate(epoch0):
        assert b.position == j
        starts = b.inputs[0]
        assert torch.equal(starts % 3, torch.zeros(4, dtype=torch.long))
        assert torch.equal(b.inputs, starts + torch.arange(3).unsqueeze(1))
        assert torch.equal(b.targets, b.inputs + 1)
        assert torch.equal(starts // 3, sq.order(0)[4 * j : 4 * j + 4])
        seen += (starts // 3).tolist()
    assert sorted(seen) == list(range(20))
    assert seen != list(range(20))  # shuffled
    assert as_lists(sq.iterate(epoch=0)) == as_lists(epoch0)
    assert as_lists(sq.iterate(epoch=1)) != as_lists(epoch0)
    resumed = SequenceBatches(tokens, 4, 3, seed=11).iterate(epoch=0, start=3)
    assert as_lists(resumed) == as_lists(epoch0[3:])
    assert list(sq.iterate(epoch=0, start=5)) == []
    with pytest.raises(DataError, match="batch 6"):
        list(sq.iterate(epoch=0, start=6))
    ranks = [
        list(SequenceBatches(tokens, 4, 3, seed=11, rank=r, world_size=2).iterate(epoch=0))
        for r in range(2)
    ]
    for b, p0, p1 in zip(epoch0, *ranks):
        assert torch.equal(torch.cat([p0.inputs, p1.inputs], 1), b.inputs)
        assert torch.equal(torch.cat([p0.targets, p1.targets], 1), b.targets)


def test_sequences_too_small():
    with pytest.raises(DataError, match=r"train split has 20 tokens.*data\.batch_size=8"):
        SequenceBatches(torch.arange(20), 8, 5)


def test_make_batches_follows_config():
    tokens = torch.arange(1000)
    cfg = DataConfig(batch_size=4, eval_batch_size=2, bptt=10, variable_bptt=True)
    train = make_batches(tokens, cfg, train=True, seed=1)
    evaluation = make_batches(tokens, cfg, train=False, split="valid")
    assert isinstance(train, StreamBatches) and train.variable and train.streams.shape == (250, 4)
    assert isinstance(evaluation, StreamBatches) and not evaluation.variable
    assert evaluation.streams.shape == (500, 2)
    seq_cfg = DataConfig(batch_size=4, bptt=10, bptt_mode="sequences")
    seq = make_batches(tokens, seq_cfg, train=True, rank=1, world_size=2)
    assert isinstance(seq, SequenceBatches) and seq.shuffle and (seq.lo, seq.hi) == (2, 4)
    with pytest.raises(DataError, match=r"data\.eval_batch_size=3 is not divisible"):
        make_batches(tokens, DataConfig(eval_batch_size=3), train=False, world_size=2)


def test_evaluation_carries_the_state_whatever_the_training_mode():
    tokens = torch.arange(1000)
    for mode in ("stream", "sequences"):
        cfg = DataConfig(batch_size=4, eval_batch_size=2, bptt=10, bptt_mode=mode)
        valid = make_batches(tokens, cfg, train=False, split="valid")
        assert isinstance(valid, StreamBatches) and valid.carries_state
        assert valid.streams.shape == (500, 2) and not valid.variable
        # the windows tile each stream: every token after the first is a target exactly once
        targets = torch.cat([b.targets for b in valid], 0)
        assert torch.equal(targets, valid.streams[1:])


def test_reset_protocol_scores_independent_unshuffled_sequences():
    tokens = torch.arange(1000)
    cfg = DataConfig(eval_batch_size=2, bptt=10, eval_protocol="reset")
    valid = make_batches(tokens, cfg, train=False, split="valid")
    assert isinstance(valid, SequenceBatches) and not valid.carries_state and not valid.shuffle
    first = next(iter(valid))
    assert first.inputs[:, 0].tolist() == list(range(10))
    assert first.inputs[:, 1].tolist() == list(range(10, 20))


def test_test_split_uses_test_batch_size_default_one():
    tokens = torch.arange(1000)
    cfg = DataConfig(eval_batch_size=10, bptt=10)
    test = make_batches(tokens, cfg, train=False, split="test")
    assert isinstance(test, StreamBatches) and test.streams.shape == (1000, 1)
    assert make_batches(tokens, cfg, train=False, split="valid").streams.shape == (100, 10)
    cfg.test_batch_size = 4
    assert make_batches(tokens, cfg, train=False, split="test").streams.shape == (250, 4)
    with pytest.raises(DataError, match=r"data\.test_batch_size=200"):
        make_batches(torch.arange(100), DataConfig(test_batch_size=200), train=False,
                     split="test")
