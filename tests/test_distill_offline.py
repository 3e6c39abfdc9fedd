"""Offline teacher logits (data/teacher_logits.py): what is written is what is read, joined
to the right batch, across a restart; a changed setting or data order is a clear error.
Also the `arm:EXPERIMENT/ARM` checkpoint name a cross-experiment teacher uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zen_code_jax.data.batch import Batch, TeacherTopK
from zen_code_jax.data.teacher_logits import (
    LogitsMeta,
    TeacherLogitsError,
    TeacherLogitsWriter,
    with_teacher_logits,
)
from zen_code_jax.resolve import CheckpointSpecError, parse_checkpoint

ROWS, SEQ, K, VOCAB = 3, 7, 4, 50


class ListIterator:
    """A checkpointable stand-in for the pipeline: batch i of a fixed seed."""

    def __init__(self, seed: int = 0) -> None:
        self.seed, self.i = seed, 0

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        rng = np.random.default_rng((self.seed, self.i))
        self.i += 1
        x = rng.integers(0, VOCAB, (ROWS, SEQ)).astype(np.int32)
        ones = np.ones_like(x)
        return Batch(inputs=x, targets=x, segment_ids=ones, positions=ones, loss_mask=ones)

    def get_state(self) -> dict:
        return {"i": self.i}

    def set_state(self, state: dict) -> None:
        self.i = int(state["i"])


def fake_top(i: int) -> TeacherTopK:
    rng = np.random.default_rng(100 + i)
    return TeacherTopK(
        ids=rng.integers(0, VOCAB, (ROWS, SEQ, K)).astype(np.int32),
        logp=-rng.random((ROWS, SEQ, K)).astype(np.float32),
        rest=-rng.random((ROWS, SEQ)).astype(np.float32),
        nll=rng.random((ROWS, SEQ)).astype(np.float32),
    )


def write(directory: Path, batches: int, key: str = "k1") -> None:
    it = ListIterator()
    w = TeacherLogitsWriter(directory)
    for i in range(batches):
        w.write_batch(next(it), fake_top(i))
    w.close(LogitsMeta(key, "teacher@1", 1.0, K, SEQ, ROWS, batches))


def open_(directory: Path, it=None, **kw):
    args = dict(key="k1", temperature=1.0, top_k=K, seq_len=SEQ, **kw)
    return with_teacher_logits(it or ListIterator(), directory, **args)


def same(a: TeacherTopK, b: TeacherTopK) -> None:
    for f in ("ids", "logp", "rest", "nll"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_round_trip_and_restart(tmp_path):
    write(tmp_path, 5)
    it = open_(tmp_path)
    for i in range(2):
        batch = next(it)
        same(batch.teacher, fake_top(i))
        assert batch.teacher.ids.dtype == np.int32 and batch.teacher.logp.dtype == np.float32
    state = it.get_state()
    after = [next(it) for _ in range(3)]
    # A restart: a fresh pipeline and reader, set to the saved state, continue at batch 2.
    resumed = open_(tmp_path)
    resumed.set_state(state)
    for i, want in enumerate(after, start=2):
        got = next(resumed)
        np.testing.assert_array_equal(got.inputs, want.inputs)
        same(got.teacher, fake_top(i))
    with pytest.raises(TeacherLogitsError, match="cover 5 batches but training asked for batch 6"):
        next(resumed)


def test_mismatches_are_clear_errors(tmp_path):
    with pytest.raises(TeacherLogitsError, match="holds no meta.json"):
        open_(tmp_path)
    write(tmp_path, 2)
    with pytest.raises(TeacherLogitsError, match=r"'temperature': \(1.0, 2.0\)"):
        with_teacher_logits(
            ListIterator(), tmp_path, key="k1", temperature=2.0, top_k=K, seq_len=SEQ
        )
    with pytest.raises(TeacherLogitsError, match="'key'"):
        with_teacher_logits(
            ListIterator(), tmp_path, key="other", temperature=1.0, top_k=K, seq_len=SEQ
        )
    with pytest.raises(TeacherLogitsError, match="written for another number of processes"):
        open_(tmp_path, shard=(1, 2))
    # Rows in another order than written (the data order changed): caught by the row CRC.
    shuffled = open_(tmp_path, it=ListIterator(seed=1))
    with pytest.raises(TeacherLogitsError, match="batch 0 row 0: its tokens differ"):
        next(shuffled)


def test_arm_names_across_experiments(tmp_path):
    run = tmp_path / "flash_distill" / "distill"
    ref = parse_checkpoint("arm:fim_ablation/fim50", run_dir=run)
    assert ref.kind == "run" and ref.path == tmp_path / "fim_ablation" / "fim50"
    assert ref.arm == "fim_ablation/fim50" and not ref.has_checkpoint()
    assert parse_checkpoint("arm:big_teacher", run_dir=run).path == run.parent / "big_teacher"
    for bad in ("arm:a/b/c", "arm:/x", "arm:x/"):
        with pytest.raises(CheckpointSpecError, match="arm:EXPERIMENT/NAME"):
            parse_checkpoint(bad, run_dir=run)
