"""The objective seam: a new objective is a function plus a registration.

The toy objective below lives only in this file. It reads a frozen input (`extra`) and
returns metrics the step knows nothing of; the test runs it through the real jitted step
(with micro-batch accumulation), the generic loop and the standard hooks, and reads the
metrics back from metrics.jsonl and the TensorBoard events.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from test_parallel import FAST, make_batch, make_config

from zen_code_jax.checkpoint import Checkpointer
from zen_code_jax.config import model_config_from
from zen_code_jax.parallel import make_mesh
from zen_code_jax.tracking import SummaryWriter
from zen_code_jax.train.hooks import Hooks
from zen_code_jax.train.loop import train
from zen_code_jax.train.objectives import (
    FrozenInputs,
    Objective,
    ObjectiveSums,
    build_objective,
    make_loss_fn,
    objective_names,
    register_objective,
)
from zen_code_jax.train.standard_hooks import CheckpointHook, ProgressHook, add_standard_hooks
from zen_code_jax.train.state import create_train_state
from zen_code_jax.train.step import make_train_step

TOY = "toy_extra_metric"
SCALE = 0.5  # a power of two: scale * count / count is exact in float32


def toy_objective(model_cfg, config, mesh) -> Objective:
    """CE scaled by a frozen scalar; reports 2 x CE and the frozen value as extra metrics."""
    loss_sums = make_loss_fn(model_cfg, config)
    replicated = NamedSharding(mesh, PartitionSpec())
    frozen = FrozenInputs(
        abstract={"scale": jax.ShapeDtypeStruct((), jnp.float32)},
        shardings={"scale": replicated},
        load=lambda: {"scale": jax.device_put(jnp.float32(SCALE), replicated)},
    )

    def sums(params, batch, extra):
        s = loss_sums(params, batch)
        return ObjectiveSums(
            objective=extra["scale"] * s["ce_sum"],
            count=s["count"],
            metrics={
                "loss": s["ce_sum"],
                "ce_twice": 2.0 * s["ce_sum"],
                "frozen_scale": extra["scale"] * s["count"],
            },
        )

    return Objective(TOY, sums, frozen)


register_objective(TOY, toy_objective, replace=True)


def test_registered_objectives():
    assert {"lm", "sft", TOY} <= set(objective_names())
    with pytest.raises(ValueError, match="already registered"):
        register_objective("lm", toy_objective)
    cfg = make_config(objective="no_such")
    with pytest.raises(ValueError, match="Unknown train.objective='no_such'.*'lm'"):
        build_objective(model_config_from(cfg.model), cfg, make_mesh({"data": -1}))


def test_toy_objective_metrics_reach_metrics_jsonl_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = 3
    cfg = make_config(objective=TOY, micro_batch_size=4, steps=steps)  # 2 micro-batches
    cfg.checkpoint.async_save = False
    mcfg = model_config_from(cfg.model)
    mesh = make_mesh({"data": 2, "fsdp": 2}, jax.devices()[:4])
    state, shardings = create_train_state(mcfg, cfg, mesh, jax.random.key(0), compiler_options=FAST)
    step_fn = make_train_step(mcfg, cfg, mesh, shardings, compiler_options=FAST)
    assert step_fn.objective.name == TOY  # chosen by train.objective, not by the caller

    writer = SummaryWriter(tmp_path)
    ckpt = Checkpointer(tmp_path / "checkpoints", async_save=False)
    progress = ProgressHook("toy", writer, mcfg, 32, 8 * 32, 1e12, 1, printing=False)
    checkpoint = CheckpointHook(ckpt, None, lambda: {}, {}, last_good=None)
    hooks = Hooks()
    add_standard_hooks(
        hooks, "toy", progress=progress, checkpoint=checkpoint, log_every=1, checkpoint_every=0
    )
    batches = iter([make_batch(mcfg.vocab_size, seed=i) for i in range(steps)])
    extra = step_fn.objective.frozen.load()
    result = train(state, step_fn, batches, hooks, start=0, total=steps, extra=extra)
    writer.close()
    ckpt.close()
    assert result.step == steps and ckpt.steps() == [steps]

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert r["train/frozen_scale"] == SCALE
        assert r["train/ce_twice"] == 2.0 * r["train/loss"]  # doubling is exact
        assert r["train/tokens"] > 0 and r["train/grad_norm"] > 0
    ea = EventAccumulator(str(tmp_path))
    ea.Reload()
    for tag in ("train/frozen_scale", "train/ce_twice", "train/loss", "train/tokens"):
        events = ea.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3]
        np.testing.assert_array_equal(
            [e.value for e in events], np.float32([r[tag] for r in records])
        )


def test_frozen_inputs_are_a_jit_argument_not_a_constant():
    """A new value of `extra` changes the result without recompiling; a missing one is a
    one-line error."""
    cfg = make_config(objective=TOY)
    mcfg = model_config_from(cfg.model)
    mesh = make_mesh({"data": 2}, jax.devices()[:2])
    state, shardings = create_train_state(mcfg, cfg, mesh, jax.random.key(0), compiler_options=FAST)
    step_fn = make_train_step(mcfg, cfg, mesh, shardings, donate=False, compiler_options=FAST)
    batch = make_batch(mcfg.vocab_size)
    with pytest.raises(ValueError, match="reads frozen inputs: pass extra="):
        step_fn(state, batch)
    replicated = NamedSharding(mesh, PartitionSpec())
    seen = []
    for scale in (SCALE, 0.25):
        extra = {"scale": jax.device_put(jnp.float32(scale), replicated)}
        _, metrics = step_fn(state, batch, extra)
        seen.append(float(metrics["frozen_scale"]))
    assert seen == [SCALE, 0.25]
    assert step_fn.jitted._cache_size() == 1


def test_objective_may_not_shadow_step_metrics():
    def bad(model_cfg, config, mesh):
        loss_sums = make_loss_fn(model_cfg, config)

        def sums(params, batch, extra):
            s = loss_sums(params, batch)
            return ObjectiveSums(s["ce_sum"], s["count"], {"loss": s["ce_sum"], "lr": s["count"]})

        return Objective("bad", sums)

    register_objective("toy_bad_metric", bad, replace=True)
    cfg = make_config(objective="toy_bad_metric")
    mcfg = model_config_from(cfg.model)
    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    state, shardings = create_train_state(mcfg, cfg, mesh, jax.random.key(0), compiler_options=FAST)
    step_fn = make_train_step(mcfg, cfg, mesh, shardings, compiler_options=FAST)
    with pytest.raises(ValueError, match="must return 'loss' and none of"):
        step_fn(state, make_batch(mcfg.vocab_size))
