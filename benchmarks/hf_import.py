"""HF import / export throughput and peak host memory, against transformers in the same run.

    python benchmarks/hf_import.py                 # ~200M-parameter random model, bf16
    python benchmarks/hf_import.py --json          # one JSON line (tests/test_hf.py reads it)

Writes a random Qwen2 checkpoint (numpy, several safetensors shards), then measures, each
in a fresh subprocess so peaks do not mix:

  ours_import   zen_code_jax.hf streaming load (safe_open -> sharded arrays), GB/s and peak
  ours_export   export_params of those arrays back to sharded safetensors
  reference     transformers AutoModelForCausalLM.from_pretrained + our numpy converter
                (model/hf_convert.hf_to_params on the state dict): the "load it all, then
                convert" path

Memory is the peak of RssAnon (anonymous memory: what the process allocated) above the
process baseline after imports, sampled every millisecond by a thread; the whole
process's peak RSS is reported apart (VmHWM). For the import and export *commands* as
whole processes, see tests/test_hf_memory.py and docs/measurements.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SIZES = {  # name -> Qwen2 config fields
    "200M": dict(vocab_size=32_000, hidden_size=1024, num_hidden_layers=12,
                 num_attention_heads=16, num_key_value_heads=4, intermediate_size=2816),
    "50M": dict(vocab_size=16_000, hidden_size=512, num_hidden_layers=8,
                num_attention_heads=8, num_key_value_heads=2, intermediate_size=1536),
}  # fmt: skip


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class PeakSampler:
    """Peak RssAnon above the value at start, sampled every millisecond."""

    def __enter__(self) -> PeakSampler:
        self.base = _status("RssAnon")
        self.peak = self.base
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, _status("RssAnon"))
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, _status("RssAnon"))

    @property
    def above(self) -> int:
        return self.peak - self.base


def write_random(
    out: Path, size: str, dtype: str = "bfloat16", shard_bytes: int = 150 << 20
) -> dict:
    """A random Qwen2 checkpoint (untied, biases/norms random too) in several shards."""
    import ml_dtypes
    from safetensors.numpy import save_file

    cfg = dict(SIZES[size], model_type="qwen2", architectures=["Qwen2ForCausalLM"],
               hidden_act="silu", rope_theta=1e6, rms_norm_eps=1e-6,
               max_position_embeddings=4096, tie_word_embeddings=False,
               use_sliding_window=False, torch_dtype=dtype)  # fmt: skip
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    h, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = d // h
    shapes = {"model.embed_tokens.weight": (v, d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (h * hd, d), p + "self_attn.q_proj.bias": (h * hd,),
            p + "self_attn.k_proj.weight": (kv * hd, d), p + "self_attn.k_proj.bias": (kv * hd,),
            p + "self_attn.v_proj.weight": (kv * hd, d), p + "self_attn.v_proj.bias": (kv * hd,),
            p + "self_attn.o_proj.weight": (d, h * hd), p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d), p + "mlp.down_proj.weight": (d, f),
        }  # fmt: skip
    shapes |= {"model.norm.weight": (d,), "lm_head.weight": (v, d)}
    np_dtype = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32}[dtype]
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    groups, cur, used = [], [], 0
    item = np.dtype(np_dtype).itemsize
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape)) * item
        if cur and used + nbytes > shard_bytes:
            groups.append(cur)
            cur, used = [], 0
        cur.append(name)
        used += nbytes
    groups.append(cur)
    weight_map = {}
    for k, names in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {
            n: (rng.standard_normal(shapes[n], np.float32) * 0.02).astype(np_dtype) for n in names
        }
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        weight_map |= {n: fname for n in names}
        del tensors
    total = sum(int(np.prod(s)) * item for s in shapes.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    (out / "config.json").write_text(json.dumps(cfg))
    largest = max(int(np.prod(s)) for s in shapes.values()) * item
    return {"bytes": total, "largest_tensor_bytes": largest, "shards": len(groups),
            "params": sum(int(np.prod(s)) for s in shapes.values())}  # fmt: skip


def _phase(name: str, hf_dir: str, out_dir: str) -> dict:
    import jax

    from zen_code_jax.hf.checkpoint import HFCheckpoint
    from zen_code_jax.hf.export import export_params
    from zen_code_jax.hf.load import load_params

    ckpt = HFCheckpoint.open(hf_dir)
    # The process baseline: the backend started and one computation compiled and run.
    jax.block_until_ready(jax.jit(lambda x: x + 1)(jax.numpy.zeros(8)))
    if name == "ours_import" or name == "ours_export":
        with PeakSampler() as s:
            t = time.perf_counter()
            params = load_params(ckpt)
            jax.block_until_ready(params)
            dt = time.perf_counter() - t
        res = {"seconds": dt, "peak_anon_above_base": s.above}
        if name == "ours_export":
            with PeakSampler() as s:
                t = time.perf_counter()
                export_params(
                    params, ckpt.model_cfg, Path(out_dir) / "export", max_shard_size="150MB"
                )
                dt = time.perf_counter() - t
            res = {"seconds": dt, "peak_anon_above_base": s.above}
        res["resident_param_bytes"] = sum(x.nbytes for x in jax.tree.leaves(params))
    else:
        import torch  # noqa: F401 - imported before the baseline, like jax above
        import transformers

        from zen_code_jax.model.hf_convert import hf_to_params

        with PeakSampler() as s:
            t = time.perf_counter()
            model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype="auto")
            sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
            params = hf_to_params(sd, ckpt.model_cfg)
            dt = time.perf_counter() - t
        res = {"seconds": dt, "peak_anon_above_base": s.above}
        del params, sd, model
    res["peak_vmhwm"] = _status("VmHWM")
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="200M", choices=sorted(SIZES))
    ap.add_argument("--phases", default="ours_import,ours_export,reference")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--_phase", help=argparse.SUPPRESS)
    ap.add_argument("--_dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._phase:
        print(json.dumps(_phase(a._phase, a._dir + "/hf", a._dir)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        info = write_random(Path(tmp) / "hf", a.size)
        results = {"size": a.size, **info}
        for ph in a.phases.split(","):
            r = subprocess.run([sys.executable, __file__, f"--_phase={ph}", f"--_dir={tmp}"],
                               capture_output=True, text=True, env=os.environ.copy())  # fmt: skip
            if r.returncode:
                raise SystemExit(f"phase {ph} failed:\n{r.stderr[-3000:]}")
            res = json.loads(r.stdout.strip().splitlines()[-1])
            res["gb_per_s"] = info["bytes"] / res["seconds"] / 1e9
            results[ph] = res
    if a.json:
        print(json.dumps(results))
        return
    print(f"{a.size}: {info['params'] / 1e6:.0f}M params, {info['bytes'] / 1e9:.2f} GB bf16, "
          f"{info['shards']} shards, largest tensor {info['largest_tensor_bytes'] / 1e6:.0f} MB")  # fmt: skip
    for ph in a.phases.split(","):
        r = results[ph]
        print(f"  {ph:12s} {r['gb_per_s']:.3f} GB/s  peak anon above base "
              f"{r['peak_anon_above_base'] / 1e6:.0f} MB  VmHWM {r['peak_vmhwm'] / 1e6:.0f} MB")  # fmt: skip
    if "reference" in results and "ours_import" in results:
        o, ref = results["ours_import"], results["reference"]
        print(f"  import speed ours/reference {ref['seconds'] / o['seconds']:.2f}x, "
              f"peak anon ours/reference {o['peak_anon_above_base'] / ref['peak_anon_above_base']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
