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

import flax.linen as nn
import jax
import jax.numpy as jnp

LossSums = dict[str, jax.Array]


def _token_terms(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token (cross-entropy, logsumexp) in float32. logits [..., V], targets [...]."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    # A one-hot contraction instead of a gather: partitions cleanly when the vocabulary
    # axis is sharded, and its backward is a dense op rather than a scatter.
    onehot = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
    target_logit = jnp.sum(logits * onehot, axis=-1)
    return lse - target_logit, lse


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
