"""Attention implementations against a brute-force float64 reference, outputs and gradients."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zen_code_jax.model.attention import (
    _splash_attention,
    dot_product_attention,
    reference_attention_numpy,
    resolve_impl,
)

B, S, H, KV, DH = 2, 37, 4, 2, 8  # S not a multiple of the block: exercises padding


def _inputs(seed=0, s=S, t=None):
    t = s if t is None else t
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, s, H, DH)).astype(np.float32)
    k = rng.standard_normal((B, t, KV, DH)).astype(np.float32)
    v = rng.standard_normal((B, t, KV, DH)).astype(np.float32)
    return q, k, v


def _packed_segments(s=S):
    """Row 0: three documents then padding; row 1: one document, padding, in the middle of
    nothing (all real). Exercises cross-segment masking and fully masked query rows."""
    seg = np.zeros((B, s), np.int32)
    seg[0, :10] = 1
    seg[0, 10:11] = 2  # a one-token document
    seg[0, 11:30] = 3
    seg[1, :] = 1
    seg[1, 33:] = 0
    return seg


@functools.cache
def _attn_fn(impl, block_size, position_mode=False):
    def f(q, k, v, qs, ks, qp, kp):
        return dot_product_attention(
            q,
            k,
            v,
            q_segment_ids=qs,
            kv_segment_ids=ks,
            q_positions=qp if position_mode else None,
            kv_positions=kp if position_mode else None,
            impl=impl,
            block_size=block_size,
        )

    def loss(q, k, v, qs, ks, qp, kp, w):
        return jnp.sum(f(q, k, v, qs, ks, qp, kp) * w)

    return jax.jit(f), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def _index_positions(s=S):
    return np.broadcast_to(np.arange(s, dtype=np.int32), (B, s)).copy()


@pytest.mark.parametrize("impl,block", [("xla", 512), ("chunked", 8), ("chunked", 16)])
def test_matches_bruteforce_reference(impl, block):
    q, k, v = _inputs()
    seg = _packed_segments()
    pos = _index_positions()
    fwd, _ = _attn_fn(impl, block)
    out = np.asarray(fwd(q, k, v, seg, seg, pos, pos))
    ref = reference_attention_numpy(q, k, v, seg, seg, pos, pos)
    np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5)
    # Padding rows (segment 0) are exactly zero.
    assert np.all(out[0, 30:] == 0) and np.all(out[1, 33:] == 0)


def test_chunked_equals_xla_outputs_and_gradients():
    q, k, v = _inputs(seed=1)
    seg = _packed_segments()
    pos = _index_positions()
    w = np.random.default_rng(9).standard_normal(q.shape).astype(np.float32)
    fx, gx = _attn_fn("xla", 512)
    fc, gc = _attn_fn("chunked", 8)
    np.testing.assert_allclose(
        np.asarray(fc(q, k, v, seg, seg, pos, pos)),
        np.asarray(fx(q, k, v, seg, seg, pos, pos)),
        atol=2e-6,
        rtol=1e-5,
    )
    grads_x = gx(q, k, v, seg, seg, pos, pos, w)
    grads_c = gc(q, k, v, seg, seg, pos, pos, w)
    for name, a, b in zip("qkv", grads_c, grads_x):
        assert np.abs(np.asarray(b)).max() > 1e-3, name  # gradients are not trivially zero
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-6, rtol=1e-5, err_msg=name)
    # No gradient flows into padding keys or from padding queries.
    assert np.all(np.asarray(grads_c[0])[0, 30:] == 0)
    assert np.all(np.asarray(grads_c[1])[1, 33:] == 0)


def test_chunked_gradients_match_finite_differences_direction():
    """Independent of xla: directional derivative of the chunked loss vs central differences."""
    q, k, v = (x.astype(np.float64) for x in _inputs(seed=2))
    seg = _packed_segments()
    pos = _index_positions()
    w = np.random.default_rng(3).standard_normal(q.shape)
    fc, gc = _attn_fn("chunked", 8)
    dq, dk, dv = gc(q, k, v, seg, seg, pos, pos, w.astype(np.float32))
    rng = np.random.default_rng(4)
    dirs = [rng.standard_normal(x.shape) for x in (q, k, v)]
    eps = 1e-3
    # The loss is evaluated by the float64 numpy reference: an independent check.
    f = lambda q_, k_, v_: float(
        np.sum(reference_attention_numpy(q_, k_, v_, seg, seg, pos, pos) * w)
    )
    plus = f(q + eps * dirs[0], k + eps * dirs[1], v + eps * dirs[2])
    minus = f(q - eps * dirs[0], k - eps * dirs[1], v - eps * dirs[2])
    numeric = (plus - minus) / (2 * eps)
    analytic = float(sum(np.sum(np.asarray(g, np.float64) * d) for g, d in zip((dq, dk, dv), dirs)))
    assert abs(numeric - analytic) < 1e-4 * max(1.0, abs(analytic)), (numeric, analytic)


def test_position_mode_cache_layout():
    """Queries at arbitrary positions against a key cache: slot j visible iff j <= position."""
    t = 24
    q, _, _ = _inputs(seed=5, s=3)
    _, k, v = _inputs(seed=6, s=t)
    qpos = np.array([[4, 5, 6], [10, 11, 23]], np.int32)
    kpos = np.broadcast_to(np.arange(t, dtype=np.int32), (B, t))
    qs = np.ones((B, 3), np.int32)
    ks = np.ones((B, t), np.int32)
    ref = reference_attention_numpy(q, k, v, qs, ks, qpos, kpos)
    for impl, block in (("xla", 512), ("chunked", 8)):
        fwd, _ = _attn_fn(impl, block, position_mode=True)
        out = np.asarray(fwd(q, k, v, qs, ks, qpos, kpos))
        np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5, err_msg=impl)


def test_bfloat16_inputs_close_to_float32():
    q, k, v = _inputs(seed=7)
    seg = _packed_segments()
    pos = _index_positions()
    fc, _ = _attn_fn("chunked", 16)
    ref = reference_attention_numpy(q, k, v, seg, seg, pos, pos)
    out = fc(
        q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), seg, seg, pos, pos
    )
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=5e-2)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks the CPU choice of 'auto'")
def test_auto_resolution_on_cpu():
    assert resolve_impl("auto", position_mode=False, q_len=128, block_size=512) == "xla"
    assert resolve_impl("auto", position_mode=False, q_len=4096, block_size=512) == "chunked"
    assert resolve_impl("splash", position_mode=True, q_len=1, block_size=512) == "xla"
    assert resolve_impl("cudnn", position_mode=True, q_len=4096, block_size=512) == "chunked"
    with pytest.raises(ValueError, match=r"Unknown attention impl 'flash'.*chunked"):
        resolve_impl("flash", position_mode=False, q_len=1, block_size=1)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the no-GPU error")
def test_cudnn_without_gpu_names_the_fix():
    q, k, v = _inputs()
    with pytest.raises(RuntimeError, match=r"'cudnn' needs an NVIDIA GPU.*attention_impl="):
        dot_product_attention(q, k, v, impl="cudnn")


@pytest.mark.skipif(jax.default_backend() == "tpu", reason="checks the no-TPU error")
def test_splash_without_tpu_names_the_fix():
    q, k, v = _inputs()
    with pytest.raises(RuntimeError, match=r"'splash' needs a TPU.*attention_impl="):
        dot_product_attention(q, k, v, impl="splash")


def test_splash_wrapper_in_interpret_mode():
    """The splash wrapper (layouts, GQA grouping, scaling, segment ids) in Pallas interpret
    mode against the reference, so the TPU path is checked on CPU."""
    s = 256  # splash needs block sizes that are multiples of 128
    q, k, v = _inputs(seed=8, s=s)
    seg = np.ones((B, s), np.int32)
    seg[0, 100:] = 2
    seg[1, 200:] = 0
    pos = _index_positions(s)
    out = _splash_attention(q, k, v, seg, seg, 1.0 / np.sqrt(DH), 128, interpret=True)
    ref = reference_attention_numpy(q, k, v, seg, seg, pos, pos)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4, rtol=1e-4)


def test_shape_errors_name_the_fix():
    q, k, v = _inputs()
    with pytest.raises(ValueError, match=r"not a multiple of"):
        dot_product_attention(q[:, :, :3], k, v, impl="xla")
    with pytest.raises(ValueError, match=r"Pass both q_positions and kv_positions"):
        dot_product_attention(q, k, v, q_positions=_index_positions(), impl="xla")
    q2, _, _ = _inputs(s=5)
    with pytest.raises(ValueError, match=r"pass q_positions/kv_positions"):
        dot_product_attention(q2, k, v, impl="xla")


def test_multi_query_and_multi_head_layouts():
    """KV = 1 (MQA) and KV = H (MHA) through the grouped layout, chunked vs brute force."""
    rng = np.random.default_rng(11)
    seg = _packed_segments()
    pos = _index_positions()
    for kvh in (1, H):
        q = rng.standard_normal((B, S, H, DH)).astype(np.float32)
        k = rng.standard_normal((B, S, kvh, DH)).astype(np.float32)
        v = rng.standard_normal((B, S, kvh, DH)).astype(np.float32)
        out = jax.jit(
            lambda q, k, v: dot_product_attention(
                q, k, v, q_segment_ids=seg, kv_segment_ids=seg, impl="chunked", block_size=16
            )
        )(q, k, v)
        ref = reference_attention_numpy(q, k, v, seg, seg, pos, pos)
        np.testing.assert_allclose(np.asarray(out), ref, atol=2e-6, rtol=1e-5, err_msg=str(kvh))
