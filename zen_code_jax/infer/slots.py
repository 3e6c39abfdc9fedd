"""Slot decoder: a fixed set of KV-cache rows that requests join and leave between steps.

The package's one decoder: the server drives it from the scheduler's thread, evaluation
drives it synchronously (`scheduler.Scheduler.run`, from `InferenceEngine.complete`).

Why slots. A batch padded to its longest prompt and budget and run to the end makes a
20-token IDE completion wait for a 512-token neighbour, and every new bucket compiles on
the request path. Here the cache is one array `[L, slots, max_len, KV, Dh]` on the mesh and
exactly two functions touch it, both with shapes fixed when the decoder is built (the
server compiles them all then, `warm_up`; evaluation compiles the ones it meets):

- `mixed_step`: one decode token for every slot and up to `chunk` prompt tokens of one
  slot at positions `start..`, in one model call (the dense layers see all of them at once;
  the chunk is padded to the smallest of a few compiled lengths, padding and idle slots
  are segment 0 and never written), with the next-token sample of every slot and of the
  chunk's last real position. A long prompt is prefilled one chunk per scheduler turn
  riding with the decode tokens, so running rows are never stalled for long. A prompt that
  extends what a slot already holds starts at the shared length (prefix reuse): a query at
  position p attends to slots 0..p of its row, so whatever lies beyond p from an older
  request is never seen.
- `decode_step`: decode tokens only (a turn without a chunk).

Both read only the cache window [0, W) that the call needs, W one of `window_buckets`
(powers of two up to max_len), and write their new keys and values once per call: a step
costs what its longest live row holds, not the whole cache (measured in
docs/measurements.md, Serving).

Every per-row setting (position, temperature, top-p, top-k, sampler order, seed, step) is
a traced array. The sample of a row depends only on (seed, sample index, step) and its own
tokens, never on its neighbours (`sampling.row_keys`).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zen_code_jax.infer.forward import constrain_cache, lm_logits
from zen_code_jax.infer.sampling import SamplerVocab, row_keys, sample_tokens, sampler_vocab
from zen_code_jax.infer.speculative import (
    TOP_LOGPROBS,
    Verified,
    as_numpy_verified,
    draft_step,
    row_buckets,
    verify_step,
)
from zen_code_jax.model.config import ModelConfig
from zen_code_jax.model.transformer import Transformer, init_kv_cache

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
# XLA compilations in this process, and those on the scheduler thread (which runs every
# request's device work: after warm-up it must compile nothing).
COMPILES = {"count": 0, "scheduler": 0}
# Times each step function was traced (one per new (window, chunk) shape); tests read it.
TRACE_COUNTS: dict[str, int] = {"mixed": 0, "decode": 0}


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


class DecodeRows(NamedTuple):
    """One decode step's per-slot inputs (numpy arrays of length `slots`)."""

    last: np.ndarray  # the slot's last token
    pos: np.ndarray  # its position (where the token is written)
    active: np.ndarray  # bool: the slot is decoding (others write nothing)
    temp: np.ndarray
    top_p: np.ndarray
    seeds: np.ndarray
    index: np.ndarray  # sample index (n > 1 choices)
    steps: np.ndarray  # tokens the row has generated so far
    top_k: np.ndarray  # 0: off
    chain: np.ndarray  # the row's sampler order (`sampling.chain_code`)

    DTYPES = (np.int32, np.int32, bool, np.float32, np.float32) + (np.int32,) * 5


class Chunk(NamedTuple):
    """Up to `chunk` prompt tokens of one slot from position `start`."""

    slot: int
    tokens: list[int]
    start: int
    # temp, top_p, seed, sample index, step, top_k, chain (DecodeRows' sampling columns)
    sampling: tuple[float, float, int, int, int, int, int]
    final: bool  # the prompt's last chunk: its last token's sample is the first new token
    # echo with logprobs: the prompt token after each chunk position (None: not scored)
    targets: list[int] | None = None


class Scored(NamedTuple):
    """Per scored chunk position: log p of the next prompt token, and the top-5."""

    logprob: np.ndarray  # float32 [n]
    top_ids: np.ndarray  # int32 [n, TOP_LOGPROBS]
    top_logprobs: np.ndarray  # float32 [n, TOP_LOGPROBS]


class Turn(NamedTuple):
    """What one device call gave: samples for every slot (None when no slot decoded), the
    chunk's sample when it ended its prompt, and the chunk's scores when it was scored."""

    decoded: Sampled | None
    first: Sampled | None
    scored: Scored | None


def _sample(logits, samplers, vocab, temperature, top_p, seeds, sample_index, steps, top_k, chain):
    keys = row_keys(seeds, sample_index, steps)
    if samplers:  # top_k and sampler orders (the server's decoders)
        tok = sample_tokens(logits, keys, temperature, top_p, top_k, chain, vocab)
    else:  # temperature and top-p only: compiles less (evaluation's decoders)
        tok = sample_tokens(logits, keys, temperature, top_p)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    chosen = jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]
    top_lp, top_ids = jax.lax.top_k(logp, TOP_LOGPROBS)
    return tok, chosen, top_ids.astype(jnp.int32), top_lp


@functools.partial(
    jax.jit, static_argnames=("cfg", "window", "score", "samplers"), donate_argnames=("cache",)
)
def mixed_step(
    params,
    cache,
    rows,
    tokens,
    valid,
    slot,
    start,
    sampling,
    targets,
    vocab,
    *,
    cfg,
    window,
    score,
    samplers,
):
    """One model call for a decode token of every slot (`rows`: DecodeRows arrays; idle
    slots write nothing) and the chunk `tokens` [C] of slot `slot` at positions start..
    (the first `valid` are real). Returns the cache, slots + 1 samples (the last from the
    chunk's last real token; sampling: the chunk row's DecodeRows sampling columns; vocab:
    the infill sampler's `SamplerVocab`)
    and, when `score`, each chunk position's log-probability of `targets` [C] (the next
    prompt token) with its top alternatives (echo with logprobs), else None."""
    TRACE_COUNTS["mixed"] += 1
    b, c = rows.last.shape[0], tokens.shape[0]
    hidden, cache = Transformer(cfg).apply(
        {"params": params},
        jnp.concatenate([rows.last, tokens])[None],
        jnp.concatenate([rows.pos, start + jnp.arange(c, dtype=jnp.int32)])[None],
        jnp.concatenate([rows.active, jnp.arange(c) < valid]).astype(jnp.int32)[None],
        kv_cache=cache,
        kv_window=window,
        chunk_row=slot,
        return_hidden=True,
    )
    cache = constrain_cache(cache)
    h = hidden[0]
    picked = jnp.concatenate([h[:b], jax.lax.dynamic_index_in_dim(h, b + valid - 1)])
    logits = lm_logits(picked, cfg, params)
    columns = (rows.temp, rows.top_p, rows.seeds, rows.index, rows.steps, rows.top_k, rows.chain)
    both = [jnp.concatenate([col, x[None]]) for col, x in zip(columns, sampling)]
    scores = None
    if score:
        logp = jax.nn.log_softmax(lm_logits(h[b:], cfg, params).astype(jnp.float32), axis=-1)
        chosen = jnp.take_along_axis(logp, jnp.maximum(targets, 0)[:, None], axis=-1)[:, 0]
        top_lp, top_ids = jax.lax.top_k(logp, TOP_LOGPROBS)
        scores = (chosen, top_ids.astype(jnp.int32), top_lp)
    return cache, _sample(logits, samplers, vocab, *both), scores


@functools.partial(
    jax.jit, static_argnames=("cfg", "window", "samplers"), donate_argnames=("cache",)
)
def decode_step(params, cache, rows, vocab, *, cfg, window, samplers):
    """Feed each slot's last token at its position and sample the next (idle slots: no-op)."""
    TRACE_COUNTS["decode"] += 1
    hidden, cache = Transformer(cfg).apply(
        {"params": params},
        rows.last[:, None],
        rows.pos[:, None],
        rows.active.astype(jnp.int32)[:, None],
        kv_cache=cache,
        kv_window=window,
        return_hidden=True,
    )
    cache = constrain_cache(cache)
    logits = lm_logits(hidden[:, -1], cfg, params)
    columns = (rows.temp, rows.top_p, rows.seeds, rows.index, rows.steps, rows.top_k, rows.chain)
    return cache, _sample(logits, samplers, vocab, *columns)


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
        windows: Sequence[int] | None = None,
        eog_ids: Sequence[int] = (),
        eot_id: int | None = None,
        samplers: bool = False,
    ):
        """slots x max_len positions of cache, prompts prefilled up to `chunk` tokens per
        turn; windows: the cache windows a step may read (default `window_buckets`: a
        server's rows range from keystrokes to whole files; evaluation, whose cache follows
        its longest row, reads it whole and compiles one step per chunk length); eog_ids,
        eot_id: the end-of-generation ids and the end-of-text id, for the infill sampler;
        samplers: compile top_k and sampler orders into the steps (the server's decoder;
        off, sampled rows get temperature and top-p only and the steps compile ~0.6 CPU s
        less each: `Scheduler` refuses sampled rows that need more)."""
        if not (1 <= slots and 1 <= chunk <= max_len <= cfg.max_position_embeddings):
            raise ValueError(
                f"Need slots >= 1 and 1 <= prefill chunk ({chunk}) <= max_len ({max_len}) <= "
                f"the model's context ({cfg.max_position_embeddings}); fix --max_batch_size, "
                "--prefill_chunk or --max_context."
            )
        self.params, self.cfg, self.mesh, self.rules = params, cfg, mesh, tuple(rules)
        self.slots, self.max_len, self.chunk = int(slots), int(max_len), int(chunk)
        self.windows = tuple(sorted(windows)) if windows else window_buckets(self.max_len)
        if self.windows[-1] != self.max_len or self.windows[0] < 1:
            raise ValueError(
                f"Cache windows {self.windows} must lie in [1, max_len] and end at max_len "
                f"({self.max_len}); omit `windows` for the default powers of two."
            )
        self.chunks = chunk_buckets(self.chunk)
        self.vocab: SamplerVocab = sampler_vocab(cfg.vocab_size, eog_ids, eot_id)
        self.samplers = bool(samplers)
        with self._context():
            self.cache = constrain_cache_jit(init_kv_cache(cfg, self.slots, self.max_len))

    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            if self.mesh is not None:
                stack.enter_context(jax.set_mesh(self.mesh))
                stack.enter_context(nn.logical_axis_rules(self.rules))
            yield

    def run(
        self, rows: DecodeRows | None, chunk: Chunk | None, *, window: int | None = None
    ) -> Turn:
        """One turn on the device: a decode step for `rows`, a prefill `chunk`, or both in
        one model call. The window is the smallest compiled one holding every slot the
        call attends to (or `window`)."""
        if rows is None and chunk is None:
            return Turn(None, None, None)
        idle = rows is None
        if idle:  # a prefill alone: every slot idle (no writes; their attention over the
            # window still runs, the price of one executable family for both cases)
            z = np.zeros((self.slots,), np.int32)
            rows = DecodeRows(z, z, z.astype(bool), z.astype(np.float32), z + 1.0, z, z, z, z, z)
        rows = DecodeRows(*(np.asarray(x, t) for x, t in zip(rows, DecodeRows.DTYPES)))
        first = [int(rows.pos[rows.active].max())] if rows.active.any() else [0]
        if chunk is not None:
            n = len(chunk.tokens)
            assert 1 <= n <= self.chunk and chunk.start + n <= self.max_len
            first.append(chunk.start)
        window = self.window(max(first)) if window is None else window
        with self._context():
            if chunk is None:
                self.cache, out = decode_step(
                    self.params,
                    self.cache,
                    rows,
                    self.vocab,
                    cfg=self.cfg,
                    window=window,
                    samplers=self.samplers,
                )
                return Turn(Sampled(*(np.asarray(x) for x in out)), None, None)
            score = chunk.targets is not None
            # A scored chunk (rare: echo with logprobs) always takes the full length, so
            # scoring adds one executable per window, not one per chunk length.
            size = self.chunk if score else next(c for c in self.chunks if c >= n)
            buf, targets = np.zeros((size,), np.int32), np.full((size,), -1, np.int32)
            buf[:n] = chunk.tokens
            if score:
                targets[: len(chunk.targets)] = chunk.targets
            self.cache, out, scores = mixed_step(
                self.params,
                self.cache,
                rows,
                buf,
                np.int32(n),
                np.int32(chunk.slot),
                np.int32(chunk.start),
                tuple(np.asarray(x, t) for x, t in zip(chunk.sampling, DecodeRows.DTYPES[3:])),
                targets,
                self.vocab,
                cfg=self.cfg,
                window=window,
                score=score,
                samplers=self.samplers,
            )
        out = Sampled(*(np.asarray(x) for x in out))
        decoded = None if idle else Sampled(*(x[:-1] for x in out))
        last = Sampled(*(x[-1:] for x in out)) if chunk.final else None
        scored = None
        if scores is not None:
            k = len(chunk.targets)  # type: ignore[arg-type]
            scored = Scored(*(np.asarray(x)[:k] for x in scores))
        return Turn(decoded, last, scored)

    def verify(
        self,
        rows: DecodeRows,
        drafts: np.ndarray,
        lens: np.ndarray,
        q: Any = None,
        *,
        window: int | None = None,
    ) -> Verified:
        """Speculative decoding's target call (`speculative.verify_step`): every active
        row feeds its last token and its first lens[b] drafts ([B, K], K one of the
        speculator's buckets); q: the draft model's probabilities [B, K, V] (a device
        array), or None for point-mass drafts. Rolling back is the caller's: rows keep
        only their accepted length, and what lies beyond it is never read."""
        rows = DecodeRows(*(np.asarray(x, t) for x, t in zip(rows, DecodeRows.DTYPES)))
        drafts, lens = np.asarray(drafts, np.int32), np.asarray(lens, np.int32)
        live = np.flatnonzero(rows.active)
        r = next(b for b in row_buckets(self.slots) if b >= max(len(live), 1))
        idx = np.zeros((r,), np.int32)
        idx[: len(live)] = live
        pad = np.arange(r) >= len(live)  # padding rows: inactive, no drafts
        sub = DecodeRows(*(np.where(pad, 0, x[idx]).astype(x.dtype) for x in rows))
        sub_lens = np.where(pad, 0, lens[idx]).astype(np.int32)
        end = int((rows.pos + lens)[live].max(initial=0)) + 1  # every written position
        assert end <= self.max_len
        window = self.window(end) if window is None else window
        point_mass = q is None
        if point_mass:
            q = np.zeros((1,), np.float32)
        with self._context():
            self.cache, out = verify_step(
                self.params,
                self.cache,
                idx,
                sub,
                drafts[idx],
                sub_lens,
                q,
                self.vocab,
                cfg=self.cfg,
                window=window,
                point_mass=point_mass,
                samplers=self.samplers,
            )
        got = as_numpy_verified(out)
        full = []
        for x in got:  # back to slot order (rows that did not decode: zeros)
            y = np.zeros((self.slots, *x.shape[1:]), x.dtype)
            y[live] = x[: len(live)]
            full.append(y)
        return Verified(*full)

    def draft(
        self,
        tokens: np.ndarray,
        start: np.ndarray,
        n: np.ndarray,
        sampling: Sequence[np.ndarray],
        *,
        k: int,
        vocab: int,
        window: int | None = None,
    ) -> tuple[np.ndarray, Any]:
        """A draft model's k proposals per row (`speculative.draft_step`): rows feed their
        n tokens [B, T] not yet cached from `start`, then draft; sampling: the per-row
        (temp, top_p, seeds, index, steps) columns. Only the drafting rows (n > 0) take
        part (a row bucket of them). Returns proposals int32 [B, k] (host) and q
        [B, k, vocab] (left on the device for the target's verify call)."""
        start, n = np.asarray(start, np.int32), np.asarray(n, np.int32)
        end = int((start + n)[n > 0].max(initial=0)) + k - 1
        assert end <= self.max_len
        window = self.window(end) if window is None else window
        live = np.flatnonzero(n > 0)
        r = next(b for b in row_buckets(self.slots) if b >= max(len(live), 1))
        idx = np.zeros((r,), np.int32)
        idx[: len(live)] = live
        pad = np.arange(r) >= len(live)
        pick = lambda x, t: np.where(pad, 0, np.asarray(x)[idx]).astype(t)  # noqa: E731
        cols = tuple(pick(x, t) for x, t in zip(sampling, DecodeRows.DTYPES[3:]))
        with self._context():
            self.cache, proposals, q = draft_step(
                self.params,
                self.cache,
                idx,
                (np.asarray(tokens, np.int32)[idx] * ~pad[:, None]).astype(np.int32),
                pick(start, np.int32),
                pick(n, np.int32),
                *cols,
                cfg=self.cfg,
                window=window,
                k=k,
                vocab=vocab,
            )
        full = np.zeros((self.slots, k), np.int32)
        full[live] = np.asarray(proposals)[: len(live)]
        return full, q

    def window(self, first_position: int) -> int:
        """The smallest compiled window holding every slot a call starting here attends to."""
        return next(w for w in self.windows if w >= first_position)

    def warm_up(self) -> None:
        """Compile every (window, chunk) shape now, so no request ever compiles. Decoding
        runs with every slot idle (no cache write); the chunks write slot 0, which holds
        nothing a request may reuse yet."""
        z = np.zeros((self.slots,), np.int32)
        for w in self.windows:
            # A greedy and a sampled row take different branches of one executable.
            for temp, top_p in ((0.0, 1.0), (1.0, 0.5)):
                rows = DecodeRows(z, z, z.astype(bool), z + temp, z + top_p, z, z, z, z, z)
                self.run(rows, None, window=w)
                for c in self.chunks:
                    sampling = (temp, top_p, 0, 0, 0, 0, 0)
                    self.run(rows, Chunk(0, [0] * c, 0, sampling, True), window=w)
            scored = Chunk(0, [0], 0, (0.0, 1.0, 0, 0, 0, 0, 0), True, targets=[0])
            self.run(None, scored, window=w)


def chunk_buckets(chunk: int, smallest: int = 32) -> tuple[int, ...]:
    """Prefill chunk lengths compiled at start-up: `chunk`, halved down to `smallest`. An
    IDE keystroke re-prefills only the changed tail and the suffix (tens of tokens), and a
    prefill costs what its padded chunk holds, so a short tail takes a short chunk."""
    out, c = [chunk], chunk // 2
    while c >= smallest:
        out.append(c)
        c //= 2
    return tuple(sorted(out))


def window_buckets(max_len: int, smallest: int = 256) -> tuple[int, ...]:
    """Cache windows compiled at start-up: powers of two from `smallest`, then max_len.
    A decode step reads only its window, so its cost follows the longest live row (at
    most 2x what it needs) instead of the whole cache; each window is one more compile."""
    out, w = [], smallest
    while w < max_len:
        out.append(w)
        w *= 2
    return (*out, max_len)


@jax.jit
def constrain_cache_jit(cache: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Place a fresh cache by the logical rules in scope."""
    return constrain_cache(cache)
