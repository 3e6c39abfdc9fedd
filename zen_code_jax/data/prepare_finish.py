"""What every prepare runner does after its stages: the outcome, summaries, shards, manifest.

`finish` trains (or takes) the tokenizer, writes `{split}.groups.npy` and `manifest.json`
(last) once a runner (the local one in `prepare.py`, or `beam_prepare.py`) has written the
shards; `make_manifest` builds the manifest from the same `Outcome` for both, so their
manifests agree. The parameters both runners derive from the prepare config
(`read_params`, the tokenizer budget) live here too, because `finish` records them.

Why its own module: it is the one part `prepare.py` and `beam_prepare.py` share, so Beam
imports it without the local runner.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zen_code_jax.data import decontaminate, dedup, prepare_stages, sources
from zen_code_jax.data.corpus import SPLITS, Manifest
from zen_code_jax.data.languages import DOMAINS
from zen_code_jax.data.prepare_read import ReadParams
from zen_code_jax.data.prepare_stages import Plan
from zen_code_jax.data.sources import CorpusError
from zen_code_jax.data.tokenizer import Tokenizer

CACHE_VERSION = 2
_EXACT_NORMALIZATION = "CRLF/CR->LF, trailing whitespace per line and outer blank lines removed"


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
        bands=bands,
        rows=rows,
        decontaminate=bool(cfg["decontaminate"]),
        mbpp_path=str(cfg["mbpp_path"]),
    )


def tokenizer_chunks(vocab_size: int) -> int:
    """Chunks the tokenizer trains on: on the stdlib, 4,096 chunks gave 3.646 held-out
    bytes/token against 3.654 with all 14,881, at 40% of the time; a large vocabulary needs
    more text, hence vocab_size // 2."""
    return max(4096, vocab_size // 2)


def tokenizer_budget(vocab_size: int) -> int:
    """Bytes of training-split text the tokenizer sample holds (`make_plan`)."""
    return tokenizer_chunks(vocab_size) * prepare_stages.TOKENIZER_BYTES_PER_CHUNK


# --------------------------------------------------------------------------- outcome
@dataclasses.dataclass
class Outcome:
    """What a runner hands to the manifest: counts, dedup statistics and the plan."""

    n_seen: int
    skips: collections.Counter
    bytes_in: int  # UTF-8 bytes after filters, before dedup
    exact_removed: int
    near: dict[str, int]  # dedup.NearDupResult.stats()
    near_removed_bytes: int
    metas: list[dict[str, Any]]  # deduped, in corpus order
    plan: Plan


def check_nonempty(kind: str, n_seen: int, skips: collections.Counter, kept: int) -> None:
    if not kept:
        raise CorpusError(
            f"The {kind!r} corpus has no usable files after filtering: {n_seen} read, skipped "
            f"{dict(skips)}. Point data.path at source code, or relax data.max_file_bytes / "
            "data.exclude_tests."
        )


# --------------------------------------------------------------------------- summaries
def _file_stats() -> collections.defaultdict:
    return collections.defaultdict(lambda: {"files": 0, "bytes": 0})


def _nbytes(r: dict[str, Any]) -> int:
    return int(r["bytes"]) if "bytes" in r else len(r["content"].encode("utf-8"))


@dataclasses.dataclass
class SplitSummary:
    """Statistics of one split's records (everything in its manifest entry but the shards)."""

    info: dict[str, Any]  # records, bytes, repos, languages, domains, groups, group_stats
    repo_ranges: list[list[Any]]  # [repo, start, end] per repository, in record order
    group_ids: np.ndarray  # int32 group id per record (index into info["groups"])


def summarize_split(records: Sequence[dict[str, Any]]) -> SplitSummary:
    """Per-language, per-domain and per-group counts of records sorted by (repo, path).

    Takes records or their metadata (`bytes` instead of `content`); pure (no files), so an
    in-memory corpus computes its groups exactly as a prepared one.
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


def write_summaries(out_dir: Path, outcome: Outcome) -> tuple[dict, dict]:
    """`{split}.groups.npy` per split; (split manifest entries, repo ranges)."""
    split_info, repo_ranges = {}, {}
    for split in SPLITS:
        metas = [outcome.metas[i] for i in outcome.plan.by_split[split]]
        summary = summarize_split(metas)
        np.save(out_dir / f"{split}.groups.npy", summary.group_ids)
        info = summary.info
        split_info[split] = {
            "records": info["records"],
            "bytes": info["bytes"],
            "json_bytes": int(sum(m["json_bytes"] for m in metas)),
            "repos": info["repos"],
            "shards": outcome.plan.shard_names(split),
            **{k: info[k] for k in ("languages", "domains", "groups", "group_stats")},
        }
        repo_ranges[split] = summary.repo_ranges
    return split_info, repo_ranges


def write_shard(path: Path, blobs: Iterable[bytes]) -> None:
    """One ArrayRecord shard (`group_size:1`, as array_record.beam's sink), written to a
    temporary name and renamed."""
    # local import: array_record is only needed when writing (and is slow to import)
    from array_record.python.array_record_module import ArrayRecordWriter

    tmp = path.with_name(path.name + ".tmp")
    w = ArrayRecordWriter(str(tmp), "group_size:1")
    for b in blobs:
        w.write(b)
    w.close()
    os.replace(tmp, path)


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
    outcome: Outcome,
    split_info: dict[str, Any],
    repo_ranges: dict[str, Any],
    tok: Tokenizer,
    timings: dict[str, float],
    processes: int,
) -> Manifest:
    """The manifest from the stages' results (the same for every runner)."""
    languages, domains = _file_stats(), _file_stats()
    for s in SPLITS:
        for lang, v in split_info[s]["languages"].items():
            languages[lang]["files"] += v["files"]
            languages[lang]["bytes"] += v["bytes"]
        for d, v in split_info[s]["domains"].items():
            domains[d]["files"] += v["files"]
            domains[d]["bytes"] += v["bytes"]
    n_seen = outcome.n_seen
    listing_skips = sum(listing.path_skips.values())
    after_filters = n_seen - (sum(outcome.skips.values()) - listing_skips)
    bands, rows = int(cfg["minhash_bands"]), int(cfg["minhash_rows"])
    threshold = float(cfg["minhash_threshold"])
    after_dedup = len(outcome.metas)
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
            "contaminated": int(outcome.skips.get("contaminated", 0)),
            "after_filters": after_filters,
            "after_exact_dedup": after_filters - outcome.exact_removed,
            "after_near_dedup": after_dedup,
            "repo_filter_removed": outcome.plan.repo_filter["files_removed"],
            "kept": sum(split_info[s]["records"] for s in SPLITS),
            "bytes_after_filters": outcome.bytes_in,
            "bytes_kept": sum(v["bytes"] for v in languages.values()),
        },
        skipped=dict(sorted(outcome.skips.items())),
        dedup={
            "exact_normalization": _EXACT_NORMALIZATION,
            "exact_removed": outcome.exact_removed,
            "near": {
                **outcome.near,
                "removed_bytes": outcome.near_removed_bytes,
                "num_perm": params.num_perm,
                "bands": bands,
                "rows": rows,
                "threshold": threshold,
                "shingle_size": params.shingle_size,
                "confirmed_by": "exact Jaccard of the 64-bit shingle sets",
                "candidate_probability": {
                    f"{j:.2f}": round(dedup.lsh_candidate_probability(j, bands, rows), 4)
                    for j in (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
                },
                "measured_recall": dedup.MEASURED_RECALL,
            },
            "decontamination": {
                "enabled": bool(cfg["decontaminate"]),
                "ngram": decontaminate.NGRAM,
                "benchmarks": ["humaneval"] + (["mbpp"] if cfg["mbpp_path"] else []),
                "removed": int(outcome.skips.get("contaminated", 0)),
            },
            "repo_filter": outcome.plan.repo_filter,
        },
        languages=dict(sorted(languages.items(), key=lambda kv: -kv[1]["bytes"])),
        domains=dict(sorted(domains.items())),
        domains_absent=[d for d in DOMAINS if d not in domains],
        note=_language_note(domains, languages),
        splits=split_info,
        repos=repo_ranges,
        tokenizer={
            "dir": "tokenizer",
            "vocab_size": tok.vocab_size,
            "sp_vocab_size": tok.sp_vocab_size,
            "fingerprint": tok.fingerprint(),
            "trained_on": (
                f"{len(outcome.plan.tokenizer_sample)} training-split files (hash sample, "
                "before the repo filter)"
            ),
        },
        timings={k: round(v, 3) for k, v in timings.items()},
        processes=processes,
    )


def finish(
    out_dir: Path,
    *,
    listing: sources.Listing,
    cfg: dict[str, Any],
    key: str,
    outcome: Outcome,
    sample_texts: Iterable[str],
    vocab_size: int,
    timings: dict[str, float],
    processes: int,
    runner: str,
    tokenizer: Tokenizer | None = None,
) -> Manifest:
    """Tokenizer, groups and manifest (written last), after a runner wrote the shards.

    `tokenizer`: a checkpoint's own (train.init_checkpoint="hf:DIR") instead of training."""
    t = time.perf_counter()
    if tokenizer is None:
        tok = Tokenizer.train(sample_texts, vocab_size, max_chunks=tokenizer_chunks(vocab_size))
    else:
        tok = tokenizer
    tok.save(out_dir / "tokenizer")
    timings["tokenizer_s"] = time.perf_counter() - t
    split_info, repo_ranges = write_summaries(out_dir, outcome)
    manifest = make_manifest(
        listing=listing,
        cfg=cfg,
        key=key,
        params=read_params(cfg),
        outcome=outcome,
        split_info=split_info,
        repo_ranges=repo_ranges,
        tok=tok,
        timings={**timings, f"runner_{runner}": 1.0},
        processes=processes,
    )
    manifest.write(out_dir / "manifest.json")
    return manifest
