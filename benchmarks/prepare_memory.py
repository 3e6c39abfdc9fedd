"""Peak RSS of `prepare_corpus` (local streaming runner) against corpus size.

Builds a synthetic `dir` corpus of N files (~1.2 KB of distinct Python each, 100 files per
repository) or uses a named source, runs `prepare_corpus` in a fresh child process, and
prints the child's peak RSS (ru_maxrss of the preparing process, and the largest of its
forked read workers), the corpus bytes and the wall time. Memory that grows with N is the
per-file metadata (~300 bytes + 8 per LSH band); contents are streamed through a spill file.

    PYTHONPATH=. python benchmarks/prepare_memory.py --files 2000 8000 32000
    PYTHONPATH=. python benchmarks/prepare_memory.py --source local
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from zen_code_jax.config import base_config
from zen_code_jax.data.prepare import prepare_corpus
c = base_config().data
c.source, c.path, c.num_prepare_processes = sys.argv[1], sys.argv[2], 2
t = time.perf_counter()
corpus = prepare_corpus(c, 2048, sys.argv[3])
m = corpus.manifest
print(json.dumps({
    "wall_s": round(time.perf_counter() - t, 1),
    "read": m["counts"]["read"], "kept": m["counts"]["kept"],
    "bytes": m["counts"]["bytes_after_filters"],
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}))
"""


def synth(root: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = [f"{a}{b}" for a in ("get", "set", "load", "parse", "emit") for b in "xyzuvw"]
    for i in range(n):
        p = root / f"repo{i // 100:05d}" / f"mod{i % 100:03d}.py"
        p.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"# module {i}", "import os", ""]
        for _ in range(8):
            name = f"{rng.choice(words)}_{rng.randrange(10**9)}"
            lines += [
                f"def {name}(a, b={rng.randrange(100)}):",
                f"    c = a * {rng.randrange(10**6)} + b",
                f"    return os.path.join(str(c), '{rng.choice(words)}{rng.randrange(999)}')",
                "",
            ]
        p.write_text("\n".join(lines))


def run(source: str, path: str, work: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, source, path, work],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, nargs="*", default=[])
    ap.add_argument("--source", default="")
    args = ap.parse_args()
    for n in args.files:
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            synth(Path(d) / "corpus", n)
            made = time.perf_counter() - t
            r = run("dir", str(Path(d) / "corpus"), str(Path(d) / "work"))
            print(json.dumps({"files": n, "synth_s": round(made, 1), **r}), flush=True)
    if args.source:
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps({"source": args.source, **run(args.source, "", d)}), flush=True)


if __name__ == "__main__":
    main()
