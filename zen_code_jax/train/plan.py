"""Paper-scale memory/FLOP plan: compile the real train step for a big mesh on CPU.

    python -m zen_code_jax.train.plan --preset zen_code_14b --devices 64 \\
        --mesh fsdp=-1 --seq_len 8192 --global_batch_tokens 4194304

It simulates `--devices` CPU devices (XLA_FLAGS, set here before jax is imported),
builds the mesh, derives the state shardings from the model's logical annotations,
AOT-compiles the *full* train step (gradient accumulation, chunked loss, AdamW) with
`jit(step).lower(abstract inputs).compile()`, and reads `memory_analysis()`. Nothing is
allocated. It searches the largest micro-batch whose compiled per-device memory fits
`--hbm_gb` (default 80), and prints parameters, bytes of params + optimizer state per
device, bytes of the objective's frozen inputs per device (`--objective`; e.g. a
teacher's params, the step's `extra` argument), compiled memory, FLOPs per step and the
chosen micro-batch.

It asserts the shardings it expects: the compiled executable's input shardings equal
the planned ones, the batch is split over data*fsdp (and sequence), parameters and Adam
moments are split over fsdp*tensor, and the lowered program carries the model's
activation sharding constraints (they silently vanish under `with mesh:`; a 14B step
then needed 942 GiB per device instead of ~26).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any


def _set_device_count(n: int) -> None:
    """Simulate n CPU devices; must run before jax is imported."""
    if "jax" in sys.modules:
        return  # tests / callers that already set up devices
    flags = os.environ.get("XLA_FLAGS", "")
    flags = " ".join(f for f in flags.split() if "xla_force_host_platform_device_count" not in f)
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


GiB = 1024**3


def _parse_kv(items: list[str], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--{what} expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _shard_bytes(abstract: Any, shardings: Any) -> int:
    import jax
    import numpy as np

    total = 0
    for x, s in zip(jax.tree_util.tree_leaves(abstract), jax.tree_util.tree_leaves(shardings)):
        total += int(np.prod(s.shard_shape(x.shape))) * x.dtype.itemsize
    return total


def frozen_bytes_per_device(frozen: Any) -> int:
    """Bytes per device of an objective's frozen inputs (`FrozenInputs`: e.g. a teacher's
    params), from their abstract shapes and shardings; nothing is loaded."""
    return _shard_bytes(frozen.abstract, frozen.shardings)


def abstract_batch(batch_sh: Any, rows: int, seq_len: int, top_k: int = 0) -> Any:
    """The step's batch as abstract arrays on `batch_sh` (`step.batch_shardings`): the five
    int32 [rows, seq_len] fields and, for an objective reading offline teacher logits
    (`top_k` > 0), `Batch.teacher`: ids int32 and log-probs float32 [rows, seq_len, top_k],
    rest and nll float32 [rows, seq_len] (data/teacher_logits.py's record)."""
    import jax
    import jax.numpy as jnp

    # local import: `python -m ...plan` sets XLA_FLAGS (--devices) before jax is imported.
    from zen_code_jax.data.batch import FIELDS, Batch, TeacherTopK

    def arr(shape: tuple[int, ...], dtype: Any, sharding: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    fields = {k: arr((rows, seq_len), jnp.int32, getattr(batch_sh, k)) for k in FIELDS}
    top = None
    if batch_sh.teacher is not None:
        t, sk, s1 = batch_sh.teacher, (rows, seq_len, top_k), (rows, seq_len)
        top = TeacherTopK(
            ids=arr(sk, jnp.int32, t.ids),
            logp=arr(sk, jnp.float32, t.logp),
            rest=arr(s1, jnp.float32, t.rest),
            nll=arr(s1, jnp.float32, t.nll),
        )
    return Batch(**fields, teacher=top)


def batch_bytes_per_device(batch: Any) -> int:
    """Bytes per device of an abstract batch (`abstract_batch`), by its shardings."""
    import jax

    leaves = jax.tree_util.tree_leaves(batch)
    return _shard_bytes(leaves, [x.sharding for x in leaves])


def _mesh_axes_of(spec) -> set[str]:
    axes: set[str] = set()
    for a in spec:
        if a is None:
            continue
        axes.update(a if isinstance(a, tuple) else (a,))
    return axes


def check_state_shardings(abstract_state: Any, shardings: Any, mesh) -> None:
    """Every weight matrix (kernels, embedding) of params and Adam moments is split over
    fsdp (when fsdp > 1) and over tensor (when tensor > 1): each has an embed axis and
    one of heads/kv_heads/mlp/vocab. Norm scales and biases may stay small/replicated."""
    import jax

    fsdp, tensor = mesh.shape["fsdp"], mesh.shape["tensor"]
    flat = jax.tree_util.tree_leaves_with_path(abstract_state)
    shs = jax.tree_util.tree_leaves(shardings)
    for (path, x), s in zip(flat, shs):
        name = jax.tree_util.keystr(path)
        if not name.endswith(("['kernel']", "['embedding']")):
            continue
        axes = _mesh_axes_of(s.spec)
        if fsdp > 1 and "fsdp" not in axes:
            raise AssertionError(f"{name} {x.shape} is not sharded over fsdp: {s.spec}")
        if tensor > 1 and "tensor" not in axes:
            raise AssertionError(f"{name} {x.shape} is not sharded over tensor: {s.spec}")


def check_compiled(compiled, lowered_text: str, state_shardings, batch_shardings) -> None:
    """The executable takes its inputs with the planned shardings, and the lowered
    program contains activation sharding constraints (proof the rules were active)."""
    import jax

    ins, _ = compiled.input_shardings
    state_in, batch_in = ins[0], ins[1]  # then the objective's frozen inputs, if any
    for want, got in zip(
        jax.tree_util.tree_leaves(batch_shardings), jax.tree_util.tree_leaves(batch_in)
    ):
        if not got.is_equivalent_to(want, 2):
            raise AssertionError(f"batch compiled with {got}, planned {want}")
    for want, got in zip(
        jax.tree_util.tree_leaves(state_shardings), jax.tree_util.tree_leaves(state_in)
    ):
        ndim = len(want.spec) or 1
        if not got.is_equivalent_to(want, ndim):
            raise AssertionError(f"state leaf compiled with {got}, planned {want}")
    n_constraints = lowered_text.count("sharding_constraint")
    if n_constraints == 0:
        raise AssertionError(
            "The lowered step has no sharding constraints: the logical rules were not active "
            "(use jax.set_mesh + nn.logical_axis_rules, not `with mesh:`)."
        )


def compile_step(
    model_cfg, config, mesh, abstract_state, state_shardings, compiler_options=None, objective=None
) -> dict[str, Any]:
    """AOT-compile the train step for abstract inputs (state, batch, the objective's frozen
    inputs); return memory numbers. `objective` defaults to `train.objective`'s."""
    import flax.linen as nn
    import jax

    # local import: `python -m ...plan` sets XLA_FLAGS (--devices) before jax is imported.
    from zen_code_jax.parallel.rules import DEFAULT_RULES
    from zen_code_jax.train.objectives import build_objective
    from zen_code_jax.train.step import batch_shardings, jit_train_step

    gbs, seq = int(config.train.global_batch_size), int(config.train.seq_len)
    obj = objective if objective is not None else build_objective(model_cfg, config, mesh)
    bsh = batch_shardings(mesh, teacher=obj.teacher_topk)
    batch = abstract_batch(bsh, gbs, seq, int(config.distill.top_k))
    state = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract_state,
        state_shardings,
    )
    jitted = jit_train_step(
        model_cfg, config, mesh, state_shardings, compiler_options=compiler_options,
        objective=obj,
    )  # fmt: skip
    frozen = jitted.objective.frozen
    extra = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        frozen.abstract,
        frozen.shardings,
    )
    t0 = time.perf_counter()
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(DEFAULT_RULES)):
        lowered = jitted.lower(state, batch, extra)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    text = lowered.as_text()
    check_compiled(compiled, text, state_shardings, bsh)
    cp_on = mesh.shape["sequence"] > 1 and model_cfg.context_parallel != "off"
    if cp_on and "all_gather" not in text:
        raise AssertionError("context parallelism is on but the step has no all-gather")
    ma = compiled.memory_analysis()
    total = (
        ma.argument_size_in_bytes
        + ma.output_size_in_bytes
        - ma.alias_size_in_bytes
        + ma.temp_size_in_bytes
        + ma.generated_code_size_in_bytes
    )
    return {
        "argument_bytes": int(ma.argument_size_in_bytes),
        "output_bytes": int(ma.output_size_in_bytes),
        "alias_bytes": int(ma.alias_size_in_bytes),
        "temp_bytes": int(ma.temp_size_in_bytes),
        "compiled_bytes_per_device": int(total),
        "lower_s": round(t1 - t0, 1),
        "compile_s": round(t2 - t1, 1),
    }


def run_plan(
    preset: str,
    mesh_cfg: dict[str, int],
    seq_len: int,
    global_batch_tokens: int,
    hbm_gb: float = 80.0,
    micro_batch: int | None = None,
    model_overrides: dict[str, Any] | None = None,
    loss_chunk_size: int = 1024,
    log=print,
    compiler_options: dict[str, Any] | None = None,
    objective: str = "lm",
    teacher: str = "",
    offline_top_k: int = 0,
) -> dict[str, Any]:
    """Plan one configuration on the current jax devices; returns a JSON-able dict.

    `objective` (a registered `train.objective`) decides the step's frozen inputs, counted
    as `frozen_bytes_per_device` and passed to the compiled step like the state; `teacher`
    is `distill.teacher` for `--objective=distill` (a checkpoint, or `preset:NAME` to plan
    a teacher by its shapes alone, e.g. preset:zen_code_14b). `offline_top_k` > 0 plans
    offline distillation instead: no teacher in the step, its top-k per position in the
    batch (`Batch.teacher`), counted in `batch_bytes_per_device`."""
    import jax

    # local import: `python -m ...plan` sets XLA_FLAGS (--devices) before jax is imported.
    from zen_code_jax.config import base_config, model_config_from, model_group
    from zen_code_jax.model.config import param_count
    from zen_code_jax.parallel.mesh import make_mesh, mesh_shape_str
    from zen_code_jax.parallel.rules import batch_sharding

    # local import: registers the "distill" objective (after XLA_FLAGS, like the above).
    from zen_code_jax.train import distill  # noqa: F401
    from zen_code_jax.train.flops import flops_per_step, flops_per_token
    from zen_code_jax.train.objectives import build_objective
    from zen_code_jax.train.state import train_state_shardings

    if global_batch_tokens % seq_len:
        raise ValueError(
            f"global batch of {global_batch_tokens} tokens is not a multiple of seq_len "
            f"{seq_len}; pick --global_batch_tokens = sequences x seq_len."
        )
    gbs = global_batch_tokens // seq_len
    cfg = base_config()
    with cfg.unlocked():
        cfg.model = model_group(preset, **(model_overrides or {}))
    cfg.train.seq_len = seq_len
    cfg.train.global_batch_size = gbs
    cfg.train.loss_chunk_size = loss_chunk_size
    cfg.train.objective = objective
    cfg.distill.teacher = teacher
    if offline_top_k:
        cfg.distill.logits_dir = "(planned: offline teacher logits)"
        cfg.distill.top_k = offline_top_k
    mcfg = model_config_from(cfg.model)
    mesh = make_mesh(mesh_cfg)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if gbs % shards:
        raise ValueError(
            f"{gbs} sequences per step cannot be split over data*fsdp={shards}; use a mesh "
            "with fewer data/fsdp shards (e.g. put the rest on tensor or sequence)."
        )
    bs = batch_sharding(mesh).spec
    want = ("data", "fsdp")
    if tuple(bs[0]) != want or bs[1] != "sequence":
        raise AssertionError(f"batch sharding {bs} is not P(('data','fsdp'), 'sequence')")

    abstract, shardings = train_state_shardings(mcfg, cfg, mesh)
    check_state_shardings(abstract, shardings, mesh)
    n_params = param_count(mcfg)
    counted = sum(int(math.prod(x.shape)) for x in jax.tree_util.tree_leaves(abstract.params))
    if counted != n_params:
        raise AssertionError(f"model has {counted} params, param_count() says {n_params}")
    state_bytes = _shard_bytes(abstract, shardings)
    params_bytes = _shard_bytes(abstract.params, shardings.params)
    obj = build_objective(mcfg, cfg, mesh)
    frozen_bytes = frozen_bytes_per_device(obj.frozen)
    # local import: `python -m ...plan` sets XLA_FLAGS (--devices) before jax is imported.
    from zen_code_jax.train.step import batch_shardings

    batch_bytes = batch_bytes_per_device(
        abstract_batch(batch_shardings(mesh, teacher=obj.teacher_topk), gbs, seq_len, offline_top_k)
    )
    result: dict[str, Any] = {
        "preset": preset,
        "devices": jax.device_count(),
        "mesh": mesh_shape_str(mesh),
        "seq_len": seq_len,
        "global_batch_sequences": gbs,
        "global_batch_tokens": global_batch_tokens,
        "params": n_params,
        "params_bytes_per_device": params_bytes,
        "params_and_opt_bytes_per_device": state_bytes,
        "objective": objective,
        "frozen_bytes_per_device": frozen_bytes,
        "batch_bytes_per_device": batch_bytes,
        "offline_top_k": offline_top_k,
        "flops_per_token": flops_per_token(mcfg, seq_len),
        "flops_per_step": flops_per_step(mcfg, seq_len, gbs),
        "hbm_budget_bytes": int(hbm_gb * 1e9),
        "attention_impl": mcfg.attention_impl,
        "remat_policy": mcfg.remat_policy,
        "loss_chunk_size": loss_chunk_size,
        "context_parallel": mcfg.context_parallel,
        "tried": [],
    }
    n_seq = mesh.shape["sequence"]
    if n_seq > 1 and mcfg.context_parallel != "off":
        # local import: `python -m ...plan` sets XLA_FLAGS (--devices) before jax is imported.
        from zen_code_jax.model.context_parallel import block_schedule

        sched = block_schedule(
            seq_len, n_seq, mcfg.attention_block_size, mcfg.context_parallel_layout
        )
        nb = seq_len // min(mcfg.attention_block_size, seq_len // (2 * n_seq))
        result["context_parallel_layout"] = mcfg.context_parallel_layout
        result["attention_blocks_per_shard"] = sched.tolist()
        result["attention_balance"] = float(sched.max() / (nb * (nb + 1) / 2 / n_seq))
        log(
            f"  context parallel ({mcfg.context_parallel_layout}): attention block pairs per "
            f"sequence shard {sched.min()}..{sched.max()}, max/(total/{n_seq}) = "
            f"{result['attention_balance']:.3f}"
        )
    log(
        f"{preset}: {n_params / 1e9:.3f}B params | mesh {result['mesh']} | seq {seq_len} | "
        f"{gbs} seqs/step | params+Adam {state_bytes / GiB:.2f} GiB/device"
        + (f" | frozen ({objective}) {frozen_bytes / GiB:.2f} GiB/device" if frozen_bytes else "")
        + f" | batch {batch_bytes / GiB:.3f} GiB/device"
        + (f" (offline teacher top-{offline_top_k})" if offline_top_k else "")
    )

    candidates = [m for m in range(shards, gbs + 1, shards) if gbs % m == 0]
    if micro_batch:
        if micro_batch not in candidates:
            raise ValueError(
                f"--micro_batch {micro_batch} must divide {gbs} and be a multiple of "
                f"data*fsdp={shards}; valid: {candidates}"
            )
        order = [micro_batch]
    else:
        # Doubling search from one sequence per batch shard: stop at the first that fails.
        order = []
        m = candidates[0]
        while m in candidates:
            order.append(m)
            m *= 2
        if candidates[-1] not in order:
            order.append(candidates[-1])
    budget = result["hbm_budget_bytes"]
    chosen = None
    for m in order:
        cfg.train.micro_batch_size = m
        mem = compile_step(mcfg, cfg, mesh, abstract, shardings, compiler_options, obj)
        mem["micro_batch"] = m
        mem["micro_batches_per_step"] = gbs // m
        mem["fits"] = mem["compiled_bytes_per_device"] <= budget
        result["tried"].append(mem)
        log(
            f"  micro-batch {m:5d} ({gbs // m} accumulation steps): "
            f"{mem['compiled_bytes_per_device'] / GiB:8.2f} GiB/device "
            f"(temp {mem['temp_bytes'] / GiB:.2f}, args {mem['argument_bytes'] / GiB:.2f}) "
            f"{'fits' if mem['fits'] else 'too big'}  [compile {mem['compile_s']} s]"
        )
        if not mem["fits"]:
            break
        chosen = mem
    result["chosen_micro_batch"] = None if chosen is None else chosen["micro_batch"]
    result["compiled_bytes_per_device"] = (
        None if chosen is None else chosen["compiled_bytes_per_device"]
    )
    log(
        f"  FLOPs/step {result['flops_per_step']:.3e} ({result['flops_per_token']:.3e}/token); "
        + (
            f"chosen micro-batch {chosen['micro_batch']} -> "
            f"{chosen['compiled_bytes_per_device'] / GiB:.2f} GiB/device of {hbm_gb:g} GB"
            if chosen
            else f"NOTHING FITS {hbm_gb:g} GB"
        )
    )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="zen_code_14b")
    p.add_argument("--devices", type=int, default=64, help="simulated CPU devices")
    p.add_argument(
        "--mesh",
        nargs="*",
        default=["fsdp=-1"],
        help="axis=size for data/fsdp/tensor/sequence; -1 fills (default fsdp=-1)",
    )
    p.add_argument("--seq_len", type=int, default=8192)
    p.add_argument("--global_batch_tokens", type=int, default=4 * 1024 * 1024)
    p.add_argument("--hbm_gb", type=float, default=80.0, help="per-device budget, GB (1e9)")
    p.add_argument("--micro_batch", type=int, default=0, help="fix instead of searching")
    p.add_argument("--loss_chunk", type=int, default=1024, help="positions per loss chunk")
    p.add_argument(
        "--set", nargs="*", default=[], help="ModelConfig overrides, e.g. attention_impl=chunked"
    )
    p.add_argument("--objective", default="lm", help="a registered train.objective")
    p.add_argument(
        "--teacher", default="", help="distill.teacher for --objective=distill (or preset:NAME)"
    )
    p.add_argument(
        "--offline_top_k",
        type=int,
        default=0,
        help="with --objective=distill: plan offline teacher logits of this k (no teacher)",
    )
    p.add_argument("--json", default="", help="also write the result here")
    a = p.parse_args(argv)
    _set_device_count(a.devices)
    import jax

    if jax.device_count() != a.devices:
        raise SystemExit(
            f"jax sees {jax.device_count()} devices, not {a.devices}: run the plan in a fresh "
            "process (XLA_FLAGS must be set before jax is imported)."
        )
    mesh_cfg = {"data": 1, "fsdp": 1, "tensor": 1, "sequence": 1, **_parse_kv(a.mesh, "mesh")}
    res = run_plan(
        a.preset,
        mesh_cfg,
        a.seq_len,
        a.global_batch_tokens,
        a.hbm_gb,
        a.micro_batch or None,
        _parse_kv(a.set, "set"),
        a.loss_chunk,
        objective=a.objective,
        teacher=a.teacher,
        offline_top_k=a.offline_top_k,
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if res["chosen_micro_batch"] else 1


if __name__ == "__main__":
    sys.exit(main())
