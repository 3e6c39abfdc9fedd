"""Mesh construction, logical rules, and mesh-independence of the training step.

Three optimizer steps of the tiny float32 model must give the same losses (1e-5) on
1 device and on the 8-device meshes (data 8), (data 2, fsdp 2, tensor 2), (fsdp 4,
tensor 2), and with context parallelism (data 2, sequence 4), (fsdp 2, tensor 2,
sequence 2), with parameters and Adam moments sharded as the rules say.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from zen_code_jax.config import base_config, model_config_from, model_group
from zen_code_jax.data.batch import Batch
from zen_code_jax.model import Transformer
from zen_code_jax.parallel import DEFAULT_RULES, make_mesh, resolve_mesh_shape
from zen_code_jax.parallel.multihost import make_global_batch
from zen_code_jax.parallel.rules import batch_sharding, logical_sharding
from zen_code_jax.train import create_train_state, make_eval_step, make_train_step
from zen_code_jax.train.loss import loss_sums_from_logits
from zen_code_jax.train.optimizer import make_optimizer

SEQ, BATCH, STEPS = 32, 8, 3
# LLVM -O0 halves XLA:CPU compile time of these tiny programs; numerics are unchanged.
FAST = {"xla_backend_optimization_level": 0}


def test_resolve_fills_and_defaults():
    assert resolve_mesh_shape({"data": -1}, 8) == dict(data=8, fsdp=1, tensor=1, sequence=1)
    assert resolve_mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8)["fsdp"] == 2
    cfg = base_config()
    assert resolve_mesh_shape(cfg.mesh, 4) == dict(data=4, fsdp=1, tensor=1, sequence=1)


@pytest.mark.parametrize(
    "mesh_cfg, n, fragment",
    [
        ({"data": 3}, 8, "product of the axis sizes equal 8"),
        ({"data": -1, "tensor": 3}, 8, "divides 8"),
        ({"data": -1, "fsdp": -1}, 8, "Only one mesh axis"),
        ({"model": 2}, 8, "Valid axes"),
        ({"data": 0}, 8, "positive or -1"),
    ],
)
def test_bad_mesh_errors_name_the_fix(mesh_cfg, n, fragment):
    with pytest.raises(ValueError, match=fragment):
        resolve_mesh_shape(mesh_cfg, n)


def test_make_mesh_axes_and_explicit_devices():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert mesh.axis_names == ("data", "fsdp", "tensor", "sequence")
    assert dict(mesh.shape) == dict(data=2, fsdp=2, tensor=2, sequence=1)
    one = make_mesh({"data": -1}, devices=jax.devices()[:1])
    assert one.devices.size == 1
    with pytest.raises(ValueError, match="needs 4 devices but 8"):
        make_mesh({"data": 4})


def test_rules_map_logical_axes():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    names = {name for name, _ in DEFAULT_RULES}
    assert names == {
        "batch", "length", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "layers"
    }  # fmt: skip
    # Activations: batch takes (data, fsdp), so embed (also fsdp) falls back to replicated.
    assert logical_sharding(mesh, ("batch", "length", "embed")).spec == P(
        ("data", "fsdp"), "sequence", None
    )
    assert logical_sharding(mesh, ("layers", "embed", "mlp")).spec == P(None, "fsdp", "tensor")
    assert batch_sharding(mesh).spec == P(("data", "fsdp"), "sequence")


def test_make_global_batch_single_process():
    mesh = make_mesh({"data": 4, "fsdp": 2})
    x = np.arange(8 * 4, dtype=np.int32).reshape(8, 4)
    out = make_global_batch({"inputs": x}, batch_sharding(mesh), 8)["inputs"]
    np.testing.assert_array_equal(np.asarray(out), x)
    assert out.sharding.spec == P(("data", "fsdp"), "sequence")
    assert out.addressable_shards[0].data.shape == (1, 4)


def make_config(**train):
    cfg = base_config()
    with cfg.unlocked():
        cfg.model = model_group("tiny")
    cfg.train.seq_len = SEQ
    cfg.train.global_batch_size = BATCH
    cfg.train.steps = 10
    cfg.optimizer.warmup_steps = 2
    cfg.optimizer.z_loss = 1e-4
    for k, v in train.items():
        cfg.train[k] = v
    return cfg


def make_batch(vocab: int, seed: int = 0) -> Batch:
    """Packed rows: two documents per row, then padding (segment 0, no loss)."""
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, vocab, (BATCH, SEQ)).astype(np.int32)
    seg = np.zeros((BATCH, SEQ), np.int32)
    pos = np.zeros((BATCH, SEQ), np.int32)
    for r in range(BATCH):
        a = int(rng.integers(4, SEQ // 2))
        b = int(rng.integers(a + 2, SEQ - 2 + 1))
        seg[r, :a], seg[r, a:b] = 1, 2
        pos[r, :a], pos[r, a:b] = np.arange(a), np.arange(b - a)
    targets = np.roll(toks, -1, axis=1)
    mask = (seg != 0) & (np.roll(seg, -1, axis=1) == seg)
    mask[:, -1] = False
    return Batch(
        inputs=toks,
        targets=targets,
        segment_ids=seg,
        positions=pos,
        loss_mask=mask.astype(np.int32),
    )


def run_steps(mesh_cfg, devices=None, steps=STEPS, **train):
    """Create the state on `mesh_cfg` and run `steps` steps on fixed batches."""
    cfg = make_config(**train)
    mcfg = model_config_from(cfg.model)
    mesh = make_mesh(mesh_cfg, devices)
    state, shardings = create_train_state(mcfg, cfg, mesh, jax.random.key(0), compiler_options=FAST)
    out = {"init": jax.tree_util.tree_map(np.asarray, state.params), "metrics": []}
    step = make_train_step(mcfg, cfg, mesh, shardings, compiler_options=FAST)
    for i in range(steps):
        state, metrics = step(state, make_batch(mcfg.vocab_size, seed=i))
        out["metrics"].append({k: float(v) for k, v in metrics.items()})
        if i < 2:
            out[f"params{i + 1}"] = jax.tree_util.tree_map(np.asarray, state.params)
    out["losses"] = [m["loss"] for m in out["metrics"]]
    out["state"], out["mesh"], out["cfg"], out["mcfg"] = state, mesh, cfg, mcfg
    return out


@pytest.fixture(scope="module")
def reference():
    """One device, no accumulation, unchunked loss."""
    return run_steps({"data": 1}, devices=jax.devices()[:1])


def _specs(state, path):
    node = state
    for k in path:
        node = node[k]
    return node.sharding.spec


@pytest.mark.parametrize(
    "mesh_cfg, train",
    [
        ({"data": 8}, {}),
        # Also accumulates (2 micro-batches of 4) and chunks the loss: still the same.
        ({"data": 2, "fsdp": 2, "tensor": 2}, {"micro_batch_size": 4, "loss_chunk_size": 16}),
        ({"fsdp": 4, "tensor": 2}, {}),
        # Context parallelism (all-gather K/V, dual-chunk layout) with packed rows.
        ({"data": 2, "sequence": 4}, {}),
        ({"fsdp": 2, "tensor": 2, "sequence": 2}, {"loss_chunk_size": 16}),
    ],
    ids=["data8", "data2-fsdp2-tensor2", "fsdp4-tensor2", "data2-seq4", "fsdp2-tp2-seq2"],
)
def test_same_losses_on_every_mesh(reference, mesh_cfg, train):
    run = run_steps(mesh_cfg, **train)
    # Same initial parameters on any mesh (jit out_shardings, same rng).
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-7),
        reference["init"],
        run["init"],
    )
    np.testing.assert_allclose(run["losses"], reference["losses"], rtol=0, atol=1e-5)
    assert reference["losses"][2] < reference["losses"][0] - 1e-3  # it actually trains

    state, mesh = run["state"], run["mesh"]
    fs = "fsdp" if mesh.shape["fsdp"] > 1 else None
    tp = "tensor" if mesh.shape["tensor"] > 1 else None

    def norm(spec):  # P(None, 'fsdp', None) == P(None, 'fsdp'); size-1 axes are no-ops
        parts = [
            None
            if a is None or all(mesh.shape[x] == 1 for x in (a if isinstance(a, tuple) else (a,)))
            else a
            for a in spec
        ]
        while parts and parts[-1] is None:
            parts.pop()
        return tuple(parts)

    expected = {
        ("embed", "embedding"): (tp, fs),
        ("lm_head", "kernel"): (fs, tp),
        ("final_norm", "scale"): (fs,),
        ("layers", "attn_norm", "scale"): (None, fs),
        ("layers", "attn", "q_proj", "kernel"): (None, fs, tp),
        ("layers", "attn", "q_proj", "bias"): (None, tp),
        ("layers", "attn", "k_proj", "kernel"): (None, fs, tp),
        ("layers", "attn", "o_proj", "kernel"): (None, tp, None, fs),
        ("layers", "mlp", "gate_proj", "kernel"): (None, fs, tp),
        ("layers", "mlp", "down_proj", "kernel"): (None, tp, fs),
    }
    adam = state.opt_state[1][0]  # chain(clip, adamw): adamw's ScaleByAdamState
    for path, want in expected.items():
        want = tuple(want)
        while want and want[-1] is None:
            want = want[:-1]
        assert norm(_specs(state.params, path)) == want, path
        assert norm(_specs(adam.mu, path)) == want, path
        assert norm(_specs(adam.nu, path)) == want, path


def test_accumulation_equals_large_batch(reference):
    """4 micro-batches of 2 (+ chunked loss) == one batch of 8, metrics and update."""
    run = run_steps({"data": 1}, devices=jax.devices()[:1], steps=1, micro_batch_size=2,
                    loss_chunk_size=8)  # fmt: skip
    m_acc, m_full = run["metrics"][0], reference["metrics"][0]
    assert m_acc["tokens"] == m_full["tokens"] == make_batch(512, 0).loss_mask.sum()
    for k in ("loss", "z_loss", "grad_norm"):
        np.testing.assert_allclose(m_acc[k], m_full[k], rtol=2e-6, err_msg=k)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-7),
        reference["params1"],
        run["params1"],
    )


def np_loss_reference(logits, targets, mask):
    """float64 numpy: mean CE and mean logsumexp^2 over masked tokens."""
    x = np.asarray(logits, np.float64)
    m = x.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[..., 0]
    tgt = np.take_along_axis(x, np.asarray(targets)[..., None], -1)[..., 0]
    w = np.asarray(mask, np.float64)
    return ((lse - tgt) * w).sum() / w.sum(), (lse**2 * w).sum() / w.sum(), w.sum()


def test_step_metrics_and_update_match_direct_computation(reference):
    """The first step's metrics and AdamW update against a direct, unsharded computation
    (model logits -> numpy CE/z-loss; jax.grad; optax AdamW); eval step agrees."""
    cfg, mcfg, mesh = reference["cfg"], reference["mcfg"], reference["mesh"]
    p0, batch, m = reference["init"], make_batch(mcfg.vocab_size, 0), reference["metrics"][0]
    model = Transformer(mcfg)

    def logits_fn(p):
        return model.apply({"params": p}, batch.inputs, batch.positions, batch.segment_ids)

    def objective(p):
        s = loss_sums_from_logits(logits_fn(p), batch.targets, batch.loss_mask)
        return (s["ce_sum"] + cfg.optimizer.z_loss * s["z_sum"]) / s["count"]

    batch1 = make_batch(mcfg.vocab_size, 1)

    def objective1(p):
        s = loss_sums_from_logits(
            model.apply({"params": p}, batch1.inputs, batch1.positions, batch1.segment_ids),
            batch1.targets,
            batch1.loss_mask,
        )
        return (s["ce_sum"] + cfg.optimizer.z_loss * s["z_sum"]) / s["count"]

    tx, _ = make_optimizer(cfg)

    def direct(p):
        g0 = jax.grad(objective)(p)
        u0, st = tx.update(g0, tx.init(p), p)
        p1 = optax.apply_updates(p, u0)
        g1 = jax.grad(objective1)(p1)
        u1, st = tx.update(g1, st, p1)
        return logits_fn(p), g0, g1, p1, optax.apply_updates(p1, u1), st[1][0].nu

    logits, g, g1, p1, p2, nu = jax.jit(direct, compiler_options=FAST)(p0)
    ce, z, n = np_loss_reference(logits, batch.targets, batch.loss_mask)
    np.testing.assert_allclose(m["loss"], ce, rtol=1e-6)
    np.testing.assert_allclose(m["z_loss"], z, rtol=1e-6)
    assert m["tokens"] == n
    np.testing.assert_allclose(m["grad_norm"], float(optax.tree.norm(g)), rtol=1e-5)
    np.testing.assert_allclose(m["lr"], 0.0)  # step 0 of the warm-up: params unchanged
    np.testing.assert_allclose(reference["metrics"][1]["lr"], cfg.optimizer.peak_lr / 2)
    jax.tree_util.tree_map(np.testing.assert_array_equal, p1, reference["params1"])

    # Step 1's AdamW update (clipping, bias correction, decay mask): compare where Adam's
    # denominator is >= 10 eps (elsewhere g/(|g|+eps) amplifies float noise) or
    # exactly 0 (embedding rows of unseen tokens: weight decay only). The two sides compute
    # the gradients in different f32 summation orders; the grad_norm check above allows
    # them 1e-5 relative, and Adam passes that on to the update as lr * 1e-5 * (|g0| + |g1|)
    # / sqrt(v) per element (at most ~1e-8 here, where a wrong optimizer moves it by ~lr =
    # 1.5e-4). That propagated term is added to the fixed tolerances, never replacing them.
    lr1 = float(reference["metrics"][1]["lr"])

    def check(want, got, v, a, b):
        v, a, b = np.asarray(v), np.abs(np.asarray(a)), np.abs(np.asarray(b))
        ok = (np.sqrt(v) > 1e-7) | (v == 0)
        assert ok.mean() > 0.7
        want, got = np.asarray(want)[ok], np.asarray(got)[ok]
        grad_noise = lr1 * 1e-5 * (a + b)[ok] / (np.sqrt(v[ok]) + cfg.optimizer.eps)
        tol = 1e-8 + 2e-7 * np.abs(want) + grad_noise
        bad = np.abs(got - want) > tol
        assert not bad.any(), (got[bad], want[bad], tol[bad])

    jax.tree_util.tree_map(check, p2, reference["params2"], nu, g, g1)

    ev = make_eval_step(mcfg, cfg, mesh, compiler_options=FAST)(p0, batch)
    np.testing.assert_allclose(float(ev["loss_sum"]) / float(ev["tokens"]), ce, rtol=1e-6)
    assert float(ev["tokens"]) == n


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_data_parallel_equals_one_device():
    """Two local CPU processes (jax.distributed, Gloo), one device each, feeding their own
    rows via make_global_batch: same losses as the whole batch on one device."""
    import json
    import os
    import socket
    import subprocess
    import sys

    from multihost_selftest import selftest_losses

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    procs = []
    for i in range(2):
        env = dict(os.environ, ZEN_COORDINATOR_ADDRESS=f"localhost:{port}",
                   ZEN_NUM_PROCESSES="2", ZEN_PROCESS_ID=str(i), JAX_PLATFORMS="cpu",
                   XLA_FLAGS="--xla_force_host_platform_device_count=1")  # fmt: skip
        procs.append(
            subprocess.Popen(
                [sys.executable, str(Path(__file__).parent / "multihost_selftest.py")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    local = selftest_losses(multiprocess=False)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-2000:]
        line = [x for x in out.splitlines() if x.startswith("LOSSES ")][-1]
        np.testing.assert_allclose(json.loads(line[7:]), local, rtol=0, atol=1e-5)
