"""Prepare a corpus once: read, filter, dedup, split by repository, train the tokenizer, and
write ArrayRecord shards with a manifest, cached under `WORKDIR/cache/<hash>/`.

Stages (docs/data_prepare.md maps each onto a distributed engine), each a function that
returns a small dataclass, composed by `build_corpus`:
1. list      (sources.list_corpus; names and stat only, main process)
2. read      (prepare_read.read_corpus; worker processes read, filter, exact key and
             MinHash signature per file)
3. dedup     (`dedup_records`: exact SHA-256 of normalized content, first in
             (repo, path) order kept; then MinHash LSH, bands x rows, confirmed by
             estimated Jaccard, union-find)
4. split     (`split_records`: held-out iff sha256("split:" + repo) / 2^64 <
             heldout_fraction)
5. tokenizer (`train_tokenizer`: SentencePiece BPE on the training split)
6. write     (`write_splits`: ArrayRecord shards of JSON records sorted by (repo, path);
             `make_manifest` then manifest.json, last)

The read side (`PreparedCorpus`, `Corpus`, `Manifest`, mixtures) lives in `data/corpus.py`.

The cache key is sha256 of the corpus listing (every name, size and mtime) and the data
fields that change the output (`PREPARE_FIELDS` + vocab_size + CACHE_VERSION); fields that
only steer reading (weights, workers, mode) are left out, so changing them reuses the cache.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zen_code_jax.data import dedup, sources
from zen_code_jax.data.corpus import SPLITS, TRAIN_SPLIT, Manifest, PreparedCorpus, mixture_weights
from zen_code_jax.data.languages import DOMAINS
from zen_code_jax.data.prepare_read import ReadParams, ReadResult, read_corpus
from zen_code_jax.data.sources import CorpusError
from zen_code_jax.data.tokenizer import Tokenizer

CACHE_VERSION = 1
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
)
SHARD_BYTES = 64 << 20
RECORD_FIELDS = ("repo", "path", "content", "language", "domain")
_SPLIT_SALT = "split:"
_EXACT_NORMALIZATION = "CRLF/CR->LF, trailing whitespace per line and outer blank lines removed"


# --------------------------------------------------------------------------- config / key
def prepare_config(data_cfg: Any, vocab_size: int) -> dict[str, Any]:
    """The data fields that change the prepared output (part of the cache key)."""
    d = {k: getattr(data_cfg, k) for k in PREPARE_FIELDS}
    d["path"] = str(Path(str(d["path"])).expanduser().resolve()) if d["path"] else ""
    d["vocab_size"] = int(vocab_size)
    d["cache_version"] = CACHE_VERSION
    return d


def cache_key(listing: sources.Listing, cfg: dict[str, Any]) -> str:
    """sha256 of the corpus listing signature and the prepare config."""
    h = hashlib.sha256(listing.signature().encode())
    h.update(json.dumps(cfg, sort_keys=True).encode())
    return h.hexdigest()


def read_params(cfg: dict[str, Any]) -> ReadParams:
    """The read stage's parameters; checks the LSH shape first (it is cheap to fix)."""
    bands, rows, num_perm = (
        int(cfg[k]) for k in ("minhash_bands", "minhash_rows", "minhash_num_perm")
    )
    if bands * rows != num_perm:
        raise ValueError(
            f"data.minhash_bands x data.minhash_rows = {bands} x {rows} = {bands * rows}, but "
            f"data.minhash_num_perm = {num_perm}; set minhash_num_perm to {bands * rows}."
        )
    return ReadParams(
        max_file_bytes=int(cfg["max_file_bytes"]),
        shingle_size=int(cfg["shingle_size"]),
        num_perm=num_perm,
        exclude_tests=bool(cfg["exclude_tests"]),
        max_rows=int(cfg["max_files"] or 0),
    )


# --------------------------------------------------------------------------- dedup
@dataclasses.dataclass
class DedupResult:
    """Records left after exact then near dedup, sorted by (repo, path), and the counts."""

    records: list[dict[str, Any]]
    bytes_in: int  # UTF-8 bytes of content before dedup
    exact_removed: int
    near: dedup.NearDupResult
    near_removed_bytes: int


def _nbytes(r: dict[str, Any]) -> int:
    return len(r["content"].encode("utf-8"))


def dedup_records(
    records: list[dict[str, Any]], bands: int, rows: int, threshold: float
) -> DedupResult:
    """Stage 3: sort by (repo, path), drop exact then near duplicates (first one kept)."""
    recs = sorted(records, key=lambda r: (r["repo"], r["path"], r["key"]))
    bytes_in = sum(map(_nbytes, recs))
    keep = dedup.exact_duplicates([r["key"] for r in recs])
    exact_removed = int((~keep).sum())
    recs = [r for r, k in zip(recs, keep) if k]
    sigs = np.stack([r["sig"] for r in recs])
    near = dedup.near_duplicates(sigs, bands, rows, threshold)
    near_removed_bytes = sum(_nbytes(r) for r, k in zip(recs, near.keep) if not k)
    recs = [r for r, k in zip(recs, near.keep) if k]
    return DedupResult(recs, bytes_in, exact_removed, near, near_removed_bytes)


# --------------------------------------------------------------------------- split
def split_of(repo: str, heldout_fraction: float) -> str:
    """'heldout' iff the repository's hash falls below the fraction (independent per repo)."""
    u = int.from_bytes(hashlib.sha256((_SPLIT_SALT + repo).encode()).digest()[:8], "big") / 2**64
    return "heldout" if u < heldout_fraction else "train"


def assign_splits(repos: Sequence[str], heldout_fraction: float) -> dict[str, str]:
    """Split repositories by hash; with >= 2 repos and a fraction in (0, 1), both splits get
    at least one repository (the one with the smallest / largest hash moves over). A single
    repository always trains."""
    names = sorted(set(repos))
    if len(names) == 1:  # one repository cannot be split: it trains, nothing is held out
        return {names[0]: "train"}
    out = {r: split_of(r, heldout_fraction) for r in names}
    if len(names) >= 2 and 0 < heldout_fraction < 1:
        by_hash = sorted(names, key=lambda r: hashlib.sha256((_SPLIT_SALT + r).encode()).digest())
        if "heldout" not in out.values():
            out[by_hash[0]] = "heldout"
        if "train" not in out.values():
            out[by_hash[-1]] = "train"
    return out


@dataclasses.dataclass
class SplitResult:
    """Records per split (each still in (repo, path) order)."""

    by_split: dict[str, list[dict[str, Any]]]
    n_repos: int


def split_records(records: list[dict[str, Any]], heldout_fraction: float) -> SplitResult:
    """Stage 4: whole repositories go to one split; the training split must not be empty."""
    split_of_repo = assign_splits([r["repo"] for r in records], heldout_fraction)
    by_split = {s: [r for r in records if split_of_repo[r["repo"]] == s] for s in SPLITS}
    if not by_split[TRAIN_SPLIT]:
        raise CorpusError(
            f"The training split is empty ({len(records)} files in {len(split_of_repo)} "
            f"repositories, all held out). Lower data.heldout_fraction "
            f"(now {heldout_fraction}) or add repositories."
        )
    return SplitResult(by_split, len(split_of_repo))


# --------------------------------------------------------------------------- tokenizer
def train_tokenizer(
    train_records: Sequence[dict[str, Any]], vocab_size: int, out_dir: Path
) -> Tokenizer:
    """Stage 5: SentencePiece BPE on the training split, saved to `out_dir/tokenizer`."""
    # ~8 MB of sampled text per 4,096 chunks: on the stdlib, 4,096 chunks gave 3.646 held-out
    # bytes/token against 3.654 with all 14,881, at 40% of the time; a large vocabulary
    # needs more text, hence vocab_size // 2 chunks.
    tok = Tokenizer.train(
        (r["content"] for r in train_records), vocab_size, max_chunks=max(4096, vocab_size // 2)
    )
    tok.save(out_dir / "tokenizer")
    return tok


# --------------------------------------------------------------------------- write
def _file_stats() -> collections.defaultdict:
    return collections.defaultdict(lambda: {"files": 0, "bytes": 0})


@dataclasses.dataclass
class SplitSummary:
    """Statistics of one split's records (everything in its manifest entry but the shards)."""

    info: dict[str, Any]  # records, bytes, repos, languages, domains, groups, group_stats
    repo_ranges: list[list[Any]]  # [repo, start, end] per repository, in record order
    group_ids: np.ndarray  # int32 group id per record (index into info["groups"])


def summarize_split(records: Sequence[dict[str, Any]]) -> SplitSummary:
    """Per-language, per-domain and per-group counts of records sorted by (repo, path).

    Pure (no files), so an in-memory corpus computes its groups exactly as a prepared one.
    """
    repos: list[list[Any]] = []
    for i, r in enumerate(records):
        if repos and repos[-1][0] == r["repo"]:
            repos[-1][2] = i + 1
        else:
            repos.append([r["repo"], i, i + 1])
    langs, doms = _file_stats(), _file_stats()
    gstats: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"records": 0, "bytes": 0})
    group_names = sorted({f"{r['domain']}/{r['language']}" for r in records})
    gindex = {g: i for i, g in enumerate(group_names)}
    gid = np.zeros(len(records), np.int32)
    for i, r in enumerate(records):
        nb = _nbytes(r)
        langs[r["language"]]["files"] += 1
        langs[r["language"]]["bytes"] += nb
        doms[r["domain"]]["files"] += 1
        doms[r["domain"]]["bytes"] += nb
        g = f"{r['domain']}/{r['language']}"
        gstats[g]["records"] += 1
        gstats[g]["bytes"] += nb
        gid[i] = gindex[g]
    info = {
        "records": len(records),
        "bytes": sum(v["bytes"] for v in langs.values()),
        "repos": len(repos),
        "languages": dict(sorted(langs.items())),
        "domains": dict(sorted(doms.items())),
        "groups": group_names,
        "group_stats": dict(sorted(gstats.items())),
    }
    return SplitSummary(info, repos, gid)


def _write_shards(
    out_dir: Path, split: str, records: Sequence[dict[str, Any]]
) -> tuple[list[str], int]:
    """ArrayRecord shards of about SHARD_BYTES of JSON records; (names, total JSON bytes)."""
    # local import: array_record is only needed when writing (and is slow to import)
    from array_record.python.array_record_module import ArrayRecordWriter

    blobs = [
        json.dumps({k: r[k] for k in RECORD_FIELDS}, ensure_ascii=False).encode("utf-8")
        for r in records
    ]
    total = sum(map(len, blobs))
    n_shards = max(1, -(-total // SHARD_BYTES))
    per = -(-len(blobs) // n_shards) if blobs else 0
    shards = []
    for s in range(n_shards):
        name = f"{split}-{s:05d}-of-{n_shards:05d}.array_record"
        w = ArrayRecordWriter(str(out_dir / name), "group_size:1")
        for b in blobs[s * per : (s + 1) * per]:
            w.write(b)
        w.close()
        shards.append(name)
    return shards, total


@dataclasses.dataclass
class WriteResult:
    """Each split's manifest entry and repository ranges, as written."""

    split_info: dict[str, dict[str, Any]]
    repo_ranges: dict[str, list[list[Any]]]


def write_splits(out_dir: Path, by_split: dict[str, list[dict[str, Any]]]) -> WriteResult:
    """Stage 6: shards and `{split}.groups.npy` per split, plus their manifest entries."""
    split_info, repo_ranges = {}, {}
    for split in SPLITS:
        records = by_split[split]
        shards, json_bytes = _write_shards(out_dir, split, records)
        summary = summarize_split(records)
        np.save(out_dir / f"{split}.groups.npy", summary.group_ids)
        info = summary.info
        split_info[split] = {
            "records": info["records"],
            "bytes": info["bytes"],
            "json_bytes": json_bytes,
            "repos": info["repos"],
            "shards": shards,
            **{k: info[k] for k in ("languages", "domains", "groups", "group_stats")},
        }
        repo_ranges[split] = summary.repo_ranges
    return WriteResult(split_info, repo_ranges)


# --------------------------------------------------------------------------- manifest
def _language_note(domains: Iterable[str], languages: Iterable[str]) -> str:
    doms = set(domains)
    missing = [d for d in DOMAINS if d not in doms]
    langs = sorted(languages)
    return (
        f"Domains present: {', '.join(sorted(doms)) or 'none'}; absent: "
        f"{', '.join(missing) or 'none'} (Table 2's documentation, Q&A, papers, web, formal "
        f"and synthetic domains exist only if the source provides them). Languages present: "
        f"{', '.join(langs) or 'none'}."
    )


def make_manifest(
    *,
    listing: sources.Listing,
    cfg: dict[str, Any],
    key: str,
    params: ReadParams,
    read: ReadResult,
    dd: DedupResult,
    written: WriteResult,
    tok: Tokenizer,
    timings: dict[str, float],
    processes: int,
) -> Manifest:
    """Stage 6 (last): the manifest from the stages' results."""
    languages, domains = _file_stats(), _file_stats()
    for s in SPLITS:
        for lang, v in written.split_info[s]["languages"].items():
            languages[lang]["files"] += v["files"]
            languages[lang]["bytes"] += v["bytes"]
        for d, v in written.split_info[s]["domains"].items():
            domains[d]["files"] += v["files"]
            domains[d]["bytes"] += v["bytes"]
    n_seen = read.n_seen
    listing_skips = sum(listing.path_skips.values())
    after_filters = n_seen - (sum(read.skips.values()) - listing_skips)
    bands, rows = int(cfg["minhash_bands"]), int(cfg["minhash_rows"])
    threshold = float(cfg["minhash_threshold"])
    return Manifest(
        format="zen-code-jax prepared corpus",
        cache_version=CACHE_VERSION,
        input_hash=key,
        listing_signature=listing.signature(),
        config=cfg,
        source=listing.kind,
        counts={
            "listed": len(listing.files) + listing_skips if listing.files else n_seen,
            "read": n_seen,
            "after_filters": after_filters,
            "after_exact_dedup": after_filters - dd.exact_removed,
            "kept": len(dd.records),
            "bytes_after_filters": dd.bytes_in,
            "bytes_kept": sum(v["bytes"] for v in languages.values()),
        },
        skipped=dict(sorted(read.skips.items())),
        dedup={
            "exact_normalization": _EXACT_NORMALIZATION,
            "exact_removed": dd.exact_removed,
            "near": {
                **dd.near.stats(),
                "removed_bytes": dd.near_removed_bytes,
                "num_perm": params.num_perm,
                "bands": bands,
                "rows": rows,
                "threshold": threshold,
                "shingle_size": params.shingle_size,
                "candidate_probability_at_threshold": dedup.lsh_candidate_probability(
                    threshold, bands, rows
                ),
            },
        },
        languages=dict(sorted(languages.items(), key=lambda kv: -kv[1]["bytes"])),
        domains=dict(sorted(domains.items())),
        domains_absent=[d for d in DOMAINS if d not in domains],
        note=_language_note(domains, languages),
        splits=written.split_info,
        repos=written.repo_ranges,
        tokenizer={
            "dir": "tokenizer",
            "vocab_size": tok.vocab_size,
            "sp_vocab_size": tok.sp_vocab_size,
            "fingerprint": tok.fingerprint(),
            "trained_on": "train split",
        },
        timings={k: round(v, 3) for k, v in timings.items()},
        processes=processes,
    )


# --------------------------------------------------------------------------- orchestration
def build_corpus(
    listing: sources.Listing,
    data_cfg: Any,
    cfg: dict[str, Any],
    key: str,
    vocab_size: int,
    out_dir: Path,
    tokenizer: Tokenizer | None = None,
) -> Manifest:
    """Run stages 2-6 into `out_dir` (manifest.json written last) and return the manifest."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    params = read_params(cfg)
    procs = max(1, int(data_cfg.num_prepare_processes or 1))
    read = read_corpus(listing, params, procs)
    timings["read_filter_minhash_s"] = time.perf_counter() - t0
    if not read.records:
        raise CorpusError(
            f"The {listing.kind!r} corpus has no usable files after filtering: "
            f"{read.n_seen} read, skipped {dict(read.skips)}. Point data.path at source code, "
            "or relax data.max_file_bytes / data.exclude_tests."
        )
    t1 = time.perf_counter()
    dd = dedup_records(
        read.records,
        int(cfg["minhash_bands"]),
        int(cfg["minhash_rows"]),
        float(cfg["minhash_threshold"]),
    )
    timings["dedup_s"] = time.perf_counter() - t1
    split = split_records(dd.records, float(cfg["heldout_fraction"]))
    t2 = time.perf_counter()
    if tokenizer is None:
        tok = train_tokenizer(split.by_split[TRAIN_SPLIT], vocab_size, out_dir)
    else:  # a checkpoint's own tokenizer (train.init_checkpoint="hf:DIR")
        tok = tokenizer
        tok.save(out_dir / "tokenizer")
    timings["tokenizer_s"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    written = write_splits(out_dir, split.by_split)
    timings["write_s"] = time.perf_counter() - t3
    timings["total_s"] = time.perf_counter() - t0
    manifest = make_manifest(
        listing=listing,
        cfg=cfg,
        key=key,
        params=params,
        read=read,
        dd=dd,
        written=written,
        tok=tok,
        timings=timings,
        processes=procs,
    )
    manifest.write(out_dir / "manifest.json")
    return manifest


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
