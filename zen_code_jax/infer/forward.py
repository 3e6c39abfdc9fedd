"""Device functions shared by decoding and scoring: weights cast for inference, the KV
cache's sharding constraint, the LM head, and teacher-forced scoring.

Decoding itself (generation) has one implementation: the slot engine (`slots.py`, the
device half: a fixed set of KV-cache rows and its two compiled steps) driven by the
scheduler (`scheduler.py`), synchronously for evaluation (`InferenceEngine.complete`) and
from its own thread for the server. What is left here is what both need, and `score`:
teacher-forced log-probabilities of given continuations (held-out metrics), which is one
forward pass over known tokens, not a decode.

Compilation. `score` buckets shapes: batch and sequence length to powers of two, so
repeated calls with similar sizes reuse one executable per (batch bucket, length bucket).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from zen_code_jax.model.config import ModelConfig
from zen_code_jax.model.layers import as_dtype, matmul
from zen_code_jax.model.transformer import KV_CACHE_AXES, Transformer, lm_head_kernel

MIN_LENGTH_BUCKET = 16
LOGPROB_CHUNK = 256  # positions per chunk of [chunk, V] logits when scoring

# Number of times `score` was traced (a compile per new bucket); tests read it.
TRACE_COUNTS: dict[str, int] = {"score": 0}


def bucket(n: int, minimum: int = 1) -> int:
    """Smallest power of two >= max(n, minimum)."""
    n = max(int(n), int(minimum), 1)
    return 1 << (n - 1).bit_length()


def batch_bucket(n: int, multiple: int = 1) -> int:
    """Power-of-two batch size >= n, rounded up to a multiple of the data-parallel size."""
    b = bucket(n)
    return -(-b // multiple) * multiple


def _model(cfg: ModelConfig) -> Transformer:
    return Transformer(cfg)


def cast_for_inference(params: Any, cfg: ModelConfig) -> Any:
    """Store matmul weights (`kernel`, `embedding`) in the compute dtype.

    The model casts every kernel to `cfg.dtype` before its matmul and every embedding row
    after the lookup, so this gives bit-identical outputs while halving weight memory and
    removing a full f32->bf16 weight conversion from every decode step. Norm scales and
    biases keep their dtype.
    """
    dtype = as_dtype(cfg.dtype)
    if dtype == as_dtype(cfg.param_dtype):
        return params

    def cast(path: tuple, x: Any) -> Any:
        name = getattr(path[-1], "key", "")
        return x.astype(dtype) if name in ("kernel", "embedding") else x

    return jax.tree_util.tree_map_with_path(cast, params)


def constrain_cache(cache: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Shard the cache by the logical rules in scope (no-op without a mesh and rules)."""
    return {name: nn.with_logical_constraint(x, KV_CACHE_AXES) for name, x in cache.items()}


def lm_logits(hidden: jax.Array, cfg: ModelConfig, params: Any) -> jax.Array:
    """float32 logits [B, V] of final hidden states [B, D] (the model's LM head), one GEMM.
    (An earlier XLA:CPU ran small-M GEMMs 23x slower than M = 1, so this fed one GEMV per
    row; with the XNNPACK path of the pinned jax one [8, 256] @ [256, 8192] GEMM takes
    0.57 ms against 1.65 ms for eight GEMVs, docs/measurements.md, Serving.)"""
    return matmul(hidden, lm_head_kernel(params, cfg), as_dtype(cfg.dtype))


@functools.partial(jax.jit, static_argnames=("cfg",))
def score(
    params: Any,
    tokens: jax.Array,
    targets: jax.Array,
    segment_ids: jax.Array,
    *,
    cfg: ModelConfig,
) -> jax.Array:
    """Teacher-forced log p(targets[b, t] | tokens[b, :t+1]) as float32 [B, S].

    The [S, V] logits are formed LOGPROB_CHUNK positions at a time from the final hidden
    states, so long held-out files never materialize [B, S, V] float32 logits.
    """
    TRACE_COUNTS["score"] += 1
    batch, slen = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(slen, dtype=jnp.int32), (batch, slen))
    hidden = _model(cfg).apply(
        {"params": params}, tokens, positions, segment_ids, return_hidden=True
    )
    kernel = lm_head_kernel(params, cfg)
    chunk = min(LOGPROB_CHUNK, slen)
    nchunks = slen // chunk  # slen and chunk are powers of two

    def one(args):
        h, t = args  # [B, chunk, D], [B, chunk]
        logits = matmul(h, kernel, as_dtype(cfg.dtype))
        logp = jax.nn.log_softmax(logits, axis=-1)
        return jnp.take_along_axis(logp, t[..., None], axis=-1)[..., 0]

    hs = hidden.reshape(batch, nchunks, chunk, -1).transpose(1, 0, 2, 3)
    ts = targets.reshape(batch, nchunks, chunk).transpose(1, 0, 2)
    out = jax.lax.map(one, (hs, ts))  # [nchunks, B, chunk]
    return out.transpose(1, 0, 2).reshape(batch, slen)


def token_logprobs_ids(
    params: Any,
    cfg: ModelConfig,
    context_ids: Sequence[Sequence[int]],
    continuation_ids: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_multiple: int = 1,
) -> list[np.ndarray]:
    """log p(continuation[i] | context + continuation[:i]) for each pair, float32 arrays."""
    if len(context_ids) != len(continuation_ids):
        raise ValueError(
            f"{len(context_ids)} contexts but {len(continuation_ids)} continuations; pass one "
            "continuation per context."
        )
    n = len(context_ids)
    if n == 0:
        return []
    seqs = []
    for ctx, cont in zip(context_ids, continuation_ids):
        if len(ctx) == 0:
            raise ValueError(
                "Empty context: the first continuation token needs something to condition on; "
                "start the context with the <|endoftext|> id."
            )
        seqs.append(list(ctx) + list(cont))
    longest = max(len(s) for s in seqs) - 1
    if longest > cfg.max_position_embeddings:
        raise ValueError(
            f"A context+continuation of {longest + 1} tokens exceeds the model's context of "
            f"{cfg.max_position_embeddings}; truncate the context from the left."
        )
    b = batch_bucket(n, batch_multiple)
    slen = bucket(longest, MIN_LENGTH_BUCKET)
    tokens = np.full((b, slen), pad_id, np.int32)
    targets = np.zeros((b, slen), np.int32)
    segs = np.zeros((b, slen), np.int32)
    for i, s in enumerate(seqs):
        tokens[i, : len(s) - 1] = s[:-1]
        targets[i, : len(s) - 1] = s[1:]
        segs[i, : len(s) - 1] = 1
    logp = np.asarray(
        score(params, jnp.asarray(tokens), jnp.asarray(targets), jnp.asarray(segs), cfg=cfg)
    )
    results = []
    for i, (ctx, cont) in enumerate(zip(context_ids, continuation_ids)):
        start = len(ctx) - 1
        results.append(logp[i, start : start + len(cont)].astype(np.float32))
    return results
