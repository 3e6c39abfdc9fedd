"""The device sampler (`infer/sampling.py`) against an independent numpy reference.

The reference walks llama.cpp's sampler chain over a sorted candidate list in plain
Python (top_k keeps the first k; top_p keeps candidates until the mass up to and including
one reaches p; temperature divides the logits; infill as llama.cpp's, less its merging of
tokens that share a prefix) and gives the exact probability of every token. The sampler's
candidate set and implied distribution must equal it, and many draws must pass a
chi-square test against it. Greedy rows and the default chain must stay exactly what the
decoder always did (`top_p_mask`, argmax), and top_k reaches the sampler from the
scheduler and the request parser.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from zen_code_jax.infer.sampling import (
    DEFAULT_CHAIN,
    chain_code,
    chain_keep,
    row_keys,
    sample_tokens,
    sampler_vocab,
    top_p_mask,
)

V = 12
EOG = (10, 11)  # end-of-generation ids of the toy vocabulary; 10 is the end of text
LOGITS = np.array([2.1, 1.7, 1.3, 0.9, 0.6, 0.2, -0.3, -0.8, -1.4, -2.0, 0.4, -0.1], np.float32)


def reference_probs(
    logits: np.ndarray,
    temperature: float,
    top_k: int,
    top_p: float,
    samplers: tuple[str, ...] | None,
    eog: tuple[int, ...] = EOG,
    eot: int = EOG[0],
) -> np.ndarray:
    """Exact next-token probabilities of llama.cpp's chain (float64, no ties assumed)."""
    if temperature <= 1e-5:
        out = np.zeros(len(logits))
        out[int(np.argmax(logits))] = 1.0
        return out
    order = samplers if samplers is not None else ("temperature", "top_k", "top_p")
    ids = sorted(range(len(logits)), key=lambda i: -float(logits[i]))
    vals = {i: float(logits[i]) for i in ids}

    def probs(cands: list[int]) -> dict[int, float]:
        z = max(vals[i] for i in cands)
        e = {i: np.exp(vals[i] - z) for i in cands}
        s = sum(e.values())
        return {i: e[i] / s for i in cands}

    cands = ids
    for name in dict.fromkeys(order):
        if name == "top_k" and top_k > 0:
            cands = cands[:top_k]
        elif name == "top_p" and top_p < 1.0:
            p, kept, total = probs(cands), [], 0.0
            for i in cands:
                kept.append(i)
                total += p[i]
                if total >= top_p:
                    break
            cands = kept
        elif name == "temperature":
            vals = {i: v / temperature for i, v in vals.items()}
        elif name == "infill":
            p = probs(cands)
            p_eog = sum(p[i] for i in cands if i in eog)
            p_txt = sum(p[i] for i in cands if i not in eog)
            if 3 * p_eog * len(cands) > p_txt:
                cands = [i for i in cands if i in eog]
                continue
            first = [i for i in cands if i in eog or p[i] >= 0.2]
            n_text = sum(i not in eog for i in first)
            if n_text == 0:
                cands = [eot]
                continue
            s = sum(p[i] for i in first)
            cands = [i for i in first if i in eog or p[i] / s >= 1.0 / (n_text + 1)]
    out = np.zeros(len(logits))
    for i, q in probs(cands).items():
        out[i] = q
    return out


CASES = [  # temperature, top_k, top_p, samplers
    (1.0, 0, 1.0, None),
    (0.7, 4, 1.0, None),
    (1.3, 0, 0.8, None),
    (1.0, 5, 0.7, None),  # top_k then top_p (renormalized over the five)
    (1.0, 5, 0.7, ("top_p", "top_k", "temperature")),  # top_p on the full distribution
    (2.0, 0, 0.6, ("top_p", "temperature")),  # nucleus of the unscaled distribution
    (2.0, 0, 0.6, ("temperature", "top_p")),  # nucleus of the scaled one
    (0.8, 3, 1.0, ("top_k",)),  # no temperature in the chain: T = 1
    (1.0, 6, 1.0, ("top_k", "infill")),  # infill keeps the likely text tokens and EOG
    (1.0, 6, 0.95, ("top_k", "top_p", "infill", "temperature")),
]
INFILL_EOG = np.array(
    [2.0, 1.9, 0.3, 0.1, -0.2, -0.5, -0.7, -1.1, -1.6, -2.2, 1.5, -1.0], np.float32
)


def device_probs(logits: np.ndarray, t: float, k: int, p: float, samplers) -> np.ndarray:
    """The distribution the sampler draws from: softmax(logits / T) over the kept set."""
    vocab = sampler_vocab(V, EOG, EOG[0])
    chain = chain_code(samplers)
    scaled = logits / (max(t, 1e-5) if "temperature" in (samplers or ("temperature",)) else 1.0)
    keep = jax.jit(chain_keep)(
        jnp.asarray(logits[None]),
        jnp.asarray(scaled[None].astype(np.float32)),
        jnp.asarray([k], jnp.int32),
        jnp.asarray([p], jnp.float32),
        jnp.asarray([chain], jnp.int32),
        vocab,
    )[0]
    x = np.where(np.asarray(keep), scaled.astype(np.float64), -np.inf)
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.parametrize("t,k,p,samplers", CASES)
def test_distribution_equals_the_reference_exactly(t, k, p, samplers):
    for logits in (LOGITS, INFILL_EOG):
        ref = reference_probs(logits, t, k, p, samplers)
        got = device_probs(logits, t, k, p, samplers)
        assert np.array_equal(ref > 0, got > 0), (ref, got)
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)


def test_the_cases_cover_distinct_distributions():
    """The orders really differ (else the test above could not tell them apart)."""
    dists = [reference_probs(LOGITS, *c) for c in CASES]
    assert dists[3].tolist() != dists[4].tolist()
    assert dists[5].tolist() != dists[6].tolist()
    assert (reference_probs(INFILL_EOG, *CASES[8]) > 0).sum() < 6
    # infill's EOG-only rule: a likely end of generation among few candidates
    only_eog = reference_probs(INFILL_EOG, 1.0, 3, 1.0, ("top_k", "infill"))
    assert set(np.flatnonzero(only_eog)) <= set(EOG)


def draws(logits: np.ndarray, t: float, k: int, p: float, samplers, n: int) -> np.ndarray:
    """n draws (one row each, keys from (seed 0, sample index i, step 3))."""
    vocab = sampler_vocab(V, EOG, EOG[0])
    keys = row_keys(jnp.zeros(n, jnp.int32), jnp.arange(n, dtype=jnp.int32), jnp.int32(3))
    full = lambda x, dt: jnp.full((n,), x, dt)  # noqa: E731
    tok = jax.jit(sample_tokens)(
        jnp.broadcast_to(jnp.asarray(logits), (n, V)),
        keys,
        full(t, jnp.float32),
        full(p, jnp.float32),
        full(k, jnp.int32),
        full(chain_code(samplers), jnp.int32),
        vocab,
    )
    return np.asarray(tok)


@pytest.mark.parametrize("t,k,p,samplers", CASES)
def test_draws_pass_a_chi_square_test_against_the_reference(t, k, p, samplers):
    n = 20000
    for logits in (LOGITS, INFILL_EOG):
        ref = reference_probs(logits, t, k, p, samplers)
        counts = np.bincount(draws(logits, t, k, p, samplers, n), minlength=V)
        assert counts[ref == 0].sum() == 0  # nothing outside the candidate set
        support = ref > 0
        if support.sum() == 1:
            continue
        chi = stats.chisquare(counts[support], n * ref[support])
        assert chi.pvalue > 1e-4, (counts, n * ref)


def test_chi_square_rejects_a_wrong_order():
    """The test has power: draws of one order fail against the other order's reference."""
    n = 20000
    counts = np.bincount(draws(LOGITS, *CASES[5], n), minlength=V)
    wrong = reference_probs(LOGITS, *CASES[6])
    assert (counts[wrong == 0].sum() > 0) or (
        stats.chisquare(counts[wrong > 0], n * wrong[wrong > 0]).pvalue < 1e-6
    )


def test_greedy_and_default_chain_are_what_the_decoder_always_did():
    """Greedy rows are argmax whatever top_k / samplers say; the default chain with top_k
    off cuts exactly `top_p_mask`'s nucleus, ties included (bf16-rounded logits)."""
    rng = np.random.default_rng(0)
    b, v = 64, 300
    logits = jnp.asarray(rng.normal(size=(b, v)) * 3, jnp.bfloat16).astype(jnp.float32)
    top_p = jnp.asarray(rng.choice([0.05, 0.5, 0.9, 0.999], b), jnp.float32)
    for t in (0.5, 1.0, 1.7):
        scaled = logits / jnp.float32(t)
        want = jax.jit(top_p_mask)(scaled, top_p)
        got = jax.jit(chain_keep)(
            logits,
            scaled,
            jnp.zeros(b, jnp.int32),
            top_p,
            jnp.full(b, DEFAULT_CHAIN, jnp.int32),
            sampler_vocab(v),
        )
        assert np.array_equal(np.asarray(got), np.asarray(want))
    keys = row_keys(jnp.arange(b, dtype=jnp.int32), jnp.zeros(b, jnp.int32), jnp.int32(0))
    chains = jnp.asarray(
        rng.choice([DEFAULT_CHAIN, chain_code(("top_k", "infill")), chain_code(())], b),
        jnp.int32,
    )
    tok = jax.jit(sample_tokens)(
        logits,
        keys,
        jnp.zeros(b, jnp.float32),
        top_p,
        jnp.asarray(rng.integers(0, 5, b), jnp.int32),
        chains,
        sampler_vocab(v, (0, 1)),
    )
    assert np.array_equal(np.asarray(tok), np.asarray(jnp.argmax(logits, axis=-1)))


def test_plain_and_chained_samplers_draw_the_same_default_tokens():
    """Decoders built without the chain trace `_nucleus`; with it, a default-chain row
    with top_k off draws exactly the same token (ties included: bf16-rounded logits)."""
    rng = np.random.default_rng(2)
    b, v = 64, 300
    logits = jnp.asarray(rng.normal(size=(b, v)) * 3, jnp.bfloat16).astype(jnp.float32)
    keys = row_keys(jnp.arange(b, dtype=jnp.int32), jnp.zeros(b, jnp.int32), jnp.int32(4))
    temp = jnp.asarray(rng.choice([0.0, 0.6, 1.0, 1.4], b), jnp.float32)
    top_p = jnp.asarray(rng.choice([1.0, 0.95, 0.5, 0.1], b), jnp.float32)
    plain = jax.jit(sample_tokens)(logits, keys, temp, top_p)
    chained = jax.jit(sample_tokens)(
        logits,
        keys,
        temp,
        top_p,
        jnp.zeros(b, jnp.int32),
        jnp.full(b, DEFAULT_CHAIN, jnp.int32),
        sampler_vocab(v),
    )
    assert np.array_equal(np.asarray(plain), np.asarray(chained))


def test_a_rows_draw_does_not_depend_on_its_neighbours_settings():
    rng = np.random.default_rng(1)
    b = 16
    logits = jnp.asarray(rng.normal(size=(b, V)) * 2, jnp.float32)
    keys = row_keys(jnp.full(b, 7, jnp.int32), jnp.arange(b, dtype=jnp.int32), jnp.int32(2))
    vocab = sampler_vocab(V, EOG)
    temp = jnp.ones(b, jnp.float32)

    def run(top_k, top_p, chain):
        return np.asarray(jax.jit(sample_tokens)(logits, keys, temp, top_p, top_k, chain, vocab))

    plain = run(jnp.zeros(b, jnp.int32), jnp.ones(b), jnp.full(b, DEFAULT_CHAIN, jnp.int32))
    mixed = run(
        jnp.asarray([0, 3] * (b // 2), jnp.int32),
        jnp.asarray([1.0, 0.5] * (b // 2), jnp.float32),
        jnp.asarray([DEFAULT_CHAIN, chain_code(("top_k", "infill"))] * (b // 2), jnp.int32),
    )
    assert np.array_equal(plain[0::2], mixed[0::2])


def test_chain_code():
    assert chain_code(None) == DEFAULT_CHAIN == chain_code(("temperature", "top_k", "top_p"))
    # llama.vim's chain; names this decoder does not implement are skipped; repeats once
    assert chain_code(["top_k", "top_p", "infill"]) == chain_code(
        ["dry", "top_k", "min_p", "top_p", "top_k", "infill"]
    )
    assert chain_code(()) == 0
    assert chain_code(["top_p", "top_k"]) != chain_code(["top_k", "top_p"])


# ------------------------------------------------------------ through the decoder and API
class _StubTokenizer:
    def decode(self, ids: list[int]) -> str:
        return "".join(chr(97 + int(i) % 26) for i in ids)

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 50 + 1 for c in text]


def test_top_k_reaches_the_slot_decoder():
    """Through the scheduler and slot decoder: a sampled row with top_k=1 decodes the
    greedy tokens, and top_k=3 keeps every sampled token among the 3 most likely
    (checked with the step's own top-5 log-probs)."""
    from zen_code_jax.infer.engine import random_params  # local import: heavy, this test only
    from zen_code_jax.infer.request import CompletionRequest
    from zen_code_jax.infer.scheduler import Job, Scheduler
    from zen_code_jax.infer.slots import SlotDecoder
    from zen_code_jax.model import get_preset

    cfg = get_preset("tiny")
    params = random_params(cfg, seed=0, scale=0.2)
    dec = SlotDecoder(params, cfg, slots=4, max_len=64, chunk=8, samplers=True)
    prompt = [11, 12, 13, 14, 15]
    reqs = [
        CompletionRequest(prompt, 12),
        CompletionRequest(prompt, 12, 1.0, seed=3, top_k=1),
        CompletionRequest(prompt, 12, 1.5, seed=3, top_k=3),
        CompletionRequest(prompt, 12, 1.5, seed=3),
    ]
    job = Job(reqs, stream=False)
    Scheduler(dec, _StubTokenizer(), stop_ids=()).run(job)
    greedy, k1, k3, free = job.rows
    assert k1.ids == greedy.ids
    assert all(tok in top[:3] for tok, (_, top, _) in zip(k3.ids, k3.logprobs))
    assert any(tok not in top[:3] for tok, (_, top, _) in zip(free.ids, free.logprobs))
    # A decoder compiled without the chain refuses sampled rows that need it (greedy
    # rows ignore top_k / samplers) and draws the same default-chain tokens.
    plain = SlotDecoder(params, cfg, slots=4, max_len=64, chunk=8)
    with pytest.raises(ValueError, match="samplers=True"):
        Scheduler(plain, _StubTokenizer(), stop_ids=()).run(Job(reqs[1:2], stream=False))
    greedy_k = CompletionRequest(prompt, 12, top_k=5, samplers=("top_k",))
    again = Job([greedy_k, reqs[3]], stream=False)
    Scheduler(plain, _StubTokenizer(), stop_ids=()).run(again)
    assert again.rows[0].ids == greedy.ids and again.rows[1].ids == free.ids


def test_request_parser_passes_top_k_and_samplers():
    """The server's request construction: /v1/completions and /infill carry top_k, and
    /infill its `samplers` order."""
    from types import SimpleNamespace

    from zen_code_jax.infer.protocol import Limits, RequestParser

    engine = SimpleNamespace(
        model_cfg=SimpleNamespace(vocab_size=100),
        tokenizer=_StubTokenizer(),
        _encode_prompt=lambda text: _StubTokenizer().encode(text),
        fim_prompt_ids=lambda prefix, suffix, mode, context=None, path=None: [1, 2, 3],
    )
    parser = RequestParser(engine, "m", Limits(max_prompt_tokens=50), max_len=64)
    rows = parser.completion({"prompt": "def f(", "top_k": 7, "n": 2, "temperature": 1}).requests
    assert [r.top_k for r in rows] == [7, 7] and rows[0].samplers is None
    assert parser.completion({"prompt": "x", "top_k": -1}).requests[0].top_k == 0  # vLLM's off
    body = {"input_prefix": "a", "input_suffix": "b", "top_k": 40, "temperature": 0.8}
    body["samplers"] = ["top_k", "top_p", "infill"]
    (row,) = parser.infill(body).requests
    assert row.top_k == 40 and row.samplers == ("top_k", "top_p", "infill")
    assert row.chain == chain_code(("top_k", "top_p", "infill"))
