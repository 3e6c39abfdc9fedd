"""Speculative decoding: greedy identity with decoding without drafts, the sampling rule's
output distribution (chi-square against a numpy reference), stop strings and cancellation
inside drafted runs, prefix reuse, and the draft tokenizer check.

Drafts: prompt lookup (`NgramDrafter`), a draft model (the target's own weights, so all
drafts are accepted; the target's weights plus noise, so some are; another random model,
so nearly none are), and a scripted drafter that proposes the no-draft decode's own
continuation with one wrong token at a varying place, so accepted runs, rejections and
rollbacks of every length happen on a random model (whose text never repeats its prompt
for prompt lookup to find).
"""

from __future__ import annotations

import glob
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sstats

from zen_code_jax.data.tokenizer import Tokenizer
from zen_code_jax.infer.__main__ import build_server, parse_args
from zen_code_jax.infer.drafting import NgramDrafter, Plan, SpecConfig, Speculator
from zen_code_jax.infer.engine import CompletionRequest, InferenceEngine, random_params
from zen_code_jax.infer.scheduler import Job, Scheduler
from zen_code_jax.infer.slots import COMPILES
from zen_code_jax.infer.speculative import accept_drafts
from zen_code_jax.model import get_preset

CFG = get_preset("tiny")
MAX_LEN = 512
NEW = 24


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    files = sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/json/*.py"))
    return Tokenizer.train([open(f).read() for f in files], CFG.vocab_size)


@pytest.fixture(scope="module")
def params():
    return random_params(CFG, seed=0, scale=0.2)


@pytest.fixture(scope="module")
def engine(params, tok) -> InferenceEngine:
    return InferenceEngine(params, CFG, tok, max_batch_size=8)


def _source() -> str:
    return open(sysconfig.get_paths()["stdlib"] + "/json/decoder.py").read()


@pytest.fixture(scope="module")
def requests(engine) -> list[CompletionRequest]:
    """HumanEval-Infilling-style single-line FIM prompts (a line cut out of a function)
    and held-out-like left-to-right file prefixes, of mixed lengths."""
    src = _source()
    lines = src.splitlines(keepends=True)
    out = []
    for n, cut in ((12, 90), (8, 100), (16, 120), (6, 30)):
        prefix = "".join(lines[cut - n : cut])
        suffix = "".join(lines[cut + 1 : cut + 6])
        ids = engine.fim_prompt_ids(prefix, suffix)
        out.append(CompletionRequest(ids, NEW, stop=("\n",) if n == 8 else ()))
    for start, length in ((0, 300), (900, 120), (2000, 500), (4000, 50)):
        ids = engine.tokenizer.encode(src[start : start + length])
        out.append(CompletionRequest(ids, NEW))
    return out


def _decode(engine, reqs, speculator_fn=None, *, slots=None):
    """Decode through a fresh slot decoder (one window: few compiles); returns the rows
    and the scheduler's stats."""
    dec = engine.slot_decoder(MAX_LEN, windows=(MAX_LEN,))
    if slots is not None:
        dec = type(dec)(
            engine.params, CFG, slots=slots, max_len=MAX_LEN, chunk=128, windows=(MAX_LEN,)
        )
    spec = None if speculator_fn is None else speculator_fn(dec)
    sch = Scheduler(dec, engine.tokenizer, engine.stop_ids, speculator=spec)
    job = Job(reqs, stream=False)
    sch.run(job)
    return job.rows, sch


@pytest.fixture(scope="module")
def baseline(engine, requests):
    rows, _ = _decode(engine, requests)
    return [r.ids for r in rows]


class ScriptedDrafter:
    """Proposes each row's known continuation (`truth`: prompt tuple -> ids), with the
    token at a varying place replaced by a wrong one (point-mass drafts)."""

    point_mass = True

    def __init__(self, truth: dict[tuple[int, ...], list[int]], wrong_every: int = 3):
        self.truth, self.wrong_every, self.calls = truth, wrong_every, 0

    def reset(self) -> None:
        pass

    def propose(self, entries, slots, k):
        drafts, lens = np.zeros((slots, k), np.int32), np.zeros((slots,), np.int32)
        for e in entries:
            self.calls += 1
            for prompt, ids in self.truth.items():
                n = len(prompt)
                if tuple(e.seq[:n]) == prompt:
                    d = list(ids[len(e.seq) - n : len(e.seq) - n + e.want])
                    if d and self.wrong_every and self.calls % self.wrong_every:
                        j = self.calls % len(d)
                        d[j] = (d[j] + 1) % 400 + 8
                    drafts[e.slot, : len(d)], lens[e.slot] = d, len(d)
        return Plan(drafts, lens, None)


def _scripted(requests, baseline, cfg, wrong_every=3):
    truth = {tuple(r.prompt_ids): ids for r, ids in zip(requests, baseline)}
    return lambda dec: Speculator(cfg, dec, ScriptedDrafter(truth, wrong_every))


SPEC = SpecConfig(mode="ngram", max_draft=4, max_batch=8, min_acceptance=0.0, timed=False)


@pytest.mark.parametrize("slots", [1, 8])
def test_greedy_identity_scripted_drafts(engine, requests, baseline, slots):
    """Accepted runs, rejections at every draft position and rollbacks, batch 1 and 8
    slots with mixed prompt lengths: the same tokens as decoding without drafts."""
    rows, sch = _decode(engine, requests, _scripted(requests, baseline, SPEC), slots=slots)
    assert [r.ids for r in rows] == baseline
    assert sch.stats["spec_accepted_tokens"] > 0
    assert sch.stats["spec_draft_tokens"] > sch.stats["spec_accepted_tokens"]


def test_greedy_identity_ngram(engine, requests, baseline):
    """Prompt lookup through the engine's own wiring (`set_speculative`)."""
    engine.set_speculative(SPEC)
    try:
        rows, sch = _decode(engine, requests, engine.speculator)
    finally:
        engine.set_speculative(SpecConfig())
    assert [r.ids for r in rows] == baseline


@pytest.mark.parametrize("which", ["same", "noisy", "other"])
def test_greedy_identity_draft_model(engine, params, tok, requests, baseline, which):
    """A draft model kept level with the target's slots: all, some or no drafts accepted."""
    if which == "same":
        dparams = params
    elif which == "noisy":
        noise = random_params(CFG, seed=7, scale=0.003)  # random models' argmax is fragile
        dparams = jax.tree.map(lambda a, b: a + b, params, noise)
    else:
        dparams = random_params(CFG, seed=1, scale=0.2)
    draft = InferenceEngine(dparams, CFG, tok, max_batch_size=8)
    engine.set_speculative(
        SpecConfig(mode="model", max_batch=8, min_acceptance=0.0, timed=False), draft
    )
    try:
        rows, sch = _decode(engine, requests, engine.speculator)
    finally:
        engine.set_speculative(SpecConfig())
    assert [r.ids for r in rows] == baseline
    acc, drafted = sch.stats["spec_accepted_tokens"], sch.stats["spec_draft_tokens"]
    assert drafted > 0
    if which == "same":
        assert acc == drafted
    elif which == "noisy":
        assert 0 < acc < drafted


def test_complete_with_speculation(engine, requests):
    """`InferenceEngine.complete` (evaluation's driver) decodes the same texts."""
    off = engine.complete(requests[:3])
    engine.set_speculative(SpecConfig(mode="model", max_batch=8, timed=False), engine)
    try:
        on = engine.complete(requests[:3])
    finally:
        engine.set_speculative(SpecConfig())
    assert [c.text for c in on] == [c.text for c in off]
    assert [c.completion_tokens for c in on] == [c.completion_tokens for c in off]


def test_stop_string_inside_accepted_run(engine, requests, baseline, tok):
    """A stop string whose tokens arrive inside one accepted draft run: the text is cut
    before it, exactly as without drafts, streamed pieces included."""
    r0, ids = requests[4], baseline[4]
    text = tok.decode(ids)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    req = CompletionRequest(r0.prompt_ids, NEW, stop=(stop,))
    off_rows, _ = _decode(engine, [req])
    truth = {tuple(req.prompt_ids): ids}
    spec = lambda dec: Speculator(SPEC, dec, ScriptedDrafter(truth, wrong_every=0))  # noqa: E731
    dec = engine.slot_decoder(MAX_LEN, windows=(MAX_LEN,))
    sch = Scheduler(dec, tok, engine.stop_ids, speculator=spec(dec))
    job = Job([req], stream=True)
    sch.run(job)
    row, ref = job.rows[0], off_rows[0]
    assert row.finish_reason == ref.finish_reason == "stop" and row.stop_type == "word"
    assert row.text == ref.text == text[: text.find(stop)]
    pieces = []
    while not job.events.empty():
        pieces.append(job.events.get().text)
    assert "".join(pieces) == row.text
    assert row.completion().token_ids == ref.completion().token_ids
    assert sch.stats["spec_accepted_tokens"] >= 3


def test_cancel_mid_draft_then_prefix_reuse(engine, requests, baseline, tok):
    """A row cancelled between verify turns frees its slot; its neighbour's tokens and a
    later request reusing the cancelled row's cached prefix are unchanged."""
    a, b = requests[4], requests[6]
    truth = {tuple(r.prompt_ids): ids for r, ids in zip(requests, baseline)}
    dec = engine.slot_decoder(MAX_LEN, windows=(MAX_LEN,))
    sch = Scheduler(
        dec, tok, engine.stop_ids, speculator=Speculator(SPEC, dec, ScriptedDrafter(truth))
    )
    polls = {"n": 0}

    def alive() -> bool:
        polls["n"] += 1
        return polls["n"] < 4

    ja, jb = Job([a], alive, stream=True), Job([b], stream=True)
    sch.submit(ja)
    sch.submit(jb)
    while not (ja.finished and jb.finished):
        assert sch.step()
    assert ja.rows[0].finish_reason == "cancelled"
    assert 0 < len(ja.rows[0].ids) < NEW
    assert jb.rows[0].ids == baseline[6]
    jc = Job([a], stream=False)  # same prompt: admitted into the cancelled row's slot
    sch.submit(jc)
    while not jc.finished:
        assert sch.step()
    assert jc.rows[0].reused > 0
    assert jc.rows[0].ids == baseline[4]


def test_ngram_lookup_against_brute_force():
    """The latest earlier occurrence of the longest matching suffix n-gram."""
    cfg = SpecConfig(mode="ngram", ngram_max=3, ngram_min=1)
    d = NgramDrafter(cfg)
    rng = np.random.default_rng(0)
    for _ in range(200):
        seq = rng.integers(0, 5, rng.integers(1, 30)).tolist()
        want = []
        for n in (3, 2, 1):
            if len(seq) <= n:
                continue
            tail = seq[-n:]
            starts = [i for i in range(len(seq) - n) if seq[i : i + n] == tail]
            if starts:
                i = starts[-1] + n
                want = seq[i : i + 4]
                break
        assert d.lookup(seq, 4) == want


def test_draft_tokenizer_mismatch(engine, params):
    """A draft with another tokenizer is refused, naming both."""
    files = sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/csv.py"))
    other = Tokenizer.train([open(f).read() for f in files], CFG.vocab_size)
    draft = InferenceEngine(params, CFG, other, max_batch_size=8)
    with pytest.raises(ValueError, match="draft model .* tokenizer .* target"):
        engine.set_speculative(SpecConfig(mode="model"), draft)
    with pytest.raises(ValueError, match="--draft"):
        engine.set_speculative(SpecConfig(mode="model"))


# ---------------------------------------------------------------- sampling distribution
V, K, ROWS = 6, 2, 60_000


def _processed(logits: np.ndarray, temp: float, top_p: float) -> np.ndarray:
    """numpy reference of the target's sampling distribution (temperature, then nucleus:
    keep a token when the mass of strictly more likely tokens is below top_p)."""
    z = logits / temp
    p = np.exp(z - z.max())
    p /= p.sum()
    keep = np.array([p[p > p[i]].sum() < top_p for i in range(len(p))])
    p = np.where(keep, p, 0.0)
    return p / p.sum()


def _chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    support = probs > 0
    assert counts[~support].sum() == 0, "a token outside the target's support was emitted"
    exp = probs[support] * counts.sum()
    return float(sstats.chisquare(counts[support], exp).pvalue)


def _accept_many(seed: int, point_mass: bool, temp: float, top_p: float, chain=None):
    """ROWS draws of the accept/reject rule on one fixed target ([K + 1, V] logits) with
    drafts from a random draft law q (or fixed drafts, q a point mass, as prompt lookup);
    chain: (top_k, chain code, SamplerVocab) for the server's sampler chain, or None.
    Returns (target, drafts, accepted, tokens)."""
    rng = np.random.default_rng(seed)
    target = rng.normal(0, 1.2, (K + 1, V)).astype(np.float32)
    draft_q = rng.dirichlet(np.ones(V), K).astype(np.float32)
    if point_mass:  # prompt lookup: fixed drafts, q a point mass
        drafts = np.tile(np.array([[1, 3]], np.int32), (ROWS, 1))
        q = None
    else:
        drafts = np.stack([rng.choice(V, ROWS, p=draft_q[j]) for j in range(K)], 1).astype(np.int32)
        q = jnp.broadcast_to(jnp.asarray(draft_q), (ROWS, K, V))
    col = lambda x, t=np.float32: jnp.full((ROWS,), x, t)  # noqa: E731
    extra = () if chain is None else (col(chain[0], np.int32), col(chain[1], np.int32), chain[2])
    accepted, out = jax.jit(accept_drafts)(
        jnp.broadcast_to(jnp.asarray(target), (ROWS, K + 1, V)),
        jnp.asarray(drafts),
        col(K, np.int32),
        q,
        col(temp),
        col(top_p),
        jnp.arange(ROWS, dtype=jnp.int32),
        col(0, np.int32),
        col(5, np.int32),
        *extra,
    )
    return target, drafts, np.asarray(accepted), np.asarray(out)


@pytest.mark.parametrize(
    "temp,top_p,point_mass", [(1.0, 1.0, False), (0.7, 0.8, False), (0.7, 0.9, True)]
)
def test_sampling_distribution_chi_square(temp, top_p, point_mass):
    """Output position 0 is distributed as the target's processed p_0, and position 1
    (when produced) as p_1, whatever the drafts were; a rule that always accepts fails
    the same test (the test has power)."""
    target, drafts, accepted, out = _accept_many(0, point_mass, temp, top_p)
    p0, p1 = (_processed(target[j].astype(np.float64), temp, top_p) for j in (0, 1))
    first = np.bincount(out[:, 0], minlength=V)
    second = np.bincount(out[accepted >= 1, 1], minlength=V)
    assert _chi2_pvalue(first, p0) > 1e-3
    assert _chi2_pvalue(second, p1) > 1e-3
    assert 0 < (accepted >= 1).mean() < 1
    naive = np.bincount(drafts[:, 0], minlength=V)  # "always accept": the draft's law
    assert sstats.chisquare(naive, p0 * ROWS + 1e-9).pvalue < 1e-6


def test_greedy_rule_is_argmax():
    """Greedy rows accept a draft iff it is the argmax, and emit the argmax."""
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(3, K + 1, V)), jnp.float32)
    arg = np.asarray(jnp.argmax(logits, -1))
    drafts = np.stack([arg[:, :K][0], [arg[1, 0], (arg[1, 1] + 1) % V], [(arg[2, 0] + 1) % V, 0]])
    z = jnp.zeros((3,), jnp.int32)
    acc, out = accept_drafts(
        logits, jnp.asarray(drafts, jnp.int32), z + K, None, z * 0.0, z + 1.0, z, z, z
    )
    assert np.asarray(acc).tolist() == [2, 1, 0]
    assert np.asarray(out)[0].tolist() == arg[0].tolist()
    assert np.asarray(out)[1, :2].tolist() == arg[1, :2].tolist()
    assert np.asarray(out)[2, 0] == arg[2, 0]


def test_scheduler_thread_compiles_nothing_after_warm_up(engine, requests, baseline):
    """The server's arrangement: decoder and speculator warmed up, rows submitted from
    other threads and streamed; every verify shape was compiled before serving."""
    dec = engine.slot_decoder(MAX_LEN, windows=(MAX_LEN,))
    dec.warm_up()
    truth = {tuple(r.prompt_ids): ids for r, ids in zip(requests, baseline)}
    spec = Speculator(SPEC, dec, ScriptedDrafter(truth))
    spec.warm_up()
    sch = Scheduler(dec, engine.tokenizer, engine.stop_ids, speculator=spec).start()
    before = COMPILES["scheduler"]
    try:
        jobs = [Job([r], stream=True) for r in requests]
        for job in jobs:
            sch.submit(job)
        for job in jobs:
            while not job.finished:
                job.events.get(timeout=120)
    finally:
        sch.shutdown()
    assert [j.rows[0].ids for j in jobs] == baseline
    assert COMPILES["scheduler"] == before
    assert sch.stats["spec_accepted_tokens"] > 0 and 0 < sch.acceptance_rate < 1


def test_cli_flags():
    """`--speculative` / `--draft` reach the server's arguments."""
    args = parse_args(["--random_preset=tiny", "--speculative=model", "--draft=hf:/x"])
    assert (args.speculative, args.draft, args.spec_max_draft) == ("model", "hf:/x", 4)
    assert parse_args(["--random_preset=tiny"]).speculative == "off"


def _chain_reference(
    logits: np.ndarray, temp: float, top_p: float, top_k: int, order
) -> np.ndarray:
    """numpy reference of a llama.cpp sampler chain: each stage cuts the candidates left
    (top_k: the k most likely; top_p: while the mass of the more likely candidates is below
    top_p, on logits divided by T only once `temperature` came earlier in the chain); the
    draw is softmax(logits / T) over what is left."""
    alive = np.ones(len(logits), bool)
    scaled = False
    for stage in order:
        z = logits / temp if scaled else logits
        p = np.where(alive, np.exp(z - z[alive].max()), 0.0)
        p /= p.sum()
        if stage == "top_k":
            alive &= np.argsort(np.argsort(-np.where(alive, z, -np.inf))) < top_k
        elif stage == "top_p":
            alive &= np.array([p[p > p[i]].sum() < top_p for i in range(len(p))])
        elif stage == "temperature":
            scaled = True
    z = logits / temp if "temperature" in order else logits
    p = np.where(alive, np.exp(z - z[alive].max()), 0.0)
    return p / p.sum()


@pytest.mark.parametrize(
    "order,point_mass",
    [(("temperature", "top_k", "top_p"), False), (("top_k", "top_p", "temperature"), True)],
)
def test_sampling_distribution_with_top_k_and_sampler_order(order, point_mass):
    """With a row's top_k and sampler order (the server's decoders), speculation still
    emits the target's distribution: the rule compares with the same processed
    distribution `sample_tokens` draws from (`sampling.candidate_logits`)."""
    from zen_code_jax.infer.sampling import chain_code, sampler_vocab

    temp, top_p, top_k = 0.7, 0.9, 4
    chain = (top_k, chain_code(order), sampler_vocab(V))
    target, _, accepted, out = _accept_many(1, point_mass, temp, top_p, chain)
    p0, p1 = (
        _chain_reference(target[j].astype(np.float64), temp, top_p, top_k, order) for j in (0, 1)
    )
    assert (p0 == 0).sum() >= V - top_k  # the cut matters
    first = np.bincount(out[:, 0], minlength=V)
    second = np.bincount(out[accepted >= 1, 1], minlength=V)
    assert _chi2_pvalue(first, p0) > 1e-3
    assert _chi2_pvalue(second, p1) > 1e-3
    # the temperature + top-p law without the top_k cut is a different law: the test has power
    other = _processed(target[0].astype(np.float64), temp, top_p)
    assert sstats.chisquare(first, other * ROWS + 1e-9).pvalue < 1e-6


def test_draft_flag_needs_model_mode():
    """`--draft` without `--speculative=model` stops before loading anything."""
    with pytest.raises(SystemExit, match="--speculative=model"):
        build_server(["--random_preset=tiny", "--draft=hf:/nowhere"])
