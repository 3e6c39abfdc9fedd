"""The read stage of `prepare`: read, filter and MinHash every listed file in worker processes.

Reading, filtering and the MinHash signature are one per-file step because they are the
only per-file CPU work of preparation: fusing them ships each file's text to a worker once
and back only when it is kept. Workers are forked and use only numpy, re and hashlib, so
they never touch JAX. The result order is the listing order whatever the process count, so
the prepared corpus does not depend on `data.num_prepare_processes`. Both runners (local and
Beam) call `process_file` / `process_rows`, so they filter and hash identically.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from zen_code_jax.data import decontaminate, dedup, filters, sources
from zen_code_jax.data.languages import HEAD_CHARS, domain_of, language_of
from zen_code_jax.data.sources import FileRef

# Rows per work item for JSONL / Parquet inputs (amortizes the pickling per item).
_ROW_BATCH = 256
# Below this many files a process pool costs more than it saves.
_MIN_FILES_FOR_POOL = 64

_HASHERS: dict[int, dedup.MinHasher] = {}
RECORD_FIELDS = ("repo", "path", "content", "language", "domain")


def _hasher(num_perm: int) -> dedup.MinHasher:
    """One MinHasher per process and permutation count (its permutations are fixed)."""
    if num_perm not in _HASHERS:
        _HASHERS[num_perm] = dedup.MinHasher(num_perm)
    return _HASHERS[num_perm]


@dataclasses.dataclass(frozen=True)
class ReadParams:
    """The prepare-config fields the per-file work needs (small, so cheap to pickle)."""

    max_file_bytes: int
    shingle_size: int
    num_perm: int
    exclude_tests: bool = False
    max_rows: int = 0  # row sources: stop after this many rows (0 = all)
    bands: int = 20
    rows: int = 5
    decontaminate: bool = False
    mbpp_path: str = ""


def record_blob(r: dict[str, Any]) -> bytes:
    """The JSON bytes a shard stores for a record (the one place this encoding is made)."""
    return json.dumps({k: r[k] for k in RECORD_FIELDS}, ensure_ascii=False).encode("utf-8")


def _finish(
    repo: str, path: str, text: str, lang: str, domain: str, p: ReadParams
) -> dict[str, Any] | str:
    """The kept record: metadata, exact key, LSH band keys and the shard blob; or the
    `contaminated` reason (checked last: it is the costliest filter)."""
    if p.decontaminate and decontaminate.is_contaminated(
        text, decontaminate.benchmark_ngrams(p.mbpp_path)[0]
    ):
        return "contaminated"
    sig = _hasher(p.num_perm).signature(text, p.shingle_size)
    r = {"repo": repo, "path": path, "content": text, "language": lang, "domain": domain}
    blob = record_blob(r)
    return {
        "repo": repo,
        "path": path,
        "language": lang,
        "domain": domain,
        "key": dedup.exact_key(text).hex(),
        "bands": dedup.band_keys(sig, p.bands, p.rows)[0],
        "bytes": len(text.encode("utf-8")),
        "lines": text.count("\n") + (not text.endswith("\n")),
        "json_bytes": len(blob),
        "blob": blob,
    }


def process_file(args: tuple[FileRef, ReadParams]) -> dict[str, Any] | str:
    """Read and filter one file; a dict record, or the skip reason. Never raises."""
    ref, p = args
    if ref.size > p.max_file_bytes:
        return "oversized"
    try:
        with open(ref.location, "rb") as fh:
            data = fh.read(p.max_file_bytes + 1)
    except OSError:
        return "unreadable"
    if len(data) > p.max_file_bytes:
        return "oversized"
    reason, text = filters.decode(data)
    if reason:
        return reason
    lang = ref.language or language_of(ref.path, text[:HEAD_CHARS])
    if lang is None:
        return "unsupported_language"
    domain = domain_of(lang)
    reason = filters.text_reason(ref.path, text, domain)
    if reason:
        return reason
    return _finish(ref.repo, ref.path, text, lang, domain, p)


def process_rows(args: tuple[list[dict[str, Any]], ReadParams]) -> list[dict[str, Any] | str]:
    """Filter a batch of JSONL / Parquet rows; per row a dict record or the skip reason."""
    rows, p = args
    out: list[dict[str, Any] | str] = []
    for row in rows:
        text = row["content"]
        if text is None or not filters.is_utf8_encodable(text):
            out.append("non_utf8")
            continue
        text = filters.normalize_text(text)
        row = {**row, "content": text}
        reason = filters.path_reason(row["path"], p.exclude_tests)
        if reason:
            out.append(reason)
            continue
        if len(text.encode("utf-8")) > p.max_file_bytes:
            out.append("oversized")
            continue
        lang, domain = sources.row_language(row)
        if lang is None:
            out.append("unsupported_language")
            continue
        reason = filters.text_reason(row["path"], text, domain)
        if reason:
            out.append(reason)
            continue
        out.append(_finish(row["repo"], row["path"], text, lang, domain, p))
    return out


def row_batches(inputs: Sequence[str], max_rows: int) -> Iterator[list[dict[str, Any]]]:
    """Rows of the input files in batches of _ROW_BATCH, at most `max_rows` (0 = all)."""
    batch: list[dict[str, Any]] = []
    count = 0
    for path in inputs:
        for row in sources.iter_rows(path):
            if max_rows and count >= max_rows:
                break
            batch.append(row)
            count += 1
            if len(batch) >= _ROW_BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def parallel_map(fn: Callable[[Any], Any], items: Iterable[Any], processes: int) -> Iterator[Any]:
    """Ordered map over forked worker processes (in-process when `processes <= 1`)."""
    if processes <= 1:
        yield from map(fn, items)
        return
    ctx = multiprocessing.get_context("fork")
    with warnings.catch_warnings():
        # JAX warns on fork when it is imported; the workers never touch JAX.
        warnings.simplefilter("ignore", RuntimeWarning)
        with ctx.Pool(processes) as pool:
            yield from pool.imap(fn, items, chunksize=8)


def iter_read(listing: sources.Listing, params: ReadParams, processes: int) -> Iterator[Any]:
    """Stage 2, read: per listed file (or row), in listing order, its record or skip reason.

    A generator over an ordered `imap`, so at most a few chunks of contents are in flight:
    the caller decides what to keep (the local runner spills each blob to disk at once).
    """
    if listing.kind in ("jsonl", "parquet"):
        batches = ((b, params) for b in row_batches(listing.row_inputs, params.max_rows))
        for batch in parallel_map(process_rows, batches, processes):
            yield from batch
    else:
        items = ((f, params) for f in listing.files)
        pool = processes if len(listing.files) >= _MIN_FILES_FOR_POOL else 1
        yield from parallel_map(process_file, items, pool)
