"""Padding fraction of first-fit vs best-fit packing on the stdlib (issue 21, item 4).

One epoch of the training split of a prepared stdlib corpus (the FIM ablation's: file mode,
FIM off so nothing but packing changes the rows) through the real pipeline
(`data.pipeline.make_dataset`, `num_epochs=1`), for each sequence length, packer and
packing-group size (`data.row_shuffle_window` rows; the pipeline uses at least 64), and
reports the share of row tokens that are padding (segment 0). Deterministic: the numbers
are the same on every run.

    python benchmarks/packing.py --corpus WORKDIR/cache/<key> [--seq 512 4096] [--rows 64 512]

The corpus directory is the one `experiments/run.py --config=experiments/fim_ablation.py`
prepares (stdlib source, vocab 8192).
"""

from __future__ import annotations

import argparse
import time

import experiments.fim_ablation as fim_ablation  # noqa: E402  (run from the repository root)
from zen_code_jax.data import pipeline
from zen_code_jax.data.corpus import PreparedCorpus
from zen_code_jax.data.packing import PACKERS


def padding(corpus: PreparedCorpus, seq_len: int, packing: str, rows: int) -> tuple[float, int]:
    """(padding fraction, rows) of one epoch of training batches."""
    cfg = fim_ablation.get_config("cpu")
    cfg.fim.rate = 0.0
    cfg.data.packing = packing
    cfg.data.row_shuffle_window = rows
    it = pipeline.make_dataset(corpus, cfg, seq_len=seq_len, batch_size=4, num_epochs=1)
    pad = total = n = 0
    for b in it:
        pad += int((b.segment_ids == 0).sum())
        total += b.segment_ids.size
        n += b.segment_ids.shape[0]
    return pad / max(total, 1), n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--seq", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--rows", type=int, nargs="+", default=[64])
    args = ap.parse_args()
    corpus = PreparedCorpus(args.corpus)
    print("| seq_len | group rows | packer | padding | rows | seconds |")
    print("|---:|---:|---|---:|---:|---:|")
    for seq in args.seq:
        for rows in args.rows:
            for packing in PACKERS:
                t = time.perf_counter()
                frac, n = padding(corpus, seq, packing, rows)
                dt = time.perf_counter() - t
                print(f"| {seq} | {rows} | {packing} | {100 * frac:.2f}% | {n} | {dt:.0f} |")


if __name__ == "__main__":
    main()
