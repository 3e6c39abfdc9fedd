"""Token sampling for the decoder: greedy, temperature, top-k, nucleus (top-p) and
llama.cpp's `infill` sampler, per row, in a per-row order (llama.cpp's `samplers`).

Every row of a batch carries its own settings and random key, so one compiled decoder
serves a batch that mixes greedy IDE completions with sampled pass@k rows (the server
batches concurrent requests). Randomness is a pure function of (seed, sample index,
step): the same request gives the same tokens whatever else shares its batch.

The chain. A row's samplers run in its own order, packed into one int32 (`chain_code`):
`top_k` and `top_p` shrink the candidate set, `temperature` divides the logits from its
place in the chain on (a top-p before it sees the unscaled distribution, as in
llama.cpp), `infill` is llama.cpp's FIM sampler (below). The default order is
temperature, top_k, top_p (HF's and vLLM's; the order this decoder always had). The
token is then drawn from softmax(logits / T) over the candidates left (T = 1 when the
chain has no temperature, as llama.cpp). Greedy (temperature <= GREEDY_EPS) is argmax
whatever the chain. Ties: a top-k or top-p cut keeps every token tied with the last one
kept.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

# Temperatures at or below this are treated as greedy (argmax) decoding.
GREEDY_EPS = 1e-5

# The samplers a chain can hold, by llama.cpp's names, and their 3-bit codes (0: empty).
SAMPLER_CODES = {"top_k": 1, "top_p": 2, "temperature": 3, "infill": 4}
CHAIN_LENGTH = 4  # each sampler at most once
DEFAULT_SAMPLERS = ("temperature", "top_k", "top_p")
# llama.cpp's infill sampler: drop text tokens below this probability, then renormalize.
INFILL_THRESHOLD = 0.2


def chain_code(samplers: Sequence[str] | None) -> int:
    """Pack a sampler order into the int32 a row carries (None: `DEFAULT_SAMPLERS`).

    Names this decoder does not implement (llama.cpp's dry, typ_p, min_p, xtc, ...) are
    skipped; a repeated name counts once, at its first place."""
    names = DEFAULT_SAMPLERS if samplers is None else samplers
    code, at = 0, 0
    for name in dict.fromkeys(n for n in names if n in SAMPLER_CODES):
        code |= SAMPLER_CODES[name] << (3 * at)
        at += 1
    return code


DEFAULT_CHAIN = chain_code(None)


class SamplerVocab(NamedTuple):
    """What the infill sampler knows of the vocabulary: the end-of-generation ids (bool
    [V]) and the id it falls back to when no text token is likely enough (int32)."""

    eog: jax.Array
    eot: jax.Array


def sampler_vocab(vocab_size: int, eog_ids: Sequence[int] = (), eot_id: int | None = None):
    """A `SamplerVocab` (numpy): `eog_ids` end a generation, `eot_id` (default the first
    of them, else 0) is infill's fallback."""
    import numpy as np  # local import: host-side constant, numpy kept out of traced code

    eog = np.zeros((vocab_size,), bool)
    eog[list(eog_ids)] = True
    eot = eot_id if eot_id is not None else (min(eog_ids) if eog_ids else 0)
    return SamplerVocab(eog, np.int32(eot))


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


def _stage_codes(chain: jax.Array) -> list[jax.Array]:
    """The sampler code at each place of each row's chain: CHAIN_LENGTH arrays [B]."""
    return [(chain >> (3 * p)) & 7 for p in range(CHAIN_LENGTH)]


def chain_keep(
    logits: jax.Array,
    scaled: jax.Array,
    top_k: jax.Array,
    top_p: jax.Array,
    chain: jax.Array,
    vocab: SamplerVocab,
) -> jax.Array:
    """Boolean [B, V]: the candidates left after each row's chain of top_k / top_p /
    temperature / infill.

    All stages work on the tokens sorted by logit once (temperature keeps the order): a
    stage's candidates are a bool mask over that order. logits: float32 [B, V]; scaled:
    logits / T (the values every stage after `temperature` sees, and the draw); top_k:
    int32 [B] (0: off); top_p: float32 [B] (1: off). With the default chain and top_k off
    this is exactly the nucleus this decoder always cut (`top_p_mask`).
    """
    b, v = logits.shape
    order = jnp.argsort(-logits, axis=-1, stable=True)
    raw_sorted = jnp.take_along_axis(logits, order, axis=-1)
    scaled_sorted = jnp.take_along_axis(scaled, order, axis=-1)
    eog = jnp.asarray(vocab.eog)[order]

    def stage(carry, code):
        alive, scaled_now, has_infill = carry
        vals = jnp.where(scaled_now[:, None], scaled_sorted, raw_sorted)
        probs = jax.nn.softmax(jnp.where(alive, vals, -jnp.inf), axis=-1)
        # top_k: the first k candidates
        rank = jnp.cumsum(alive, axis=-1)
        keep_k = alive & ((top_k[:, None] <= 0) | (rank <= top_k[:, None]))
        # top_p: candidates while the mass of the more likely ones is below top_p
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep_p = alive & ((top_p[:, None] >= 1.0) | (mass_before < top_p[:, None]))
        keep_i = _infill_keep(alive, probs, eog, order, vocab.eot)
        alive = jnp.select(
            [code[:, None] == 1, code[:, None] == 2, code[:, None] == 4],
            [keep_k, keep_p, keep_i],
            alive,
        )
        return (alive, scaled_now | (code == 3), has_infill | (code == 4)), None

    # One compiled stage applied CHAIN_LENGTH times (a scan, not unrolled: the sampler is
    # part of every decode executable, and unrolling it doubled its compile time).
    start = (jnp.ones((b, v), bool), jnp.zeros((b,), bool), jnp.zeros((b,), bool))
    (alive, _, has_infill), _ = jax.lax.scan(stage, start, jnp.stack(_stage_codes(chain)))
    # Back to vocabulary order. A cut of the sorted order (no infill) keeps the tokens at
    # or above its last value (ties with it included); infill's set is scattered back.
    last = jnp.min(jnp.where(alive, scaled_sorted, jnp.inf), axis=-1)
    by_value = scaled >= last[:, None]
    rows = jnp.arange(b)[:, None]
    scattered = jnp.zeros((b, v), bool).at[rows, order].set(alive)
    return jnp.where(has_infill[:, None], scattered, by_value)


def _infill_keep(
    alive: jax.Array, probs: jax.Array, eog: jax.Array, order: jax.Array, eot: jax.Array
) -> jax.Array:
    """llama.cpp's infill sampler on sorted candidates (probs over `alive`): when the
    end-of-generation tokens are likely enough (3 x p_eog x candidates > p_text) only they
    stay; else text tokens below INFILL_THRESHOLD go, then those below 1 / (n_text + 1) of
    the renormalized rest (EOG tokens always stay); if no text token passes, only `eot`.
    llama.cpp also merges candidates whose text is a prefix of another's before the
    thresholds; that needs the token texts and is not done here."""
    p_eog = jnp.sum(jnp.where(eog, probs, 0.0), axis=-1)
    p_txt = jnp.sum(jnp.where(eog, 0.0, probs), axis=-1)
    n = jnp.sum(alive, axis=-1)
    eog_only = 3.0 * p_eog * n > p_txt
    first = alive & (eog | (probs >= INFILL_THRESHOLD))
    n_text = jnp.sum(first & ~eog, axis=-1)
    p1 = jnp.where(first, probs, 0.0)
    p1 = p1 / jnp.sum(p1, axis=-1, keepdims=True)
    second = first & (eog | (p1 >= 1.0 / (n_text[:, None] + 1.0)))
    only_eot = order == eot
    keep = jnp.where((n_text == 0)[:, None], only_eot, second)
    return jnp.where(eog_only[:, None], alive & eog, keep)


def sample_tokens(
    logits: jax.Array,
    keys: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    top_k: jax.Array | None = None,
    chain: jax.Array | None = None,
    vocab: SamplerVocab | None = None,
) -> jax.Array:
    """Next token per row: argmax where temperature <= GREEDY_EPS, else a draw from the
    candidates the row's sampler chain leaves.

    logits: [B, V] (any float dtype; computed in float32); keys: key array [B];
    temperature, top_p: float32 [B]; top_k: int32 [B] (0: off; default all off); chain:
    int32 [B] (`chain_code`; default DEFAULT_CHAIN); vocab: the infill sampler's
    end-of-generation ids (default none). Returns int32 [B]. With neither top_k nor chain
    the plain temperature + top-p sampler is traced (`_nucleus`), which compiles less; a
    default-chain row with top_k off draws the same token either way (tested).
    """
    logits = logits.astype(jnp.float32)
    greedy_tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    greedy_rows = temperature <= GREEDY_EPS
    if top_k is None and chain is None:  # decided when tracing: the plain sampler below
        sampled = functools.partial(_nucleus, logits, keys, temperature, top_p)
    else:
        b, v = logits.shape
        top_k = jnp.zeros((b,), jnp.int32) if top_k is None else top_k
        chain = jnp.full((b,), DEFAULT_CHAIN, jnp.int32) if chain is None else chain
        if vocab is None:
            vocab = SamplerVocab(jnp.zeros((v,), bool), jnp.int32(0))
        sampled = functools.partial(_chained, logits, keys, temperature, top_p, top_k, chain, vocab)

    def pick(_):
        return jnp.where(greedy_rows, greedy_tokens, sampled())

    return jax.lax.cond(jnp.all(greedy_rows), lambda _: greedy_tokens, pick, None)


def candidate_logits(
    logits: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    top_k: jax.Array | None = None,
    chain: jax.Array | None = None,
    vocab: SamplerVocab | None = None,
) -> jax.Array:
    """float32 [B, V]: what a sampled row draws from, softmax-ready: the logits scaled as
    its chain says, -inf outside the candidates the chain leaves (greedy rows' values are
    meaningless: callers take the argmax). The one definition of the target distribution:
    `sample_tokens` draws from it and speculative decoding's accept/reject rule compares
    with it. Arguments as `sample_tokens`; with neither top_k nor chain the plain
    temperature + top-p graph is traced (`_nucleus_logits`)."""
    logits = logits.astype(jnp.float32)
    if top_k is None and chain is None:
        return _nucleus_logits(logits, temperature, top_p)
    b, v = logits.shape
    top_k = jnp.zeros((b,), jnp.int32) if top_k is None else top_k
    chain = jnp.full((b,), DEFAULT_CHAIN, jnp.int32) if chain is None else chain
    if vocab is None:
        vocab = SamplerVocab(jnp.zeros((v,), bool), jnp.int32(0))
    return _chained_logits(logits, temperature, top_p, top_k, chain, vocab)


def _draw(keys: jax.Array, scaled: jax.Array) -> jax.Array:
    return jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)


def _nucleus(logits, keys, temperature, top_p):
    return _draw(keys, _nucleus_logits(logits, temperature, top_p))


def _chained(logits, keys, temperature, top_p, top_k, chain, vocab):
    return _draw(keys, _chained_logits(logits, temperature, top_p, top_k, chain, vocab))


def _nucleus_logits(logits, temperature, top_p):
    """Temperature, then top-p: the sampler without top_k and sampler orders. Callers that
    pass neither (evaluation's decoders) compile only this, the graph this decoder always
    had (the chain adds ~0.6 CPU s of XLA compilation to every decode executable)."""
    scaled = logits / jnp.maximum(temperature, GREEDY_EPS)[:, None]
    # The sort for top-p is the costly part at large vocabularies: skip it when no row
    # asks for it.
    return jax.lax.cond(
        jnp.any(top_p < 1.0),
        lambda s: jnp.where(top_p_mask(s, top_p), s, -jnp.inf),
        lambda s: s,
        scaled,
    )


def _chained_logits(logits, temperature, top_p, top_k, chain, vocab):
    """Scaled logits after each row's chain of samplers (`chain_keep`)."""
    codes = _stage_codes(chain)
    in_chain = lambda c: jnp.any(jnp.stack([x == c for x in codes]), axis=0)  # noqa: E731
    divisor = jnp.where(in_chain(3), jnp.maximum(temperature, GREEDY_EPS), 1.0)
    scaled = logits / divisor[:, None]
    cuts = (in_chain(1) & (top_k > 0)) | (in_chain(2) & (top_p < 1.0)) | in_chain(4)
    # The sort is the costly part at large vocabularies: skip it when no row cuts.
    return jax.lax.cond(
        jnp.any(cuts & ~(temperature <= GREEDY_EPS)),
        lambda s: jnp.where(chain_keep(logits, s, top_k, top_p, chain, vocab), s, -jnp.inf),
        lambda s: s,
        scaled,
    )
