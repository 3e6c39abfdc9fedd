"""The paper-scale planner on the tiny preset with the 8 test devices."""

from __future__ import annotations

import jax
import pytest

from zen_code_jax.config import base_config, model_config_from, model_group
from zen_code_jax.model.config import get_preset, param_count
from zen_code_jax.parallel import make_mesh
from zen_code_jax.train import plan
from zen_code_jax.train.flops import flops_per_step
from zen_code_jax.train.objectives import (
    FrozenInputs,
    Objective,
    ObjectiveSums,
    make_loss_fn,
    register_objective,
)
from zen_code_jax.train.state import train_state_shardings

FAST = {"xla_backend_optimization_level": 0}  # halves CPU compile time; same buffers


def test_plan_tiny_searches_micro_batch_under_budget():
    logs: list[str] = []
    res = plan.run_plan(
        "tiny",
        {"data": 2, "fsdp": 2, "tensor": 2},
        seq_len=64,
        global_batch_tokens=64 * 8,
        hbm_gb=1.0,
        loss_chunk_size=16,
        log=logs.append,
        compiler_options=FAST,
    )
    cfg = get_preset("tiny")
    assert res["params"] == param_count(cfg)
    assert res["flops_per_step"] == flops_per_step(cfg, 64, 8)
    # Doubling search from data*fsdp = 4: 4 and 8 both fit 1 GB for the tiny model.
    assert [t["micro_batch"] for t in res["tried"]] == [4, 8]
    assert [t["micro_batches_per_step"] for t in res["tried"]] == [2, 1]
    assert res["chosen_micro_batch"] == 8
    for t in res["tried"]:
        assert 0 < t["compiled_bytes_per_device"] <= res["hbm_budget_bytes"]
    # More rows per micro-batch -> more activation memory.
    temps = [t["temp_bytes"] for t in res["tried"]]
    assert temps[0] < temps[-1]
    # params + Adam (3 x f32) split over fsdp*tensor = 4 (small leaves partly replicated).
    full = 3 * 4 * param_count(cfg)
    assert full / 4 <= res["params_and_opt_bytes_per_device"] < full / 2
    assert any("chosen micro-batch 8" in line for line in logs)


def test_plan_budget_too_small_reports_nothing_fits():
    res = plan.run_plan(
        "tiny", {"data": -1}, seq_len=32, global_batch_tokens=32 * 8, hbm_gb=1e-6,
        log=lambda _: None, compiler_options=FAST,
    )  # fmt: skip
    assert res["chosen_micro_batch"] is None
    assert len(res["tried"]) == 1 and not res["tried"][0]["fits"]


def test_plan_sharding_checks_catch_unsharded_layouts():
    cfg = base_config()
    with cfg.unlocked():
        cfg.model = model_group("tiny")
    mcfg = model_config_from(cfg.model)
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    abstract, shardings = train_state_shardings(mcfg, cfg, mesh)
    plan.check_state_shardings(abstract, shardings, mesh)  # the real layout passes
    replicated = jax.tree_util.tree_map(
        lambda s: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), shardings
    )
    with pytest.raises(AssertionError, match="not sharded over fsdp"):
        plan.check_state_shardings(abstract, replicated, mesh)
    with pytest.raises(AssertionError, match="no sharding constraints"):
        plan.check_compiled(_FakeCompiled(shardings), "module {}", shardings, {})


class _FakeCompiled:
    def __init__(self, shardings):
        self.input_shardings = ((shardings, {}), {})


def test_plan_bad_inputs():
    with pytest.raises(ValueError, match="multiple of seq_len"):
        plan.run_plan("tiny", {"data": -1}, 100, 1001, log=lambda _: None)
    with pytest.raises(ValueError, match="data\\*fsdp=8"):
        plan.run_plan("tiny", {"data": -1}, 32, 32 * 4, log=lambda _: None)


def test_plan_context_parallel_reports_balanced_attention():
    """sequence=2: the step all-gathers K/V (asserted in compile_step) and each sequence
    shard's attention kernel visits the same number of block pairs."""
    res = plan.run_plan(
        "tiny", {"fsdp": 4, "sequence": 2}, seq_len=64, global_batch_tokens=64 * 4,
        micro_batch=4, log=lambda _: None, compiler_options=FAST,
    )  # fmt: skip
    assert res["context_parallel"] == "all_gather"
    assert res["context_parallel_layout"] == "dual_chunk"
    blocks = res["attention_blocks_per_shard"]
    assert len(blocks) == 2 and blocks[0] == blocks[1]
    assert res["attention_balance"] == 1.0
    assert res["chosen_micro_batch"] == 4


def teacher_objective(model_cfg, config, mesh) -> Objective:
    """A distillation-shaped toy: a frozen copy of the model (the teacher) is the step's
    `extra`; its loss on the batch is a metric."""
    abstract, shardings = train_state_shardings(model_cfg, config, mesh)
    loss_sums = make_loss_fn(model_cfg, config)
    frozen = FrozenInputs(abstract.params, shardings.params, load=lambda: None)

    def sums(params, batch, teacher):
        s, t = loss_sums(params, batch), loss_sums(teacher, batch)
        return ObjectiveSums(s["ce_sum"], s["count"], {"loss": s["ce_sum"], "teacher": t["ce_sum"]})

    return Objective("toy_teacher", sums, frozen)


register_objective("toy_teacher", teacher_objective, replace=True)


def test_plan_counts_frozen_inputs():
    """A teacher as large as the model adds its sharded bytes to the plan and to the
    compiled step's arguments (it is a jit argument, not a constant)."""
    kw = dict(
        preset="tiny", mesh_cfg={"fsdp": 4, "tensor": 2}, seq_len=32, global_batch_tokens=32 * 4,
        micro_batch=4, log=lambda _: None, compiler_options=FAST,
    )  # fmt: skip
    lm = plan.run_plan(**kw)
    distill = plan.run_plan(**kw, objective="toy_teacher")
    assert lm["frozen_bytes_per_device"] == 0
    assert distill["frozen_bytes_per_device"] == distill["params_bytes_per_device"] > 0
    extra_args = distill["tried"][0]["argument_bytes"] - lm["tried"][0]["argument_bytes"]
    assert extra_args == distill["frozen_bytes_per_device"]


def test_plan_counts_offline_teacher_logits_in_the_batch():
    """Offline distillation: no teacher in the step, its top-k in the batch. The plan's
    batch bytes grow by rows x positions per device x (k ids int32 + k log-probs float32 +
    rest + nll float32), and so do the compiled step's arguments."""
    k, seq, rows = 16, 32, 8
    kw = dict(
        preset="tiny", mesh_cfg={"data": 2, "fsdp": 2, "sequence": 2}, seq_len=seq,
        global_batch_tokens=seq * rows, micro_batch=4, log=lambda _: None,
        compiler_options=FAST,
    )  # fmt: skip
    lm = plan.run_plan(**kw)
    off = plan.run_plan(**kw, objective="distill", offline_top_k=k)
    per_device = (rows // 4) * (seq // 2)  # rows over data*fsdp, positions over sequence
    assert lm["batch_bytes_per_device"] == per_device * 5 * 4  # five int32 fields
    grown = per_device * (k * 4 + k * 4 + 4 + 4)
    assert off["batch_bytes_per_device"] - lm["batch_bytes_per_device"] == grown
    assert off["frozen_bytes_per_device"] == 0 and off["offline_top_k"] == k
    extra_args = off["tried"][0]["argument_bytes"] - lm["tried"][0]["argument_bytes"]
    assert extra_args == grown
