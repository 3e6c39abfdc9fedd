"""Where the train step's time goes: a `jax.profiler` trace of benchmarks/train_step.py's
JAX step (same model and batch), summed by XLA op and by part of the model.

    python benchmarks/step_profile.py [--steps 3] [--out /tmp/step_profile] [--top 25]
        [--set model.scan_unroll=4]

Prints two tables (ms per step and share): the top ops (fusion name, output shape, the
jax op it came from) and the ops grouped by part (MLP, attention kernel, LM head, loss,
scan buffers, ...). The trace's op times come from XLA:CPU's thunk executor, which runs
independent thunks concurrently, so the durations of overlapping ops (e.g. a layer's dx and
dW GEMMs) both count in full: read shares, not a sum equal to the wall time. The
compiled HLO text is written beside the trace (`OUT.hlo.txt`) to look ops up.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import time

import flax.linen as nn
import jax
from train_step import config_for, make_batch

from zen_code_jax.config import apply_overrides, model_config_from
from zen_code_jax.parallel import make_mesh
from zen_code_jax.parallel.rules import DEFAULT_RULES
from zen_code_jax.train import create_train_state, make_train_step

_SKIP = ("ThunkExecutor", "$", "SlinkyThreadPool", "PjitFunction", "CommonPjRt")


def part_of(name: str, op_name: str) -> str:
    """The model part an op belongs to, from its name and its jax op_name metadata."""
    if "attn/while" in op_name:
        return "attention kernel (flash fwd + bwd)"
    if "/attn/" in op_name:
        return "attention projections, RoPE"
    if "/mlp/" in op_name:
        return "MLP"
    if "broadcast" in name and "Transformer" not in op_name:
        return "zero-filled scan buffers"
    if "dynamic" in name or name.startswith("copy"):
        return "scan slices and copies"
    if "Transformer" in op_name and "dot_general" in op_name:
        return "LM head GEMMs"
    if "jvp()" in op_name:
        return "loss (softmax, CE)"
    if "norm" in op_name:
        return "RMSNorm"
    if "embed" in op_name:
        return "embedding"
    return "optimizer, other"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default="/tmp/step_profile")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    a = p.parse_args()
    cfg = config_for("float32")
    apply_overrides(cfg, dict(kv.split("=", 1) for kv in a.set))
    mcfg = model_config_from(cfg.model)
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    state, sh = create_train_state(mcfg, cfg, mesh, jax.random.key(0))
    step = make_train_step(mcfg, cfg, mesh, sh)
    batches = [make_batch(mcfg.vocab_size, i) for i in range(a.steps + 1)]
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(DEFAULT_RULES)):
        hlo = step.jitted.lower(state, batches[0], {}).compile().as_text()
    with open(a.out + ".hlo.txt", "w") as f:
        f.write(hlo)
    state, m = step(state, batches[0])
    jax.block_until_ready(m)
    t = time.perf_counter()
    with jax.profiler.trace(a.out, create_perfetto_trace=True):
        for b in batches[1:]:
            state, m = step(state, b)
        jax.block_until_ready(m)
    wall = (time.perf_counter() - t) / a.steps
    trace = glob.glob(a.out + "/**/perfetto_trace.json.gz", recursive=True)[-1]
    events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    lines = {}
    for line in hlo.splitlines():
        mt = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) (\w+)\(", line)
        if mt:
            lines.setdefault(mt.group(1), line)
    us: collections.Counter[str] = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and "dur" in e and not name.startswith(_SKIP):
            if name.startswith("while"):
                continue  # a loop's span contains its body's ops
            us[name] += e["dur"]
    total = sum(us.values())
    print(f"wall {wall * 1e3:.0f} ms/step; op time {total / a.steps / 1e3:.0f} ms/step")
    print("\n| op | output | from | ms/step | share |\n|---|---|---|---|---|")
    parts: collections.Counter[str] = collections.Counter()
    for i, (name, v) in enumerate(us.most_common()):
        line = lines.get(name, "")
        op_name = (re.search(r'op_name="([^"]+)"', line) or [None, ""])[1]
        parts[part_of(name, op_name)] += v
        if i < a.top:
            shape = line.split(" = ")[1].split("{")[0] if line else ""
            src = op_name.split("closed_call/")[-1][-60:]
            print(f"| {name} | {shape} | {src} | {v / a.steps / 1e3:.1f} | {v / total:.1%} |")
    print("\n| part | ms/step | share |\n|---|---|---|")
    for part, v in parts.most_common():
        print(f"| {part} | {v / a.steps / 1e3:.0f} | {v / total:.1%} |")


if __name__ == "__main__":
    main()
