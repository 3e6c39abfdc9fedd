"""The runner-independent stages of `prepare`, over per-file metadata (never all contents).

Both runners (the local streaming one in `prepare.py` and the Beam pipeline in
`beam_prepare.py`) call these same functions, so they keep the same files and write the same
shards. A record's metadata (`META_FIELDS`, ~200 bytes plus 8 per LSH band) is what the
global stages see; contents are fetched only for candidate pairs (exact Jaccard), the
tokenizer sample, and the final write.

- `order_key`: the corpus order, (repo, path, exact key); unique after exact dedup.
- `exact_dedup`: first in that order per exact key.
- `confirm_pairs` + `dedup.cluster_result`: near dedup with exact Jaccard.
- `make_plan`: split by repository, tokenizer sample, repo-FT filter, shard assignment.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from zen_code_jax.data import dedup
from zen_code_jax.data.corpus import SPLITS, TRAIN_SPLIT
from zen_code_jax.data.sources import CorpusError

META_FIELDS = ("repo", "path", "key", "language", "domain", "bytes", "lines", "json_bytes")
SHARD_BYTES = 64 << 20
_SPLIT_SALT = "split:"
_TOK_SALT = "tokenizer:"
# Bytes of text offered to the tokenizer trainer per chunk it samples (~2 KB a chunk): the
# trainer then samples `max_chunks` chunks from ~4x as many, as it did from the whole split.
TOKENIZER_BYTES_PER_CHUNK = 8 << 10


def order_key(m: dict[str, Any]) -> tuple[str, str, str]:
    """The corpus order: (repo, path, exact key hex)."""
    return (m["repo"], m["path"], m["key"])


def meta_of(r: dict[str, Any]) -> dict[str, Any]:
    """The metadata part of a read record (drops `bands` and `blob`)."""
    return {k: r[k] for k in META_FIELDS}


def exact_dedup(metas_sorted: Sequence[dict[str, Any]]) -> np.ndarray:
    """Keep mask over records in corpus order: the first of each exact key."""
    return dedup.exact_duplicates([m["key"] for m in metas_sorted])


def confirm_pairs(
    pi: np.ndarray,
    pj: np.ndarray,
    content_of: Callable[[Sequence[int]], list[str]],
    shingle_size: int,
    cache_docs: int = 4096,
) -> np.ndarray:
    """Exact Jaccard of each candidate pair (pi[k], pj[k]), contents fetched in batches.

    Pairs are sorted by pi, so an LRU of `cache_docs` shingle sets bounds the memory while
    most lookups hit.
    """
    cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
    out = np.zeros(len(pi))
    step = 512
    for s in range(0, len(pi), step):
        a, b = pi[s : s + step].tolist(), pj[s : s + step].tolist()
        need = sorted({i for i in a + b if i not in cache})
        for i, text in zip(need, content_of(need) if need else []):
            cache[i] = dedup.shingle_set(text, shingle_size)
            if len(cache) > cache_docs:
                cache.popitem(last=False)
        for k, (i, j) in enumerate(zip(a, b)):
            si = cache[i] if i in cache else dedup.shingle_set(content_of([i])[0], shingle_size)
            sj = cache[j] if j in cache else dedup.shingle_set(content_of([j])[0], shingle_size)
            out[s + k] = dedup.jaccard(si, sj)
    return out


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


# --------------------------------------------------------------------------- plan
@dataclasses.dataclass
class Plan:
    """Everything decided from metadata after dedup: indices into the deduped, corpus-ordered
    metadata list."""

    by_split: dict[str, list[int]]  # records per split, corpus order (after the repo filter)
    n_repos: int
    tokenizer_sample: list[int]  # train-split records the tokenizer trains on, corpus order
    repo_filter: dict[str, int]  # repos_removed, files_removed, bytes_removed (train split)
    shards: dict[str, list[list[int]]]  # split -> per shard its record indices

    def shard_names(self, split: str) -> list[str]:
        n = len(self.shards[split])
        return [f"{split}-{s:05d}-of-{n:05d}.array_record" for s in range(n)]


def tokenizer_sample(metas: Sequence[dict[str, Any]], idx: Sequence[int], budget: int) -> list[int]:
    """The files with the smallest sha256("tokenizer:" + repo/path) until `budget` bytes (at
    least one file), returned in corpus order: a sample spread over repositories that never
    needs the whole split in memory."""
    ranked = sorted(
        idx,
        key=lambda i: hashlib.sha256(
            f"{_TOK_SALT}{metas[i]['repo']}/{metas[i]['path']}".encode()
        ).digest(),
    )
    out, total = [], 0
    for i in ranked:
        if out and total + metas[i]["bytes"] > budget:
            continue
        out.append(i)
        total += metas[i]["bytes"]
    return sorted(out)


def repo_ft_filter(
    metas: Sequence[dict[str, Any]], idx: Sequence[int], min_files: int, min_lines: int
) -> tuple[list[int], dict[str, int]]:
    """Keep repositories with more than `min_files` files and more than `min_lines` lines
    (the report's repository-level data: > 10 files, > 1K lines); 0/0 keeps everything."""
    files: collections.Counter = collections.Counter()
    lines: collections.Counter = collections.Counter()
    for i in idx:
        files[metas[i]["repo"]] += 1
        lines[metas[i]["repo"]] += metas[i]["lines"]
    ok = {r for r in files if files[r] > min_files and lines[r] > min_lines}
    kept = [i for i in idx if metas[i]["repo"] in ok]
    dropped = [i for i in idx if metas[i]["repo"] not in ok]
    return kept, {
        "min_files": int(min_files),
        "min_lines": int(min_lines),
        "repos_removed": len(files) - len(ok),
        "files_removed": len(dropped),
        "bytes_removed": int(sum(metas[i]["bytes"] for i in dropped)),
    }


def plan_shards(sizes: Sequence[int]) -> list[list[int]]:
    """Positions per shard: ceil(total / SHARD_BYTES) shards (at least one) of equal count."""
    total = int(sum(sizes))
    n = max(1, -(-total // SHARD_BYTES))
    per = -(-len(sizes) // n) if len(sizes) else 0
    return [list(range(s * per, min(len(sizes), (s + 1) * per))) for s in range(n)]


def make_plan(
    metas: Sequence[dict[str, Any]],
    heldout_fraction: float,
    tokenizer_budget: int,
    min_repo_files: int = 0,
    min_repo_lines: int = 0,
) -> Plan:
    """Split by repository, pick the tokenizer sample (train split, before the repo filter,
    so arms with and without it share one tokenizer), apply the repo-FT filter to the train
    split only (the held-out split stays comparable across arms), assign shards."""
    split_of_repo = assign_splits([m["repo"] for m in metas], heldout_fraction)
    by_split = {
        s: [i for i, m in enumerate(metas) if split_of_repo[m["repo"]] == s] for s in SPLITS
    }
    if not by_split[TRAIN_SPLIT]:
        raise CorpusError(
            f"The training split is empty ({len(metas)} files in {len(split_of_repo)} "
            f"repositories, all held out). Lower data.heldout_fraction "
            f"(now {heldout_fraction}) or add repositories."
        )
    sample = tokenizer_sample(metas, by_split[TRAIN_SPLIT], tokenizer_budget)
    kept, stats = repo_ft_filter(metas, by_split[TRAIN_SPLIT], min_repo_files, min_repo_lines)
    if not kept:
        raise CorpusError(
            f"data.min_repo_files={min_repo_files} / data.min_repo_lines={min_repo_lines} "
            f"remove every training repository; lower them (the largest training repository "
            f"has {max(collections.Counter(metas[i]['repo'] for i in by_split[TRAIN_SPLIT]).values())} files)."
        )
    by_split[TRAIN_SPLIT] = kept
    shards = {}
    for s in SPLITS:
        pos = plan_shards([metas[i]["json_bytes"] for i in by_split[s]])
        shards[s] = [[by_split[s][p] for p in shard] for shard in pos]
    return Plan(by_split, len(split_of_repo), sample, stats, shards)
