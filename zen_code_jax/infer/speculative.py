"""Speculative decoding, the device half: verify k drafted tokens per row in one target
call, draft k tokens with a small model in one call, and the accept/reject rule.

Why. A decode step reads every weight to produce one token per row; at batch 1 that pass
is almost all the cost. Feeding a row's last token *and* k guessed next tokens costs about
the same pass and yields between 1 and k + 1 tokens, as many as the target agrees with.
The guesses come from the row's own context (prompt lookup, `drafting.NgramDrafter`) or
from a small model with the target's tokenizer (`draft_step`, `drafting.ModelDrafter`).

Verification (`verify_step`) is a multi-token extend over the slot cache: row b feeds
[last, d_1 .. d_k] at positions pos..pos+k, each query attending to the row's cache
slots below `pos` and to this call's own keys up to its position; padding (rows with
shorter drafts, idle slots) is segment 0 and never written. Rejected drafts leave keys
and values at positions beyond the row's new length: nothing ever reads them (the next
call starts at the new length and attends only below it) and the next call overwrites
them, so the rollback is the host resetting the row's length.

The rule (Leviathan et al. 2023, Chen et al. 2023), per row, for j = 1..k: accept d_j
with probability min(1, p_{j-1}(d_j) / q_{j-1}(d_j)); at the first rejection emit a
sample of normalize(max(0, p - q)) at that position and stop; when all k are accepted
emit a sample of p_k. p is the target's *processed* distribution (`sampling.candidate_logits`:
temperature, then top-p; the one place another filter such as top-k plugs in), q the
draft's distribution under the same processing (a point mass for prompt-lookup drafts).
The output is distributed exactly as the target's own samples (tested by chi-square).
Greedy rows accept d_j iff it is the target's argmax and emit the argmax: token for token
what decoding without drafts gives.

Randomness stays a function of (seed, sample index, step): the bonus sample at output
position a uses the key plain decoding would use at that step (`row_keys(.., step + a)`),
so a row with no draft samples exactly as `slots.decode_step` does; the accept draws, the
residual draws and the draft model's own draws fold 2, 1 and 3 into that step's key.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zen_code_jax.infer.forward import constrain_cache, lm_logits
from zen_code_jax.infer.sampling import (
    GREEDY_EPS,
    SamplerVocab,
    candidate_logits,
    row_keys,
    sample_tokens,
)
from zen_code_jax.model.transformer import Transformer

TOP_LOGPROBS = 5  # the most `logprobs` a request may ask for (OpenAI's own limit)
FOLD_RESIDUAL, FOLD_ACCEPT, FOLD_DRAFT = 1, 2, 3
# Traces of each step (one per new (window, k) shape); tests read it.
TRACE_COUNTS: dict[str, int] = {"verify": 0, "draft": 0}


class Verified(NamedTuple):
    """What a verify call gave, per row: how many drafts were accepted (a), and the a + 1
    output tokens (accepted drafts, then the correction or bonus token) with their
    log-probabilities and top-5 alternatives under the target (raw logits, as decoding
    reports them). Positions beyond a are meaningless."""

    accepted: np.ndarray  # int32 [B]
    token: np.ndarray  # int32 [B, K+1]
    logprob: np.ndarray  # float32 [B, K+1]
    top_ids: np.ndarray  # int32 [B, K+1, TOP_LOGPROBS]
    top_logprobs: np.ndarray  # float32 [B, K+1, TOP_LOGPROBS]


def accept_drafts(
    logits: jax.Array,
    drafts: jax.Array,
    lens: jax.Array,
    q: jax.Array | None,
    temperature: jax.Array,
    top_p: jax.Array,
    seeds: jax.Array,
    index: jax.Array,
    steps: jax.Array,
    top_k: jax.Array | None = None,
    chain: jax.Array | None = None,
    vocab: SamplerVocab | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The accept/reject rule over a verify call's target logits.

    logits: [B, K+1, V] target logits at [last, d_1 .. d_K]; drafts: int32 [B, K];
    lens: int32 [B] real drafts per row (0..K); q: [B, K, V] the draft's processed
    probabilities at each draft position, or None for point-mass drafts (prompt lookup);
    temperature, top_p, seeds, index, steps: per row, as in decoding. Returns (accepted
    [B], tokens [B, K+1]): output j < a is d_{j+1}, output a the correction or bonus.
    """
    b, k1, v = logits.shape
    k = k1 - 1
    raw = logits.astype(jnp.float32)
    greedy_rows = temperature <= GREEDY_EPS
    arg = jnp.argmax(raw, axis=-1).astype(jnp.int32)  # [B, K+1]
    live = jnp.arange(k, dtype=jnp.int32)[None] < lens[:, None]

    def count(ok: jax.Array) -> jax.Array:  # leading accepted drafts
        return jnp.sum(jnp.cumprod((ok & live).astype(jnp.int32), axis=1), axis=1).astype(jnp.int32)

    def greedy(_):
        accepted = count(drafts == arg[:, :k])
        return accepted, jnp.take_along_axis(arg, accepted[:, None], axis=1)[:, 0]

    def sampled(_):
        # Greedy rows' top-p never matters (they take the argmax): 1.0 spares the sort.
        top = jnp.where(greedy_rows, 1.0, top_p)
        rep = lambda x: jnp.repeat(x, k1)  # noqa: E731 (per row -> per (row, position))
        rep_or_none = lambda x: None if x is None else rep(x)  # noqa: E731
        proc = candidate_logits(
            raw.reshape(b * k1, v),
            rep(temperature),
            rep(top),
            rep_or_none(top_k),
            rep_or_none(chain),
            vocab,
        )
        p = jax.nn.softmax(proc.reshape(b, k1, v), axis=-1)  # [B, K+1, V]
        qq = jax.nn.one_hot(drafts, v, dtype=jnp.float32) if q is None else q.astype(jnp.float32)
        keys = jax.vmap(lambda j: row_keys(seeds, index, steps + j))(jnp.arange(k))  # [K, B]
        u = jax.vmap(jax.vmap(lambda kk: jax.random.uniform(jax.random.fold_in(kk, FOLD_ACCEPT))))(
            keys
        ).T  # [B, K]
        p_d = jnp.take_along_axis(p[:, :k], drafts[..., None], axis=-1)[..., 0]  # [B, K]
        q_d = jnp.take_along_axis(qq, drafts[..., None], axis=-1)[..., 0]
        ok = jnp.where(greedy_rows[:, None], drafts == arg[:, :k], u * q_d < p_d)  # u < p/q
        accepted = count(ok)
        at = lambda x: jnp.take_along_axis(x, accepted[:, None, None], axis=1)[:, 0]  # noqa: E731
        key_a = row_keys(seeds, index, steps + accepted)  # the key of output position a
        # All drafts accepted (or none given): the bonus token, drawn as plain decoding does.
        bonus = sample_tokens(at(raw), key_a, temperature, top_p, top_k, chain, vocab)
        # A rejection: the residual normalize(max(0, p - q)) there (q padded with a zero
        # row for position K, which is never a rejection position).
        q_pad = jnp.concatenate([qq, jnp.zeros((b, 1, v), jnp.float32)], axis=1)
        resid = jnp.maximum(at(p) - at(q_pad), 0.0)
        # p == q exactly makes a rejection impossible; guard the empty residual anyway.
        resid = jnp.where(jnp.sum(resid, axis=-1, keepdims=True) > 0, resid, at(p))
        drawn = jax.vmap(
            lambda kk, r: jax.random.categorical(jax.random.fold_in(kk, FOLD_RESIDUAL), jnp.log(r))
        )(key_a, resid).astype(jnp.int32)
        correction = jnp.where(greedy_rows, at(arg[..., None])[:, 0], drawn)
        return accepted, jnp.where(accepted < lens, correction, bonus)

    accepted, last = jax.lax.cond(jnp.all(greedy_rows), greedy, sampled, None)
    drafts_pad = jnp.concatenate([drafts, jnp.zeros((b, 1), jnp.int32)], axis=1)
    tokens = jnp.where(jnp.arange(k1)[None] == accepted[:, None], last[:, None], drafts_pad)
    return accepted, tokens


@functools.partial(
    jax.jit,
    static_argnames=("cfg", "window", "point_mass", "samplers"),
    donate_argnames=("cache",),
)
def verify_step(
    params, cache, slot_ids, rows, drafts, lens, q, vocab, *, cfg, window, point_mass, samplers
):
    """One target call over [last, d_1 .. d_K] of R decoding rows: `slot_ids` [R] their
    slots, `rows` (slots.DecodeRows of R rows; inactive padding rows and drafts beyond
    `lens` write nothing), q: [slots, >= K, V] the draft model's probabilities (cut and
    gathered here, so one draft shape serves every bucket). Only these rows' window of
    the cache is read (gathered, [L, R, window, KV, Dh]), so a verify call costs what its
    R x (K + 1) tokens need, not every slot's: at one user, less than a decode step.
    Their new keys and values are scattered back. `samplers` (static: the server's
    decoders) applies the rows' top_k and sampler order (`rows.top_k`, `rows.chain`,
    `vocab` for infill) in the accept/reject rule, as `SlotDecoder(samplers=True)` does
    when decoding. Returns the cache and the accepted counts, output tokens and their
    logprob records (see `Verified`)."""
    TRACE_COUNTS["verify"] += 1
    r, k = drafts.shape
    sub = {name: jnp.take(c[:, :, :window], slot_ids, axis=1) for name, c in cache.items()}
    tokens = jnp.concatenate([rows.last[:, None], drafts], axis=1)
    positions = rows.pos[:, None] + jnp.arange(k + 1, dtype=jnp.int32)[None]
    live = (jnp.arange(k + 1)[None] <= lens[:, None]) & rows.active[:, None]
    hidden, sub = Transformer(cfg).apply(
        {"params": params},
        tokens,
        positions,
        live.astype(jnp.int32),
        kv_cache=sub,
        return_hidden=True,
    )
    cache = constrain_cache(_scatter_rows(cache, sub, slot_ids, positions, live, window))
    logits = lm_logits(hidden.reshape(r * (k + 1), -1), cfg, params).reshape(r, k + 1, -1)
    accepted, out = accept_drafts(
        logits,
        drafts,
        lens,
        None if point_mass else jnp.take(q, slot_ids, axis=0)[:, :k],
        rows.temp,
        rows.top_p,
        rows.seeds,
        rows.index,
        rows.steps,
        *((rows.top_k, rows.chain, vocab) if samplers else ()),
    )
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    chosen = jnp.take_along_axis(logp, out[..., None], axis=-1)[..., 0]
    top_lp, top_ids = jax.lax.top_k(logp, TOP_LOGPROBS)
    return cache, (accepted, out, chosen, top_ids.astype(jnp.int32), top_lp)


def row_buckets(slots: int) -> tuple[int, ...]:
    """Verify batch sizes: powers of two below `slots`, then `slots`."""
    out, r = [], 1
    while r < slots:
        out.append(r)
        r *= 2
    return (*out, slots)


@functools.partial(
    jax.jit, static_argnames=("cfg", "window", "k", "vocab"), donate_argnames=("cache",)
)
def draft_step(
    params,
    cache,
    slot_ids,
    tokens,
    start,
    n,
    temp,
    top_p,
    seeds,
    index,
    steps,
    *,
    cfg,
    window,
    k,
    vocab,
):
    """The draft model's k proposals for R rows in one call: `slot_ids` [R] their slots;
    feed each row's `n` tokens not yet in its cache (`tokens` [R, T] at positions
    start..; n = 0: a padding row, which writes nothing), then k - 1 single-token steps
    feeding each proposal, all on the rows' gathered cache window (as `verify_step`).
    Greedy rows propose the argmax; sampled ones draw from q, the processed distribution
    (`sampling.candidate_logits`) over the target's `vocab`, with keys folded from the target's.
    Returns the cache, proposals int32 [R, k] and q float32 [slots, k, vocab] (in slot
    order, for the target's verify call)."""
    TRACE_COUNTS["draft"] += 1
    r, t = tokens.shape
    slots = cache["k"].shape[1]
    model = Transformer(cfg)
    greedy_rows = temp <= GREEDY_EPS

    def propose(h, j):
        logits = lm_logits(h, cfg, params).astype(jnp.float32)
        if logits.shape[-1] >= vocab:
            logits = logits[:, :vocab]
        else:  # the draft's vocabulary is smaller: it never proposes the rest
            logits = jnp.pad(
                logits, ((0, 0), (0, vocab - logits.shape[-1])), constant_values=-jnp.inf
            )
        arg = jnp.argmax(logits, axis=-1).astype(jnp.int32)

        def sampled(_):
            proc = candidate_logits(logits, temp, jnp.where(greedy_rows, 1.0, top_p))
            keys = jax.vmap(lambda key: jax.random.fold_in(key, FOLD_DRAFT))(
                row_keys(seeds, index, steps + j)
            )
            drawn = jax.vmap(jax.random.categorical)(keys, proc).astype(jnp.int32)
            return jnp.where(greedy_rows, arg, drawn), jax.nn.softmax(proc, axis=-1)

        # Greedy rows never read q (the rule compares with the argmax): skip it.
        greedy = lambda _: (arg, jnp.zeros(logits.shape, jnp.float32))  # noqa: E731
        return jax.lax.cond(jnp.all(greedy_rows), greedy, sampled, None)

    sub = {name: jnp.take(c[:, :, :window], slot_ids, axis=1) for name, c in cache.items()}
    seg = jnp.arange(t)[None] < n[:, None]
    hidden, sub = model.apply(
        {"params": params},
        tokens,
        start[:, None] + jnp.arange(t, dtype=jnp.int32)[None],
        seg.astype(jnp.int32),
        kv_cache=sub,
        return_hidden=True,
    )
    h = jnp.take_along_axis(hidden, jnp.maximum(n - 1, 0)[:, None, None], axis=1)[:, 0]
    tok, q = propose(h, 0)
    active = n > 0

    def body(carry, j):
        sub, tok = carry
        hid, sub = model.apply(
            {"params": params},
            tok[:, None],
            (start + n + j - 1)[:, None],
            active.astype(jnp.int32)[:, None],
            kv_cache=sub,
            return_hidden=True,
        )
        nxt, qj = propose(hid[:, 0], j)
        return (sub, nxt), (nxt, qj)

    (sub, _), (toks, qs) = jax.lax.scan(body, (sub, tok), jnp.arange(1, k))
    # Copy the rows' new keys and values (the fed tail, then k - 1 proposals) back.
    positions = jnp.concatenate(
        [start[:, None] + jnp.arange(t)[None], (start + n)[:, None] + jnp.arange(k - 1)[None]],
        axis=1,
    ).astype(jnp.int32)
    written = jnp.concatenate([seg, jnp.broadcast_to(active[:, None], (r, k - 1))], axis=1)
    cache = _scatter_rows(cache, sub, slot_ids, positions, written, window)
    proposals = jnp.concatenate([tok[:, None], toks.T], axis=1)
    probs = jnp.concatenate([q[:, None], qs.transpose(1, 0, 2)], axis=1)
    dest = jnp.where(active, slot_ids, slots)  # padding rows: dropped
    q_slots = jnp.zeros((slots, k, vocab), jnp.float32).at[dest].set(probs, mode="drop")
    return constrain_cache(cache), proposals, q_slots


def _scatter_rows(cache, sub, slot_ids, positions, written, window):
    """Write the gathered rows' keys and values at `positions` [R, P] (where `written`)
    from their window copy `sub` back into `cache`; the rest goes out of bounds."""
    r = slot_ids.shape[0]
    max_len = cache["k"].shape[2]
    at = jnp.clip(positions, 0, window - 1)
    dest = jnp.where(written, positions, max_len)
    return {
        name: c.at[:, slot_ids[:, None], dest].set(
            sub[name][:, jnp.arange(r)[:, None], at], mode="drop"
        )
        for name, c in cache.items()
    }


def draft_buckets(max_draft: int, smallest: int = 2) -> tuple[int, ...]:
    """Verify shapes compiled at start-up: `max_draft`, halved down to `smallest`. A call
    pads every row's draft to the smallest bucket holding the longest one, so a row that
    drafts 1 token beside a row that drafts 2 costs a (2 + 1)-token call, not (k + 1)."""
    out, c = [max_draft], max_draft // 2
    while c >= smallest:
        out.append(c)
        c //= 2
    return tuple(sorted(out))


def as_numpy_verified(out: Any) -> Verified:
    """A verify call's device outputs as host arrays."""
    return Verified(*(np.asarray(x) for x in out))
