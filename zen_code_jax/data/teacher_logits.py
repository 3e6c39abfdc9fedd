"""Offline teacher logits: ArrayRecord shards of a teacher's top-k, one record per row.

For a teacher too large to run beside the student, a preparation step
(`train/distill_offline.py`) runs it once over the student's training batches and stores,
per row and position, the teacher's k most likely tokens, their log-probs at temperature
T, the log of the remaining mass and the teacher's -log p(target) (`batch.TeacherTopK`).
The student's run reads them back here, joined to its batches.

Keyed to the prepared corpus and the pipeline's deterministic order: the Grain pipeline
yields the same rows in the same order for the same corpus, data/fim settings, seed,
sequence length, batch size and process shard (docs/data_pipeline.md), so record
`i * rows_per_batch + r` is row r of batch i. `meta.json` records a key of exactly those
inputs (`data_key`) and each record a CRC-32 of its row's tokens, so a changed setting or a
misaligned row is a one-line error, never a silent mismatch. Across restarts the reader's
state is the pipeline's state plus its batch counter, saved in the checkpoint like the
pipeline's own.

Layout of DIR (`distill.logits_dir`; `run` = RUN/teacher_logits):
  meta.json                               `LogitsMeta`, written last (its presence = complete)
  teacher_logits-SSSSS-of-NNNNN.array_record   one file per process shard (local runner)
  teacher_logits-SSSSS-of-NNNNN.part-PPPPP-of-QQQQQ.array_record   or its consecutive
                                          batch ranges (Beam runner); same records, same order

Record: little-endian bytes, crc32(row tokens) u32, then ids int32 [S, k], logp float32
[S, k], rest float32 [S], nll float32 [S]. Read by `grain.sources.ArrayRecordDataSource`
(random access, so a restart seeks straight to its batch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Any

import grain
import numpy as np

from zen_code_jax.data.batch import Batch, TeacherTopK

META_FILE = "meta.json"
_HEADER = np.dtype("<u4")


class TeacherLogitsError(ValueError):
    """Offline teacher logits that do not match the run reading them (says what to do)."""


def shard_file(directory: str | Path, shard_index: int, shard_count: int) -> Path:
    return Path(directory) / f"teacher_logits-{shard_index:05d}-of-{shard_count:05d}.array_record"


def part_file(
    directory: str | Path, shard_index: int, shard_count: int, part: int, parts: int
) -> Path:
    """Part `part` of `parts` of a process shard: the Beam runner writes consecutive
    batch ranges to separate files (train/distill_beam.py); read in part order they are
    the shard's records, byte for byte the local runner's one file."""
    stem = shard_file(directory, shard_index, shard_count).name.removesuffix(".array_record")
    return Path(directory) / f"{stem}.part-{part:05d}-of-{parts:05d}.array_record"


def shard_paths(directory: str | Path, shard_index: int, shard_count: int) -> list[Path]:
    """The files holding a process shard's records, in record order: the local runner's
    one file, else the Beam runner's parts (all of them, or an error)."""
    one = shard_file(directory, shard_index, shard_count)
    if one.is_file():
        return [one]
    stem = one.name.removesuffix(".array_record")
    parts = sorted(Path(directory).glob(f"{stem}.part-*-of-*.array_record"))
    if not parts:
        raise TeacherLogitsError(
            f"{one} is missing: the teacher logits in {directory} were written for "
            "another number of processes; prepare them again (delete the directory)."
        )
    want = int(parts[0].name.split("-of-")[-1].split(".")[0])
    if [p.name for p in parts] != [
        part_file(directory, shard_index, shard_count, i, want).name for i in range(want)
    ]:
        raise TeacherLogitsError(
            f"{directory} holds {len(parts)} of the {want} parts of {stem}: the Beam "
            "preparation did not finish; prepare the logits again (delete the directory)."
        )
    return parts


def data_key(corpus: Any, config: Any, shard_index: int, shard_count: int) -> str:
    """A digest of what fixes the training rows and their order: the prepared corpus, the
    data and fim settings, the seed, sequence length, batch size and process shard."""
    corpus_id = getattr(corpus, "directory", None)
    facts = {
        "corpus": Path(corpus_id).name if corpus_id is not None else repr(corpus),
        "data": config.data.to_dict(),
        "fim": config.fim.to_dict(),
        "seed": int(config.seed),
        "seq_len": int(config.train.seq_len),
        "global_batch_size": int(config.train.global_batch_size),
        "shard": [shard_index, shard_count],
    }
    text = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class LogitsMeta:
    """What a directory of teacher logits holds (meta.json)."""

    key: str  # data_key of the rows
    teacher: str  # the teacher's checkpoint name (and step)
    temperature: float
    top_k: int
    seq_len: int
    rows_per_batch: int
    batches: int

    def write(self, directory: str | Path) -> None:
        path = Path(directory) / META_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=1))
        os.replace(tmp, path)

    @classmethod
    def read(cls, directory: str | Path) -> LogitsMeta | None:
        path = Path(directory) / META_FILE
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))


def row_crc(tokens: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(tokens, dtype="<i4").tobytes())


def encode_row(tokens: np.ndarray, ids: np.ndarray, logp: np.ndarray, rest: Any, nll: Any) -> bytes:
    """One record: crc32 of the row's tokens, then the row's top-k arrays."""
    parts = [
        np.asarray([row_crc(tokens)], _HEADER),
        np.asarray(ids, "<i4"),
        np.asarray(logp, "<f4"),
        np.asarray(rest, "<f4"),
        np.asarray(nll, "<f4"),
    ]
    return b"".join(p.tobytes() for p in parts)


def decode_row(record: bytes, seq_len: int, k: int) -> tuple[int, TeacherTopK]:
    """(crc32 of the tokens, the row's TeacherTopK as numpy arrays)."""
    buf = memoryview(record)
    crc = int(np.frombuffer(buf[:4], _HEADER)[0])
    sk = seq_len * k * 4
    off = 4
    ids = np.frombuffer(buf[off : off + sk], "<i4").reshape(seq_len, k)
    logp = np.frombuffer(buf[off + sk : off + 2 * sk], "<f4").reshape(seq_len, k)
    off += 2 * sk
    rest = np.frombuffer(buf[off : off + 4 * seq_len], "<f4")
    nll = np.frombuffer(buf[off + 4 * seq_len : off + 8 * seq_len], "<f4")
    return crc, TeacherTopK(ids=ids, logp=logp, rest=rest, nll=nll)


class TeacherLogitsWriter:
    """Appends batches' teacher top-k to one shard; `close(meta)` writes meta.json last."""

    def __init__(self, directory: str | Path, shard_index: int = 0, shard_count: int = 1):
        # local import: array_record comes with grain; only the preparation step writes.
        from array_record.python.array_record_module import ArrayRecordWriter

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = shard_file(directory, shard_index, shard_count)
        self._writer = ArrayRecordWriter(str(self.path), "group_size:1")
        self.batches = 0

    def write_batch(self, batch: Batch, top: TeacherTopK) -> None:
        """Rows of `batch` (numpy [B, S]) with their teacher top-k (numpy [B, S, k])."""
        tokens = np.asarray(batch.inputs)
        ids, logp = np.asarray(top.ids), np.asarray(top.logp)
        rest, nll = np.asarray(top.rest), np.asarray(top.nll)
        for r in range(tokens.shape[0]):
            self._writer.write(encode_row(tokens[r], ids[r], logp[r], rest[r], nll[r]))
        self.batches += 1

    def close_records(self) -> None:
        """Finish the shard file (meta.json is the caller's, written last)."""
        self._writer.close()

    def close(self, meta: LogitsMeta) -> None:
        self.close_records()
        meta.write(self.directory)


class WithTeacherLogits:
    """The pipeline's batches with `Batch.teacher` attached (batch i = records i*B ...).

    Checkpointable like the pipeline it wraps: state = {"base": its state, "batches": i}."""

    def __init__(self, base: Any, directory: str | Path, meta: LogitsMeta, shard: tuple[int, int]):
        self.base = base
        self.meta = meta
        self.batches = 0
        paths = shard_paths(directory, *shard)
        self.source = grain.sources.ArrayRecordDataSource([str(p) for p in paths])

    def __iter__(self) -> WithTeacherLogits:
        return self

    def __next__(self) -> Batch:
        batch = next(self.base)
        i, m = self.batches, self.meta
        if i >= m.batches:
            raise TeacherLogitsError(
                f"the offline teacher logits cover {m.batches} batches but training asked for "
                f"batch {i + 1}; prepare them for at least train.steps batches (delete "
                "distill.logits_dir to rewrite it)."
            )
        tokens = np.asarray(batch.inputs)
        rows = []
        for r in range(tokens.shape[0]):
            crc, top = decode_row(self.source[i * m.rows_per_batch + r], m.seq_len, m.top_k)
            if crc != row_crc(tokens[r]):
                raise TeacherLogitsError(
                    f"batch {i} row {r}: its tokens differ from those the teacher logits were "
                    "written for (the data order changed); prepare the logits again."
                )
            rows.append(top)
        self.batches += 1
        top = TeacherTopK(*(np.stack([getattr(t, f) for t in rows]) for f in _TOP_FIELDS))
        return batch.replace(teacher=top)

    def get_state(self) -> dict[str, Any]:
        return {"base": self.base.get_state(), "batches": self.batches}

    def set_state(self, state: dict[str, Any]) -> None:
        self.base.set_state(state["base"])
        self.batches = int(state["batches"])

    def __getattr__(self, name: str) -> Any:  # batches_per_epoch and the like
        return getattr(self.base, name)


_TOP_FIELDS = ("ids", "logp", "rest", "nll")


def with_teacher_logits(
    data_iter: Any,
    directory: str | Path,
    *,
    key: str,
    temperature: float,
    top_k: int,
    seq_len: int,
    shard: tuple[int, int] = (0, 1),
) -> WithTeacherLogits:
    """`data_iter` joined to the teacher logits in `directory`, after checking they were
    written for these rows (`key`), this temperature, k and sequence length."""
    meta = LogitsMeta.read(directory)
    if meta is None:
        raise TeacherLogitsError(
            f"{directory} holds no {META_FILE}: the teacher logits were never (completely) "
            "written; run the preparation step (distill.logits_dir in a distill arm)."
        )
    want = {"key": key, "temperature": temperature, "top_k": top_k, "seq_len": seq_len}
    have = {k: getattr(meta, k) for k in want}
    if have != want:
        diff = {k: (have[k], want[k]) for k in want if have[k] != want[k]}
        raise TeacherLogitsError(
            f"the teacher logits in {directory} were written for other settings "
            f"(stored, asked): {diff}; prepare them again (delete the directory)."
        )
    return WithTeacherLogits(data_iter, directory, meta, shard)
