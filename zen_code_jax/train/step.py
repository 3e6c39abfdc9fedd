"""The jitted, sharded training and evaluation steps.

One optimizer step = `global_batch_size` sequences, split into micro-batches of
`micro_batch_size` that a `lax.scan` inside the jitted step runs one after another,
summing gradients and the objective's sums (`train/objectives.py`, chosen by
`train.objective`); the sums are divided once by the number of loss tokens.
So the update does not depend on how the batch is split (up to float summation order),
and a 4M-token batch runs on any number of devices by changing only the micro-batch.

Micro-batch k takes rows k, k+n, k+2n, ... (n micro-batches): each device's contiguous
block of rows splits evenly across micro-batches, so no data moves between devices.

The step takes (state, batch, extra): `extra` is the objective's frozen inputs (e.g. a
teacher's params), a jit argument with its own shardings; `{}` for `lm` and `sft`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from zen_code_jax.data.batch import FIELDS, Batch, TeacherTopK
from zen_code_jax.model.config import ModelConfig
from zen_code_jax.parallel.rules import DEFAULT_RULES, Rules, batch_sharding
from zen_code_jax.train import distill as _distill  # noqa: F401  registers "distill"
from zen_code_jax.train.objectives import STEP_METRICS, Objective, build_objective, make_loss_fn
from zen_code_jax.train.optimizer import global_norm, make_optimizer
from zen_code_jax.train.state import TrainState

Aux = tuple[jax.Array, dict[str, jax.Array]]  # (loss tokens, the objective's metric sums)


def micro_batching(config: Any, mesh: Mesh) -> tuple[int, int]:
    """(micro_batch_size, num_micro_batches), validated against the mesh."""
    global_bs = int(config.train.global_batch_size)
    micro = int(config.train.micro_batch_size) or global_bs
    if global_bs % micro:
        raise ValueError(
            f"train.global_batch_size={global_bs} is not a multiple of "
            f"train.micro_batch_size={micro}; pick a micro-batch that divides it."
        )
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if micro % shards:
        raise ValueError(
            f"train.micro_batch_size={micro} is not divisible by data*fsdp={shards} (the "
            "batch is sharded over both). Use a multiple of it, or shrink mesh.data/fsdp."
        )
    seq_shards = mesh.shape["sequence"]
    if int(config.train.seq_len) % seq_shards:
        raise ValueError(
            f"train.seq_len={config.train.seq_len} is not divisible by mesh.sequence="
            f"{seq_shards}; use a sequence axis that divides the length."
        )
    return micro, global_bs // micro


def _tree_add(a: Any, b: Any) -> Any:
    return jax.tree_util.tree_map(jnp.add, a, b)


def build_train_step(
    model_cfg: ModelConfig,
    config: Any,
    mesh: Mesh,
    state_shardings: TrainState,
    objective: Objective | None = None,
) -> Callable[[TrainState, Batch, Any], tuple[TrainState, dict]]:
    """The un-jitted step function (the plan lowers it with abstract inputs).

    `objective` defaults to the one `train.objective` names (`train/objectives.py`).
    """
    tx, schedule = make_optimizer(config)
    micro, n_micro = micro_batching(config, mesh)
    obj = objective or build_objective(model_cfg, config, mesh)
    param_shardings = state_shardings.params
    mb_spec = batch_sharding(mesh).spec  # P(('data','fsdp'), 'sequence')

    def grad_fn(params: Any, mb: Batch, extra: Any) -> tuple[Any, Aux]:
        def f(p):
            out = obj.sums(p, mb, extra)
            return out.objective, (out.count, out.metrics)

        grads, aux = jax.grad(f, has_aux=True)(params)
        return grads, aux

    def step(state: TrainState, batch: Batch, extra: Any) -> tuple[TrainState, dict]:
        params = state.params
        if n_micro == 1:
            grads, (count, sums) = grad_fn(params, batch, extra)
        else:
            # [G, S] -> [n, micro, S]: micro-batch k = rows k, k+n, ... (no data movement).
            def split(x):
                x = x.reshape(micro, n_micro, *x.shape[1:]).swapaxes(0, 1)
                return jax.lax.with_sharding_constraint(
                    x, NamedSharding(mesh, PartitionSpec(None, *mb_spec))
                )

            mbs = jax.tree.map(split, batch)
            zeros = jax.tree_util.tree_map(
                lambda p, s: jax.lax.with_sharding_constraint(jnp.zeros(p.shape, jnp.float32), s),
                params,
                param_shardings,
            )
            # The objective's sums, as zeros of their shapes (float32 scalars for `lm`).
            first = jax.tree.map(lambda x: x[0], mbs)
            aux_shape = jax.eval_shape(lambda p, mb: grad_fn(p, mb, extra)[1], params, first)
            aux_zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape)

            def body(carry, mb):
                g, s = grad_fn(params, mb, extra)
                g = jax.tree_util.tree_map(
                    lambda x, sh: jax.lax.with_sharding_constraint(x.astype(jnp.float32), sh),
                    g,
                    param_shardings,
                )
                return (_tree_add(carry[0], g), _tree_add(carry[1], s)), None

            (grads, (count, sums)), _ = jax.lax.scan(body, (zeros, aux_zero), mbs)
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree_util.tree_map(lambda g: g / denom, grads)
        grad_norm = global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, params)
        new_params = optax.apply_updates(params, updates)
        clash = set(sums) & set(STEP_METRICS)
        if clash or "loss" not in sums:
            raise ValueError(
                f"Objective {obj.name!r} returns metrics {sorted(sums)}: it must return "
                f"'loss' and none of {list(STEP_METRICS)} (the step adds those)."
            )
        metrics = {name: value / denom for name, value in sums.items()}
        metrics.update({"grad_norm": grad_norm, "lr": schedule(state.step), "tokens": count})
        metrics["padding"] = jnp.mean((batch.segment_ids == 0).astype(jnp.float32))
        new_state = TrainState(step=state.step + 1, params=new_params, opt_state=opt_state)
        return new_state, metrics

    step.objective = obj  # type: ignore[attr-defined]
    return step


def batch_shardings(mesh: Mesh, rules: Rules = DEFAULT_RULES, teacher: bool = False) -> Batch:
    """Every field of the batch sharded the same way: rows over (data, fsdp), length over
    sequence. `teacher`: the batch also carries offline teacher logits (`Batch.teacher`,
    read by an objective with `teacher_topk`), sharded the same way (k unsharded)."""
    s = batch_sharding(mesh, rules)
    top = TeacherTopK(ids=s, logp=s, rest=s, nll=s) if teacher else None
    return Batch(**{k: s for k in FIELDS}, teacher=top)


def jit_train_step(
    model_cfg: ModelConfig,
    config: Any,
    mesh: Mesh,
    state_shardings: TrainState,
    rules: Rules = DEFAULT_RULES,
    donate: bool = True,
    compiler_options: dict[str, Any] | None = None,
    objective: Objective | None = None,
):
    """jax.jit of the step with explicit in/out shardings (not yet wrapped in the mesh).

    Inputs (state, batch, extra): `extra` (the objective's frozen inputs) is an argument
    with the objective's own shardings, never donated. The objective is `.objective`.
    """
    step = build_train_step(model_cfg, config, mesh, state_shardings, objective)
    obj = step.objective  # type: ignore[attr-defined]
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(
        step,
        in_shardings=(
            state_shardings,
            batch_shardings(mesh, rules, teacher=obj.teacher_topk),
            obj.frozen.shardings,
        ),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,) if donate else (),
        compiler_options=compiler_options,
    )
    jitted.objective = obj  # type: ignore[attr-defined]
    return jitted


def make_train_step(
    model_cfg: ModelConfig,
    config: Any,
    mesh: Mesh,
    state_shardings: TrainState,
    rules: Rules = DEFAULT_RULES,
    donate: bool = True,
    compiler_options: dict[str, Any] | None = None,
    objective: Objective | None = None,
) -> Callable[..., tuple[TrainState, dict]]:
    """step_fn(state, batch, extra=None) -> (state, metrics); jitted, sharded, state donated.

    `batch` is a `Batch` of numpy arrays (single process; jit shards them) or global jax.Arrays
    from `zen_code_jax.parallel.multihost.make_global_batch` (multi-host). `extra` is the
    objective's frozen inputs (`step_fn.objective.frozen.load()`); None for objectives
    without any. Metrics (replicated scalars): the objective's (for `lm`: loss = mean CE
    over loss tokens, z_loss = mean logsumexp^2), grad_norm (before clipping), lr (used for
    this update), tokens, padding (share of the batch's tokens that are padding).
    `compiler_options` go to XLA (tests use {'xla_backend_optimization_level': 0} to halve
    compile time on CPU).
    """
    jitted = jit_train_step(
        model_cfg, config, mesh, state_shardings, rules, donate, compiler_options, objective
    )
    obj = jitted.objective  # type: ignore[attr-defined]

    def step_fn(state: TrainState, batch: Batch, extra: Any = None) -> tuple[TrainState, dict]:
        if extra is None:
            if not obj.frozen.empty:
                raise ValueError(
                    f"Objective {obj.name!r} reads frozen inputs: pass "
                    "extra=step_fn.objective.frozen.load() to the step (or to train.loop.train)."
                )
            extra = {}
        with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
            return jitted(state, batch, extra)

    step_fn.jitted = jitted  # type: ignore[attr-defined]
    step_fn.objective = obj  # type: ignore[attr-defined]
    return step_fn


def make_eval_step(
    model_cfg: ModelConfig,
    config: Any,
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
    compiler_options: dict[str, Any] | None = None,
) -> Callable[[Any, Batch], dict]:
    """fn(params, batch) -> {'loss_sum', 'tokens'} (sums, so callers can average over
    many batches exactly). Params keep their sharding; the batch is sharded on entry.
    Always next-token CE (held-out loss), whatever the training objective."""
    loss_sums = make_loss_fn(model_cfg, config)
    replicated = NamedSharding(mesh, PartitionSpec())

    def eval_fn(params: Any, batch: Batch) -> dict:
        sums = loss_sums(params, batch)
        return {"loss_sum": sums["ce_sum"], "tokens": sums["count"]}

    jitted = jax.jit(
        eval_fn,
        in_shardings=(None, batch_shardings(mesh, rules)),
        out_shardings=replicated,
        compiler_options=compiler_options,
    )

    def wrapped(params: Any, batch: Batch) -> dict:
        with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
            return jitted(params, batch)

    return wrapped
