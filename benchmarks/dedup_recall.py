"""End-to-end near-dedup recall against brute-force Jaccard, through `prepare_corpus`.

Plants pairs at exact Jaccard levels (tests/test_dedup.py::measure_end_to_end: 369-token
documents, k substitutions -> J = (360 - 10k) / (360 + 10k), one repository per row, the
default dedup config) and prints, per level, the share of pairs merged over several seeds.
Rows at J >= 0.80 are recall; rows at J <= 0.70 are false merges.

    PYTHONPATH=. python benchmarks/dedup_recall.py [--seeds 5] [--pairs 40]
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import tempfile
from pathlib import Path


def _test_module():
    path = Path(__file__).resolve().parent.parent / "tests" / "test_dedup.py"
    spec = importlib.util.spec_from_file_location("test_dedup_planted", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=40)
    args = ap.parse_args()
    mod = _test_module()
    pairs: dict[str, int] = collections.Counter()
    merged: dict[str, float] = collections.Counter()
    for seed in range(1, args.seeds + 1):
        with tempfile.TemporaryDirectory() as d:
            for j, v in mod.measure_end_to_end(seed, Path(d), args.pairs).items():
                pairs[j] += v["pairs"]
                merged[j] += v["merged"] * v["pairs"]
    table = {j: round(merged[j] / pairs[j], 4) for j in sorted(pairs)}
    print("| brute-force J | pairs | merged |")
    print("|---|---|---|")
    for j in sorted(pairs, reverse=True):
        print(f"| {j} | {pairs[j]} | {table[j]:.3f} |")
    print(json.dumps(table))


if __name__ == "__main__":
    main()
