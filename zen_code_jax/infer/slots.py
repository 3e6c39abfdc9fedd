"""Slot decoder: a fixed set of KV-cache rows that requests join and leave between steps.

Why. The batch decoder (`decode.py`) pads a batch to its longest prompt and budget and
runs it to the end, so a 20-token IDE completion waits for a 512-token neighbour, and
every new bucket compiles on the request path. Here the cache is one array
`[L, slots, max_len, KV, Dh]` on the mesh and exactly two functions touch it, both with
shapes fixed at start-up and compiled then (`warm_up`):

- `prefill_chunk`: `chunk` prompt tokens of one slot at positions `start..start+chunk-1`
  (padding of the last chunk is segment 0, so the model drops its cache writes), and the
  next-token sample from the last real position. A long prompt is prefilled one chunk per
  scheduler turn, interleaved with decode steps, so running rows are never stalled for
  long. A prompt that extends what a slot already holds starts at the shared length
  (prefix reuse): a query at position p attends to slots 0..p of its row, so whatever
  lies beyond p from an older request is never seen.
- `decode_step`: one token for every slot; idle slots are segment 0 (no cache write).

Every per-row setting (position, temperature, top-p, seed, step) is a traced array. The
sample of a row depends only on (seed, sample index, step) and its own tokens, never on
its neighbours, as in the batch decoder.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zen_code_jax.infer.decode import constrain_cache, lm_logits
from zen_code_jax.infer.sampling import row_keys, sample_tokens
from zen_code_jax.model.config import ModelConfig
from zen_code_jax.model.transformer import Transformer, init_kv_cache

TOP_LOGPROBS = 5  # the most `logprobs` a request may ask for (OpenAI's own limit)
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
# XLA compilations in this process, and those on the scheduler thread (which runs every
# request's device work: after warm-up it must compile nothing).
COMPILES = {"count": 0, "scheduler": 0}


def _count_compile(event: str, duration: float, **_: Any) -> None:
    if event == COMPILE_EVENT:
        COMPILES["count"] += 1
        if threading.current_thread().name == "scheduler":
            COMPILES["scheduler"] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compile)


class Sampled(NamedTuple):
    """Per row: the sampled token, its log-probability and the top-5 alternatives."""

    token: np.ndarray  # int32 [B]
    logprob: np.ndarray  # float32 [B]
    top_ids: np.ndarray  # int32 [B, TOP_LOGPROBS]
    top_logprobs: np.ndarray  # float32 [B, TOP_LOGPROBS]


def _sample(logits, temperature, top_p, seeds, sample_index, steps):
    keys = row_keys(seeds, sample_index, steps)
    tok = sample_tokens(logits, keys, temperature, top_p)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    chosen = jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]
    top_lp, top_ids = jax.lax.top_k(logp, TOP_LOGPROBS)
    return tok, chosen, top_ids.astype(jnp.int32), top_lp


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("cache",))
def prefill_chunk(params, cache, tokens, valid, slot, start, last, sampling, *, cfg):
    """Write `tokens` [C] of row `slot` at positions start.. (first `valid` are real) and
    sample from position `last` of the chunk. sampling: (temp, top_p, seed, index, step)."""
    row = {k: jax.lax.dynamic_slice_in_dim(v, slot, 1, axis=1) for k, v in cache.items()}
    chunk = tokens.shape[0]
    positions = (start + jnp.arange(chunk, dtype=jnp.int32))[None]
    segments = (jnp.arange(chunk) < valid).astype(jnp.int32)[None]
    hidden, row = Transformer(cfg).apply(
        {"params": params}, tokens[None], positions, segments, kv_cache=row, return_hidden=True
    )
    cache = constrain_cache(
        {k: jax.lax.dynamic_update_slice_in_dim(cache[k], row[k], slot, axis=1) for k in cache}
    )
    logits = lm_logits(jax.lax.dynamic_index_in_dim(hidden[0], last, keepdims=True), cfg, params)
    temp, top_p, seed, index, step = (x[None] for x in sampling)
    return cache, _sample(logits, temp, top_p, seed, index, step)


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("cache",))
def decode_step(params, cache, last, pos, active, temp, top_p, seeds, index, steps, *, cfg):
    """Feed each slot's last token at its position and sample the next (idle slots: no-op)."""
    hidden, cache = Transformer(cfg).apply(
        {"params": params},
        last[:, None],
        pos[:, None],
        active.astype(jnp.int32)[:, None],
        kv_cache=cache,
        return_hidden=True,
    )
    cache = constrain_cache(cache)
    logits = lm_logits(hidden[:, -1], cfg, params)
    return cache, _sample(logits, temp, top_p, seeds, index, steps)


class SlotDecoder:
    """The device half of continuous batching: the cache and its two compiled steps.

    Not thread-safe: one scheduler thread drives it (`scheduler.Scheduler`).
    """

    def __init__(
        self,
        params: Any,
        cfg: ModelConfig,
        *,
        slots: int,
        max_len: int,
        chunk: int,
        mesh: jax.sharding.Mesh | None = None,
        rules: Any = (),
    ):
        if not (1 <= slots and 1 <= chunk <= max_len <= cfg.max_position_embeddings):
            raise ValueError(
                f"Need slots >= 1 and 1 <= prefill chunk ({chunk}) <= max_len ({max_len}) <= "
                f"the model's context ({cfg.max_position_embeddings}); fix --max_batch_size, "
                "--prefill_chunk or --max_context."
            )
        self.params, self.cfg, self.mesh, self.rules = params, cfg, mesh, tuple(rules)
        self.slots, self.max_len, self.chunk = int(slots), int(max_len), int(chunk)
        with self._context():
            self.cache = constrain_cache_jit(init_kv_cache(cfg, self.slots, self.max_len))

    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            if self.mesh is not None:
                stack.enter_context(jax.set_mesh(self.mesh))
                stack.enter_context(nn.logical_axis_rules(self.rules))
            yield

    def prefill(
        self, slot: int, tokens: list[int], start: int, sampling: tuple, *, final: bool
    ) -> Sampled | None:
        """Prefill up to `chunk` tokens of `slot` from position `start`; the sample (from the
        last token) only when `final`."""
        n = len(tokens)
        assert 1 <= n <= self.chunk and start + n <= self.max_len
        buf = np.zeros((self.chunk,), np.int32)
        buf[:n] = tokens
        temp, top_p, seed, index, step = sampling
        samp = (
            np.float32(temp),
            np.float32(top_p),
            np.int32(seed),
            np.int32(index),
            np.int32(step),
        )
        with self._context():
            self.cache, out = prefill_chunk(
                self.params,
                self.cache,
                buf,
                np.int32(n),
                np.int32(slot),
                np.int32(start),
                np.int32(n - 1),
                samp,
                cfg=self.cfg,
            )
        return Sampled(*(np.asarray(x) for x in out)) if final else None

    def step(
        self,
        last: np.ndarray,
        pos: np.ndarray,
        active: np.ndarray,
        temp: np.ndarray,
        top_p: np.ndarray,
        seeds: np.ndarray,
        index: np.ndarray,
        steps: np.ndarray,
    ) -> Sampled:
        """One decode step for every slot (arrays of length `slots`, numpy)."""
        with self._context():
            self.cache, out = decode_step(
                self.params,
                self.cache,
                last.astype(np.int32),
                pos.astype(np.int32),
                active.astype(bool),
                temp.astype(np.float32),
                top_p.astype(np.float32),
                seeds.astype(np.int32),
                index.astype(np.int32),
                steps.astype(np.int32),
                cfg=self.cfg,
            )
        return Sampled(*(np.asarray(x) for x in out))

    def warm_up(self) -> None:
        """Compile both steps now (no request ever compiles): idle slots write nothing."""
        z = np.zeros((self.slots,), np.int32)
        self.step(z, z, z.astype(bool), z.astype(np.float32), z + 1.0, z, z, z)
        # A greedy and a sampled row take different branches of one executable; run both.
        self.step(z, z, z.astype(bool), z + 1.0, z + 0.5, z, z, z)
        self.prefill(0, [0], 0, (0.0, 1.0, 0, 0, 0), final=True)
        self.prefill(0, [0], 0, (1.0, 0.5, 0, 0, 0), final=True)


@jax.jit
def constrain_cache_jit(cache: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Place a fresh cache by the logical rules in scope."""
    return constrain_cache(cache)
