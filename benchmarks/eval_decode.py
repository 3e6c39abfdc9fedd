"""Evaluation-shaped decoding through `InferenceEngine.complete`: wall time and tokens.

The workload of the main job's generation tasks at the cpu scale (experiments/fim_ablation.py:
`eval.batch_size=16`, `eval.max_new_tokens=32`, HumanEval's stop strings, greedy): N token
prompts of mixed lengths, random weights (so no row ends early at `<|endoftext|>`: the
longest decode). Reports the first call (compiles included) and the median of the warm
repeats, and writes every row's tokens to --out so two versions of the decoder can be
compared token for token (`--compare OTHER.json`).

    python benchmarks/eval_decode.py [--preset cpu_small] [--rows 50] [--batch 16]
        [--new_tokens 32] [--min_len 64] [--max_len 448] [--repeats 2] [--out tokens.json]
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import sysconfig
import time

import numpy as np

STOP = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#")  # HumanEval's stop strings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="cpu_small")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rows", type=int, default=50)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new_tokens", type=int, default=32)
    ap.add_argument("--min_len", type=int, default=64)
    ap.add_argument("--max_len", type=int, default=448)
    ap.add_argument("--scale", type=float, default=0.1, help="std of the random weights")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--prefill_chunk", type=int, default=0, help="engine's (0: its default)")
    ap.add_argument("--out", default=None, help="write the decoded token ids here (JSON)")
    ap.add_argument("--compare", default=None, help="a JSON written by --out: count mismatches")
    args = ap.parse_args()

    import jax

    from zen_code_jax.data.tokenizer import Tokenizer
    from zen_code_jax.infer.engine import CompletionRequest, InferenceEngine, random_params
    from zen_code_jax.model.config import get_preset

    cfg = get_preset(args.preset, dtype=args.dtype)
    files = sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/json/*.py"))
    tok = Tokenizer.train([open(f).read() for f in files], cfg.vocab_size)
    params = random_params(cfg, seed=0, scale=args.scale)
    kw = {"prefill_chunk": args.prefill_chunk} if args.prefill_chunk else {}
    engine = InferenceEngine(params, cfg, tok, max_batch_size=args.batch, **kw)
    rng = np.random.default_rng(0)
    special = set(tok.special_ids) | {tok.eot_id, tok.pad_id}
    ok = np.array([i for i in range(10, cfg.vocab_size) if i not in special])
    lens = rng.integers(args.min_len, args.max_len + 1, args.rows)
    reqs = [
        CompletionRequest(
            rng.choice(ok, int(n)).tolist(), args.new_tokens, args.temperature, 1.0, STOP, 0, i
        )
        for i, n in enumerate(lens)
    ]

    cpu: list[float] = []

    def once() -> tuple[float, list]:
        t, c = time.perf_counter(), time.process_time()
        done = engine.complete(reqs)
        cpu.append(time.process_time() - c)  # all threads: steadier than wall when shared
        return time.perf_counter() - t, done

    first, done = once()
    warm = [once()[0] for _ in range(args.repeats)]
    ids = [list(map(int, c.token_ids)) for c in done]
    texts = [c.text for c in done]
    new = sum(c.completion_tokens for c in done)
    med = statistics.median(warm) if warm else first
    print(
        f"config: preset={args.preset} dtype={args.dtype} rows={args.rows} batch={args.batch} "
        f"prompt={args.min_len}..{args.max_len} new={args.new_tokens} jax={jax.__version__}"
    )
    print(f"first call (compiles included): {first:.2f} s")
    print(f"warm: median {med:.2f} s of {[round(w, 2) for w in warm]} ({new} new tokens)")
    print(f"cpu seconds: first {cpu[0]:.2f}, warm {[round(c, 2) for c in cpu[1:]]}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"ids": ids, "texts": texts}, f)
    if args.compare:
        with open(args.compare) as f:
            other = json.load(f)
        same_text = sum(a == b for a, b in zip(texts, other["texts"]))
        print(f"texts equal to {args.compare}: {same_text}/{len(texts)}")


if __name__ == "__main__":
    main()
