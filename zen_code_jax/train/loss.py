"""Masked next-token cross-entropy with optional z-loss, whole or in chunks.

All functions return *sums* (not means) plus the token count, so that gradient
accumulation over micro-batches adds them up and divides once by the global token count:
accumulating k micro-batches is then the same objective as one large batch.

The chunked form never materializes the [batch, length, vocab] float32 logits: it scans
over chunks of positions, computes `hidden_chunk @ lm_head_kernel` for one chunk at a
time, and rematerializes that chunk's logits in the backward pass (`jax.checkpoint`).
For the 14B model at 8K context that is the difference between ~5 GB of logits (several
copies) per sequence and one chunk's worth.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

LossSums = dict[str, jax.Array]


def _token_terms(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token (cross-entropy, logsumexp) in float32. logits [..., V], targets [...]."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    if _vocab_sharded():
        # A one-hot contraction: partitions cleanly when the vocabulary axis is sharded.
        onehot = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
        target_logit = jnp.sum(logits * onehot, axis=-1)
    else:
        target_logit = _target_logit(logits, targets)
    return lse - target_logit, lse


def _vocab_sharded() -> bool:
    """Whether the logical `vocab` axis maps to mesh axes of size > 1 (rules and mesh in
    scope at trace time); False without a mesh or rules."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return False
    axes = nn.logical_to_mesh_axes(("vocab",))[0]
    if axes is None:
        return False
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(mesh.shape[a] for a in names) > 1


@jax.custom_vjp
def _target_logit(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """`sum(logits * one_hot(targets), -1)`, bitwise, by a gather.

    Why: the one-hot product materializes a [tokens, V] float32 array and reduces it (3-4%
    of the cpu-scale step, docs/measurements.md). Every other term of that sum is an exact
    zero, so picking the one entry gives the same bits for finite logits; an out-of-range
    target gives 0, as its all-zero one-hot row did. The backward is the one-hot
    expression autodiff produced before (`g * one_hot`), a dense op XLA fuses with the
    softmax gradient rather than a scatter.
    """
    vocab = logits.shape[-1]
    valid = (targets >= 0) & (targets < vocab)
    picked = jnp.take_along_axis(logits, jnp.clip(targets, 0, vocab - 1)[..., None], axis=-1)
    return jnp.where(valid, picked[..., 0], jnp.zeros((), logits.dtype))


def _target_logit_fwd(logits, targets):
    # A zero-size array carries the logits' shape and dtype to the backward pass.
    return _target_logit(logits, targets), (targets, jnp.zeros((0, logits.shape[-1]), logits.dtype))


def _target_logit_bwd(res, g):
    targets, like = res
    onehot = jax.nn.one_hot(targets, like.shape[-1], dtype=like.dtype)
    return g[..., None] * onehot, None


_target_logit.defvjp(_target_logit_fwd, _target_logit_bwd)


def loss_sums_from_logits(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> LossSums:
    """{'ce_sum', 'z_sum', 'count'} over tokens where loss_mask != 0.

    z_sum is the sum of logsumexp^2 (the PaLM z-loss before its coefficient).
    """
    ce, lse = _token_terms(logits, targets)
    m = loss_mask.astype(jnp.float32)
    return {
        "ce_sum": jnp.sum(ce * m),
        "z_sum": jnp.sum(jnp.square(lse) * m),
        "count": jnp.sum(m),
    }


def chunked_loss_sums(
    hidden: jax.Array,
    lm_head: jax.Array,
    targets: jax.Array,
    loss_mask: jax.Array,
    chunk_size: int,
    compute_dtype: jnp.dtype | str = jnp.float32,
) -> LossSums:
    """The same sums as `loss_sums_from_logits(hidden @ lm_head, ...)`, in chunks.

    hidden [B, S, D] (after the final norm), lm_head [D, V], targets/loss_mask [B, S].
    `chunk_size` is the number of positions per chunk (each chunk is [B, chunk_size]
    tokens). Chunks are *strided* (chunk j holds positions j, j+n, j+2n, ... for n chunks),
    so when the length axis is sharded over the 'sequence' mesh axis every device keeps
    working on its own positions; the loss is a sum, so the order does not matter.
    """
    b, s, d = hidden.shape
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    chunk = min(chunk_size, s)
    n = -(-s // chunk)
    pad = n * chunk - s
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        loss_mask = jnp.pad(loss_mask, ((0, 0), (0, pad)))
    # [B, chunk, n, ...] -> scan over n.
    h = jnp.moveaxis(hidden.reshape(b, chunk, n, d), 2, 0)
    t = jnp.moveaxis(targets.reshape(b, chunk, n), 2, 0)
    m = jnp.moveaxis(loss_mask.reshape(b, chunk, n), 2, 0).astype(jnp.float32)
    w = lm_head.astype(compute_dtype)

    @jax.checkpoint
    def chunk_sums(h_c, t_c, m_c):
        # Same contraction as the model's LM head (model.layers.matmul): inputs in the
        # compute dtype, float32 accumulation.
        logits = jnp.einsum(
            "bcd,dv->bcv", h_c.astype(compute_dtype), w, preferred_element_type=jnp.float32
        )
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        ce, lse = _token_terms(logits, t_c)
        return jnp.sum(ce * m_c), jnp.sum(jnp.square(lse) * m_c)

    def body(carry, xs):
        ce_acc, z_acc = carry
        ce, z = chunk_sums(*xs)
        return (ce_acc + ce, z_acc + z), None

    zero = jnp.zeros((), jnp.float32)
    (ce_sum, z_sum), _ = jax.lax.scan(body, (zero, zero), (h, t, m))
    return {"ce_sum": ce_sum, "z_sum": z_sum, "count": jnp.sum(m)}


def objective(sums: LossSums, z_loss: float) -> jax.Array:
    """The summed training objective: CE + z_loss * logsumexp^2 (divide by tokens later)."""
    return sums["ce_sum"] + z_loss * sums["z_sum"]
