"""The one decoder (slot engine + scheduler), sampling, FIM prompts and scoring against
independent references.

References: the model's own training path (full forward, no cache) for greedy argmax, for a
no-cache decoder (`reference_decode.py`) and for teacher-forced log-probs; a numpy nucleus
for top-p; the data pipeline's `fim_tokens` / `repo_windows` for prompt formats. Tiny
preset, float32, random params (std 0.2 so argmax margins are not razor thin).
"""

from __future__ import annotations

import glob
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_decode import full_logits as _full_logits
from reference_decode import reference_decode

from zen_code_jax.data.fim import fim_tokens, unit_draw
from zen_code_jax.data.repo_format import REPO_FORMATS, RepoFormat
from zen_code_jax.data.repo_window import repo_windows
from zen_code_jax.data.tokenizer import Tokenizer
from zen_code_jax.infer import forward as dec
from zen_code_jax.infer import slots
from zen_code_jax.infer.engine import (
    CompletionRequest,
    InferenceEngine,
    random_params,
    truncate_at_stop,
)
from zen_code_jax.infer.sampling import top_p_mask
from zen_code_jax.infer.scheduler import Job, Scheduler
from zen_code_jax.model import Transformer, get_preset

CFG = get_preset("tiny")  # the server tests use the same config: compiles are shared
PROMPT_LENS = [3, 9, 14, 6]  # different lengths in one batch (bucket 16)
NEW = 12  # new-token bucket 16


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    files = sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/json/*.py"))
    return Tokenizer.train([open(f).read() for f in files], CFG.vocab_size)


@pytest.fixture(scope="module")
def params():
    return random_params(CFG, seed=0, scale=0.2)


@pytest.fixture(scope="module")
def engine(params, tok) -> InferenceEngine:
    return InferenceEngine(params, CFG, tok, max_batch_size=4, min_batch_bucket=4)


@pytest.fixture(scope="module")
def prompts(tok) -> list[list[int]]:
    rng = np.random.default_rng(0)
    special = set(tok.special_ids)
    ok = np.array([i for i in range(8, 400) if i not in special])
    return [rng.choice(ok, n).tolist() for n in PROMPT_LENS]


@pytest.fixture(scope="module")
def decoder(engine):
    """The engine's slot decoder with a small prefill chunk: prompts of 9 and 14 tokens
    take two turns of prefill, riding with the other rows' decoding."""
    return engine.slot_decoder(64, chunk=8)


def full_logits(params, seqs: list[list[int]], length: int = 32) -> np.ndarray:
    """Training-path logits [B, length, V] of right-padded sequences (no KV cache)."""
    return _full_logits(params, CFG, seqs, length)


def run(decoder, tok, prompts, *, temperature=0.0, top_p=1.0, seed=0, stop_ids=(), max_new=None):
    """Decode token prompts through the slot engine, driven synchronously (row i samples
    with (seed, i)); `stop_ids` instead of the tokenizer's."""
    n = len(prompts)
    budgets = max_new or [NEW] * n
    reqs = [
        CompletionRequest(p, m, temperature, top_p, (), seed, i)
        for i, (p, m) in enumerate(zip(prompts, budgets))
    ]
    job = Job(reqs, stream=False)
    Scheduler(decoder, tok, stop_ids).run(job)
    return [row.completion() for row in job.rows]


def test_greedy_equals_full_forward_argmax_every_step(params, decoder, tok, prompts):
    gens = run(decoder, tok, prompts)
    seqs = [p + g.token_ids for p, g in zip(prompts, gens)]
    logits = full_logits(params, seqs)
    for i, (p, g) in enumerate(zip(prompts, gens)):
        assert len(g.token_ids) == NEW and g.finish_reason == "length"
        for t in range(NEW):
            # The forward pass over prompt + first t generated tokens predicts token t.
            step_logits = logits[i, len(p) - 1 + t]
            assert g.token_ids[t] == int(np.argmax(step_logits)), (i, t)
            top2 = np.sort(step_logits)[-2:]
            assert top2[1] - top2[0] > 1e-4  # the comparison is not decided by noise


@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (1.0, 0.9)])
def test_cache_equals_no_cache(params, decoder, tok, prompts, temperature, top_p):
    gens = run(decoder, tok, prompts, temperature=temperature, top_p=top_p, seed=3)
    ref = reference_decode(
        params, CFG, prompts, NEW, temperature=temperature, top_p=top_p, seeds=3, length=32
    )
    assert [g.token_ids for g in gens] == [ids for ids, _ in ref]


def test_sampling_seeded_and_top_p_tiny_is_greedy(decoder, tok, prompts):
    a = run(decoder, tok, prompts, temperature=1.0, seed=7)
    b = run(decoder, tok, prompts, temperature=1.0, seed=7)
    c = run(decoder, tok, prompts, temperature=1.0, seed=8)
    greedy = run(decoder, tok, prompts)
    tiny_p = run(decoder, tok, prompts, temperature=1.0, top_p=1e-6, seed=7)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]
    assert [g.token_ids for g in a] != [g.token_ids for g in greedy]
    assert [g.token_ids for g in tiny_p] == [g.token_ids for g in greedy]


def test_top_p_mask_matches_numpy_nucleus():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 50)).astype(np.float32) * 2
    top_p = np.array([0.05, 0.3, 0.5, 0.9, 1.0], np.float32)
    got = np.asarray(jax.jit(top_p_mask)(jnp.asarray(logits), jnp.asarray(top_p)))
    for i in range(5):
        order = np.argsort(-logits[i])
        probs = np.exp(logits[i] - logits[i].max())
        probs /= probs.sum()
        keep, mass = set(), 0.0
        for j in order:  # add tokens, most likely first, until the mass reaches top_p
            keep.add(int(j))
            mass += probs[j]
            if mass >= top_p[i]:
                break
        assert set(np.nonzero(got[i])[0].tolist()) == keep, i


def test_stop_tokens_and_max_new_tokens(decoder, tok, prompts):
    free = [g.token_ids for g in run(decoder, tok, prompts)]
    # Stop at the token that row 0 emits at step 4: row 0 ends there, excluded.
    stop = free[0][4]
    gens = run(decoder, tok, prompts, stop_ids=[stop])
    for f, g in zip(free, gens):
        cut = f.index(stop) if stop in f else None
        assert g.token_ids == f[:cut]
        assert g.finish_reason == ("stop" if cut is not None else "length")
    budgets = [1, 5, 0, 12]
    gens = run(decoder, tok, prompts, max_new=budgets)
    assert [g.token_ids for g in gens] == [f[:m] for f, m in zip(free, budgets)]
    assert all(g.finish_reason == "length" for g in gens)


def test_engine_stop_strings_and_stop_ids(engine, tok):
    prompt = "def load(fp):\n"
    (full,) = engine.generate([prompt], max_new_tokens=NEW)
    assert len(full) > 6
    stop = full[3:5]
    (cut,) = engine.generate([prompt], max_new_tokens=NEW, stop=["\x00never", stop])
    assert cut == full[: full.find(stop)]
    assert truncate_at_stop("abcXYdefXY", ["d", "XY"]) == ("abc", True)
    # Token stops: every special id ends a row (they are excluded from the text).
    assert set(tok.special_ids) <= set(engine.stop_ids)
    (c,) = engine.complete([CompletionRequest(tok.encode(prompt), NEW)])
    assert c.finish_reason in ("stop", "length") and not set(c.token_ids) & set(tok.special_ids)


def test_compiles_once_per_bucket(engine, decoder, tok, prompts):
    run(decoder, tok, prompts)
    run(decoder, tok, prompts, temperature=1.0, top_p=0.5)
    ctx = [p[:4] for p in prompts]
    engine.token_logprobs(ctx, prompts)
    before = dict(slots.TRACE_COUNTS), dict(dec.TRACE_COUNTS)
    # Other prompt lengths, budgets, settings and row counts in the same (window, chunk)
    # shapes of the slot decoder, and the same scoring buckets: no new trace.
    run(decoder, tok, [p[:-1] for p in prompts], max_new=[3, 9, 11, 16], temperature=0.7, seed=5)
    run(decoder, tok, prompts[:3], max_new=[2, 2, 2])
    run(decoder, tok, prompts * 3, max_new=[4] * 12)  # more rows than slots
    engine.token_logprobs(ctx[2:], [p + [5] for p in prompts[2:]])
    assert (dict(slots.TRACE_COUNTS), dict(dec.TRACE_COUNTS)) == before
    assert dec.bucket(9, 16) == 16 and dec.bucket(17, 16) == 32 and dec.batch_bucket(3, 2) == 4


def test_fim_prompt_is_training_format(engine, tok):
    prefix, middle, suffix = "def add(a, b):\n    ", "return a + b", "\n\nprint(add(1, 2))\n"
    for mode in ("psm", "spm"):
        train = fim_tokens(tok.encode(prefix), tok.encode(middle), tok.encode(suffix), mode, tok)
        prompt = engine.fim_prompt_ids(prefix, suffix, mode)
        assert train[: len(prompt)] == prompt
        assert train[len(prompt) :] == [*tok.encode(middle), tok.eot_id]
        assert prompt.count(tok.fim_middle_id) == 1  # sentinels are ids, not text
    # A literal sentinel in user text stays text.
    lit = engine.fim_prompt_ids("x = '<|fim_suffix|>'", "", "psm")
    assert lit.count(tok.fim_suffix_id) == 1


@pytest.mark.parametrize("fmt", REPO_FORMATS)
def test_repository_fim_prompt_matches_repo_windows(engine, tok, fmt):
    """With context files, the engine's prompt is the training window up to the middle,
    in each repository format (one implementation: `data/repo_format.py`)."""
    files = [("pkg/util.py", "def helper():\n    return 1\n"), ("pkg/main.py", "x = helper()\n")]
    f = RepoFormat(fmt)
    engine.repo_format = f
    try:
        (window,) = repo_windows(files, tok, 5, 256, fim_rate=1.0, fmt=f, repo="o/pkg")
        draw = unit_draw(5, "repo", "o/pkg", "0")
        target = files[-1][1]
        a, b = draw.points(len(target))  # cuts inside the content (not in the trailer)
        prefix, suffix = target[:a], target[b:]
        mode = draw.mode(1.0, 0.5)
        split = draw.split(target + f.trailer())
        if split[0] != prefix or split[2] != suffix + f.trailer():
            pytest.skip("the draw cut inside the trailer")  # not the case for seed 5
        prompt = engine.fim_prompt_ids(
            prefix, suffix, mode, context=files[:1], path="pkg/main.py", repo="o/pkg"
        )
        assert window.tolist()[: len(prompt)] == prompt
        head = f.context_ids(files[:1], tok, "o/pkg") + f.header_ids("pkg/main.py", tok)
        assert prompt[: len(head)] == head and prompt[len(head)] == tok.fim_prefix_id
    finally:
        engine.repo_format = RepoFormat("report")
    # Context without a target path (llama.cpp's /infill): the context files, then the
    # file-mode FIM prompt, with no header for the unnamed target.
    plain = engine.fim_prompt_ids("a", "b", "psm")
    ctx = RepoFormat("report").context_ids(files[:1], tok)
    assert engine.fim_prompt_ids("a", "b", "psm", context=files[:1]) == ctx + plain


def test_infill_returns_greedy_middle(engine, params, tok):
    prefixes, suffixes = ["def f(x):\n    ", "import os\n"], ["\n", "\nprint(1)\n"]
    middles = engine.infill(prefixes, suffixes, mode="spm", max_new_tokens=NEW)
    prompts = [engine.fim_prompt_ids(p, s, "spm") for p, s in zip(prefixes, suffixes)]
    ref = reference_decode(params, CFG, prompts, NEW, stop_ids=engine.stop_ids, length=64)
    assert middles == [tok.decode(ids) for ids, _ in ref]


def test_complete_runs_more_rows_than_slots_in_request_order(engine, params, prompts):
    """Evaluation's driver: 10 rows through 4 slots (a finished row's slot takes the next),
    any mix of budgets and settings, results in request order; a later call's longer row
    gets a longer cache."""
    rows = [prompts[i % 4][: 3 + i] for i in range(10)]
    budgets = [NEW, 3, 7, 1, NEW, 5, 9, 2, 11, 4]
    settings = [(0.0, 1.0), (1.0, 0.9)] * 5
    reqs = [
        CompletionRequest(p, m, t, tp, (), 11, i)
        for i, (p, m, (t, tp)) in enumerate(zip(rows, budgets, settings))
    ]
    got = engine.complete(reqs)
    ref = reference_decode(
        params,
        CFG,
        rows,
        budgets,
        temperature=[t for t, _ in settings],
        top_p=[tp for _, tp in settings],
        seeds=11,
        stop_ids=engine.stop_ids,
        length=32,
    )
    assert [(c.token_ids, c.finish_reason) for c in got] == ref
    assert engine.slots == 4
    long = (prompts[2] * 30)[:300]  # beyond the first call's 256 positions
    (c,) = engine.complete([CompletionRequest(long, 5)])
    ((ids, reason),) = reference_decode(
        params, CFG, [long], 5, stop_ids=engine.stop_ids, length=320
    )
    assert (c.token_ids, c.finish_reason) == (ids, reason)


def test_token_logprobs_equal_full_forward_log_softmax(engine, params):
    rng = np.random.default_rng(2)
    ctx = [rng.integers(8, 400, n).tolist() for n in (1, 7, 12)]
    cont = [rng.integers(8, 400, n).tolist() for n in (5, 1, 9)]
    got = engine.token_logprobs(ctx, cont)
    logits = full_logits(params, [c + k for c, k in zip(ctx, cont)])
    logp = jax.nn.log_softmax(jnp.asarray(logits), axis=-1)
    for i, (c, k) in enumerate(zip(ctx, cont)):
        want = [float(logp[i, len(c) - 1 + t, k[t]]) for t in range(len(k))]
        np.testing.assert_allclose(got[i], want, rtol=0, atol=2e-5)
    with pytest.raises(ValueError, match="one continuation per context"):
        engine.token_logprobs(ctx, cont[:2])


def test_sharded_decode_matches_single_device(params, tok, prompts):
    from zen_code_jax.parallel.mesh import make_mesh

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1})
    sharded = InferenceEngine(params, CFG, tok, mesh, max_batch_size=4, min_batch_bucket=4)
    single = InferenceEngine(params, CFG, tok, max_batch_size=4, min_batch_bucket=4)
    reqs = [CompletionRequest(p, NEW) for p in prompts]
    want = [c.token_ids for c in single.complete(reqs)]
    assert [c.token_ids for c in sharded.complete(reqs)] == want
    decoder = sharded.slot_decoder(256, windows=(256,))  # what complete() builds
    job = Job(reqs, stream=False)
    sharded.scheduler(decoder).run(job)
    assert [r.completion().token_ids for r in job.rows] == want
    # The cache is laid out [L, B, T, KV, Dh] and sharded by the model's logical rules,
    # after every step too (each step donates it and constrains the new one).
    sharding = decoder.cache["k"].sharding
    assert sharding.mesh.shape == mesh.shape
    assert tuple(sharding.spec)[:4] == (None, ("data", "fsdp"), None, "tensor")


def test_bad_inputs_name_the_fix(engine):
    with pytest.raises(ValueError, match="exceeds the model's context"):
        engine.generate(["x"], max_new_tokens=CFG.max_position_embeddings)
    with pytest.raises(ValueError, match="top_p"):
        engine.generate(["x"], max_new_tokens=2, temperature=1.0, top_p=0.0)
    with pytest.raises(TypeError, match="list of strings"):
        engine.generate("x", max_new_tokens=2)
    with pytest.raises(ValueError, match="psm"):
        engine.infill(["a"], ["b"], mode="pms", max_new_tokens=2)


def test_cast_for_inference_is_bit_identical_in_bf16():
    cfg = CFG.replace(dtype="bfloat16")
    params = jax.tree.map(jnp.asarray, random_params(cfg, seed=1, scale=0.2))
    cast = dec.cast_for_inference(params, cfg)
    assert cast["embed"]["embedding"].dtype == jnp.bfloat16
    assert cast["final_norm"]["scale"].dtype == jnp.float32
    toks = jnp.asarray(np.arange(16, dtype=np.int32)[None] * 7)
    fwd = jax.jit(lambda p: Transformer(cfg).apply({"params": p}, toks, toks * 0 + jnp.arange(16)))
    np.testing.assert_array_equal(np.asarray(fwd(params)), np.asarray(fwd(cast)))


def test_slot_scheduler_on_a_mesh_matches_the_reference_decoder(params, tok, prompts):
    """Continuous batching on the scheduler's thread (rows joining between steps, chunked
    prefill, prefix reuse, a sharded cache) decodes exactly the no-cache reference's
    tokens, greedy and sampled. (Was test_slot_scheduler_on_a_mesh_matches_the_batch_decoder,
    when evaluation had a batch decoder of its own.)"""
    from zen_code_jax.parallel.mesh import make_mesh

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1})
    sharded = InferenceEngine(params, CFG, tok, mesh, max_batch_size=4)
    decoder = sharded.slot_decoder(64, chunk=4)
    assert tuple(decoder.cache["k"].sharding.spec)[:4] == (None, ("data", "fsdp"), None, "tensor")
    sch = sharded.scheduler(decoder).start()
    settings = [(0.0, 1.0, 0), (0.9, 0.8, 3), (0.0, 1.0, 0), (1.0, 1.0, 5)]
    reqs = [CompletionRequest(p, NEW, t, tp, (), s, 0) for p, (t, tp, s) in zip(prompts, settings)]
    # The reused prompt extends prompts[1]: its decode starts from a cached prefix.
    extended = prompts[1] + prompts[0][:3]
    reqs.append(CompletionRequest(extended, NEW))
    want = reference_decode(
        params,
        CFG,
        [r.prompt_ids for r in reqs],
        NEW,
        temperature=[r.temperature for r in reqs],
        top_p=[r.top_p for r in reqs],
        seeds=[r.seed for r in reqs],
        sample_index=[0] * len(reqs),
        stop_ids=sharded.stop_ids,
        length=32,
    )
    try:
        jobs = []
        for r in reqs[:4]:
            jobs.append(Job([r]))
            sch.submit(jobs[-1])
        for j in jobs:
            while not j.finished:
                j.events.get(timeout=120)
        reused = sch.stats["prefix_reused_tokens"]
        jobs.append(Job([reqs[4]]))
        sch.submit(jobs[-1])
        while not jobs[-1].finished:
            jobs[-1].events.get(timeout=120)
        assert sch.stats["prefix_reused_tokens"] - reused == len(prompts[1])
    finally:
        sch.shutdown()
    assert [j.rows[0].ids for j in jobs] == [ids for ids, _ in want]
    with pytest.raises(RuntimeError, match="own thread"):
        sch.run(Job(reqs[:1]))
