"""Loss, optimizer, schedule, accumulation and eval step, against independent references."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_parallel import FAST, make_batch, make_config

from zen_code_jax.config import model_config_from
from zen_code_jax.model import Transformer, param_count
from zen_code_jax.model.config import get_preset
from zen_code_jax.parallel import make_mesh
from zen_code_jax.train.flops import (
    attention_flops_per_token,
    cpu_peak_flops,
    flops_per_step,
    flops_per_token,
    matmul_param_count,
    mfu,
    peak_flops_per_device,
)
from zen_code_jax.train.loss import chunked_loss_sums, loss_sums_from_logits
from zen_code_jax.train.objectives import make_loss_fn
from zen_code_jax.train.optimizer import decay_mask, make_optimizer, make_schedule
from zen_code_jax.train.state import unbox
from zen_code_jax.train.step import micro_batching


def np_loss_reference(logits, targets, mask):
    """float64 numpy: mean CE and mean logsumexp^2 over masked tokens."""
    x = np.asarray(logits, np.float64)
    m = x.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[..., 0]
    tgt = np.take_along_axis(x, np.asarray(targets)[..., None], -1)[..., 0]
    w = np.asarray(mask, np.float64)
    return ((lse - tgt) * w).sum() / w.sum(), (lse**2 * w).sum() / w.sum(), w.sum()


def test_loss_from_logits_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, (3, 5))
    mask = rng.integers(0, 2, (3, 5))
    s = loss_sums_from_logits(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    ce, z, n = np_loss_reference(logits, targets, mask)
    assert float(s["count"]) == n
    np.testing.assert_allclose(float(s["ce_sum"]) / n, ce, rtol=1e-6)
    np.testing.assert_allclose(float(s["z_sum"]) / n, z, rtol=1e-6)


@pytest.fixture(scope="module")
def tiny():
    cfg = make_config()
    mcfg = model_config_from(cfg.model)
    batch = make_batch(mcfg.vocab_size)
    args = (batch.inputs, batch.positions, batch.segment_ids)
    params = jax.jit(Transformer(mcfg).init, compiler_options=FAST)(jax.random.key(1), *args)[
        "params"
    ]
    return cfg, mcfg, unbox(params), batch


def test_chunked_loss_equals_unchunked_values_and_grads(tiny):
    chunk = 12  # does not divide the length 32: exercises the padded last chunk
    cfg, mcfg, params, batch = tiny
    full = make_loss_fn(mcfg, cfg)
    cfg_c = make_config(loss_chunk_size=chunk)
    chunked = make_loss_fn(mcfg, cfg_c)

    def obj(fn):
        def f(p):
            s = fn(p, batch)
            return s["ce_sum"] + 1e-3 * s["z_sum"], s

        return jax.jit(jax.value_and_grad(f, has_aux=True), compiler_options=FAST)

    (v1, s1), g1 = obj(full)(params)
    (v2, s2), g2 = obj(chunked)(params)
    for k in ("ce_sum", "z_sum", "count"):
        np.testing.assert_allclose(float(s2[k]), float(s1[k]), rtol=1e-6)
    # float32 sums in a different order: tolerance relative to each leaf's scale.
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max()),
        g1,
        g2,
    )


@pytest.mark.parametrize("chunk", [3, 5, 64])
def test_chunked_loss_direct_with_hidden(chunk):
    rng = np.random.default_rng(3)
    h = jnp.asarray(rng.normal(size=(2, 10, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(6, 13)), jnp.float32)
    t = jnp.asarray(rng.integers(0, 13, (2, 10)))
    m = jnp.asarray(rng.integers(0, 2, (2, 10)))
    ref = loss_sums_from_logits(jnp.einsum("bsd,dv->bsv", h, w), t, m)
    got = chunked_loss_sums(h, w, t, m, chunk_size=chunk)
    for k in ref:
        np.testing.assert_allclose(float(got[k]), float(ref[k]), rtol=1e-6)


def test_z_loss_gradient_matches_analytic():
    """d/dlogits of z*lse^2 = 2 z lse softmax; check through loss_sums_from_logits."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(1, 2, 7)), jnp.float32)
    t = jnp.asarray([[1, 4]])
    m = jnp.asarray([[1, 1]])
    g = jax.grad(lambda x: loss_sums_from_logits(x, t, m)["z_sum"])(x)
    lse = jax.nn.logsumexp(x, -1, keepdims=True)
    np.testing.assert_allclose(g, 2 * lse * jax.nn.softmax(x, -1), rtol=1e-5)


def test_schedule_values():
    cfg = make_config()
    o = cfg.optimizer
    o.peak_lr, o.final_lr, o.warmup_steps = 3e-4, 3e-5, 10
    sched = make_schedule(o, 110)
    assert float(sched(0)) == 0.0
    np.testing.assert_allclose(float(sched(5)), 1.5e-4, rtol=1e-6)
    np.testing.assert_allclose(float(sched(10)), 3e-4, rtol=1e-6)
    mid = 3e-5 + (3e-4 - 3e-5) * 0.5 * (1 + math.cos(math.pi * 0.5))
    np.testing.assert_allclose(float(sched(60)), mid, rtol=1e-5)
    np.testing.assert_allclose(float(sched(110)), 3e-5, rtol=1e-5)
    np.testing.assert_allclose(float(sched(500)), 3e-5, rtol=1e-5)


def test_no_decay_on_scale_and_bias(tiny):
    cfg, mcfg, params, _ = tiny
    mask = decay_mask(params)
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
    for name, decays in flat.items():
        assert decays == (not (name.endswith("['scale']") or name.endswith("['bias']"))), name
    assert flat["['layers']['attn']['q_proj']['bias']"] is False
    assert flat["['embed']['embedding']"] is True
    # Effect: with zero gradients only decayed leaves move, by lr * wd * p.
    cfg.optimizer.weight_decay, cfg.optimizer.warmup_steps = 0.1, 0
    tx, sched = make_optimizer(cfg)
    p = jax.tree_util.tree_map(lambda x: x + 1.0, params)
    upd, _ = jax.jit(
        lambda p: tx.update(jax.tree_util.tree_map(jnp.zeros_like, p), tx.init(p), p),
        compiler_options=FAST,
    )(p)
    lr = float(sched(0))

    def check(path, u, x):
        name = jax.tree_util.keystr(path)
        want = 0.0 * x if name.endswith(("['scale']", "['bias']")) else -lr * 0.1 * x
        np.testing.assert_allclose(u, want, rtol=1e-6, atol=1e-12)

    jax.tree_util.tree_map_with_path(check, upd, p)


def test_clipping_scales_to_clip_norm(tiny):
    cfg, _, params, _ = tiny
    cfg.optimizer.clip_norm = 1.0
    cfg.optimizer.warmup_steps = 0
    tx_clip, _ = make_optimizer(cfg)
    cfg.optimizer.clip_norm = 0.0  # off
    tx_none, _ = make_optimizer(cfg)
    g = jax.tree_util.tree_map(lambda x: jnp.full_like(x, 0.3), params)
    norm = float(optax.tree.norm(g))
    assert norm > 1.0
    g_unit = jax.tree_util.tree_map(lambda x: x / norm, g)
    # Adam's first update is scale-invariant, so compare the clipped moments instead.
    _, s_clip = jax.jit(
        lambda g: tx_clip.update(g, tx_clip.init(params), params), compiler_options=FAST
    )(g)
    _, s_ref = jax.jit(
        lambda g: tx_none.update(g, tx_none.init(params), params), compiler_options=FAST
    )(g_unit)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
        s_clip[1][0].mu,  # chain(clip, adamw) -> adamw -> ScaleByAdamState
        s_ref[0][0].mu,  # chain(adamw) -> adamw -> ScaleByAdamState
    )


def test_bad_micro_batch_errors():
    mesh = make_mesh({"data": 4, "fsdp": 2})
    with pytest.raises(ValueError, match="not a multiple of"):
        micro_batching(make_config(micro_batch_size=3), mesh)
    with pytest.raises(ValueError, match="data\\*fsdp=8"):
        micro_batching(make_config(micro_batch_size=4), mesh)


def test_flops_formula_and_mfu():
    cfg = get_preset("tiny")
    d, f, v, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_layers
    h, kv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
    per_layer = d * h * hd * 2 + 2 * d * kv * hd + h * hd + 2 * kv * hd + 3 * d * f + 2 * d
    n = L * per_layer + d + d * v  # + final norm + LM head (embedding lookup excluded)
    assert matmul_param_count(cfg) == n
    assert attention_flops_per_token(cfg, 100) == 6 * L * h * hd * 100
    assert flops_per_token(cfg, 100) == 6 * n + 6 * L * h * hd * 100
    assert flops_per_step(cfg, 100, 4) == flops_per_token(cfg, 100) * 400
    tied = cfg.replace(tie_embeddings=True)
    assert matmul_param_count(tied) == matmul_param_count(cfg)  # head still multiplies
    # 14B: Table 1 gives ~12.49B parameters with untied embeddings (not 14.4B).
    assert abs(param_count(get_preset("zen_code_14b")) / 1e9 - 12.49) < 0.01
    assert mfu(1000.0, cfg, 100, 2, 0.0) != mfu(1000.0, cfg, 100, 2, 0.0)  # NaN, unknown peak
    np.testing.assert_allclose(
        mfu(1000.0, cfg, 100, 2, 1e12), 1000 * flops_per_token(cfg, 100) / 2e12
    )
    assert peak_flops_per_device(5e14) == 5e14
    assert peak_flops_per_device(0.0) == cpu_peak_flops() > 0  # this host's CPU


def test_cpu_peak_flops_from_cpuinfo() -> None:
    def info(flags: str, mhz: str = "2500.000") -> str:
        return f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\ncpu MHz\t\t: {mhz}\n"

    # cores x GHz x FLOPs/cycle/core (two FMA units: 8 f32 lanes x 2 x 2 for AVX2).
    assert cpu_peak_flops(info("avx avx2 fma"), cores=2) == 2 * 2.5e9 * 32
    assert cpu_peak_flops(info("avx2 fma avx512f"), cores=4) == 4 * 2.5e9 * 64
    assert cpu_peak_flops(info("avx512f amx_bf16 amx_tile"), cores=2) == 2 * 2.5e9 * 1024
    assert cpu_peak_flops(info("sse4_2"), cores=1) == 2.5e9 * 16
    # No clock in cpuinfo (some VMs): 2.5 GHz assumed; the highest clock listed wins.
    assert cpu_peak_flops("flags : avx2 fma\n", cores=1) == 2.5e9 * 32
    two = info("avx2 fma", "1000.0") + info("avx2 fma", "3000.0")
    assert cpu_peak_flops(two, cores=1) == 3e9 * 32
