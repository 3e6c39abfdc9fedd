"""Data throughput: prepare, dedup, SentencePiece, and the Grain pipeline vs the CPU trainer.

Reports, on the embedded stdlib corpus:
  - prepare throughput (MB/s of input, a fresh cache: read, filter, dedup, split, tokenizer,
    ArrayRecord shards);
  - MinHash dedup docs/s, ours vs datasketch on the same input (benchmarks/dedup.py);
  - SentencePiece encode MB/s and tokens/s (one thread);
  - pipeline tokens/s in file mode and in repository mode (FIM 0.5, packing, batches),
    wall-clock and per CPU-second of this process ("per core");
  - the CPU trainer's tokens/s on `cpu_small` (measured here: a few jitted train steps on
    pipeline batches) and the ratio pipeline / trainer (the issue asks >= 10x);
  - the planning figure: cores per host to feed 37K tokens/s (14B at 50% MFU on 8 H100s).

    python benchmarks/data_pipeline.py [--seconds 10] [--workdir /tmp/zcj_bench] [--workers 0]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

PAPER_HOST_TOKENS_PER_S = 37_000  # 14B at 50% MFU on 8 H100s (docs/data_pipeline.md)


def _load_dedup_bench():
    path = Path(__file__).with_name("dedup.py")
    spec = importlib.util.spec_from_file_location("dedup_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bench_prepare(workdir: Path, vocab_size: int):
    from zen_code_jax.config import base_config
    from zen_code_jax.data.prepare import prepare_corpus

    cfg = base_config()
    shutil.rmtree(workdir / "cache", ignore_errors=True)
    t0 = time.perf_counter()
    corpus = prepare_corpus(cfg.data, vocab_size, workdir)
    dt = time.perf_counter() - t0
    # UTF-8 bytes of every file that passed the filters (the input of dedup onwards).
    in_bytes = corpus.manifest.counts["bytes_after_filters"]
    mb = in_bytes / 1e6 if in_bytes else float("nan")
    print(f"prepare (stdlib, fresh cache): {dt:7.1f} s  {mb:7.1f} MB in  {mb / dt:6.2f} MB/s")
    return corpus


def bench_dedup(n_files: int) -> None:
    db = _load_dedup_bench()
    texts = db.load_texts(n_files)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    _, t_ours = db.ours(texts, 128)
    _, t_ds = db.datasketch_sigs(texts, 128)
    print(
        f"MinHash dedup ({len(texts)} files, {mb:.1f} MB, 128 perms): ours "
        f"{len(texts) / t_ours:7.0f} docs/s, datasketch {len(texts) / t_ds:7.0f} docs/s "
        f"-> {t_ds / t_ours:.1f}x"
    )


def bench_encode(corpus, max_mb: float = 8.0) -> float:
    tok = corpus.tokenizer
    src = corpus.source("train")
    texts, size = [], 0
    for i in range(len(src)):
        t = src[i]["content"]
        texts.append(t)
        size += len(t.encode())
        if size > max_mb * 1e6:
            break
    c0, t0 = time.process_time(), time.perf_counter()
    n = sum(len(tok.encode(t)) for t in texts)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"SentencePiece encode (1 thread): {size / dt / 1e6:6.2f} MB/s  {n / dt / 1e3:7.0f}K tok/s"
        f" wall; {size / cpu / 1e6:6.2f} MB/s per CPU-second ({size / n:.2f} bytes/token)"
    )
    return size / n


def bench_pipeline(corpus, mode: str, seconds: float, seq_len: int, batch: int, workers: int):
    from zen_code_jax.config import base_config
    from zen_code_jax.data.pipeline import make_dataset

    cfg = base_config()
    cfg.data.mode = mode
    it = make_dataset(corpus, cfg, seq_len=seq_len, batch_size=batch, seed=0, num_workers=workers)
    for _ in range(3):  # warm up (worker start, first group)
        next(it)
    c0, t0 = time.process_time(), time.perf_counter()
    n = real = steps = 0
    while time.perf_counter() - t0 < seconds:
        b = next(it)
        n += b.inputs.size
        real += int((b.segment_ids > 0).sum())
        steps += 1
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"pipeline {mode:4s} mode (seq {seq_len}, batch {batch}, workers {workers}): "
        f"{n / dt / 1e3:7.0f}K tok/s wall, {real / dt / 1e3:7.0f}K non-pad tok/s, "
        f"{n / max(cpu, 1e-9) / 1e3:7.0f}K tok/s per CPU-second of this process, "
        f"packing efficiency {real / n:.1%} ({steps} batches)"
    )
    return n / dt, n / max(cpu, 1e-9), it


def bench_trainer(corpus, it, steps: int, batch: int, seq_len: int) -> float:
    """Tokens/s of the real train step on cpu_small (1 CPU device), pipeline batches."""
    import jax

    from zen_code_jax.config import base_config, model_config_from
    from zen_code_jax.parallel import make_mesh
    from zen_code_jax.train import create_train_state, make_train_step

    cfg = base_config()
    cfg.train.seq_len = seq_len
    cfg.train.global_batch_size = batch
    model_cfg = model_config_from(cfg.model).replace(vocab_size=corpus.tokenizer.vocab_size)
    mesh = make_mesh(cfg.mesh, devices=jax.devices()[:1])
    state, shardings = create_train_state(model_cfg, cfg, mesh, jax.random.PRNGKey(0))
    step = make_train_step(model_cfg, cfg, mesh, shardings)
    batches = [next(it) for _ in range(steps + 1)]
    state, m = step(state, batches[0])  # compile
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for b in batches[1:]:
        state, m = step(state, b)
    jax.block_until_ready(m)
    dt = time.perf_counter() - t0
    tps = steps * batch * seq_len / dt
    print(
        f"CPU trainer cpu_small (seq {seq_len}, batch {batch}, 1 device): {tps:7.0f} tok/s "
        f"wall ({steps} steps)"
    )
    return tps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0, help="per pipeline measurement")
    ap.add_argument("--workdir", default="", help="prepared-corpus cache (default: a temp dir)")
    ap.add_argument("--workers", type=int, default=0, help="grain worker processes")
    ap.add_argument("--seq_len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dedup_files", type=int, default=300)
    ap.add_argument("--train_steps", type=int, default=5)
    ap.add_argument("--skip_prepare_timing", action="store_true", help="reuse a cached corpus")
    args = ap.parse_args()
    from zen_code_jax.config import base_config

    vocab = int(base_config().model.vocab_size)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="zcj_bench_"))
    print(f"host: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, workdir {workdir}")
    if args.skip_prepare_timing:
        from zen_code_jax.data.prepare import prepare_corpus

        corpus = prepare_corpus(base_config().data, vocab, workdir)
    else:
        corpus = bench_prepare(workdir, vocab)
    bench_dedup(args.dedup_files)
    bench_encode(corpus)
    file_tps, file_core, it = bench_pipeline(
        corpus, "file", args.seconds, args.seq_len, args.batch, args.workers
    )
    repo_tps, repo_core, _ = bench_pipeline(
        corpus, "repo", args.seconds, args.seq_len, args.batch, args.workers
    )
    try:
        trainer = bench_trainer(corpus, it, args.train_steps, args.batch, args.seq_len)
        src = "measured"
    except Exception as e:  # noqa: BLE001 - the trainer is another part; fall back to a figure
        # ~4K tok/s: cpu_small, seq 512, batch 8, one device, on an idle 2-core host
        # (docs/measurements.md, the data-throughput table).
        print(f"(trainer not measured: {type(e).__name__}: {e}); using the recorded 4K tok/s")
        trainer, src = 4000.0, "recorded in docs/measurements.md"
    print(
        f"ratio pipeline / trainer ({src} {trainer:.0f} tok/s): file {file_tps / trainer:.0f}x, "
        f"repo {repo_tps / trainer:.0f}x (needs >= 10x)"
    )
    per_core = min(file_core, repo_core)
    print(
        f"planning: {per_core / 1e3:.0f}K tok/s per core (slower mode) -> "
        f"{PAPER_HOST_TOKENS_PER_S / per_core:.2f} cores per host feed 37K tok/s "
        f"(14B, 50% MFU, 8 H100s)"
    )


if __name__ == "__main__":
    main()
