"""The loss's target logit by a gather: the same bits as the one-hot contraction it replaced
(values and gradients), and the one-hot form kept where the vocabulary is sharded."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zen_code_jax.train.loss as loss_mod
from zen_code_jax.parallel import make_mesh
from zen_code_jax.parallel.rules import DEFAULT_RULES


def _onehot_reference(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """The contraction the loss used before (kept here as the reference)."""
    onehot = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
    return jnp.sum(logits * onehot, axis=-1)


def _case(seed: int = 0, vocab: int = 97):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(3, 17, vocab)) * 4).astype(np.float32)
    logits[0, 0, 5] = -0.0  # a signed zero as the target logit
    targets = rng.integers(0, vocab, (3, 17)).astype(np.int32)
    targets[0, 0] = 5
    targets[1, 2], targets[2, 3] = -1, vocab  # out of range: one-hot gives 0
    mask = rng.integers(0, 2, (3, 17)).astype(np.int32)
    mask[1, 2] = mask[2, 3] = 0
    return jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask)


def test_target_logit_bitwise_equal_to_onehot_values_and_grads():
    logits, targets, _ = _case()
    got = jax.jit(loss_mod._target_logit)(logits, targets)
    ref = jax.jit(_onehot_reference)(logits, targets)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    assert float(got[1, 2]) == 0.0 and float(got[2, 3]) == 0.0
    ct = jnp.asarray(np.random.default_rng(1).normal(size=targets.shape).astype(np.float32))
    g_got = jax.jit(jax.grad(lambda x: jnp.sum(loss_mod._target_logit(x, targets) * ct)))(logits)
    g_ref = jax.jit(jax.grad(lambda x: jnp.sum(_onehot_reference(x, targets) * ct)))(logits)
    np.testing.assert_array_equal(np.asarray(g_got), np.asarray(g_ref))


def test_loss_sums_and_grads_bitwise_equal_to_onehot_path(monkeypatch):
    """The whole loss (CE + z-loss sums) and its gradient, gather vs forced one-hot."""
    logits, targets, mask = _case(2)

    def value_and_grad():
        def f(x):
            s = loss_mod.loss_sums_from_logits(x, targets, mask)
            return s["ce_sum"] + 1e-4 * s["z_sum"], s

        return jax.jit(jax.value_and_grad(f, has_aux=True))(logits)

    (v1, s1), g1 = value_and_grad()
    monkeypatch.setattr(loss_mod, "_vocab_sharded", lambda: True)
    (v2, s2), g2 = value_and_grad()
    assert float(v1) == float(v2)
    for k in s1:
        assert float(s1[k]) == float(s2[k]), k
    np.testing.assert_array_equal(np.asarray(g1), np.asarray(g2))
    # And against float64 numpy (independent of either form).
    x = np.asarray(logits, np.float64)
    lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    t = np.asarray(targets)
    ok = (t >= 0) & (t < x.shape[-1])
    tgt = np.where(
        ok, np.take_along_axis(x, np.clip(t, 0, x.shape[-1] - 1)[..., None], -1)[..., 0], 0
    )
    np.testing.assert_allclose(
        float(s1["ce_sum"]), ((lse - tgt) * np.asarray(mask)).sum(), rtol=1e-6
    )


@pytest.mark.parametrize("tensor, sharded", [(1, False), (2, True)])
def test_vocab_sharded_follows_mesh_and_rules(tensor, sharded):
    assert not loss_mod._vocab_sharded()  # no mesh in scope
    mesh = make_mesh({"data": -1, "tensor": tensor})
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(DEFAULT_RULES)):
        assert loss_mod._vocab_sharded() is sharded
