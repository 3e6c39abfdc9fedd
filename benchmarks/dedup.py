"""MinHash near-dedup speed: our vectorized numpy MinHash against datasketch, same input.

Both hash the same 10-token shingles of the same stdlib files with 128 permutations; the
datasketch side uses `MinHash.update_batch` over the shingle byte strings (its fastest path)
and `MinHashLSH(params=(16, 8))` for candidates. Prints docs/s, MB/s and the ratio, the
agreement of the two Jaccard estimates, and the LSH candidate probability curves.

    python benchmarks/dedup.py [--files 400] [--procs 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from zen_code_jax.config import base_config
from zen_code_jax.data import dedup, sources


def load_texts(n: int) -> list[str]:
    cfg = base_config().data
    cfg.max_files = n
    out = []
    for f in sources.list_corpus(cfg).files:
        try:
            with open(f.location, encoding="utf-8") as fh:
                t = fh.read()
        except UnicodeDecodeError:
            continue
        if t.strip():
            out.append(t)
    return out


def ours(texts: list[str], num_perm: int) -> tuple[np.ndarray, float]:
    mh = dedup.MinHasher(num_perm)
    t0 = time.perf_counter()
    sigs = np.stack([mh.signature(t, 10) for t in texts])
    return sigs, time.perf_counter() - t0


def datasketch_sigs(texts: list[str], num_perm: int) -> tuple[list, float]:
    from datasketch import MinHash

    t0 = time.perf_counter()
    out = []
    for t in texts:
        toks = dedup.tokenize(t)
        k = min(10, len(toks))
        shingles = [" ".join(toks[i : i + k]).encode() for i in range(len(toks) - k + 1)]
        m = MinHash(num_perm=num_perm)
        m.update_batch(shingles)
        out.append(m)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--num_perm", type=int, default=128)
    args = ap.parse_args()
    texts = load_texts(args.files)
    # Plant near-duplicates: copies of 50 files with every 15th line dropped.
    n_orig = len(texts)
    for t in texts[:50]:
        texts.append("\n".join(x for i, x in enumerate(t.split("\n")) if i % 15 != 7))
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(
        f"input: {len(texts)} stdlib files, {mb:.1f} MB, 10-token shingles, {args.num_perm} perms"
    )

    sigs, t_ours = ours(texts, args.num_perm)
    ds, t_ds = datasketch_sigs(texts, args.num_perm)
    print(
        f"numpy MinHash : {len(texts) / t_ours:8.0f} docs/s  {mb / t_ours:6.2f} MB/s  ({t_ours:.2f} s)"
    )
    print(f"datasketch    : {len(texts) / t_ds:8.0f} docs/s  {mb / t_ds:6.2f} MB/s  ({t_ds:.2f} s)")
    print(f"ratio numpy / datasketch: {t_ds / t_ours:.2f}x")

    t0 = time.perf_counter()
    res = dedup.near_duplicates(sigs, 16, 8, 0.8)
    t_lsh = time.perf_counter() - t0
    from datasketch import MinHashLSH

    t0 = time.perf_counter()
    lsh = MinHashLSH(num_perm=args.num_perm, params=(16, 8))
    for i, m in enumerate(ds):
        lsh.insert(i, m)
    ds_pairs = set()
    for i, m in enumerate(ds):
        for j in lsh.query(m):
            if j > i and m.jaccard(ds[j]) >= 0.8:
                ds_pairs.add((i, j))
    t_dslsh = time.perf_counter() - t0
    print(
        f"LSH 16x8 + confirm: numpy {t_lsh:.3f} s ({res.confirmed_pairs} pairs), "
        f"datasketch {t_dslsh:.3f} s ({len(ds_pairs)} pairs)"
    )
    # Both estimators against the exact Jaccard of the shingle sets on the planted pairs.
    err_np, err_ds = [], []
    for k in range(min(50, n_orig)):
        i, j = k, n_orig + k
        a = set(dedup.shingle_hashes(texts[i], 10).tolist())
        b = set(dedup.shingle_hashes(texts[j], 10).tolist())
        exact = len(a & b) / len(a | b)
        err_np.append(float((sigs[i] == sigs[j]).mean()) - exact)
        err_ds.append(ds[i].jaccard(ds[j]) - exact)
    for name, e in (("numpy", err_np), ("datasketch", err_ds)):
        e = np.array(e)
        print(
            f"{name:10s} estimate - exact J on 50 planted pairs: bias {e.mean():+.4f}, "
            f"rms {np.sqrt((e**2).mean()):.4f}"
        )
    found = {(i, j) for i, j in ds_pairs}
    ours_pairs = {(i, j) for i in range(len(texts)) for j in [int(res.cluster[i])] if j != i}
    print(f"pairs merged: numpy {len(ours_pairs)}, datasketch {len(found)}")
    print("P(candidate) at J:   " + "  ".join(f"{j:.2f}" for j in (0.7, 0.75, 0.8, 0.85, 0.9)))
    for b, r in ((16, 8), (9, 13)):
        probs = "  ".join(
            f"{dedup.lsh_candidate_probability(j, b, r):.2f}" for j in (0.7, 0.75, 0.8, 0.85, 0.9)
        )
        print(f"  {b:2d} x {r:2d}:          {probs}")


if __name__ == "__main__":
    main()
