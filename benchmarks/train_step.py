"""Train-step throughput: our jitted JAX step vs HF transformers' PyTorch Qwen2 step.

Same model (hidden 256, 4 layers, 8 query / 2 KV heads, FFN 768, vocab 8192), same
batch (8 x 512 tokens), same work per step: forward, masked next-token cross-entropy,
backward, global-norm clipping and AdamW. Runs in one process and prints tokens/s, MFU
(6N + causal attention FLOPs per token, against --peak_flops) and the ratios:

    python benchmarks/train_step.py [--steps 5] [--repeats 3] [--torch eager_f32,compile_f32]

JAX runs on one device (the whole CPU). torch runs any of: eager float32, eager with
bfloat16 autocast, torch.compile float32, torch.compile with bfloat16 autocast (a mode that
fails, e.g. torch.compile without a C++ toolchain, is reported and skipped).

On CPUs without native bf16 (no AVX512-BF16/AMX, e.g. AVX2-only AMD EPYC) torch's bf16
GEMMs take a slow emulated path (measured 84 tok/s vs 1,676 in f32 here), so the
float32 rows are the meaningful comparison there; see BUILD.md for measured tables.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import jax
import numpy as np

from zen_code_jax.config import base_config, model_config_from, model_group
from zen_code_jax.data.batch import Batch
from zen_code_jax.parallel import make_mesh
from zen_code_jax.train import create_train_state, make_train_step
from zen_code_jax.train.flops import flops_per_token, peak_flops_per_device

BATCH, SEQ = 8, 512
TORCH_MODES = ("eager_f32", "eager_bf16", "compile_f32", "compile_bf16")


def make_batch(vocab: int, seed: int) -> Batch:
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, vocab, (BATCH, SEQ + 1)).astype(np.int32)
    return Batch(
        inputs=toks[:, :-1],
        targets=toks[:, 1:],
        segment_ids=np.ones((BATCH, SEQ), np.int32),
        positions=np.tile(np.arange(SEQ, dtype=np.int32), (BATCH, 1)),
        loss_mask=np.ones((BATCH, SEQ), np.int32),
    )


def config_for(dtype: str):
    cfg = base_config()
    with cfg.unlocked():
        cfg.model = model_group("cpu_small", dtype=dtype)
    cfg.train.seq_len, cfg.train.global_batch_size, cfg.train.steps = SEQ, BATCH, 1000
    cfg.optimizer.warmup_steps = 10
    return cfg


def bench_jax(dtype: str, steps: int) -> tuple[Callable[[], float], float]:
    """(timer: tokens/s over `steps` fresh steps, first-call seconds incl. compile)."""
    cfg = config_for(dtype)
    mcfg = model_config_from(cfg.model)
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    state, sh = create_train_state(mcfg, cfg, mesh, jax.random.key(0))
    step = make_train_step(mcfg, cfg, mesh, sh)
    batches = [make_batch(mcfg.vocab_size, i) for i in range(steps + 1)]
    box = {"state": state}
    t = time.perf_counter()
    box["state"], m = step(box["state"], batches[0])
    jax.block_until_ready(m)
    first = time.perf_counter() - t

    def timer() -> float:
        t = time.perf_counter()
        for b in batches[1:]:
            box["state"], m = step(box["state"], b)
        jax.block_until_ready(m)
        return BATCH * SEQ * steps / (time.perf_counter() - t)

    return timer, first


def bench_torch(mode: str, steps: int) -> tuple[Callable[[], float], float]:
    import torch
    import torch.nn.functional as F
    from transformers import Qwen2Config, Qwen2ForCausalLM

    mcfg = model_config_from(config_for("float32").model)
    torch.manual_seed(0)
    hf = Qwen2Config(
        vocab_size=mcfg.vocab_size,
        hidden_size=mcfg.hidden_size,
        intermediate_size=mcfg.intermediate_size,
        num_hidden_layers=mcfg.num_layers,
        num_attention_heads=mcfg.num_heads,
        num_key_value_heads=mcfg.num_kv_heads,
        max_position_embeddings=mcfg.max_position_embeddings,
        rope_theta=mcfg.rope_theta,
        rms_norm_eps=mcfg.rms_norm_eps,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    model = Qwen2ForCausalLM(hf).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    bf16 = mode.endswith("bf16")

    def step(inp, tgt):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=inp).logits
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), tgt.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    if mode.startswith("compile"):
        step = torch.compile(step)
    data = [make_batch(mcfg.vocab_size, i) for i in range(steps + 1)]
    data = [
        (
            torch.from_numpy(b.inputs.astype(np.int64)),
            torch.from_numpy(b.targets.astype(np.int64)),
        )
        for b in data
    ]
    t = time.perf_counter()
    float(step(*data[0]).detach())
    first = time.perf_counter() - t

    def timer() -> float:
        t = time.perf_counter()
        for inp, tgt in data[1:]:
            loss = step(inp, tgt)
        float(loss.detach())
        return BATCH * SEQ * steps / (time.perf_counter() - t)

    return timer, first


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--jax", default="float32,bfloat16", help="comma-separated JAX dtypes")
    p.add_argument(
        "--torch",
        default="eager_f32,eager_bf16,compile_f32,compile_bf16",
        help="comma-separated torch modes: eager_f32, eager_bf16, compile_f32, compile_bf16",
    )
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--peak_flops", type=float, default=0.0, help="per-device peak; 0 = table")
    a = p.parse_args()
    mcfg = model_config_from(config_for("bfloat16").model)
    fpt = flops_per_token(mcfg, SEQ)
    peak = peak_flops_per_device(a.peak_flops)
    setups: dict[str, tuple[Callable[[], float], float]] = {}
    for dt in [d for d in a.jax.split(",") if d]:
        setups[f"jax {dt}"] = bench_jax(dt, a.steps)
    modes = [m for m in a.torch.split(",") if m]
    bad = set(modes) - set(TORCH_MODES)
    if bad:
        p.error(f"unknown torch mode(s) {sorted(bad)}; choose from {TORCH_MODES}")
    for mode in modes:
        try:
            setups[f"torch {mode}"] = bench_torch(mode, a.steps)
        except Exception as e:  # torch.compile needs a C++ toolchain; report, do not die
            print(f"torch {mode} failed: {type(e).__name__}: {str(e)[:200]}")
    # Rounds interleave the runs (A B C, A B C, ...) so that load from other jobs on a
    # shared machine drifts over all of them alike; medians and ranges are reported.
    tps: dict[str, list[float]] = {name: [] for name in setups}
    for r in range(a.repeats):
        for name, (timer, _) in setups.items():
            tps[name].append(timer())
        print(
            f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in tps.items()), flush=True
        )
    med = {name: float(np.median(v)) for name, v in tps.items()}
    print(f"\n{fpt:.3e} FLOPs/token, peak {peak:.3g} FLOP/s per device (MFU basis)")
    print(f"{'run':24s} {'tok/s':>9s} {'range':>13s} {'MFU':>7s} {'first step s':>13s}")
    for name, (_, first) in setups.items():
        rng = f"{min(tps[name]):.0f}-{max(tps[name]):.0f}"
        print(f"{name:24s} {med[name]:9.0f} {rng:>13s} {med[name] * fpt / peak:7.1%} {first:13.1f}")
    for ours, refs in (
        ("jax bfloat16", ("torch eager_bf16", "torch compile_bf16")),
        ("jax float32", ("torch eager_f32", "torch compile_f32")),
    ):
        for ref in refs:
            if ours in med and ref in med:
                per_round = [x / y for x, y in zip(tps[ours], tps[ref])]
                print(
                    f"ratio {ours} / {ref}: {med[ours] / med[ref]:.2f}x (medians; per round "
                    f"{min(per_round):.2f}-{max(per_round):.2f}x)"
                )


if __name__ == "__main__":
    main()
