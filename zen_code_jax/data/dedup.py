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
  1 - (1 - J^rows)^bands; the default 20 x 5 (100 permutations) gives 0.9996 at J=0.8,
  0.975 at 0.7, 0.47 at 0.5 and 0.05 at 0.3 (curves in docs/measurements.md).
- Candidates are confirmed by their *exact* Jaccard (`jaccard` over the 64-bit shingle
  sets, recomputed from the two contents) >= threshold, merged with union-find, and each
  cluster keeps its first member in (repo, path) order, so the result is deterministic.
  Confirming by the signature estimate instead made J = 0.8 the 50% point (end-to-end
  recall 0.47 there); with the exact check, recall at J is the LSH probability above and a
  pair below the threshold merges only through a chain of pairs above it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import zlib
from collections.abc import Callable

import numpy as np

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_MASK64 = (1 << 64) - 1
_POLY = np.uint64(0x9E3779B97F4A7C15)
_SHIFT32 = np.uint64(32)
MAX_BUCKET = 256
# End-to-end recall (share of planted pairs merged) per brute-force Jaccard level, measured
# through `prepare_corpus` (benchmarks/dedup_recall.py; docs/measurements.md, 2026-12-01).
# 5 seeds x 40 pairs per level; 1.000 at every J >= 0.80, 0.000 at every J <= 0.756.
MEASURED_RECALL: dict[str, float] = {
    "1.000": 1.0,
    "0.946": 1.0,
    "0.895": 1.0,
    "0.846": 1.0,
    "0.800": 1.0,
    "0.756": 0.0,
    "0.714": 0.0,
    "0.674": 0.0,
    "0.636": 0.0,
    "0.565": 0.0,
}


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


def shingle_hashes64(text: str, shingle_size: int = 10) -> np.ndarray:
    """64-bit hashes of the shingles of `text`, one per position (no tokens -> empty).

    A text shorter than one shingle is one shingle of all its tokens. 64 bits are kept for
    exact Jaccard and decontamination, where 32-bit collisions would matter (a 5K-shingle
    file against 50K benchmark shingles would collide with probability ~6% at 32 bits).
    """
    return token_ngram_hashes(_TOKEN_RE.findall(text), shingle_size)


def token_ngram_hashes(toks: list[str], shingle_size: int = 10) -> np.ndarray:
    """64-bit hashes of every run of `shingle_size` tokens (one of all, if fewer)."""
    if not toks:
        return np.zeros(0, np.uint64)
    ids = _token_ids(toks)
    k = min(shingle_size, len(ids))
    n = len(ids) - k + 1
    h = ids[:n].copy()
    for j in range(1, k):
        h *= _POLY
        h += ids[j : j + n]
    return _mix64(h)


def shingle_hashes(text: str, shingle_size: int = 10, unique: bool = False) -> np.ndarray:
    """32-bit hashes (as uint64) of the shingles of `text`, one per position (MinHash input).

    MinHash only needs the minimum, so duplicates are harmless and `unique` (sorted set) is
    off by default.
    """
    h = shingle_hashes64(text, shingle_size) >> _SHIFT32
    return np.unique(h) if unique else h


def shingle_set(text: str, shingle_size: int = 10) -> np.ndarray:
    """The sorted set of 64-bit shingle hashes: what exact Jaccard is computed over."""
    return np.unique(shingle_hashes64(text, shingle_size))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted unique hash sets (1.0 for two empty sets)."""
    if not len(a) and not len(b):
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


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
    confirmed_pairs: int  # of those, Jaccard >= threshold
    clusters: int  # clusters with more than one member
    removed: int

    def stats(self) -> dict[str, int]:
        return {
            "candidate_pairs": self.candidate_pairs,
            "confirmed_pairs": self.confirmed_pairs,
            "clusters": self.clusters,
            "removed": self.removed,
        }


def check_band_shape(num_perm: int, bands: int, rows: int) -> None:
    """One-line error when the signature length is not bands x rows."""
    if num_perm != bands * rows:
        raise ValueError(
            f"MinHash signatures have {num_perm} entries but bands x rows = {bands} x {rows} = "
            f"{bands * rows}; set data.minhash_num_perm = data.minhash_bands * data.minhash_rows."
        )


def band_keys(signatures: np.ndarray, bands: int, rows: int, seed: int = 2) -> np.ndarray:
    """uint64 [N, bands]: one hash per LSH band (equal keys = equal band, up to 2^-64).

    This is all the LSH stage needs per document (8 bytes a band instead of the 4 x rows of
    the signature), so the local path keeps only these in memory.
    """
    sig = np.atleast_2d(np.asarray(signatures))
    check_band_shape(sig.shape[1], bands, rows)
    rng = np.random.Generator(np.random.Philox(seed))
    mult = (rng.integers(0, 2**63, rows, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
    s64 = sig.astype(np.uint64).reshape(len(sig), bands, rows)
    keys = (s64 * mult[None, None, :]).sum(axis=2, dtype=np.uint64)
    return _mix64(keys + np.arange(bands, dtype=np.uint64)[None, :])


def bucket_pairs(size: int, max_bucket: int = MAX_BUCKET) -> np.ndarray:
    """int [P, 2] positions (i < j) linked inside one bucket of `size` members sorted in
    corpus order: all pairs, or past `max_bucket` (mass boilerplate) a star on the first
    member plus a chain, which bounds the work and still connects every member once each
    link is confirmed. Shared by the local and the Beam runner, so both link the same pairs."""
    if size < 2:
        return np.zeros((0, 2), np.int64)
    if size <= max_bucket:
        ii, jj = np.triu_indices(size, 1)
        return np.stack([ii, jj], 1).astype(np.int64)
    rest = np.arange(1, size)
    star = np.stack([np.zeros(size - 1, np.int64), rest], 1)
    chain = np.stack([rest[:-1], rest[1:]], 1)
    return np.unique(np.concatenate([star, chain]), axis=0)


def candidate_pairs(
    keys: np.ndarray, max_bucket: int = MAX_BUCKET
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (i, j), i < j, of documents sharing at least one band key, sorted."""
    n = keys.shape[0]
    chunks: list[np.ndarray] = []
    for b in range(keys.shape[1]):
        order = np.argsort(keys[:, b], kind="stable")
        ks = keys[order, b]
        starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
        ends = np.r_[starts[1:], n]
        for s, e in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
            members = np.sort(order[s:e])
            chunks.append(members[bucket_pairs(len(members), max_bucket)])
    if not chunks:
        z = np.zeros(0, np.int64)
        return z, z
    pairs = np.unique(np.concatenate(chunks).astype(np.int64) @ np.array([n, 1], np.int64))
    return pairs // n, pairs % n


def components(n: int, pi: np.ndarray, pj: np.ndarray) -> np.ndarray:
    """Union-find over edges: the root of each of n nodes is its component's smallest index."""
    parent = np.arange(n)
    for i, j in zip(pi.tolist(), pj.tolist()):
        ri, rj = _find(parent, i), _find(parent, j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([_find(parent, i) for i in range(n)], dtype=np.int64)


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
    jaccard_of: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    max_bucket: int = MAX_BUCKET,
) -> NearDupResult:
    """Cluster documents whose Jaccard is >= `threshold` among LSH candidates.

    `signatures` is uint32 [N, bands*rows] (or, with `jaccard_of`, band keys uint64
    [N, bands] are computed from it). `jaccard_of(pi, pj)` returns the exact Jaccard of each
    candidate pair; without it the signature estimate is used, which is what made J = 0.8
    the 50% point (recall 0.47 there) and is kept only for comparison.
    """
    sig = np.asarray(signatures)
    n = sig.shape[0]
    if sig.ndim != 2:
        raise ValueError(f"MinHash signatures must be [N, num_perm], got shape {sig.shape}.")
    check_band_shape(sig.shape[1], bands, rows)
    if n < 2:
        return NearDupResult(np.ones(n, bool), np.arange(n), 0, 0, 0, 0)
    pi, pj = candidate_pairs(band_keys(sig, bands, rows), max_bucket)
    if jaccard_of is None:
        est = np.zeros(len(pi))
        step = max(1, (1 << 24) // max(1, sig.shape[1]))
        for s in range(0, len(pi), step):
            est[s : s + step] = (sig[pi[s : s + step]] == sig[pj[s : s + step]]).mean(axis=1)
    else:
        est = np.asarray(jaccard_of(pi, pj), float)
    return cluster_result(n, pi, pj, est >= threshold)


def cluster_result(n: int, pi: np.ndarray, pj: np.ndarray, confirmed: np.ndarray) -> NearDupResult:
    """Components of the confirmed candidate pairs; each keeps its first (smallest) member."""
    roots = components(n, pi[confirmed], pj[confirmed])
    keep = roots == np.arange(n)
    sizes = np.bincount(roots, minlength=n)
    return NearDupResult(
        keep=keep,
        cluster=roots,
        candidate_pairs=int(len(pi)),
        confirmed_pairs=int(np.count_nonzero(confirmed)),
        clusters=int((sizes > 1).sum()),
        removed=int(n - keep.sum()),
    )
