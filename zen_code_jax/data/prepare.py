"""Prepare a corpus once: read, filter, dedup, split by repository, train the tokenizer, and
write ArrayRecord shards with a manifest, cached under `WORKDIR/cache/<hash>/`.

Stages (docs/data_prepare.md maps each onto a distributed engine):
1. list    (sources.py; names and stat only, main process)
2. read    (worker processes: read, filter, exact key, MinHash signature per file)
3. exact   (SHA-256 of normalized content; first in (repo, path) order kept)
4. near    (MinHash LSH, bands x rows, confirmed by estimated Jaccard, union-find)
5. split   (held-out iff sha256("split:" + repo) / 2^64 < heldout_fraction)
6. tokenizer (SentencePiece BPE on the training split)
7. write   (ArrayRecord shards of JSON records sorted by (repo, path), manifest.json last)

The cache key is sha256 of the corpus listing (every name, size and mtime) and the data
fields that change the output (`PREPARE_FIELDS` + vocab_size + CACHE_VERSION); fields that
only steer reading (weights, workers, mode) are left out, so changing them reuses the cache.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zen_code_jax.data import dedup, filters, sources
from zen_code_jax.data.languages import DOMAINS, domain_of, language_of, normalize_language
from zen_code_jax.data.sources import CorpusError, FileRef
from zen_code_jax.data.tokenizer import Tokenizer

CACHE_VERSION = 1
SPLITS = ("train", "heldout")
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
_ROW_BATCH = 256
_SPLIT_SALT = "split:"


# --------------------------------------------------------------------------- worker side
_HASHERS: dict[int, dedup.MinHasher] = {}


def _hasher(num_perm: int) -> dedup.MinHasher:
    if num_perm not in _HASHERS:
        _HASHERS[num_perm] = dedup.MinHasher(num_perm)
    return _HASHERS[num_perm]


@dataclasses.dataclass(frozen=True)
class _Params:
    max_file_bytes: int
    shingle_size: int
    num_perm: int


def _finish(repo: str, path: str, text: str, lang: str, domain: str, p: _Params) -> dict[str, Any]:
    sig = _hasher(p.num_perm).signature(text, p.shingle_size)
    return {
        "repo": repo,
        "path": path,
        "content": text,
        "language": lang,
        "domain": domain,
        "key": dedup.exact_key(text),
        "sig": sig,
    }


def _process_file(args: tuple[FileRef, _Params]) -> dict[str, Any] | str:
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
    reason, text = filters.content_reason(ref.path, data)
    if reason:
        return reason
    lang = ref.language or language_of(ref.path, text[:200])
    if lang is None:
        return "unsupported_language"
    return _finish(ref.repo, ref.path, text, lang, domain_of(lang), p)


def _process_rows(args: tuple[list[dict[str, Any]], _Params, bool]) -> list[dict[str, Any] | str]:
    rows, p, exclude_tests = args
    out: list[dict[str, Any] | str] = []
    for row in rows:
        text = row["content"]
        if text is None or not filters.is_utf8_encodable(text):
            out.append("non_utf8")
            continue
        reason = filters.path_reason(row["path"], exclude_tests)
        if reason:
            out.append(reason)
            continue
        if len(text.encode("utf-8")) > p.max_file_bytes:
            out.append("oversized")
            continue
        reason = filters.text_reason(row["path"], text)
        if reason:
            out.append(reason)
            continue
        lang, domain = sources.row_language(row)
        if lang is None:
            out.append("unsupported_language")
            continue
        out.append(_finish(row["repo"], row["path"], text, lang, domain, p))
    return out


def _row_batches(inputs: Sequence[str], max_rows: int) -> Iterator[list[dict[str, Any]]]:
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


def _parallel_map(fn: Any, items: Iterable[Any], processes: int) -> Iterator[Any]:
    """Ordered map over worker processes (fork; the workers only use numpy/re/hashlib)."""
    if processes <= 1:
        yield from map(fn, items)
        return
    ctx = multiprocessing.get_context("fork")
    with warnings.catch_warnings():
        # JAX warns on fork when it is imported; the workers never touch JAX.
        warnings.simplefilter("ignore", RuntimeWarning)
        with ctx.Pool(processes) as pool:
            yield from pool.imap(fn, items, chunksize=8)


# --------------------------------------------------------------------------- config / key
def prepare_config(data_cfg: Any, vocab_size: int) -> dict[str, Any]:
    """The data fields that change the prepared output (part of the cache key)."""
    d = {}
    for k in PREPARE_FIELDS:
        v = getattr(data_cfg, k, None) if hasattr(data_cfg, k) else None
        d[k] = v
    d["path"] = str(Path(str(d["path"])).expanduser().resolve()) if d["path"] else ""
    d["vocab_size"] = int(vocab_size)
    d["cache_version"] = CACHE_VERSION
    return d


def cache_key(listing: sources.Listing, cfg: dict[str, Any]) -> str:
    """sha256 of the corpus listing signature and the prepare config."""
    h = hashlib.sha256(listing.signature().encode())
    h.update(json.dumps(cfg, sort_keys=True).encode())
    return h.hexdigest()


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


# --------------------------------------------------------------------------- reading side
class RecordSource:
    """Random-access grain data source of JSON records -> dicts (picklable, lazy reader)."""

    def __init__(self, paths: Sequence[str], length: int):
        self.paths = [str(p) for p in paths]
        self._len = int(length)
        self._src: Any = None

    def _reader(self) -> Any:
        if self._src is None:
            # array_record's own source (what grain's wraps): imports in 0.6 s, grain in 7 s.
            from array_record.python.array_record_data_source import ArrayRecordDataSource

            self._src = ArrayRecordDataSource(self.paths) if self.paths else []
        return self._src

    def __len__(self) -> int:
        return self._len

    def raw(self, index: int) -> bytes:
        """The JSON bytes of record `index`."""
        if not -self._len <= index < self._len:
            raise IndexError(f"record {index} out of range for a source of {self._len}")
        return self._reader()[index % self._len]

    def __getitem__(self, index: int) -> dict[str, str]:
        return json.loads(self.raw(int(index)))

    def __getstate__(self) -> dict[str, Any]:
        return {"paths": self.paths, "_len": self._len, "_src": None}

    def __repr__(self) -> str:
        return f"RecordSource({len(self.paths)} shards, {self._len} records)"


@dataclasses.dataclass
class Mixture:
    """Deterministic sampling weights over (domain, language) groups of one split.

    `weights[g]` is the probability of drawing a record from group g so that the expected
    share of *bytes* (a proxy for tokens) from g matches the configured weights; within a
    group records are uniform. `record_weights` is the same as one per-record distribution
    (sums to 1) for samplers that take per-record weights. Feed `indices` and `weights` to
    grain's `MapDataset.mix` (one sub-dataset per group).
    """

    groups: list[str]
    indices: list[np.ndarray]
    weights: list[float]
    byte_shares: list[float]
    record_weights: np.ndarray
    absent_domains: list[str]
    absent_languages: list[str]
    dropped: list[str]

    def summary(self) -> dict[str, Any]:
        return {
            "groups": {
                g: {"records": int(len(i)), "sample_prob": w, "byte_share": s}
                for g, i, w, s in zip(self.groups, self.indices, self.weights, self.byte_shares)
            },
            "absent_domains": self.absent_domains,
            "absent_languages": self.absent_languages,
            "dropped_groups": self.dropped,
        }


class PreparedCorpus:
    """A prepared corpus directory: shards, tokenizer and manifest (see module docstring)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.manifest: dict[str, Any] = json.loads((self.directory / "manifest.json").read_text())
        self._tokenizer: Tokenizer | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer.load(self.directory / "tokenizer")
        return self._tokenizer

    def _split(self, split: str) -> dict[str, Any]:
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r}; valid splits: {', '.join(SPLITS)}.")
        return self.manifest["splits"][split]

    def source(self, split: str = "train") -> RecordSource:
        """Random-access records of a split, sorted by (repo, path)."""
        s = self._split(split)
        return RecordSource([self.directory / f for f in s["shards"]], s["records"])

    def repos(self, split: str = "train") -> list[tuple[str, int, int]]:
        """(repo, start, end) record ranges of a split, in record order."""
        self._split(split)
        return [tuple(r) for r in self.manifest["repos"][split]]  # type: ignore[misc]

    def groups(self, split: str = "train") -> tuple[list[str], np.ndarray]:
        """Group names ("domain/language") and the group id of every record of a split."""
        s = self._split(split)
        return list(s["groups"]), np.load(self.directory / f"{split}.groups.npy")

    def mixture(self, data_cfg: Any, split: str = "train") -> Mixture:
        """Sampling weights from `data.domain_weights` / `data.language_weights`."""
        return mixture_weights(self, data_cfg, split)

    def __repr__(self) -> str:
        sp = self.manifest["splits"]
        return (
            f"PreparedCorpus({self.directory}, train={sp['train']['records']} records, "
            f"heldout={sp['heldout']['records']} records)"
        )


def _as_dict(x: Any) -> dict[str, float]:
    if x is None:
        return {}
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    return {str(k): float(v) for k, v in dict(x).items()}


def mixture_weights(corpus: PreparedCorpus, data_cfg: Any, split: str = "train") -> Mixture:
    """Deterministic group weights for a split (see `Mixture`).

    Domain weights (Table 2) split the mass between domains present in the split; an empty
    dict means natural frequencies. Language weights (Table 3) split the `code` domain's mass
    between languages; keys may be aliases ("c" and "cpp" both add to "C/C++"); a language
    missing from the dict gets the "Other" weight (0 if none), an empty dict means natural
    frequencies. Configured domains/languages absent from the
    corpus are listed (and their mass goes to the rest), as are present groups dropped by a
    zero weight.
    """
    names, gid = corpus.groups(split)
    if not names:
        raise CorpusError(
            f"The {split} split is empty, so it has no mixture; use the other split or "
            "change data.heldout_fraction."
        )
    stats = corpus._split(split)["group_stats"]
    dw = _as_dict(getattr(data_cfg, "domain_weights", {}))
    lw: dict[str, float] = collections.defaultdict(float)
    for k, v in _as_dict(getattr(data_cfg, "language_weights", {})).items():
        # Aliases ("c", "cpp", "python", "bash") map to the manifest's names and add up.
        lw["Other" if k.lower() == "other" else normalize_language(k)] += v
    lw = dict(lw)
    by_domain: dict[str, list[int]] = collections.defaultdict(list)
    for g, name in enumerate(names):
        by_domain[name.split("/", 1)[0]].append(g)
    present_domains = sorted(by_domain)
    present_langs = {n.split("/", 1)[1] for n in names if n.startswith("code/")}
    absent_domains = sorted(set(dw) - set(present_domains))
    absent_langs = sorted(set(lw) - present_langs - {"Other"})
    bytes_of = {n: stats[n]["bytes"] for n in names}
    total_bytes = sum(bytes_of.values()) or 1
    share: dict[str, float] = {}
    dropped: list[str] = []
    dom_mass = {}
    for d in present_domains:
        natural = sum(bytes_of[names[g]] for g in by_domain[d]) / total_bytes
        dom_mass[d] = dw.get(d, 0.0) if dw else natural
    if dw and sum(dom_mass.values()) <= 0:
        raise CorpusError(
            f"data.domain_weights={dw} gives no weight to any domain present in the {split} "
            f"split ({', '.join(present_domains)}). Add one of them, e.g. "
            f"data.domain_weights={{'{present_domains[0]}': 1.0}}."
        )
    z = sum(dom_mass.values())
    for d in present_domains:
        members = [names[g] for g in by_domain[d]]
        if d == "code" and lw:
            w = {m: lw.get(m.split("/", 1)[1], lw.get("Other", 0.0)) for m in members}
            if dom_mass[d] > 0 and sum(w.values()) <= 0:
                raise CorpusError(
                    f"data.language_weights={lw} gives no weight to any language present in "
                    f"the {split} split ({', '.join(sorted(present_langs))}). Add one of them "
                    "or an 'Other' weight."
                )
        else:
            w = {m: float(bytes_of[m]) for m in members}
        wz = sum(w.values()) or 1.0
        for m in members:
            share[m] = dom_mass[d] / z * w[m] / wz
    for n in names:
        if share[n] <= 0:
            dropped.append(n)
    # Record-sampling probability so that expected byte shares match `share`.
    probs = np.array(
        [
            share[n] / (bytes_of[n] / max(1, stats[n]["records"])) if share[n] > 0 else 0.0
            for n in names
        ]
    )
    probs = probs / probs.sum()
    counts = np.bincount(gid, minlength=len(names))
    rec_w = probs[gid] / np.maximum(counts[gid], 1)
    indices = [np.flatnonzero(gid == g) for g in range(len(names))]
    return Mixture(
        groups=names,
        indices=indices,
        weights=[float(p) for p in probs],
        byte_shares=[float(share[n]) for n in names],
        record_weights=rec_w / rec_w.sum(),
        absent_domains=absent_domains,
        absent_languages=absent_langs,
        dropped=dropped,
    )


# --------------------------------------------------------------------------- writing side
def _write_split(
    out_dir: Path, split: str, records: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[list[Any]]]:
    from array_record.python.array_record_module import ArrayRecordWriter

    blobs = [
        json.dumps(
            {k: r[k] for k in ("repo", "path", "content", "language", "domain")},
            ensure_ascii=False,
        ).encode("utf-8")
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
    repos: list[list[Any]] = []
    for i, r in enumerate(records):
        if repos and repos[-1][0] == r["repo"]:
            repos[-1][2] = i + 1
        else:
            repos.append([r["repo"], i, i + 1])
    langs: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"files": 0, "bytes": 0})
    doms: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"files": 0, "bytes": 0})
    gstats: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"records": 0, "bytes": 0})
    group_names = sorted({f"{r['domain']}/{r['language']}" for r in records})
    gindex = {g: i for i, g in enumerate(group_names)}
    gid = np.zeros(len(records), np.int32)
    for i, r in enumerate(records):
        nb = len(r["content"].encode("utf-8"))
        langs[r["language"]]["files"] += 1
        langs[r["language"]]["bytes"] += nb
        doms[r["domain"]]["files"] += 1
        doms[r["domain"]]["bytes"] += nb
        g = f"{r['domain']}/{r['language']}"
        gstats[g]["records"] += 1
        gstats[g]["bytes"] += nb
        gid[i] = gindex[g]
    np.save(out_dir / f"{split}.groups.npy", gid)
    info = {
        "records": len(records),
        "bytes": sum(v["bytes"] for v in langs.values()),
        "json_bytes": total,
        "repos": len(repos),
        "shards": shards,
        "languages": dict(sorted(langs.items())),
        "domains": dict(sorted(doms.items())),
        "groups": group_names,
        "group_stats": dict(sorted(gstats.items())),
    }
    return info, repos


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


def _build(
    listing: sources.Listing,
    data_cfg: Any,
    cfg: dict[str, Any],
    key: str,
    vocab_size: int,
    out_dir: Path,
) -> None:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    params = _Params(
        int(cfg["max_file_bytes"]), int(cfg["shingle_size"]), int(cfg["minhash_num_perm"])
    )
    bands, rows = int(cfg["minhash_bands"]), int(cfg["minhash_rows"])
    if bands * rows != params.num_perm:
        raise ValueError(
            f"data.minhash_bands x data.minhash_rows = {bands} x {rows} = {bands * rows}, but "
            f"data.minhash_num_perm = {params.num_perm}; set minhash_num_perm to {bands * rows}."
        )
    procs = max(1, int(getattr(data_cfg, "num_prepare_processes", 1) or 1))
    skips = collections.Counter(listing.path_skips)
    recs: list[dict[str, Any]] = []
    if listing.kind in ("jsonl", "parquet"):
        max_rows = int(cfg.get("max_files") or 0)
        batches = (
            (b, params, bool(cfg["exclude_tests"]))
            for b in _row_batches(listing.row_inputs, max_rows)
        )
        results: Iterable[Any] = (
            r for batch in _parallel_map(_process_rows, batches, procs) for r in batch
        )
    else:
        items = [(f, params) for f in listing.files]
        results = _parallel_map(_process_file, items, procs if len(items) >= 64 else 1)
    n_seen = 0
    for r in results:
        n_seen += 1
        if isinstance(r, str):
            skips[r] += 1
        else:
            recs.append(r)
    timings["read_filter_minhash_s"] = time.perf_counter() - t0
    if not recs:
        raise CorpusError(
            f"The {listing.kind!r} corpus has no usable files after filtering: "
            f"{n_seen} read, skipped {dict(skips)}. Point data.path at source code, or relax "
            "data.max_file_bytes / data.exclude_tests."
        )
    t1 = time.perf_counter()
    recs.sort(key=lambda r: (r["repo"], r["path"], r["key"]))
    bytes_in = sum(len(r["content"].encode("utf-8")) for r in recs)
    keep = dedup.exact_duplicates([r["key"] for r in recs])
    exact_removed = int((~keep).sum())
    recs = [r for r, k in zip(recs, keep) if k]
    sigs = np.stack([r["sig"] for r in recs])
    near = dedup.near_duplicates(sigs, bands, rows, float(cfg["minhash_threshold"]))
    near_removed_bytes = sum(
        len(r["content"].encode("utf-8")) for r, k in zip(recs, near.keep) if not k
    )
    recs = [r for r, k in zip(recs, near.keep) if k]
    timings["dedup_s"] = time.perf_counter() - t1
    split_of_repo = assign_splits([r["repo"] for r in recs], float(cfg["heldout_fraction"]))
    by_split = {s: [r for r in recs if split_of_repo[r["repo"]] == s] for s in SPLITS}
    if not by_split["train"]:
        raise CorpusError(
            f"The training split is empty ({len(recs)} files in {len(split_of_repo)} "
            f"repositories, all held out). Lower data.heldout_fraction "
            f"(now {cfg['heldout_fraction']}) or add repositories."
        )
    t2 = time.perf_counter()
    # ~8 MB of sampled text per 4,096 chunks: on the stdlib, 4,096 chunks gave 3.646 held-out
    # bytes/token against 3.654 with all 14,881, at 40% of the time; a large vocabulary
    # needs more text, hence vocab_size // 2 chunks.
    tok = Tokenizer.train(
        (r["content"] for r in by_split["train"]),
        vocab_size,
        max_chunks=max(4096, vocab_size // 2),
    )
    tok.save(out_dir / "tokenizer")
    timings["tokenizer_s"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    split_info, repo_ranges = {}, {}
    for s in SPLITS:
        split_info[s], repo_ranges[s] = _write_split(out_dir, s, by_split[s])
    timings["write_s"] = time.perf_counter() - t3
    timings["total_s"] = time.perf_counter() - t0
    languages: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"files": 0, "bytes": 0})
    domains: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"files": 0, "bytes": 0})
    for s in SPLITS:
        for lang, v in split_info[s]["languages"].items():
            languages[lang]["files"] += v["files"]
            languages[lang]["bytes"] += v["bytes"]
        for d, v in split_info[s]["domains"].items():
            domains[d]["files"] += v["files"]
            domains[d]["bytes"] += v["bytes"]
    manifest = {
        "format": "zen-code-jax prepared corpus",
        "cache_version": CACHE_VERSION,
        "input_hash": key,
        "listing_signature": listing.signature(),
        "config": cfg,
        "source": listing.kind,
        "counts": {
            "listed": len(listing.files) + sum(listing.path_skips.values())
            if listing.files
            else n_seen,
            "read": n_seen,
            "after_filters": n_seen - (sum(skips.values()) - sum(listing.path_skips.values())),
            "after_exact_dedup": n_seen
            - (sum(skips.values()) - sum(listing.path_skips.values()))
            - exact_removed,
            "kept": len(recs),
            "bytes_after_filters": bytes_in,
            "bytes_kept": sum(v["bytes"] for v in languages.values()),
        },
        "skipped": dict(sorted(skips.items())),
        "dedup": {
            "exact_normalization": "CRLF/CR->LF, trailing whitespace per line and outer blank lines removed",
            "exact_removed": exact_removed,
            "near": {
                **near.stats(),
                "removed_bytes": near_removed_bytes,
                "num_perm": params.num_perm,
                "bands": bands,
                "rows": rows,
                "threshold": float(cfg["minhash_threshold"]),
                "shingle_size": params.shingle_size,
                "candidate_probability_at_threshold": dedup.lsh_candidate_probability(
                    float(cfg["minhash_threshold"]), bands, rows
                ),
            },
        },
        "languages": dict(sorted(languages.items(), key=lambda kv: -kv[1]["bytes"])),
        "domains": dict(sorted(domains.items())),
        "domains_absent": [d for d in DOMAINS if d not in domains],
        "note": _language_note(domains, languages),
        "splits": split_info,
        "repos": repo_ranges,
        "tokenizer": {
            "dir": "tokenizer",
            "vocab_size": tok.vocab_size,
            "sp_vocab_size": tok.sp_vocab_size,
            "fingerprint": tok.fingerprint(),
            "trained_on": "train split",
        },
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "processes": procs,
    }
    (out_dir / "manifest.json").write_text(
        json.dumps(manifest, indent=1, ensure_ascii=False) + "\n"
    )


def prepare_corpus(data_cfg: Any, vocab_size: int, workdir: str | os.PathLike) -> PreparedCorpus:
    """Prepare (or reuse) the corpus described by the `data` config group.

    Returns a PreparedCorpus whose manifest also carries a `mixture` block: the configured
    domain/language weights resolved against what the training split holds (absent ones
    listed), recomputed on every call because weights are not part of the cache key.
    """
    if not str(workdir):
        raise ValueError("prepare_corpus needs a workdir: pass the run's WORKDIR (a folder).")
    listing = sources.list_corpus(data_cfg)
    cfg = prepare_config(data_cfg, vocab_size)
    key = cache_key(listing, cfg)
    cache_root = Path(workdir).expanduser() / "cache"
    final = cache_root / key
    if not (final / "manifest.json").is_file():
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = cache_root / f".tmp-{key[:16]}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            _build(listing, data_cfg, cfg, key, vocab_size, tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "manifest.json").is_file():  # not a benign race: re-raise
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    corpus = PreparedCorpus(final)
    corpus.manifest["mixture"] = mixture_weights(corpus, data_cfg, "train").summary()
    return corpus
