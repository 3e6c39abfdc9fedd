"""An independent reference decoder for the tests: no KV cache, no slots, no scheduler.

Every step runs the model's training path (`Transformer.apply` over the whole right-padded
sequence: prompt + tokens generated so far) and samples the next token of each row from
its last real position with the package's sampler (`sampling.sample_tokens`, keys
`row_keys(seed, sample_index, step)`: the contract that makes a sample depend on nothing
but its row). The decoder under test (`slots.py` + `scheduler.py`) shares only the model
and the sampler with it; the sampler is checked on its own against a numpy nucleus.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zen_code_jax.infer.sampling import row_keys, sample_tokens
from zen_code_jax.model import Transformer
from zen_code_jax.model.config import ModelConfig


@functools.partial(jax.jit, static_argnames=("cfg",))
def _forward(params: Any, tokens: jax.Array, segs: jax.Array, *, cfg: ModelConfig) -> jax.Array:
    pos = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return Transformer(cfg).apply({"params": params}, tokens, pos, segs)


@jax.jit
def _sample(logits, seeds, index, step, temperature, top_p):
    keys = row_keys(seeds, index, step)
    return sample_tokens(logits, keys, temperature, top_p)


def full_logits(params: Any, cfg: ModelConfig, seqs: Sequence[Sequence[int]], length: int):
    """Training-path logits [B, length, V] of right-padded sequences (no KV cache)."""
    toks = np.zeros((len(seqs), length), np.int32)
    segs = np.zeros_like(toks)
    for i, s in enumerate(seqs):
        toks[i, : len(s)], segs[i, : len(s)] = s, 1
    return np.asarray(_forward(params, toks, segs, cfg=cfg))


def reference_decode(
    params: Any,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    max_new: int | Sequence[int],
    *,
    temperature: float | Sequence[float] = 0.0,
    top_p: float | Sequence[float] = 1.0,
    seeds: int | Sequence[int] = 0,
    sample_index: Sequence[int] | None = None,
    stop_ids: Sequence[int] = (),
    length: int = 128,
) -> list[tuple[list[int], str]]:
    """(new token ids, finish reason) per prompt: a stop id ends a row ("stop", the id
    excluded), its budget ("length"). `length` pads every forward (one compile)."""
    n = len(prompts)

    def col(v: Any, dtype: Any) -> np.ndarray:
        return np.asarray([v] * n if np.isscalar(v) else list(v), dtype)

    budgets = col(max_new, np.int64)
    temp, tp = col(temperature, np.float32), col(top_p, np.float32)
    seed = col(seeds, np.int64) & 0x7FFFFFFF
    index = np.arange(n) if sample_index is None else col(sample_index, np.int64)
    stops = set(int(i) for i in stop_ids)
    if max(len(p) + b for p, b in zip(prompts, budgets)) > length:
        raise ValueError(f"A prompt + budget exceeds the reference's length {length}.")
    seqs = [list(p) for p in prompts]
    out: list[list[int]] = [[] for _ in range(n)]
    reason: list[str | None] = [None if b > 0 else "length" for b in budgets]
    step = 0
    while any(r is None for r in reason):
        logits = full_logits(params, cfg, seqs, length)
        last = np.stack([logits[i, len(s) - 1] for i, s in enumerate(seqs)])
        toks = np.asarray(
            _sample(
                jnp.asarray(last),
                jnp.asarray(seed, jnp.int32),
                jnp.asarray(index, jnp.int32),
                jnp.int32(step),
                jnp.asarray(temp),
                jnp.asarray(tp),
            )
        )
        for i in range(n):
            if reason[i] is not None:
                continue
            t = int(toks[i])
            if t in stops:
                reason[i] = "stop"
                continue
            out[i].append(t)
            seqs[i].append(t)
            if len(out[i]) >= budgets[i]:
                reason[i] = "length"
        step += 1
    return [(ids, r) for ids, r in zip(out, reason)]  # type: ignore[misc]
