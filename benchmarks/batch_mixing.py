"""How many distinct files a training batch mixes (issue 10, item 1).

Builds the cpu-scale FIM-ablation pipeline (seq 512, batch 4; fim.rate 0 so a piece's tokens
identify its file) on a prepared stdlib corpus and reports, over the first N batches: the
mean distinct files per batch, how many batches hold pieces of a single file, and the
longest run of consecutive batches that share one file.

    python benchmarks/batch_mixing.py --corpus WORKDIR/cache/<key> [--steps 256]

The corpus directory is the one `experiments/run.py --config=experiments/fim_ablation.py`
prepares (stdlib source, vocab 8192). Segments are attributed to files by wrapping the
pipeline's per-file transform (in-process, num_workers=0), so the figure measures exactly
the batches the trainer would see.
"""

from __future__ import annotations

import argparse
import collections

import numpy as np

import experiments.fim_ablation as fim_ablation  # noqa: E402  (run from the repository root)
from zen_code_jax.data import pipeline
from zen_code_jax.data.corpus import PreparedCorpus


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--window", type=int, default=None, help="data.row_shuffle_window")
    args = ap.parse_args()
    cfg = fim_ablation.get_config("cpu")
    cfg.fim.rate = 0.0
    if args.window is not None:
        cfg.data.row_shuffle_window = args.window
    corpus = PreparedCorpus(args.corpus)
    owner: dict[bytes, str] = {}
    inner = pipeline.FileToSegments.__call__

    def tagged(self, record, rng=None):
        segs = inner(self, record, rng)
        for s in segs:
            owner.setdefault(np.asarray(s, np.int32).tobytes(), record["path"])
        return segs

    pipeline.FileToSegments.__call__ = tagged
    it = pipeline.make_dataset(corpus, cfg, num_workers=0)
    distinct, run, longest, single = [], collections.Counter(), 0, 0
    prev: set[str] = set()
    for _ in range(args.steps):
        b = next(it)
        files = set()
        for r in range(b.inputs.shape[0]):
            seg = b.segment_ids[r]
            for k in range(1, int(seg.max(initial=0)) + 1):
                files.add(owner.get(b.inputs[r][seg == k].astype(np.int32).tobytes(), "?"))
        distinct.append(len(files))
        single += len(files) == 1
        run = collections.Counter(
            {f: run[f] + 1 for f in files if f in prev}
        ) + collections.Counter({f: 1 for f in files if f not in prev})
        longest = max(longest, max(run.values()))
        prev = files
    unknown = sum(1 for d in distinct if d == 0)
    print(
        f"window={cfg.data.get('row_shuffle_window', 'n/a')} batches={args.steps} "
        f"distinct_files_per_batch mean={np.mean(distinct):.2f} median={np.median(distinct):.0f} "
        f"single_file_batches={single}/{args.steps} longest_run_one_file={longest} "
        f"(unattributed={unknown})"
    )


if __name__ == "__main__":
    main()
