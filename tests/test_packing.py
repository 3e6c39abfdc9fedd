"""Packing: segments never see each other, positions restart, padding is never in the loss."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zen_code_jax.data.batch import FIELDS
from zen_code_jax.data.packing import (
    PackIterDataset,
    _ListIterator,
    _PackIterator,
    chunk_segment,
    pack_segments,
    padding_fraction,
)

STRIDE = 100_000  # token value = doc * STRIDE + offset: every token knows where it came from


def _docs(lengths: list[int]) -> list[np.ndarray]:
    return [np.arange(n, dtype=np.int32) + (k + 1) * STRIDE for k, n in enumerate(lengths)]


def _check_batches(batches: list[dict], lengths: list[int], seq_len: int, batch_size: int) -> None:
    for b in batches:
        assert set(b) == set(FIELDS)
        for v in b.values():
            assert v.dtype == np.int32 and v.shape == (batch_size, seq_len)
    if not any(n >= 2 for n in lengths):
        assert batches == []
        return
    inputs = np.concatenate([b["inputs"] for b in batches])
    targets = np.concatenate([b["targets"] for b in batches])
    seg = np.concatenate([b["segment_ids"] for b in batches])
    pos = np.concatenate([b["positions"] for b in batches])
    mask = np.concatenate([b["loss_mask"] for b in batches])
    doc = inputs // STRIDE
    predictions = set()
    for r in range(inputs.shape[0]):
        s = seg[r]
        n_real = int((s > 0).sum())
        assert (s[:n_real] > 0).all() and (s[n_real:] == 0).all()  # padding only at the end
        assert (np.diff(s[:n_real]) >= 0).all() and (np.diff(s[:n_real]) <= 1).all()
        if n_real:
            assert s[0] == 1
        # Brute-force attention mask from segment ids vs where tokens really came from.
        i, j = np.meshgrid(np.arange(seq_len), np.arange(seq_len), indexing="ij")
        allowed = (j <= i) & (s[i] == s[j]) & (s[i] > 0)
        assert (doc[r][i][allowed] == doc[r][j][allowed]).all(), "attention crosses documents"
        same_chunk = (j <= i) & (s[i] > 0) & (s[j] > 0) & (doc[r][i] == doc[r][j])
        # Within a row a document appears as one contiguous chunk: same doc => allowed.
        assert (allowed == same_chunk).all()
        # Positions restart at 0 in each segment; padding has position 0.
        for k in range(1, int(s.max(initial=0)) + 1):
            idx = np.nonzero(s == k)[0]
            assert (pos[r][idx] == np.arange(len(idx))).all()
            off = inputs[r][idx] % STRIDE
            assert (np.diff(off) == 1).all()  # a contiguous piece of its document
        assert (pos[r][n_real:] == 0).all()
        # Loss: never on padding; on real tokens exactly where the next token is in-segment.
        assert (mask[r][s == 0] == 0).all()
        for t in range(seq_len):
            nxt = t + 1 < seq_len and s[t] > 0 and s[t + 1] == s[t]
            assert mask[r][t] == int(nxt)
            if nxt:
                assert targets[r][t] == inputs[r][t + 1] == inputs[r][t] + 1
                predictions.add(int(inputs[r][t]))
            else:
                assert targets[r][t] == 0
    # Every next-token prediction of every document appears exactly once (long ones split).
    expected = {(k + 1) * STRIDE + o for k, n in enumerate(lengths) if n >= 2 for o in range(n - 1)}
    assert predictions == expected
    assert int(mask.sum()) == len(expected)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 70), min_size=0, max_size=25),
    seq_len=st.sampled_from([8, 16, 32]),
    batch_size=st.integers(1, 3),
)
def test_packing_against_brute_force(lengths: list[int], seq_len: int, batch_size: int) -> None:
    batches = pack_segments(_docs(lengths), seq_len, batch_size, pad_id=0)
    _check_batches(batches, lengths, seq_len, batch_size)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 70), min_size=0, max_size=25),
    seq_len=st.sampled_from([8, 16, 32]),
    batch_size=st.integers(1, 3),
    groups=st.integers(1, 3),
)
def test_best_fit_against_brute_force(
    lengths: list[int], seq_len: int, batch_size: int, groups: int
) -> None:
    batches = pack_segments(
        _docs(lengths), seq_len, batch_size, batches_per_group=groups, packing="best_fit"
    )
    _check_batches(batches, lengths, seq_len, batch_size)


def _rows_of(tokens: np.ndarray, segs: np.ndarray) -> list[list[list[int]]]:
    """Each non-empty row as its list of segments (token lists)."""
    out = []
    for t, s in zip(tokens, segs):
        if s.any():
            out.append([t[s == k].tolist() for k in range(1, int(s.max()) + 1)])
    return out


def test_best_fit_is_grains_rule_row_for_row() -> None:
    """Ours against grain.experimental.BestFitPackIterDataset on segments that fit a row
    (grain's cannot split longer ones): the same rows, group after group."""
    import grain
    import grain.experimental as ge

    rng = np.random.default_rng(3)
    lengths = rng.integers(2, 33, 300).tolist()
    docs = _docs(lengths)
    seq_len, rows = 32, 8
    ours = pack_segments(docs, seq_len, rows, batches_per_group=1, packing="best_fit")
    ours_rows = [r for b in ours for r in _rows_of(b["inputs"], b["segment_ids"])]
    src = grain.MapDataset.source([{"tokens": d} for d in docs]).to_iter_dataset()
    theirs = ge.BestFitPackIterDataset(
        src, length_struct={"tokens": seq_len}, num_packing_bins=rows, shuffle_bins=False
    )
    theirs_rows = []
    for el in theirs:
        theirs_rows += _rows_of(el["tokens"][None], el["tokens_segment_ids"][None])
    assert len(ours_rows) > 100 and ours_rows == theirs_rows
    first = pack_segments(docs, seq_len, rows, batches_per_group=1)
    assert _rows_of(first[0]["inputs"], first[0]["segment_ids"]) != ours_rows[:rows]


def test_padding_fraction_and_unknown_packer() -> None:
    b = {"segment_ids": np.array([[1, 1, 0, 0], [1, 2, 2, 2]], np.int32)}
    assert padding_fraction([b, b]) == 0.25
    with pytest.raises(ValueError, match="Unknown data.packing='next_fit'.*first_fit"):
        pack_segments(_docs([3]), 8, 1, packing="next_fit")


def test_chunk_segment_overlaps_by_one() -> None:
    ids = np.arange(10)
    chunks = chunk_segment(ids, 4)
    assert [c.tolist() for c in chunks] == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert [c.tolist() for c in chunk_segment(ids, 10)] == [list(range(10))]


def _records(seed: int, n: int) -> list[list[np.ndarray]]:
    """Records of 0-3 segments each, like files with pieces."""
    rng = np.random.default_rng(seed)
    out, k = [], 0
    for _ in range(n):
        rec = []
        for _ in range(rng.integers(0, 4)):
            k += 1
            rec.append(np.arange(rng.integers(1, 40), dtype=np.int32) + k * STRIDE)
        out.append(rec)
    return out


@pytest.mark.parametrize("packing", ["first_fit", "best_fit"])
def test_state_restores_exactly_anywhere(packing: str) -> None:
    records = _records(0, 60)
    full = list(_PackIterator(_ListIterator(records), 16, 2, 3, 0, packing=packing))
    assert len(full) > 10
    for k in range(len(full) + 1):
        it = _PackIterator(_ListIterator(records), 16, 2, 3, 0, packing=packing)
        for _ in range(k):
            next(it)
        state = it.get_state()
        fresh = _PackIterator(_ListIterator(records), 16, 2, 3, 0, packing=packing)
        fresh.set_state(state)
        rest = list(fresh)
        assert len(rest) == len(full) - k
        for a, b in zip(rest, full[k:]):
            for key in FIELDS:
                np.testing.assert_array_equal(a[key], b[key])


def test_grain_dataset_wrapper_and_utilization() -> None:
    import grain

    records = _records(1, 200)
    ds = PackIterDataset(
        grain.MapDataset.source(records).to_iter_dataset(),
        seq_len=64,
        batch_size=4,
        batches_per_group=8,
    )
    batches = list(ds)
    lengths = [len(s) for r in records for s in r]
    real = sum(int((b["segment_ids"] > 0).sum()) for b in batches)
    assert real == sum(n for n in lengths if n >= 2)
    # First fit with 32 bins packs short documents densely (all but the last group full).
    assert real / sum(b["inputs"].size for b in batches) > 0.9
