"""Prepare a corpus once: read, filter, dedup, split by repository, train the tokenizer, and
write ArrayRecord shards with a manifest, cached under `WORKDIR/cache/<hash>/`.

Stages (docs/data_prepare.md; `data.prepare_runner` picks who runs them):
1. list      (sources.list_corpus; names and stat only, main process)
2. read      (prepare_read.iter_read; workers read, filter, decontaminate, exact key, MinHash
             -> LSH band keys and the shard's JSON blob, per file)
3. dedup     (prepare_stages: exact SHA-256 of normalized content, first in (repo, path)
             order kept; LSH candidates confirmed by exact Jaccard, union-find)
4. plan      (prepare_stages.make_plan: split by repository, tokenizer sample, repo-FT
             filter, shard assignment)
5. tokenizer (SentencePiece BPE on the sample)
6. write     (ArrayRecord shards sorted by (repo, path); manifest.json last)

The `local` runner (default) streams: each file's JSON blob goes to a spill ArrayRecord in
the build folder as it is read, and only metadata (~300 bytes a file) stays in memory;
contents come back from the spill for candidate pairs, the tokenizer sample and the write.
The `beam` runner (`beam_prepare.py`) runs the same stage functions as an Apache Beam
pipeline and writes the same files. What both runners do after their stages (outcome,
summaries, shard writer, tokenizer, manifest) is `prepare_finish.py`.

The cache key is sha256 of the corpus listing (every name, size and mtime) and the data
fields that change the output (`PREPARE_FIELDS` + vocab_size + the benchmark n-grams'
fingerprint + CACHE_VERSION); fields that only steer reading or running (weights, workers,
mode, runner) are left out, so changing them reuses the cache.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zen_code_jax.data import decontaminate, dedup, prepare_stages, sources
from zen_code_jax.data.corpus import SPLITS, TRAIN_SPLIT, Manifest, PreparedCorpus, mixture_weights
from zen_code_jax.data.prepare_finish import (
    CACHE_VERSION,
    Outcome,
    check_nonempty,
    finish,
    read_params,
    summarize_split,
    tokenizer_budget,
    write_shard,
)
from zen_code_jax.data.prepare_read import RECORD_FIELDS, iter_read
from zen_code_jax.data.prepare_stages import assign_splits, meta_of, order_key, split_of
from zen_code_jax.data.tokenizer import Tokenizer

__all__ = ["assign_splits", "split_of", "prepare_corpus", "summarize_split", "RECORD_FIELDS"]

RUNNERS = ("local", "beam")
PREPARE_FIELDS = (
    "source",
    "path",
    "heldout_fraction",
    "max_file_bytes",
    "minhash_num_perm",
    "minhash_bands",
    "minhash_rows",
    "minhash_threshold",
    "shingle_size",
    "exclude_tests",
    "max_files",
    "decontaminate",
    "mbpp_path",
    "min_repo_files",
    "min_repo_lines",
)
SPILL = "contents.spill.array_record"


# --------------------------------------------------------------------------- config / key
def prepare_config(data_cfg: Any, vocab_size: int) -> dict[str, Any]:
    """The data fields that change the prepared output (part of the cache key)."""
    d = {k: getattr(data_cfg, k) for k in PREPARE_FIELDS}
    for k in ("path", "mbpp_path"):
        d[k] = str(Path(str(d[k])).expanduser().resolve()) if d[k] else ""
    d["vocab_size"] = int(vocab_size)
    d["cache_version"] = CACHE_VERSION
    if d["decontaminate"]:  # the benchmark n-grams themselves, so a new MBPP file re-prepares
        d["decontamination_ngrams"] = decontaminate.benchmark_ngrams(d["mbpp_path"])[1]
    return d


def cache_key(listing: sources.Listing, cfg: dict[str, Any]) -> str:
    """sha256 of the corpus listing signature and the prepare config."""
    h = hashlib.sha256(listing.signature().encode())
    h.update(json.dumps(cfg, sort_keys=True).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- local runner
class _Spill:
    """The read stage's JSON blobs, in read order, on disk (so memory holds no contents)."""

    def __init__(self, path: Path):
        # local import: array_record is only needed when preparing (and is slow to import)
        from array_record.python.array_record_module import ArrayRecordWriter

        self.path, self.n = path, 0
        self._w: Any = ArrayRecordWriter(str(path), "group_size:1")
        self._r: Any = None

    def append(self, blob: bytes) -> int:
        self._w.write(blob)
        self.n += 1
        return self.n - 1

    def close_writer(self) -> None:
        self._w.close()

    def blobs(self, idx: Sequence[int]) -> list[bytes]:
        if self._r is None:
            # local import: see __init__
            from array_record.python.array_record_data_source import ArrayRecordDataSource

            self._r = ArrayRecordDataSource([str(self.path)])
        return list(self._r.__getitems__(list(idx))) if len(idx) else []

    def contents(self, idx: Sequence[int]) -> list[str]:
        return [json.loads(b)["content"] for b in self.blobs(idx)]


def build_local(
    listing: sources.Listing,
    data_cfg: Any,
    cfg: dict[str, Any],
    key: str,
    vocab_size: int,
    out_dir: Path,
    tokenizer: Tokenizer | None = None,
) -> Manifest:
    """The local runner: stages 2-6 into `out_dir`, streaming (see the module docstring)."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    params = read_params(cfg)
    procs = max(1, int(data_cfg.num_prepare_processes or 1))
    skips = collections.Counter(listing.path_skips)
    spill = _Spill(out_dir / SPILL)
    metas: list[dict[str, Any]] = []
    bands: list[np.ndarray] = []
    slot: list[int] = []
    n_seen = 0
    for r in iter_read(listing, params, procs):
        n_seen += 1
        if isinstance(r, str):
            skips[r] += 1
            continue
        slot.append(spill.append(r["blob"]))
        metas.append(meta_of(r))
        bands.append(r["bands"])
    spill.close_writer()
    timings["read_filter_minhash_s"] = time.perf_counter() - t0
    check_nonempty(listing.kind, n_seen, skips, len(metas))
    t1 = time.perf_counter()
    order = sorted(range(len(metas)), key=lambda i: order_key(metas[i]))
    bytes_in = sum(m["bytes"] for m in metas)
    keep = prepare_stages.exact_dedup([metas[i] for i in order])
    order = [i for i, k in zip(order, keep) if k]
    keys = np.stack([bands[i] for i in order]) if order else np.zeros((0, params.bands), np.uint64)
    del bands
    pi, pj = dedup.candidate_pairs(keys)
    jac = prepare_stages.confirm_pairs(
        pi, pj, lambda idx: spill.contents([slot[order[i]] for i in idx]), params.shingle_size
    )
    near = dedup.cluster_result(len(order), pi, pj, jac >= float(cfg["minhash_threshold"]))
    near_removed_bytes = sum(metas[i]["bytes"] for i, k in zip(order, near.keep) if not k)
    order = [i for i, k in zip(order, near.keep) if k]
    timings["dedup_s"] = time.perf_counter() - t1
    kept_metas = [metas[i] for i in order]
    plan = prepare_stages.make_plan(
        kept_metas,
        float(cfg["heldout_fraction"]),
        tokenizer_budget(vocab_size),
        int(cfg["min_repo_files"]),
        int(cfg["min_repo_lines"]),
    )
    outcome = Outcome(
        n_seen,
        skips,
        bytes_in,
        int((~keep).sum()),
        near.stats(),
        near_removed_bytes,
        kept_metas,
        plan,
    )
    t3 = time.perf_counter()
    for split in SPLITS:
        for name, shard in zip(plan.shard_names(split), plan.shards[split]):
            write_shard(out_dir / name, _batched_blobs(spill, [slot[order[i]] for i in shard]))
    timings["write_s"] = time.perf_counter() - t3
    sample = _batched_contents(spill, [slot[order[i]] for i in plan.tokenizer_sample])
    manifest = finish(
        out_dir,
        listing=listing,
        cfg=cfg,
        key=key,
        outcome=outcome,
        sample_texts=sample,
        vocab_size=vocab_size,
        timings=timings,
        processes=procs,
        runner="local",
        tokenizer=tokenizer,
    )
    os.remove(spill.path)
    return manifest


def _batched_blobs(spill: _Spill, idx: Sequence[int], step: int = 256) -> Iterator[bytes]:
    for s in range(0, len(idx), step):
        yield from spill.blobs(idx[s : s + step])


def _batched_contents(spill: _Spill, idx: Sequence[int]) -> Iterator[str]:
    for b in _batched_blobs(spill, idx):
        yield json.loads(b)["content"]


# --------------------------------------------------------------------------- entry point
def build_corpus(
    listing: sources.Listing,
    data_cfg: Any,
    cfg: dict[str, Any],
    key: str,
    vocab_size: int,
    out_dir: Path,
    tokenizer: Tokenizer | None = None,
) -> Manifest:
    """Run stages 2-6 into `out_dir` with `data.prepare_runner` (manifest.json last)."""
    runner = str(getattr(data_cfg, "prepare_runner", "local"))
    if runner not in RUNNERS:
        raise ValueError(f"Unknown data.prepare_runner {runner!r}; valid: {', '.join(RUNNERS)}.")
    if runner == "beam":
        # local import: apache-beam is an optional extra, loaded only for this runner
        from zen_code_jax.data import beam_prepare

        return beam_prepare.build_beam(
            listing, data_cfg, cfg, key, vocab_size, out_dir, tokenizer=tokenizer
        )
    return build_local(listing, data_cfg, cfg, key, vocab_size, out_dir, tokenizer=tokenizer)


def prepare_corpus(
    data_cfg: Any, vocab_size: int, workdir: str | os.PathLike, tokenizer: Tokenizer | None = None
) -> PreparedCorpus:
    """Prepare (or reuse) the corpus described by the `data` config group.

    Returns a PreparedCorpus whose manifest also carries a `mixture` block: the configured
    domain/language weights resolved against what the training split holds (absent ones
    listed), recomputed on every call because weights are not part of the cache key.
    """
    if not str(workdir):
        raise ValueError("prepare_corpus needs a workdir: pass the run's WORKDIR (a folder).")
    listing = sources.list_corpus(data_cfg)
    cfg = prepare_config(data_cfg, vocab_size)
    if tokenizer is not None:  # the cache key names the given tokenizer (trained: none)
        cfg["tokenizer_fingerprint"] = tokenizer.fingerprint()
    key = cache_key(listing, cfg)
    cache_root = Path(workdir).expanduser() / "cache"
    final = cache_root / key
    if not (final / "manifest.json").is_file():
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = cache_root / f".tmp-{key[:16]}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            build_corpus(listing, data_cfg, cfg, key, vocab_size, tmp, tokenizer)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "manifest.json").is_file():  # not a benign race: re-raise
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    corpus = PreparedCorpus(final)
    corpus.manifest.mixture = mixture_weights(corpus, data_cfg, TRAIN_SPLIT).summary()
    return corpus
