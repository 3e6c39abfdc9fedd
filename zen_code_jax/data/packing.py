"""First-fit or best-fit packing of token segments into fixed-length rows of finished batches.

Why our own packer (not grain.experimental.FirstFitPackIterDataset): one record (a file or a
repository) yields a *list* of segments, a segment longer than a row must be split rather
than truncated (grain's truncates), the output is the finished batch in the contract's
fields (grain's emits its own segment/position keys per row), and context-level FIM needs
each segment's eligibility carried into the batch. The algorithm is grain's: fill
`num_rows` bins, placing each segment in the first bin with room; when a segment fits
nowhere, the group is complete and is emitted as `num_rows / batch_size` batches; the
segment that did not fit opens the next group.

Best-fit (`packing="best_fit"`, `data.packing`): the same groups, but each segment goes
into the row it fills tightest (least room left after it; the first such row on ties),
which is Grain's `BestFitPackedBatch` rule with one feature. Why not Grain's
`BestFitPackIterDataset` itself: it has the limits above (0.2.18 raises on a segment
longer than a row; we must split it, `chunk_segment`), so only the choice of row is
shared, and `tests/test_packing.py` checks ours row for row against Grain's on segments
that fit. First-fit stays the default, bit for bit the packer of every earlier run.

Row shuffle: like grain's packer (which shuffles bins by default), the rows of a group are
permuted before they are cut into batches (`shuffle_seed`), so one long file's pieces,
which first-fit puts into consecutive rows, spread over the group's batches instead of
filling one batch after another. The window is the group (`data.row_shuffle_window` rows),
and the permutation is keyed by (seed, the group's tokens), so it needs no state.

Checkpointing: the iterator state is (parent state before the record that opened the
current group, how many of that record's segments earlier groups consumed, how many batches
of the group were emitted). Restoring re-reads from there and re-packs the group, so a
resumed run yields exactly the batches an uninterrupted one would.

The rows become the batch contract of `data/batch.py` (`make_batch`; the pipeline then wraps
each batch in `Batch`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import grain
import numpy as np

from zen_code_jax.data.batch import FIELDS


def chunk_segment(ids: np.ndarray, seq_len: int) -> list[np.ndarray]:
    """Split a too-long segment into rows; consecutive chunks overlap by one token.

    The overlap makes every next-token prediction of the segment appear exactly once: the
    last token of a chunk (no target there) is the first input of the next chunk.
    """
    n = len(ids)
    if n <= seq_len:
        return [ids]
    out = []
    start = 0
    while True:
        out.append(ids[start : start + seq_len])
        if start + seq_len >= n:
            return out
        start += seq_len - 1


PACKERS: tuple[str, ...] = ("first_fit", "best_fit")


def check_packing(packing: str) -> str:
    """`packing` if it names a packer, else a one-line error naming the choices."""
    if packing not in PACKERS:
        raise ValueError(f"Unknown data.packing={packing!r}; use one of {PACKERS}.")
    return packing


class RowPacker:
    """First-fit (or best-fit) bins for one group: a plain, testable core with no Grain."""

    def __init__(self, seq_len: int, num_rows: int, packing: str = "first_fit"):
        self.seq_len = seq_len
        self.num_rows = num_rows
        self.best_fit = check_packing(packing) == "best_fit"
        self.rows: list[list[np.ndarray]] = [[] for _ in range(num_rows)]
        self.flags: list[list[bool]] = [[] for _ in range(num_rows)]
        self.free = [seq_len] * num_rows

    def try_add(self, seg: np.ndarray, flag: bool = False) -> bool:
        n = len(seg)
        fits = [r for r in range(self.num_rows) if self.free[r] >= n]
        if not fits:
            return False
        # first fit: the first row with room; best fit: the tightest (first on ties)
        r = min(fits, key=lambda i: self.free[i]) if self.best_fit else fits[0]
        self.rows[r].append(seg)
        self.flags[r].append(flag)
        self.free[r] -= n
        return True

    def flag_array(self) -> np.ndarray:
        """int32 [num_rows, seq_len]: each segment's flag (1 for True; an int flag, e.g.
        `fim_context`'s grammar code, as given) on its tokens, 0 elsewhere."""
        out = np.zeros((self.num_rows, self.seq_len), dtype=np.int32)
        for r, (row, flags) in enumerate(zip(self.rows, self.flags)):
            at = 0
            for seg, flag in zip(row, flags):
                out[r, at : at + len(seg)] = int(flag)
                at += len(seg)
        return out

    @property
    def empty(self) -> bool:
        return not self.rows[0]

    def arrays(self, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """tokens, segment_ids, positions, each int32 [num_rows, seq_len]."""
        shape = (self.num_rows, self.seq_len)
        tokens = np.full(shape, pad_id, dtype=np.int32)
        segs = np.zeros(shape, dtype=np.int32)
        pos = np.zeros(shape, dtype=np.int32)
        for r, row in enumerate(self.rows):
            at = 0
            for k, seg in enumerate(row, start=1):
                n = len(seg)
                tokens[r, at : at + n] = seg
                segs[r, at : at + n] = k
                pos[r, at : at + n] = np.arange(n, dtype=np.int32)
                at += n
        return tokens, segs, pos


def make_batch(
    tokens: np.ndarray, segment_ids: np.ndarray, positions: np.ndarray
) -> dict[str, np.ndarray]:
    """The `data/batch.py` contract's fields (`FIELDS`), as a dict, from packed rows."""
    nxt_same = np.zeros_like(segment_ids, dtype=bool)
    nxt_same[:, :-1] = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, :-1] != 0)
    targets = np.zeros_like(tokens)
    targets[:, :-1] = np.where(nxt_same[:, :-1], tokens[:, 1:], 0)
    arrays = (tokens, targets, segment_ids, positions, nxt_same)  # in `FIELDS` order
    return {k: v.astype(np.int32) for k, v in zip(FIELDS, arrays, strict=True)}


def pack_segments(
    segments: Iterable[np.ndarray],
    seq_len: int,
    batch_size: int,
    pad_id: int = 0,
    *,
    batches_per_group: int = 1,
    packing: str = "first_fit",
) -> list[dict]:
    """Pack a finite list of segments into batches (no Grain; for tests and tools)."""
    it = _PackIterator(
        _ListIterator([list(segments)]),
        seq_len,
        batch_size,
        batches_per_group,
        pad_id,
        packing=packing,
    )
    return list(it)


def padding_fraction(batches: Iterable[dict]) -> float:
    """The share of row tokens that are padding (segment id 0) over `batches`."""
    pad = total = 0
    for b in batches:
        seg = np.asarray(b["segment_ids"])
        pad += int((seg == 0).sum())
        total += seg.size
    return pad / max(total, 1)


def shuffle_rows(arrays: Sequence[np.ndarray], n_rows: int, seed: int) -> list[np.ndarray]:
    """Permute the first `n_rows` rows of every array the same way.

    The permutation is keyed by (seed, the group's tokens), so it is the same on every
    run, worker count and restore (a restore re-packs the same group), with no state.
    """
    digest = hashlib.blake2b(arrays[0][:n_rows].tobytes(), digest_size=8).digest()
    key = np.array([seed & 0xFFFFFFFFFFFFFFFF, int.from_bytes(digest, "little")], np.uint64)
    perm = np.random.Generator(np.random.Philox(key=key)).permutation(n_rows)
    return [np.concatenate([a[:n_rows][perm], a[n_rows:]]) for a in arrays]


class PackIterDataset(grain.IterDataset):
    """Packs records (each a list of int32 token segments) into finished batches."""

    def __init__(
        self,
        parent: grain.IterDataset,
        *,
        seq_len: int,
        batch_size: int,
        batches_per_group: int = 1,
        pad_id: int = 0,
        shuffle_seed: int | None = None,
        flags: bool = False,
        packing: str = "first_fit",
    ):
        """shuffle_seed: permute each group's rows (None keeps fill order); flags: records
        may be {"segments": [...], "flag": bool} and batches gain a "fim_ok" field (1 on
        the tokens of flagged segments) for `data/fim_context.py`; packing: "first_fit"
        or "best_fit" (module docstring)."""
        super().__init__(parent)
        if seq_len < 2 or batch_size < 1 or batches_per_group < 1:
            raise ValueError(
                f"Packing needs seq_len >= 2, batch_size >= 1 and batches_per_group >= 1; got "
                f"seq_len={seq_len}, batch_size={batch_size}, batches_per_group={batches_per_group}."
            )
        self._seq_len = seq_len
        self._batch_size = batch_size
        self._bpg = batches_per_group
        self._pad_id = pad_id
        self._shuffle_seed = shuffle_seed
        self._flags = flags
        self._packing = check_packing(packing)

    def __iter__(self) -> _PackIterator:
        return _PackIterator(
            self._parent.__iter__(),
            self._seq_len,
            self._batch_size,
            self._bpg,
            self._pad_id,
            self._shuffle_seed,
            self._flags,
            self._packing,
        )

    def __str__(self) -> str:
        return f"PackIterDataset(seq_len={self._seq_len}, batch_size={self._batch_size})"


class _ListIterator(grain.DatasetIterator):
    """A checkpointable iterator over an in-memory list (for `pack_segments`)."""

    def __init__(self, items: Sequence[Any]):
        super().__init__()
        self._items = items
        self._i = 0

    def __next__(self):
        if self._i >= len(self._items):
            raise StopIteration
        self._i += 1
        return self._items[self._i - 1]

    def get_state(self) -> dict:
        return {"i": self._i}

    def set_state(self, state: dict) -> None:
        self._i = state["i"]


class _PackIterator(grain.DatasetIterator):
    def __init__(
        self,
        parent: grain.DatasetIterator,
        seq_len: int,
        batch_size: int,
        batches_per_group: int,
        pad_id: int,
        shuffle_seed: int | None = None,
        flags: bool = False,
        packing: str = "first_fit",
    ):
        super().__init__(parent)
        self._packing = packing
        self._seq_len = seq_len
        self._batch_size = batch_size
        self._bpg = batches_per_group
        self._pad_id = pad_id
        self._shuffle_seed = shuffle_seed
        self._flags = flags
        self._reset()

    def _reset(self) -> None:
        self._pending: list[np.ndarray] = []  # unplaced segments of the current record
        self._pending_flag = False  # the current record's flag (see PackIterDataset)
        self._pending_state: Any = None  # parent state before the current record
        self._pending_skip = 0  # segments of the current record consumed so far
        self._restore_skip = 0  # one-shot: segments to drop from the next record read
        self._skip_batches = 0  # one-shot: batches of the next group already emitted
        self._queue: list[dict] = []
        self._group_state: Any = None
        self._group_skip = 0
        self._emitted = 0
        self._exhausted = False

    def _next_record(self) -> bool:
        """Load the next non-empty record into `_pending`; False at the end of the parent."""
        while True:
            state = self._parent.get_state()
            try:
                rec = next(self._parent)
            except StopIteration:
                self._exhausted = True
                return False
            flag = False
            if isinstance(rec, dict):
                rec, flag = rec["segments"], int(rec["flag"])  # a bool, or a grammar code
            segs = [c for s in rec if len(s) >= 2 for c in chunk_segment(s, self._seq_len)]
            self._pending_flag = flag
            skip, self._restore_skip = self._restore_skip, 0
            self._pending, self._pending_state, self._pending_skip = segs[skip:], state, skip
            if self._pending:
                return True

    def _pack_group(self) -> bool:
        """Pack the next group into `_queue`; False when the parent has nothing left."""
        if self._pending:
            self._group_state, self._group_skip = self._pending_state, self._pending_skip
        else:
            self._group_state, self._group_skip = self._parent.get_state(), self._restore_skip
        packer = RowPacker(self._seq_len, self._batch_size * self._bpg, self._packing)
        while True:
            if not self._pending and (self._exhausted or not self._next_record()):
                break
            if not packer.try_add(self._pending[0], self._pending_flag):
                break
            self._pending.pop(0)
            self._pending_skip += 1
        if packer.empty:
            return False
        tokens, segs, pos = packer.arrays(self._pad_id)
        flags = packer.flag_array()
        used = segs.any(axis=1)
        n_rows = int(used.sum())  # rows fill in order; only the final group has empty rows
        n_batches = -(-n_rows // self._batch_size)
        if self._shuffle_seed is not None:
            tokens, segs, pos, flags = shuffle_rows(
                [tokens, segs, pos, flags], n_rows, self._shuffle_seed
            )
        batch = make_batch(tokens, segs, pos)
        if self._flags:
            batch["fim_ok"] = flags
        b = self._batch_size
        self._queue = [
            {k: v[i * b : (i + 1) * b] for k, v in batch.items()} for i in range(n_batches)
        ]
        self._emitted = 0
        skip, self._skip_batches = self._skip_batches, 0
        self._queue = self._queue[skip:]
        self._emitted = skip
        return True

    def __next__(self) -> dict:
        while not self._queue:
            if not self._pack_group():
                raise StopIteration
        self._emitted += 1
        return self._queue.pop(0)

    def get_state(self) -> dict:
        if self._group_state is None:  # nothing packed yet
            return {"parent": self._parent.get_state(), "skip": 0, "emitted": 0}
        return {"parent": self._group_state, "skip": self._group_skip, "emitted": self._emitted}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._reset()
        self._restore_skip = int(state["skip"])
        self._skip_batches = int(state["emitted"])

    def __str__(self) -> str:
        return f"PackIterator(seq_len={self._seq_len}, batch_size={self._batch_size})"
