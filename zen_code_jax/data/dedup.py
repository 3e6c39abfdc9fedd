"""Exact and near deduplication: SHA-256 of normalized content, then MinHash LSH.

Exact: the key is SHA-256 of the content after normalizing line endings (CRLF and CR to LF),
removing trailing whitespace on every line and leading/trailing blank lines. Files that differ
only in those ways are the same file; the first in (repo, path) order is kept.

Near: MinHash over shingles of 10 consecutive lexical tokens (`\\w+` runs and single
punctuation characters; whitespace ignored, so re-indentation does not hide a copy).
- Token hashes: CRC-32 of the token's UTF-8 (stable across processes, unlike `hash`).
- Shingle hash: a polynomial over its 10 token hashes mod 2^64, finished with the splitmix64
  mixer and cut to 32 bits; the document is the *set* of its shingle hashes.
- Permutations: `(a * x + b) mod 2^64 >> 32` with random 64-bit a (odd) and b, a strongly
  universal family for 32-bit x; the signature keeps the minimum per permutation. All in
  numpy, vectorized over shingles and permutations (see benchmarks/dedup.py for speed
  against datasketch).
- LSH: `bands x rows == num_perm`. A pair at Jaccard J becomes a candidate with probability
  1 - (1 - J^rows)^bands: 0.947 at J=0.8 and 0.994 at J=0.85 for 16 x 8, whereas the 9 x 13
  that datasketch's error-balancing choice picks for threshold 0.8 gives 0.40 at J=0.8
  (it trades recall for fewer candidates; the curve is tabulated in docs/measurements.md).
- Candidates are confirmed by the estimated Jaccard (share of equal signature entries) >=
  threshold, merged with union-find, and each cluster keeps its first member in (repo, path)
  order, so the result is deterministic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import zlib

import numpy as np

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_MASK64 = (1 << 64) - 1
_POLY = np.uint64(0x9E3779B97F4A7C15)
_SHIFT32 = np.uint64(32)


def normalize_for_exact(text: str) -> str:
    """Line endings to LF, trailing whitespace per line removed, outer blank lines removed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def exact_key(text: str) -> bytes:
    """SHA-256 digest of the normalized content."""
    return hashlib.sha256(normalize_for_exact(text).encode("utf-8", "surrogatepass")).digest()


def tokenize(text: str) -> list[str]:
    """Lexical tokens for shingling: identifier/number runs and single punctuation chars."""
    return _TOKEN_RE.findall(text)


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer (vectorized, wrapping uint64)."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


_TOKEN_CACHE: dict[str, int] = {}
_TOKEN_CACHE_MAX = 1 << 20


def _token_ids(toks: list[str]) -> np.ndarray:
    """CRC-32 + 1 of each token, via a per-process cache (tokens repeat a lot in code; the
    cached lookup runs in C and is ~5x faster than hashing every occurrence)."""
    cache = _TOKEN_CACHE
    new = set(toks).difference(cache)
    if len(cache) + len(new) > _TOKEN_CACHE_MAX:
        cache.clear()
        new = set(toks)
    for t in new:
        cache[t] = zlib.crc32(t.encode("utf-8", "surrogatepass")) + 1
    return np.fromiter(map(cache.__getitem__, toks), np.uint64, len(toks))


def shingle_hashes(text: str, shingle_size: int = 10, unique: bool = False) -> np.ndarray:
    """32-bit hashes (as uint64) of the shingles of `text`, one per position.

    MinHash only needs the minimum, so duplicates are harmless and `unique` (sorted set) is
    off by default. A text shorter than one shingle is one shingle of all its tokens; no
    tokens -> empty.
    """
    toks = _TOKEN_RE.findall(text)
    if not toks:
        return np.zeros(0, np.uint64)
    ids = _token_ids(toks)
    k = min(shingle_size, len(ids))
    n = len(ids) - k + 1
    h = ids[:n].copy()
    for j in range(1, k):
        h *= _POLY
        h += ids[j : j + n]
    h = _mix64(h) >> _SHIFT32
    return np.unique(h) if unique else h


class MinHasher:
    """Vectorized MinHash with `num_perm` universal-hash permutations, fixed by `seed`."""

    def __init__(self, num_perm: int = 128, seed: int = 1, chunk: int = 4096):
        rng = np.random.Generator(np.random.Philox(seed))
        self.num_perm = int(num_perm)
        self.a = (rng.integers(0, 2**63, num_perm, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
        self.b = rng.integers(0, 2**63, num_perm, dtype=np.uint64) << np.uint64(1)
        self.chunk = int(chunk)

    def signature_of_hashes(self, hashes: np.ndarray) -> np.ndarray:
        """uint32 [num_perm] minimum of each permutation over the shingle hashes.

        The 64-bit minimum is taken before the `>> 32` (the shift is monotonic, so the top
        bits of the minimum are the minimum of the top bits), in one reused buffer.
        """
        sig = np.full(self.num_perm, np.iinfo(np.uint64).max, np.uint64)
        a, b = self.a[:, None], self.b[:, None]
        buf = np.empty((self.num_perm, min(self.chunk, max(1, len(hashes)))), np.uint64)
        for s in range(0, len(hashes), self.chunk):
            x = hashes[None, s : s + self.chunk]
            v = buf[:, : x.shape[1]]
            np.multiply(a, x, out=v)
            v += b
            np.minimum(sig, v.min(axis=1), out=sig)
        return (sig >> _SHIFT32).astype(np.uint32)

    def signature(self, text: str, shingle_size: int = 10) -> np.ndarray:
        """MinHash signature of a text's shingle set."""
        return self.signature_of_hashes(shingle_hashes(text, shingle_size))


def lsh_candidate_probability(jaccard: float, bands: int, rows: int) -> float:
    """Probability that a pair at this Jaccard shares at least one LSH band."""
    return 1.0 - (1.0 - jaccard**rows) ** bands


def exact_duplicates(keys: list[bytes]) -> np.ndarray:
    """Keep mask: True for the first occurrence of each key (callers order by (repo, path))."""
    seen: set[bytes] = set()
    keep = np.zeros(len(keys), bool)
    for i, k in enumerate(keys):
        if k not in seen:
            seen.add(k)
            keep[i] = True
    return keep


@dataclasses.dataclass
class NearDupResult:
    """Outcome of near dedup over N documents (in the caller's order)."""

    keep: np.ndarray  # bool [N]: the first member of each cluster, and every singleton
    cluster: np.ndarray  # int [N]: index of the cluster's kept document
    candidate_pairs: int  # distinct pairs sharing a band
    confirmed_pairs: int  # of those, estimated Jaccard >= threshold
    clusters: int  # clusters with more than one member
    removed: int

    def stats(self) -> dict[str, int]:
        return {
            "candidate_pairs": self.candidate_pairs,
            "confirmed_pairs": self.confirmed_pairs,
            "clusters": self.clusters,
            "removed": self.removed,
        }


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        parent[i], i = root, parent[i]
    return root


def near_duplicates(
    signatures: np.ndarray,
    bands: int,
    rows: int,
    threshold: float,
    *,
    max_bucket: int = 256,
    seed: int = 2,
) -> NearDupResult:
    """Cluster documents whose MinHash signatures agree on >= `threshold` of entries.

    `signatures` is uint32 [N, bands*rows]. Buckets with more than `max_bucket` members (mass
    boilerplate) are linked as a star to their first member plus a chain, instead of all
    pairs, to bound the work; each link is still confirmed.
    """
    sig = np.asarray(signatures)
    n = sig.shape[0]
    if sig.ndim != 2 or (n and sig.shape[1] != bands * rows):
        raise ValueError(
            f"MinHash signatures have shape {sig.shape} but bands x rows = {bands} x {rows} = "
            f"{bands * rows}; set data.minhash_num_perm = data.minhash_bands * data.minhash_rows."
        )
    parent = np.arange(n)
    if n < 2:
        return NearDupResult(np.ones(n, bool), parent.copy(), 0, 0, 0, 0)
    rng = np.random.Generator(np.random.Philox(seed))
    mult = (rng.integers(0, 2**63, rows, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
    pair_chunks: list[np.ndarray] = []
    s64 = sig.astype(np.uint64)
    for b in range(bands):
        cols = s64[:, b * rows : (b + 1) * rows]
        key = _mix64((cols * mult[None, :]).sum(axis=1, dtype=np.uint64) + np.uint64(b))
        order = np.argsort(key, kind="stable")
        ks = key[order]
        starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
        ends = np.r_[starts[1:], n]
        for s, e in zip(starts, ends):
            if e - s < 2:
                continue
            members = np.sort(order[s:e])
            if len(members) <= max_bucket:
                ii, jj = np.triu_indices(len(members), 1)
                pair_chunks.append(np.stack([members[ii], members[jj]], 1))
            else:
                star = np.stack([np.full(len(members) - 1, members[0]), members[1:]], 1)
                chain = np.stack([members[:-1], members[1:]], 1)
                pair_chunks.append(np.concatenate([star, chain]))
    if not pair_chunks:
        return NearDupResult(np.ones(n, bool), parent.copy(), 0, 0, 0, 0)
    pairs = np.concatenate(pair_chunks).astype(np.int64)
    pairs = np.unique(pairs[:, 0] * n + pairs[:, 1])
    pi, pj = pairs // n, pairs % n
    confirmed = np.zeros(len(pairs), bool)
    step = max(1, (1 << 24) // max(1, sig.shape[1]))
    for s in range(0, len(pairs), step):
        eq = sig[pi[s : s + step]] == sig[pj[s : s + step]]
        confirmed[s : s + step] = eq.mean(axis=1) >= threshold
    for i, j in zip(pi[confirmed].tolist(), pj[confirmed].tolist()):
        ri, rj = _find(parent, i), _find(parent, j)
        if ri != rj:
            # The smaller index (earlier in (repo, path) order) becomes the root.
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([_find(parent, i) for i in range(n)])
    keep = roots == np.arange(n)
    sizes = np.bincount(roots, minlength=n)
    return NearDupResult(
        keep=keep,
        cluster=roots,
        candidate_pairs=int(len(pairs)),
        confirmed_pairs=int(confirmed.sum()),
        clusters=int((sizes > 1).sum()),
        removed=int(n - keep.sum()),
    )
