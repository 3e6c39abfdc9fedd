"""Jitted KV-cache decoder: batched prefill of right-padded prompts, then a while-loop decode.

Layout. Prompts of different lengths are right-padded into one [B, P] batch and prefilled at
positions 0..P-1 (the padding writes garbage into its own row's cache slots, which decoding
overwrites before any query attends to them: a query at position p sees slots 0..p of its
row). Each row then decodes at its own next position `length + step - 1`. The cache is
`[L, B, T, KV, Dh]` (GQA: KV heads, not query heads) with logical axes
(layers, batch, length, kv_heads, head_dim), constrained to the active mesh by the same
logical rules as the model.

Compilation. Shapes are bucketed: batch and prompt length to powers of two, the new-token
budget to a power of two, so repeated calls with similar sizes reuse one executable per
(batch bucket, prompt bucket, new-token bucket). Everything per row (length, budget,
temperature, top-p, seed) is a traced array, never a static argument.

Stops. Token stops (EOS / `<|endoftext|>` and the other special ids) end a row on device; the
loop exits early when every row is done. User stop strings need detokenized text, so the
host runs the loop in chunks and checks the text of live rows between chunks
(`generate_ids(stop_fn=...)`); the caller truncates the text at the first stop string.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from zen_code_jax.infer.sampling import row_keys, sample_tokens
from zen_code_jax.model.config import ModelConfig
from zen_code_jax.model.layers import as_dtype, matmul
from zen_code_jax.model.transformer import (
    KV_CACHE_AXES,
    Transformer,
    init_kv_cache,
    lm_head_kernel,
)

MAX_STOP_IDS = 16  # fixed width of the stop-id array so it never changes the compiled shape
MIN_LENGTH_BUCKET = 16
LOGPROB_CHUNK = 256  # positions per chunk of [chunk, V] logits when scoring

# Number of times each jitted function was traced (a compile per new bucket); tests read it.
TRACE_COUNTS: dict[str, int] = {"prefill": 0, "decode": 0, "score": 0}
# Sharding of the last decode's KV cache (for tests and debugging the mesh layout).
LAST_CACHE_SHARDING: dict[str, Any] = {}


def bucket(n: int, minimum: int = 1) -> int:
    """Smallest power of two >= max(n, minimum)."""
    n = max(int(n), int(minimum), 1)
    return 1 << (n - 1).bit_length()


def batch_bucket(n: int, multiple: int = 1) -> int:
    """Power-of-two batch size >= n, rounded up to a multiple of the data-parallel size."""
    b = bucket(n)
    return -(-b // multiple) * multiple


class RowParams(NamedTuple):
    """Per-row decoding settings (all traced, so any mix shares one executable)."""

    lengths: jax.Array  # int32 [B] prompt lengths (>= 1)
    max_new: jax.Array  # int32 [B] new-token budget per row (0 for batch padding rows)
    temperature: jax.Array  # float32 [B]; <= 1e-5 means greedy
    top_p: jax.Array  # float32 [B]
    seeds: jax.Array  # int32 [B]
    sample_index: jax.Array  # int32 [B] (n samples of one prompt differ by this)
    stop_ids: jax.Array  # int32 [MAX_STOP_IDS], -1 padded


class DecodeState(NamedTuple):
    cache: dict[str, jax.Array]  # {'k','v'}: [L, B, T, KV, Dh]
    out: jax.Array  # int32 [B, N] generated tokens (pad after a row is done)
    last: jax.Array  # int32 [B] last generated token (fed at the next step)
    step: jax.Array  # int32 scalar: tokens generated so far by live rows
    done: jax.Array  # bool [B]


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


def _is_stop(tokens: jax.Array, stop_ids: jax.Array) -> jax.Array:
    return jnp.any(tokens[:, None] == stop_ids[None, :], axis=-1)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_bucket", "pad_id"))
def prefill(
    params: Any,
    tokens: jax.Array,
    rows: RowParams,
    *,
    cfg: ModelConfig,
    max_new_bucket: int,
    pad_id: int,
) -> DecodeState:
    """Run the right-padded prompts [B, P] through the model, filling a fresh cache of
    length P + max_new_bucket, and sample each row's first new token."""
    TRACE_COUNTS["prefill"] += 1
    batch, plen = tokens.shape
    cache = constrain_cache(init_kv_cache(cfg, batch, plen + max_new_bucket))
    positions = jnp.broadcast_to(jnp.arange(plen, dtype=jnp.int32), (batch, plen))
    # Segment 0 marks the right padding: the model never writes it into the cache.
    segment_ids = (positions < rows.lengths[:, None]).astype(jnp.int32)
    hidden, cache = _model(cfg).apply(
        {"params": params}, tokens, positions, segment_ids, kv_cache=cache, return_hidden=True
    )
    cache = constrain_cache(cache)
    # Only the last prompt position of each row needs logits: [B, D] @ [D, V].
    last_hidden = jnp.take_along_axis(hidden, (rows.lengths - 1)[:, None, None], axis=1)[:, 0]
    logits = lm_logits(last_hidden, cfg, params)
    step = jnp.zeros((), jnp.int32)
    keys = row_keys(rows.seeds, rows.sample_index, step)
    tok = sample_tokens(logits, keys, rows.temperature, rows.top_p)
    out = jnp.full((batch, max_new_bucket), pad_id, jnp.int32).at[:, 0].set(tok)
    done = _is_stop(tok, rows.stop_ids) | (rows.max_new <= 1)
    return DecodeState(cache=cache, out=out, last=tok, step=step + 1, done=done)


@functools.partial(jax.jit, static_argnames=("cfg", "pad_id"), donate_argnames=("state",))
def decode(
    params: Any,
    state: DecodeState,
    rows: RowParams,
    end_step: jax.Array,
    *,
    cfg: ModelConfig,
    pad_id: int,
) -> DecodeState:
    """Decode one token per step for every row until `end_step` or until all rows are done."""
    TRACE_COUNTS["decode"] += 1
    model = _model(cfg)
    cache_len = state.cache["k"].shape[2]
    max_steps = state.out.shape[1]

    def cond(s: DecodeState) -> jax.Array:
        return (s.step < jnp.minimum(end_step, max_steps)) & ~jnp.all(s.done)

    def body(s: DecodeState) -> DecodeState:
        pos = jnp.minimum(rows.lengths + s.step - 1, cache_len - 1)
        hidden, cache = model.apply(
            {"params": params},
            s.last[:, None],
            pos[:, None],
            kv_cache=s.cache,
            return_hidden=True,
        )
        cache = constrain_cache(cache)
        logits = lm_logits(hidden[:, -1], cfg, params)
        keys = row_keys(rows.seeds, rows.sample_index, s.step)
        tok = sample_tokens(logits, keys, rows.temperature, rows.top_p)
        tok = jnp.where(s.done, pad_id, tok)
        out = jax.lax.dynamic_update_slice(s.out, tok[:, None], (0, s.step))
        done = s.done | _is_stop(tok, rows.stop_ids) | (s.step + 1 >= rows.max_new)
        return DecodeState(cache=cache, out=out, last=tok, step=s.step + 1, done=done)

    return jax.lax.while_loop(cond, body, state)


@dataclass
class Generation:
    """One decoded row: its new token ids (stop token excluded) and why it ended."""

    ids: list[int]
    finish_reason: str  # "stop" (stop token or stop string) | "length"


def generate_ids(
    params: Any,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: Sequence[int],
    temperature: Sequence[float],
    top_p: Sequence[float],
    seeds: Sequence[int],
    sample_index: Sequence[int],
    stop_ids: Sequence[int],
    pad_id: int,
    stop_fn: Callable[[int, list[int]], bool] | None = None,
    chunk_steps: int = 32,
    batch_multiple: int = 1,
) -> list[Generation]:
    """Decode one batch of token prompts (call inside the engine's mesh context, if any).

    stop_fn(row, new_ids) -> True ends a live row (used for user stop strings); it is checked
    every `chunk_steps` decode steps, so without it the whole decode is one device call.
    """
    n = len(prompts)
    if n == 0:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("Empty prompt: every prompt needs at least one token (e.g. the EOS id).")
    if len(stop_ids) > MAX_STOP_IDS:
        raise ValueError(f"At most {MAX_STOP_IDS} stop ids are supported, got {len(stop_ids)}.")
    lengths = [len(p) for p in prompts]
    budgets = [int(m) for m in max_new_tokens]
    for length, m in zip(lengths, budgets):
        if m < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {m}.")
        if length + m > cfg.max_position_embeddings:
            raise ValueError(
                f"Prompt of {length} tokens + {m} new tokens exceeds the model's context of "
                f"{cfg.max_position_embeddings} positions; shorten the prompt or lower "
                "max_new_tokens."
            )
    if max(budgets) == 0:
        return [Generation([], "length") for _ in range(n)]

    b = batch_bucket(n, batch_multiple)
    plen = bucket(max(lengths), MIN_LENGTH_BUCKET)
    nbucket = bucket(max(budgets), MIN_LENGTH_BUCKET)
    tokens = np.full((b, plen), pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p

    def col(values, fill, dtype):
        arr = np.full((b,), fill, dtype)
        arr[:n] = values
        return jnp.asarray(arr)

    stops = np.full((MAX_STOP_IDS,), -1, np.int32)
    stops[: len(stop_ids)] = list(stop_ids)
    rows = RowParams(
        lengths=col(lengths, 1, np.int32),
        max_new=col(budgets, 0, np.int32),
        temperature=col(temperature, 0.0, np.float32),
        top_p=col(top_p, 1.0, np.float32),
        seeds=col([int(s) & 0x7FFFFFFF for s in seeds], 0, np.int32),
        sample_index=col(sample_index, 0, np.int32),
        stop_ids=jnp.asarray(stops),
    )
    state = prefill(
        params, jnp.asarray(tokens), rows, cfg=cfg, max_new_bucket=nbucket, pad_id=pad_id
    )
    stopped_by_fn = np.zeros((b,), bool)
    end = nbucket if stop_fn is None else 1
    while True:
        if stop_fn is not None:
            out = np.asarray(state.out)
            done = np.asarray(state.done).copy()
            step = int(state.step)
            changed = False
            for i in range(n):
                if not done[i] and stop_fn(i, _row_ids(out[i], step, budgets[i], stops)[0]):
                    done[i] = stopped_by_fn[i] = changed = True
            if changed:
                state = state._replace(done=jnp.asarray(done))
            if done[:n].all() or step >= nbucket:
                break
            end = step + chunk_steps
        state = decode(params, state, rows, jnp.int32(end), cfg=cfg, pad_id=pad_id)
        if stop_fn is None:
            break
    LAST_CACHE_SHARDING["k"] = state.cache["k"].sharding
    out = np.asarray(state.out)
    step = int(state.step)
    results = []
    for i in range(n):
        ids, hit_stop = _row_ids(out[i], step, budgets[i], stops)
        reason = "stop" if hit_stop or stopped_by_fn[i] else "length"
        results.append(Generation(ids, reason))
    return results


def _row_ids(row: np.ndarray, step: int, budget: int, stops: np.ndarray) -> tuple[list[int], bool]:
    """A row's generated ids up to (excluding) its first stop id, within its budget."""
    ids = row[: min(step, budget)]
    hits = np.nonzero(np.isin(ids, stops[stops >= 0]))[0]
    if hits.size:
        return ids[: hits[0]].tolist(), True
    return ids.tolist(), False


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
