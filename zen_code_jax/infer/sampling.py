"""Token sampling for the decoder: greedy, temperature and nucleus (top-p), per row.

Every row of a batch carries its own temperature, top-p and random key, so one compiled
decoder serves a batch that mixes greedy IDE completions with sampled pass@k rows (the
server batches concurrent requests). Randomness is a pure function of (seed, sample index,
step): the same request gives the same tokens whatever else shares its batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Temperatures at or below this are treated as greedy (argmax) decoding.
GREEDY_EPS = 1e-5


def row_keys(seeds: jax.Array, sample_index: jax.Array, step: jax.Array) -> jax.Array:
    """One PRNG key per row for decode step `step`: fold (seed, sample index, step).

    seeds, sample_index: int32 [B]; step: int32 scalar, or [B] when rows are at different
    steps (the slot engine). Returns a key array [B].
    """

    def one(seed, idx, t):
        key = jax.random.fold_in(jax.random.key(0), seed)
        key = jax.random.fold_in(key, idx)
        return jax.random.fold_in(key, t)

    steps = jnp.broadcast_to(jnp.asarray(step, jnp.int32), seeds.shape)
    return jax.vmap(one)(seeds, sample_index, steps)


def top_p_mask(logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """Boolean [B, V]: the smallest set of tokens whose probability mass reaches `top_p`.

    A token is kept when the mass of the strictly more likely tokens is below top_p, so the
    most likely token is always kept and top_p -> 0 keeps only the argmax (greedy).
    logits: float32 [B, V] (already divided by the temperature); top_p: float32 [B].
    """
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < top_p[:, None]
    # The smallest kept logit is the threshold; ties with it are kept too.
    num_kept = jnp.sum(keep_sorted, axis=-1)
    threshold = jnp.take_along_axis(sorted_logits, (num_kept - 1)[:, None], axis=-1)
    return logits >= threshold


def sample_tokens(
    logits: jax.Array,
    keys: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
) -> jax.Array:
    """Next token per row: argmax where temperature <= GREEDY_EPS, else nucleus sampling.

    logits: [B, V] (any float dtype; computed in float32); keys: key array [B];
    temperature, top_p: float32 [B]. Returns int32 [B].
    """
    logits = logits.astype(jnp.float32)
    greedy_tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    greedy_rows = temperature <= GREEDY_EPS

    def sampled(_):
        scaled = logits / jnp.maximum(temperature, GREEDY_EPS)[:, None]
        # The sort for top-p is the costly part at large vocabularies: skip it when no row
        # asks for it.
        scaled = jax.lax.cond(
            jnp.any(top_p < 1.0),
            lambda s: jnp.where(top_p_mask(s, top_p), s, -jnp.inf),
            lambda s: s,
            scaled,
        )
        drawn = jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)
        return jnp.where(greedy_rows, greedy_tokens, drawn)

    return jax.lax.cond(jnp.all(greedy_rows), lambda _: greedy_tokens, sampled, None)
