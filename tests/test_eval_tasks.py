"""Evaluation tasks scored without a trained model: canonical solutions, fake completers, a
fake corpus. Honesty checks: canonical -> 1.0, empty/wrong -> fail."""

import gzip
import json
import math
import os
import random
import shutil
import types

import numpy as np
import pytest
from conftest import FakeCorpus

from zen_code_jax.config import base_config
from zen_code_jax.data.repo_format import RepoFormat
from zen_code_jax.eval import heldout, humaneval, infilling, mbpp, multipl_e, repo_completion
from zen_code_jax.eval.__main__ import main as cli_main
from zen_code_jax.eval.base import EvalContext
from zen_code_jax.eval.registry import get_task, task_names
from zen_code_jax.eval.runner import run_tasks
from zen_code_jax.eval.sandbox import SandboxLimits

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
LIMITS = SandboxLimits(timeout_s=20.0, memory_mb=1024)  # generous: the CI machine may be busy
WORKERS = 2
# ZCJ_FULL_EVAL=1 runs every infilling task functionally (1,033 + 5,815 programs, ~minutes).
FULL = os.environ.get("ZCJ_FULL_EVAL") == "1"


def cfg(**eval_overrides):
    c = base_config()
    c.train.seq_len = 256
    c.eval.max_new_tokens = 32
    for k, v in eval_overrides.items():
        c.eval[k] = v
    return c


# ----------------------------------------------------------------------------- HumanEval
@pytest.fixture(scope="module")
def problems():
    return humaneval.load_problems()


def test_humaneval_problems_come_from_the_package(problems):
    assert len(problems) == 164
    assert [p["task_id"] for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    assert all({"prompt", "test", "entry_point", "canonical_solution"} <= set(p) for p in problems)


def test_canonical_solutions_pass_all_164(problems):
    """All 164 canonical solutions, in parallel sandbox workers (~10-20 s on 2 cores)."""
    comps = {p["task_id"]: [p["canonical_solution"]] for p in problems}
    res = humaneval.score_completions(problems, comps, limits=LIMITS, workers=WORKERS)
    failed = [(r["task_id"], r["reason"]) for r in res.records if not r["passed"]]
    assert failed == []
    assert res.metrics["pass@1"] == 1.0 and res.metrics["num_problems"] == 164


def test_empty_and_early_exit_completions_score_zero(problems):
    sample = problems[::8]  # 21 problems, deterministic
    empty = humaneval.score_completions(
        sample, {p["task_id"]: [""] for p in sample}, limits=LIMITS, workers=WORKERS
    )
    assert empty.metrics["pass@1"] == 0.0
    # A completion that exits with status 0 before the tests run must not "pass".
    cheat = "    import os\n    os._exit(0)\n"
    sneaky = humaneval.score_completions(
        sample[:6], {p["task_id"]: [cheat] for p in sample[:6]}, limits=LIMITS, workers=WORKERS
    )
    assert sneaky.metrics["pass@1"] == 0.0


def test_subtly_wrong_completions_fail(problems):
    by_id = {p["task_id"]: p for p in problems}
    wrong = {
        "HumanEval/2": "    return round(number % 1.0, 1)\n",
        "HumanEval/4": "    mean = sum(numbers) / len(numbers)\n"
        "    return sum(abs(x - mean) for x in numbers) / (len(numbers) - 1)\n",
        "HumanEval/13": "    while b:\n        a, b = b, a % b\n    return abs(a) + (a == 1)\n",
    }
    res = humaneval.score_completions(
        [by_id[k] for k in wrong],
        {k: [v] for k, v in wrong.items()},
        limits=LIMITS,
        workers=WORKERS,
    )
    assert [r["passed"] for r in res.records] == [False, False, False]
    assert all(r["status"] == "failed" for r in res.records)


def test_stop_sequences_truncate_before_scoring(problems):
    p = problems[2]
    comp = p["canonical_solution"] + "\n\ndef junk():\n    pass\nprint(undefined_name)\n"
    assert humaneval.STOP_SEQUENCES == ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
    res = humaneval.score_completions([p], {p["task_id"]: [comp]}, limits=LIMITS)
    assert res.records[0]["completion"] == p["canonical_solution"] + "\n"
    assert res.metrics["pass@1"] == 1.0


class OracleHumanEval:
    """Returns the canonical body for even seeds and a wrong one for odd seeds."""

    def __init__(self, problems):
        self.by_prompt = {p["prompt"]: p["canonical_solution"] for p in problems}
        self.calls = []

    def generate(self, prompts, *, max_new_tokens, temperature, top_p, stop, seed):
        self.calls.append((len(prompts), tuple(stop), seed, max_new_tokens))
        if seed % 2 == 0:
            return [self.by_prompt[p] + "\nprint('trailing junk')" for p in prompts]
        return ["    return None\n" for _ in prompts]


def test_humaneval_task_with_a_fake_engine_and_num_samples(problems):
    c = cfg(limit=3, num_samples=2, batch_size=2)
    engine = OracleHumanEval(problems)
    res = get_task("humaneval").evaluate(EvalContext(config=c, engine=engine))
    assert res.metrics["pass@1"] == pytest.approx(0.5)  # 1 of 2 samples right per problem
    assert res.metrics["pass@2"] == pytest.approx(1.0)
    assert len(res.records) == 6
    assert {call[1] for call in engine.calls} == {humaneval.STOP_SEQUENCES}
    assert sorted({call[2] for call in engine.calls}) == [0, 1]
    assert [call[0] for call in engine.calls] == [3, 3]  # one call per sample; engine batches


# ----------------------------------------------------------------------------- Infilling
@pytest.fixture(scope="module")
def single():
    return infilling.load_infilling("single")


@pytest.fixture(scope="module")
def multi():
    return infilling.load_infilling("multi")


def test_infilling_counts_and_ids(single, multi, problems):
    assert len(single) == 1033 and len(multi) == 5815
    assert len({t["task_id"] for t in single}) == 1033
    assert len({t["task_id"] for t in multi}) == 5815
    assert single[0]["task_id"] == "SingleLineInfilling/HumanEval/0/L0"
    assert "MultiLineInfilling/HumanEval/0/L0_L7" in {t["task_id"] for t in multi}
    by_id = {p["task_id"]: p for p in problems}
    for t in single + multi:
        p = by_id["HumanEval/" + t["task_id"].split("/")[2]]
        assert (
            t["prompt"] + t["canonical_solution"] + t["suffix"]
            == p["prompt"] + p["canonical_solution"]
        )
        assert t["canonical_solution"].strip()  # a span starts and ends on non-blank lines


def test_single_line_task_matches_the_published_example(single):
    t = {x["task_id"]: x for x in single}["SingleLineInfilling/HumanEval/9/L7"]
    # Published (with 4 spaces for the tab the example file used).
    assert t["canonical_solution"] == "            running_max = max(running_max, n)\n"
    assert t["suffix"] == "\n        result.append(running_max)\n\n    return result\n"
    assert t["prompt"].endswith(
        '    """\n    running_max = None\n    result = []\n\n'
        "    for n in numbers:\n        if running_max is None:\n"
        "            running_max = n\n        else:\n"
    )


def test_canonical_infills_exact_match_everywhere(single, multi):
    for tasks in (single, multi):
        gens = {t["task_id"]: [t["canonical_solution"]] for t in tasks}
        res = infilling.score_infills(tasks, gens, functional=False)
        assert res.metrics["exact_match"] == 1.0


def test_canonical_infills_are_functionally_correct_on_a_sample(single, multi):
    sample = single + multi if FULL else single[::52] + multi[::290]  # 20 + 21 tasks, deterministic
    gens = {t["task_id"]: [t["canonical_solution"]] for t in sample}
    res = infilling.score_infills(sample, gens, limits=LIMITS, workers=WORKERS)
    assert [r["task_id"] for r in res.records if not r["passed"]] == []
    assert res.metrics["functional"] == 1.0 and res.metrics["exact_match"] == 1.0


def test_wrong_infills_fail_and_whitespace_is_forgiven(single):
    t = {x["task_id"]: x for x in single}["SingleLineInfilling/HumanEval/9/L7"]
    wrong = infilling.score_infills([t], {t["task_id"]: ["            pass"]}, limits=LIMITS)
    assert wrong.metrics == {"exact_match": 0.0, "num_tasks": 1.0, "functional": 0.0}
    spaced = "            running_max = max(running_max, n)   \nextra line the model kept going"
    ok = infilling.score_infills([t], {t["task_id"]: [spaced]}, limits=LIMITS)
    assert ok.metrics["exact_match"] == 1.0 and ok.metrics["functional"] == 1.0


class OracleInfill:
    def __init__(self, tasks):
        self.answers = {(t["prompt"], t["suffix"]): t["canonical_solution"] for t in tasks}
        self.calls = []

    def infill(self, prefixes, suffixes, *, mode, stop, seed, max_new_tokens, temperature, top_p):
        self.calls.append((mode, tuple(stop)))
        return [self.answers[(p, s)] for p, s in zip(prefixes, suffixes)]


def test_infilling_task_with_a_fake_engine(multi):
    c = cfg(limit=4, fim_mode="spm")
    engine = OracleInfill(multi[:4])
    res = get_task("humaneval_infill_multi").evaluate(EvalContext(config=c, engine=engine))
    assert res.metrics["exact_match"] == 1.0 and res.metrics["functional"] == 1.0
    assert engine.calls == [("spm", ())]


class ConventionEngine:
    """Answers from a table keyed by the exact (prefix, suffix) the task sends; records the
    decoding arguments of every call."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def infill(self, prefixes, suffixes, *, mode, stop, seed, max_new_tokens, temperature, top_p):
        self.calls.append(
            dict(
                mode=mode,
                stop=tuple(stop),
                seed=seed,
                n=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
            )
        )
        return [self.answers[(p, s)] for p, s in zip(prefixes, suffixes)]


def test_qwen_postprocessing_matches_its_rules():
    assert infilling.qwen_prediction("  x = 1  \ny = 2") == "x = 1"
    assert infilling.qwen_prediction("\n    x = 1\n") == "x = 1"  # starts with "\n": line 2
    assert infilling.qwen_prediction(" \n    x = 1") == "x = 1"  # starts with " \n": line 2
    assert infilling.qwen_prediction("\n\nx = 1") == ""  # only the second line is looked at
    assert infilling.qwen_prediction("") == ""


def test_humaneval_fim_qwen_oracle_passes_wrong_fails_settings_recorded(single):
    c = cfg(limit=6, temperature=0.7, max_new_tokens=5, fim_mode="spm")  # all ignored: pinned
    tasks = single[:6]
    # The oracle answers with Qwen-style noise the post-processing must remove: a leading
    # newline and further lines after the answer.
    oracle = ConventionEngine(
        {(t["prompt"], t["suffix"]): "\n" + t["canonical_solution"] + "more\n" for t in tasks}
    )
    res = get_task("humaneval_fim_qwen").evaluate(EvalContext(config=c, engine=oracle))
    assert res.metrics == {"exact_match": 1.0, "num_tasks": 6.0}
    assert oracle.calls == [
        dict(mode="psm", stop=(), seed=c.seed, n=64, temperature=0.0, top_p=1.0)
    ]
    dec = res.records[0]["decoding"]
    assert (dec["max_new_tokens"], dec["temperature"], dec["num_samples"], dec["fim_mode"]) == (
        64,
        0.0,
        1,
        "psm",
    )
    assert dec["stop"] == () and "Qwen2.5-Coder" in dec["convention"] and dec["limit"] == 6
    assert dec["source"] == "derived from HumanEval"
    # Wrong: the right line one indentation level off still matches (stripped, as Qwen does),
    # a different line does not.
    answers = {(t["prompt"], t["suffix"]): "    " + t["canonical_solution"] for t in tasks}
    answers[(tasks[0]["prompt"], tasks[0]["suffix"])] = "    return None\n"
    res = get_task("humaneval_fim_qwen").evaluate(
        EvalContext(config=c, engine=ConventionEngine(answers))
    )
    assert res.metrics["exact_match"] == pytest.approx(5 / 6)
    assert [r["exact_match"] for r in res.records] == [False] + [True] * 5


def test_qwen_truncation_budget_and_token_cut():
    ctx = EvalContext(config=cfg())  # train.seq_len 256
    assert infilling.context_budget(ctx, 64) == {
        "max_seq_length": 256,
        "left_context_tokens": 256 - 64 - 64 - 3,
        "right_context_tokens": 64,
    }
    big = cfg(context_tokens=4096)
    # At >= 2048 tokens: exactly Qwen's 2048 - 64 - 512 (less the 3 FIM sentinels).
    assert infilling.context_budget(EvalContext(config=big), 64) == {
        "max_seq_length": 2048,
        "left_context_tokens": 1469,
        "right_context_tokens": 512,
    }
    tok = CharTokenizer()
    assert infilling.truncate_context("abcdef", "uvwxyz", tok, 2, 3) == ("ef", "uvw", True)
    assert infilling.truncate_context("ab", "uv", tok, 2, 3) == ("ab", "uv", False)


def test_humaneval_infilling_openai_oracle_passes_wrong_fails(single, multi):
    c = cfg(limit=3, temperature=0.9)
    for name, tasks in (
        ("humaneval_infilling_openai_single", single),
        ("humaneval_infilling_openai_multi", multi),
    ):
        oracle = ConventionEngine(
            {(t["prompt"], t["suffix"]): t["canonical_solution"] for t in tasks[:3]}
        )
        ctx = EvalContext(config=c, engine=oracle)
        res = get_task(name).evaluate(ctx)
        assert res.metrics == {"pass@1": 1.0, "exact_match": 1.0, "num_tasks": 3.0}, name
        want = 128 if name.endswith("single") else 256
        assert oracle.calls == [
            dict(mode="psm", stop=(), seed=c.seed, n=want, temperature=0.0, top_p=1.0)
        ]
        assert res.records[0]["decoding"]["postprocess"].startswith("none")
    # Used as generated: a right line followed by more text is not cut (unlike
    # humaneval_infill_single), so it fails; a plain wrong line fails too.
    t = {x["task_id"]: x for x in single}["SingleLineInfilling/HumanEval/9/L7"]
    kept_going = t["canonical_solution"] + "        return []\n"  # right line, then more
    # Exact match is against the file's canonical middle, trailing whitespace forgiven.
    padded = t["canonical_solution"].rstrip("\n") + "   \n\n"
    for answers, want, em in (
        ([t["canonical_solution"]], 1.0, 1.0),
        ([padded], 1.0, 1.0),
        ([kept_going], 0.0, 0.0),
        (["            pass\n"], 0.0, 0.0),
        ([t["canonical_solution"], "x"], 0.5, 0.5),
    ):
        res = infilling.score_openai([t], [answers], {"k": 1}, LIMITS, 1)
        assert res.metrics["pass@1"] == want, answers
        assert res.metrics["exact_match"] == em, answers
        assert res.records[0]["decoding"] == {"k": 1}


def write_official(folder, benchmark, rows, gz=True):
    path = folder / (infilling.OFFICIAL_FILES[benchmark] + (".jsonl.gz" if gz else ".jsonl"))
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_random_span_needs_the_official_files(tmp_path, single, monkeypatch):
    c = cfg(limit=2)
    with pytest.raises(FileNotFoundError, match="cannot be derived.*task_options.<task>.dir"):
        get_task("humaneval_infilling_openai_random_span").problems(EvalContext(config=c))
    # An official-format file (here: 164 rows built from single-line tasks, ids renamed) is
    # read from the task's dir option; its count is checked.
    rows = [
        dict(
            {k: t[k] for k in ("prompt", "suffix", "canonical_solution", "test", "entry_point")},
            task_id=f"RandomSpanInfillingLight/{i}",
        )
        for i, t in enumerate(single[:164])
    ]
    write_official(tmp_path, "random-span-light", rows)
    c.eval.task_options = {
        name: {"dir": str(tmp_path)}
        for name in (
            "humaneval_infilling_openai_random_span",
            "humaneval_infilling_openai_random_span_light",
        )
    }
    task = get_task("humaneval_infilling_openai_random_span_light")
    assert [p["task_id"] for p in task.problems(EvalContext(config=c))] == [
        "RandomSpanInfillingLight/0",
        "RandomSpanInfillingLight/1",
    ]
    oracle = ConventionEngine({(r["prompt"], r["suffix"]): r["canonical_solution"] for r in rows})
    res = task.evaluate(EvalContext(config=c, engine=oracle))
    assert res.metrics["pass@1"] == 1.0
    assert res.records[0]["decoding"]["source"].endswith(
        "HumanEval-RandomSpanInfillingLight.jsonl.gz"
    )
    write_official(tmp_path, "random-span", rows[:10], gz=False)
    with pytest.raises(ValueError, match="has 10 tasks; the official random-span file has 1640"):
        get_task("humaneval_infilling_openai_random_span").problems(EvalContext(config=c))
    c.eval.task_options.humaneval_infilling_openai_random_span_light.dir = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        task.problems(EvalContext(config=c))


def test_recipes_pin_their_settings_and_refuse_conflicts(tmp_path, monkeypatch, capsys):
    from zen_code_jax.eval import recipes

    assert recipes.resolve("humaneval_fim_qwen", [], {}) == ["humaneval_fim_qwen"]
    assert recipes.resolve(None, ["humaneval_infill_single"], {"temperature": 0.2}) == [
        "humaneval_infill_single"
    ]  # the classic task follows config.eval
    for flags, msg in (
        (
            {"temperature": 0.2},
            r"--temperature=0.2 \(task humaneval_fim_qwen "
            r"pins temperature=0.0\)",
        ),
        ({"max_new_tokens": 32}, "pins max_new_tokens=64"),
        ({"num_samples": 5}, "pins num_samples=1"),
        ({"tasks": "humaneval"}, "fixes its tasks.*drop --tasks"),
    ):
        with pytest.raises(ValueError, match=msg):
            recipes.resolve("humaneval_fim_qwen", [], flags)
    with pytest.raises(ValueError, match="Valid recipes: humaneval_fim_qwen"):
        recipes.resolve("qwen", [], {})
    with pytest.raises(ValueError, match="pins temperature"):  # the task name alone pins too
        recipes.resolve(None, ["humaneval_fim_qwen"], {"temperature": 0.2})
    with pytest.raises(SystemExit, match="pins max_new_tokens=64"):
        cli_main([f"--run_dir={tmp_path}", "--recipe=humaneval_fim_both", "--max_new_tokens=8"])
    # The CLI hands the recipe's tasks to the runner.
    from zen_code_jax.eval import __main__ as cli

    seen = {}
    monkeypatch.setattr(
        cli,
        "score_checkpoint",
        lambda run, names, overrides, workdir: seen.update(names=names, o=overrides) or {},
    )
    cli_main(
        [
            f"--run_dir={tmp_path}",
            "--recipe=humaneval_infilling_openai",
            "--limit=3",
            f"--humaneval_infill_dir={tmp_path}",
        ]
    )
    capsys.readouterr()
    assert seen == {
        "names": ["humaneval_infilling_openai_single", "humaneval_infilling_openai_multi"],
        "o": {
            "eval.limit": 3,
            "eval.task_options.humaneval_infilling_openai_single.dir": str(tmp_path),
            "eval.task_options.humaneval_infilling_openai_multi.dir": str(tmp_path),
        },
    }


# ----------------------------------------------------------------------------- held-out
class CharTokenizer:
    """Byte-free char tokenizer: one token per character (ASCII test data -> 1 token/byte)."""

    eot_id, fim_prefix_id, fim_middle_id, fim_suffix_id, pad_id = 0, 1, 2, 3, 4

    def encode(self, text):
        return [5 + ord(ch) for ch in text]

    def decode(self, ids, skip_special=False):
        return "".join(chr(i - 5) for i in ids if i >= 5)


class OracleCorpusEngine:
    """Knows the corpus: infills/next lines are right (or wrong if `wrong`); log-probs are
    log(1/2) per token under a FIM prompt and log(1/4) otherwise."""

    def __init__(self, corpus, tok, wrong=False):
        src = corpus.source("heldout")
        self.contents = [src[i]["content"] for i in range(len(src))]
        self.by_path = {}
        self.tok, self.wrong = tok, wrong
        self.max_prompt = 0
        self.max_scored = 0

    def infill(self, prefixes, suffixes, *, mode, stop, seed, max_new_tokens, temperature, top_p):
        from zen_code_jax.data.fim import fim_prompt_tokens

        out = []
        for p, s in zip(prefixes, suffixes):
            self.max_prompt = max(self.max_prompt, len(fim_prompt_tokens(p, s, mode, self.tok)))
            hits = [c for c in self.contents if p in c and c.find(s, c.find(p) + len(p)) >= 0]
            c = hits[0]
            i = c.find(p) + len(p)
            mid = c[i : c.find(s, i)] if s else c[i:]
            out.append("zzz\n" if self.wrong else mid)
        return out

    def generate(self, prompts, *, max_new_tokens, temperature, top_p, stop, seed):
        out = []
        for p in prompts:
            self.max_prompt = max(self.max_prompt, len(self.tok.encode(p)))
            tail = p[p.rfind("# File: ") :].split("\n", 1)[1]
            c = next(c for c in self.contents if tail in c)
            nxt = c[c.find(tail) + len(tail) :].split("\n", 1)[0]
            out.append(nxt[:-2] if self.wrong else nxt + "\nmore")
        return out

    def generate_ids(self, prompt_ids, **kw):
        return self.generate([self.tok.decode(ids) for ids in prompt_ids], **kw)

    def token_logprobs(self, contexts, continuations):
        self.max_scored = max(len(c) + len(t) for c, t in zip(contexts, continuations))
        return [
            np.full(len(t), math.log(0.5 if self.tok.fim_middle_id in c else 0.25), np.float32)
            for c, t in zip(contexts, continuations)
        ]


def test_heldout_fim_exact_match_and_middle_bpb():
    corpus, tok = FakeCorpus.synthetic(), CharTokenizer()
    c = cfg(limit=12, context_tokens=400)
    engine = OracleCorpusEngine(corpus, tok)
    ctx = EvalContext(config=c, engine=engine, tokenizer=tok, corpus=lambda: corpus)
    res = get_task("heldout_fim").evaluate(ctx)
    m = res.metrics
    for kind in ("single", "multi"):
        assert m[f"{kind}/exact_match"] == 1.0
        assert m[f"{kind}/middle_bpb_fim"] == pytest.approx(1.0)  # 1 bit/token, 1 token/byte
        assert m[f"{kind}/middle_bpb_prefix_only"] == pytest.approx(2.0)
        assert m[f"{kind}/num_samples"] == 12
    assert 300 < engine.max_prompt <= 400 - 32  # prompts fit the context minus the generation
    assert engine.max_scored <= 400  # teacher-forced context + middle fit the context
    bad = get_task("heldout_fim").evaluate(
        EvalContext(
            config=c,
            engine=OracleCorpusEngine(corpus, tok, wrong=True),
            tokenizer=tok,
            corpus=corpus,
        )
    )
    assert bad.metrics["single/exact_match"] == 0.0


class LayoutEngine(OracleCorpusEngine):
    """Log-probs that depend on the FIM layout (SPM contexts start prefix, suffix) and on
    the context length, so the other-layout metric must use exactly the right contexts."""

    def token_logprobs(self, contexts, continuations):
        tok, out = self.tok, []
        for c, t in zip(contexts, continuations):
            spm = len(c) > 1 and (c[0], c[1]) == (tok.fim_prefix_id, tok.fim_suffix_id)
            base = 3.0 if spm else 1.0
            out.append(
                np.array([-(base + (len(c) + k) % 5 / 7) for k in range(len(t))], np.float32)
            )
        return out


def _other_mode_reference(ctx):
    """An independent copy of the computation train/loop.py did after the task ran (the
    FIM ablation's numbers must not move): the other layout's middle bits per byte."""
    from zen_code_jax.data.fim import fim_prompt_tokens

    mode = "spm" if str(ctx.eval_cfg.fim_mode) == "psm" else "psm"
    tok, budget = ctx.tokenizer, ctx.context_tokens()
    n = ctx.limit if ctx.limit > 0 else heldout.DEFAULT_SAMPLES
    src = ctx.get_corpus().source("heldout")
    out = {}
    for kind in ("single", "multi"):
        exs = heldout.sample_fim_examples(src, kind, n, ctx.seed)
        fitted = [heldout.fit_fim(e, tok, budget, with_middle=True) for e in exs]
        contexts = [fim_prompt_tokens(p, s, mode, tok) for p, s in fitted]
        mids = [tok.encode(e["canonical_solution"]) for e in exs]
        nats = sum(-float(np.sum(lp)) for lp in ctx.engine.token_logprobs(contexts, mids))
        nbytes = sum(len(e["canonical_solution"].encode("utf-8")) for e in exs)
        out[f"{kind}/middle_bpb_{mode}"] = heldout.bits_per_byte(nats, nbytes)
    return out


@pytest.mark.parametrize("mode, other", [("psm", "spm"), ("spm", "psm")])
def test_heldout_fim_reports_the_other_layout_too(mode, other):
    """heldout_fim's summary holds both FIM layouts' middle loss, bit for bit the numbers
    of an independent computation, and the other layout really is scored differently."""
    corpus, tok = FakeCorpus.synthetic(), CharTokenizer()
    c = cfg(limit=6, context_tokens=300, fim_mode=mode)
    ctx = EvalContext(config=c, engine=LayoutEngine(corpus, tok), tokenizer=tok, corpus=corpus)
    m = get_task("heldout_fim").evaluate(ctx).metrics
    ref = _other_mode_reference(ctx)
    assert set(ref) == {f"single/middle_bpb_{other}", f"multi/middle_bpb_{other}"}
    for k, v in ref.items():
        assert m[k] == v  # exact
    assert f"single/middle_bpb_{mode}" not in m
    for kind in ("single", "multi"):  # the engine makes SPM contexts cost more
        spm_bpb = m[f"{kind}/middle_bpb_{'fim' if mode == 'spm' else 'spm'}"]
        psm_bpb = m[f"{kind}/middle_bpb_{'fim' if mode == 'psm' else 'psm'}"]
        assert spm_bpb > psm_bpb


def test_heldout_sampling_is_deterministic_and_line_aligned():
    corpus = FakeCorpus.synthetic()
    a = heldout.sample_fim_examples(corpus.records, "multi", 20, seed=3)
    b = heldout.sample_fim_examples(corpus.records, "multi", 20, seed=3)
    d = heldout.sample_fim_examples(corpus.records, "multi", 20, seed=4)
    assert a == b and a != d
    for e in a:
        full = corpus.records[e["record"]]["content"]
        assert e["prompt"] + e["canonical_solution"] + e["suffix"] == full
        assert e["prompt"].endswith("\n") and 2 <= e["num_lines"] <= 5


def test_heldout_loss_counts_every_token_once():
    corpus, tok = FakeCorpus.synthetic(n_repos=2), CharTokenizer()
    c = cfg(context_tokens=64)
    res = get_task("heldout_loss").evaluate(
        EvalContext(config=c, engine=OracleCorpusEngine(corpus, tok), tokenizer=tok, corpus=corpus)
    )
    total_bytes = sum(len(r["content"]) for r in corpus.records)
    assert res.metrics["tokens"] == total_bytes == sum(r["bytes"] for r in res.records)
    assert res.metrics["loss"] == pytest.approx(math.log(4.0), rel=1e-6)
    assert res.metrics["bits_per_byte"] == pytest.approx(2.0, rel=1e-6)
    ids = list(range(1000))
    pairs = heldout.chunk_for_loss(ids, bos=-1, window=64)
    assert sum((t for _, t in pairs), []) == ids
    assert all(len(c) + len(t) <= 64 for c, t in pairs)
    assert all(c == ids[t[0] - len(c) : t[0]] for c, t in pairs[1:])  # true history
    # The task's `files` option caps the files scored, independently of eval.limit.
    n_files = len(res.records)
    capped = get_task("heldout_loss").problems(
        EvalContext(
            config=cfg(limit=50, task_options={"heldout_loss": {"files": 2}}),
            tokenizer=tok,
            corpus=corpus,
        )
    )
    assert n_files > 2 and len(capped) == 2
    assert len(get_task("heldout_loss").problems(
        EvalContext(config=cfg(limit=3), tokenizer=tok, corpus=corpus)
    )) == min(3, n_files)  # fmt: skip


def test_repo_completion_settings_and_scores():
    corpus, tok = FakeCorpus.synthetic(), CharTokenizer()
    c = cfg(limit=10, context_tokens=400)
    engine = OracleCorpusEngine(corpus, tok)
    ctx = EvalContext(config=c, engine=engine, tokenizer=tok, corpus=corpus)
    res = get_task("repo_completion").evaluate(ctx)
    for s in repo_completion.SETTINGS:
        assert res.metrics[f"{s}/exact_match"] == 1.0
        assert res.metrics[f"{s}/edit_similarity"] == 1.0
    assert engine.max_prompt <= 400 - 32
    ex = repo_completion.sample_examples(corpus, 3, seed=0)[0]
    fmt = RepoFormat("report")

    def prompt(setting, n):
        return tok.decode(repo_completion.build_prompt(ex, setting, fmt, tok, n))

    cross, infile = prompt("cross_file_first", 10_000), prompt("in_file", 10_000)
    assert cross.count("# File: ") == 3 and infile.count("# File: ") == 1
    assert cross.endswith(infile) and infile.startswith(f"# File: {ex['path']}\n")
    short = prompt("cross_file_first", 200)
    assert short.startswith("# File: ") and f"# File: {ex['path']}\n" in short
    assert len(tok.encode(short)) <= 200
    wrong = get_task("repo_completion").evaluate(
        EvalContext(
            config=c,
            engine=OracleCorpusEngine(corpus, tok, wrong=True),
            tokenizer=tok,
            corpus=corpus,
        )
    )
    assert wrong.metrics["in_file/exact_match"] == 0.0
    assert 0.8 < wrong.metrics["in_file/edit_similarity"] < 1.0


def test_heldout_tasks_on_a_real_prepared_corpus(tmp_path):
    """The data engineer's PreparedCorpus and Tokenizer behind the held-out tasks."""
    from zen_code_jax.data.prepare import prepare_corpus

    rng = random.Random(1)
    for r in range(8):
        for f in range(3):
            p = tmp_path / "repos" / f"repo_{r}" / "pkg" / f"mod_{f}.py"
            p.parent.mkdir(parents=True, exist_ok=True)
            body = [f"from pkg import mod_{(f + 1) % 3}", ""]
            for k in range(12):
                body += [
                    f"def fn_{r}_{f}_{k}(x):",
                    f"    return x * {rng.randrange(10**6)} + {k}",
                    "",
                ]
            p.write_text("\n".join(body))
    c = cfg(limit=6, context_tokens=512)
    c.data.source, c.data.path, c.data.heldout_fraction = "dir", str(tmp_path / "repos"), 0.5
    c.data.num_prepare_processes = 1
    corpus = prepare_corpus(c.data, 300, tmp_path / "work")
    assert len(corpus.source("heldout")) > 0
    tok = corpus.tokenizer
    engine = OracleCorpusEngine(corpus, tok)
    ctx = EvalContext(config=c, engine=engine, tokenizer=tok, corpus=corpus)
    fim = get_task("heldout_fim").evaluate(ctx).metrics
    assert fim["single/exact_match"] == 1.0 and fim["multi/exact_match"] == 1.0
    # Same middle tokens under both prompts: log(1/4) vs log(1/2) per token -> ratio 2.
    assert fim["single/middle_bpb_prefix_only"] == pytest.approx(2 * fim["single/middle_bpb_fim"])
    loss = get_task("heldout_loss").evaluate(ctx).metrics
    assert loss["loss"] == pytest.approx(math.log(4.0), rel=1e-6)
    repo = get_task("repo_completion").evaluate(ctx).metrics
    assert repo["cross_file_first/exact_match"] == 1.0 and repo["in_file/exact_match"] == 1.0
    assert engine.max_prompt <= 512 - 32


def _lev_brute(a, b):
    if not a or not b:
        return len(a) + len(b)
    return min(
        _lev_brute(a[1:], b) + 1,
        _lev_brute(a, b[1:]) + 1,
        _lev_brute(a[1:], b[1:]) + (a[0] != b[0]),
    )


def test_levenshtein_against_brute_force():
    rng = random.Random(0)
    for _ in range(60):
        a = "".join(rng.choice("abc") for _ in range(rng.randint(0, 6)))
        b = "".join(rng.choice("abc") for _ in range(rng.randint(0, 6)))
        assert repo_completion.levenshtein(a, b) == _lev_brute(a, b)
    assert repo_completion.edit_similarity("  abcd ", "abce") == pytest.approx(0.75)
    assert repo_completion.edit_similarity("", "") == 1.0


# ----------------------------------------------------------------------------- MBPP / MultiPL-E
def test_mbpp_fixtures_canonical_pass_and_wrong_fail():
    probs = mbpp.load_problems(os.path.join(FIXTURES, "mbpp_small.jsonl")) + mbpp.load_problems(
        os.path.join(FIXTURES, "mbpp_sanitized_small.jsonl")
    )
    assert [p["task_id"] for p in probs] == ["MBPP/901", "MBPP/902", "MBPP/903", "MBPP/904"]
    assert (
        probs[0]["prompt"].startswith('"""\nWrite a function')
        and "assert min_of_two(1, 2)" in probs[0]["prompt"]
    )
    ok = mbpp.score_completions(
        probs,
        {p["task_id"]: [p["canonical_solution"]] for p in probs},
        limits=LIMITS,
        workers=WORKERS,
    )
    assert ok.metrics["pass@1"] == 1.0
    bad = mbpp.score_completions(
        probs,
        {p["task_id"]: [p["canonical_solution"].replace("return", "return 1 +")] for p in probs},
        limits=LIMITS,
        workers=WORKERS,
    )
    assert bad.metrics["pass@1"] == 0.0
    with pytest.raises(FileNotFoundError, match=r"eval\.task_options\.mbpp\.path"):
        mbpp.load_problems("")
    with pytest.raises(ValueError, match="test_list"):
        mbpp.normalize_row({"task_id": 1, "text": "x", "code": "y"})


def test_multipl_e_fixtures():
    probs = multipl_e.load_problems(os.path.join(FIXTURES, "multipl_e_small.jsonl"))
    if shutil.which("node") is None:  # the JavaScript row needs node; Python rows always run
        probs = [p for p in probs if p["language"] != "javascript"]
    assert {p["language"] for p in probs} >= {"python"}
    ok = multipl_e.score_completions(
        probs,
        {p["task_id"]: [p["canonical_solution"] + "\n#junk after a stop token"] for p in probs},
        limits=LIMITS,
        workers=WORKERS,
    )
    assert ok.metrics["pass@1"] == 1.0, [r["stderr"] for r in ok.records]
    bad = multipl_e.score_completions(
        probs,
        {
            p["task_id"]: [
                p["canonical_solution"].replace("x + y", "x - y").replace("s[::-1]", "s")
            ]
            for p in probs
        },
        limits=LIMITS,
        workers=WORKERS,
    )
    assert bad.metrics["pass@1"] == 0.0
    with pytest.raises(ValueError, match="no sandbox interpreter"):
        multipl_e.normalize_row({"name": "x", "language": "cobol", "prompt": "", "tests": ""})


def test_multipl_e_options_and_one_generate_call_per_stop_list():
    path = os.path.join(FIXTURES, "multipl_e_small.jsonl")
    probs = multipl_e.load_problems(path)
    answer = {p["prompt"]: p["canonical_solution"] for p in probs}
    calls = []

    class Oracle:
        def generate(self, prompts, stop=(), **kw):
            calls.append((tuple(prompts), tuple(stop)))
            return [answer[p] for p in prompts]

    c = cfg()
    c.eval.task_options = {"multipl_e": {"path": path, "languages": ("py",)}}
    task = get_task("multipl_e")
    assert (
        len(task.problems(EvalContext(config=cfg(task_options={"multipl_e": {"path": path}})))) == 3
    )
    py = [p for p in probs if p["language"] == "python"]
    res = task.evaluate(EvalContext(config=c, engine=Oracle()))
    assert res.metrics["pass@1"] == 1.0 and res.metrics["num_problems"] == len(py) == 2
    stops = {}
    for p in py:
        stops.setdefault(tuple(p["stop_tokens"]), []).append(p["prompt"])
    assert calls == [(tuple(ps), stop) for stop, ps in stops.items()]
    c.eval.task_options.multipl_e.languages = ("py", "cobol")
    with pytest.raises(ValueError, match=r"unknown codes \['cobol'\]; supported: "):
        task.problems(EvalContext(config=c))


# ----------------------------------------------------------------------------- registry, runner, CLI
def test_registry_and_unknown_task_error():
    """The registry is consistent (every name maps to a module whose `TASKS` defines it,
    and every task a registered module defines is registered), and the report's tasks are
    there. Adding a task needs no edit here: a registry line that names the wrong module,
    or a module task left out of it, fails this test."""
    import importlib

    from zen_code_jax.eval.registry import TASK_MODULES

    for name, module in TASK_MODULES.items():
        assert get_task(name).name == name
        assert type(get_task(name)).__module__ == module, name
    for module in set(TASK_MODULES.values()):
        defined = {t.name for t in importlib.import_module(module).TASKS}
        assert defined <= set(TASK_MODULES), (module, defined - set(TASK_MODULES))
    assert {
        "humaneval",
        "humaneval_infill_single",
        "humaneval_infill_multi",
        "humaneval_fim_qwen",
        "humaneval_infilling_openai_single",
        "humaneval_infilling_openai_multi",
        "humaneval_infilling_openai_random_span",
        "humaneval_infilling_openai_random_span_light",
        "heldout_fim",
        "heldout_loss",
        "repo_completion",
        "mbpp",
        "multipl_e",
    } <= set(task_names())
    with pytest.raises(ValueError, match="Valid tasks: .*heldout_fim, heldout_loss, humaneval"):
        get_task("humaneva")


def test_run_tasks_writes_records_summary_and_tensorboard(tmp_path, problems):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    corpus, tok = FakeCorpus.synthetic(n_repos=2), CharTokenizer()
    c = cfg(limit=2, context_tokens=128)

    class Both(OracleCorpusEngine):
        def generate(self, prompts, **kw):
            return OracleHumanEval(problems).generate(prompts, **kw)

    ctx = EvalContext(config=c, engine=Both(corpus, tok), tokenizer=tok, corpus=corpus)
    summaries = run_tasks(ctx, ["humaneval", "heldout_loss"], tmp_path, step=7, log=lambda s: None)
    assert summaries["humaneval"]["pass@1"] == 1.0
    lines = (tmp_path / "eval" / "humaneval.jsonl").read_text().splitlines()
    assert [json.loads(x)["task_id"] for x in lines] == ["HumanEval/0", "HumanEval/1"]
    assert (tmp_path / "eval" / "heldout_loss.jsonl").exists()
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["heldout_loss"]["step"] == 7
    tags = {}
    for f in tmp_path.glob("events.out.tfevents.*"):
        for ev in EventFileLoader(str(f)).Load():
            for v in ev.summary.value:
                # The loader migrates simple_value scalars to tensors.
                val = v.tensor.float_val[0] if v.HasField("tensor") else v.simple_value
                tags[v.tag] = (ev.step, val)
    assert tags["eval/humaneval/pass@1"] == (7, 1.0)
    assert tags["eval/heldout_loss/bits_per_byte"][1] == pytest.approx(2.0, rel=1e-6)


def test_cli_export(capsys):
    cli_main(["--export=humaneval"])
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) == 164 and {"task_id", "prompt"} <= set(rows[0])
    cli_main(["--export=humaneval_infill_single", "--limit=3"])
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and {"task_id", "prompt", "suffix", "canonical_solution"} <= set(rows[0])
    cli_main(["--export=mbpp", f"--data={os.path.join(FIXTURES, 'mbpp_small.jsonl')}"])
    assert len(capsys.readouterr().out.splitlines()) == 3
    with pytest.raises(SystemExit, match="needs --run_dir"):
        cli_main(["--export=heldout_loss"])


def test_cli_set_sets_eval_keys_and_task_options_and_refuses_the_rest(capsys):
    mbpp = os.path.join(FIXTURES, "mbpp_small.jsonl")
    cli_main(["--export=mbpp", f"--set=eval.task_options.mbpp.path={mbpp}", "--set=eval.limit=2"])
    assert len(capsys.readouterr().out.splitlines()) == 2
    with pytest.raises(SystemExit, match="Unknown config key 'eval.bogus'"):
        cli_main(["--export=humaneval", "--set=eval.bogus=1"])
    with pytest.raises(SystemExit, match=r"unknown option\(s\) \['pth'\]; mbpp takes \['path'"):
        cli_main(["--export=mbpp", f"--set=eval.task_options.mbpp.pth={mbpp}"])
    with pytest.raises(SystemExit, match="other config groups belong to training"):
        cli_main(["--export=humaneval", "--set=train.steps=1"])
    with pytest.raises(SystemExit, match="mbpp task needs"):  # missing data: one line
        cli_main(["--export=mbpp"])


def test_score_checkpoint_and_cli_wiring(tmp_path, monkeypatch, capsys):
    """`--run_dir` scoring: checkpoint restore, engine, overrides, corpus path, outputs.

    The checkpoint and engine are stand-ins here (their own tests cover them); this checks
    that the runner passes the right things between them.
    """
    from zen_code_jax.eval import runner

    run = tmp_path / "exp" / "arm"
    (run / "checkpoints" / "40").mkdir(parents=True)
    tok = CharTokenizer()
    config = cfg()
    seen = {}

    mc = types.SimpleNamespace(vocab_size=512)

    class FakeEngine(OracleCorpusEngine):
        model_cfg, tokenizer = mc, tok
        repo_format = RepoFormat("report")

        @classmethod
        def from_run(cls, spec, *, max_batch_size=16):
            seen["engine"] = (spec, max_batch_size)
            engine = cls(FakeCorpus.synthetic(n_repos=2), tok)
            engine.facts = types.SimpleNamespace(step=40)
            return engine

    facts = types.SimpleNamespace(config=config)
    monkeypatch.setattr(runner, "run_facts", lambda d: facts)
    monkeypatch.setattr(runner, "InferenceEngine", FakeEngine)
    monkeypatch.setattr(
        runner, "corpus_loader", lambda c, v, w: seen.setdefault("corpus", []).append((v, w))
    )
    mbpp_path = os.path.join(FIXTURES, "mbpp_small.jsonl")
    cli_main([f"--run_dir={run}", "--tasks=mbpp", f"--data={mbpp_path}", "--limit=2"])
    out = json.loads(capsys.readouterr().out)
    assert out["mbpp"]["pass@1"] == 0.0  # the fake engine's generate is not an MBPP solver
    assert out["mbpp"]["num_problems"] == 2 and config.eval.limit == 2
    assert seen["engine"] == (run, config.eval.batch_size)
    assert seen["corpus"] == [(512, tmp_path.resolve())]  # WORKDIR = RUN/../..
    assert len((run / "eval" / "mbpp.jsonl").read_text().splitlines()) == 2
    assert json.loads((run / "eval" / "summary.json").read_text())["mbpp"]["step"] == 40
    with pytest.raises(ValueError, match="Valid tasks"):
        runner.score_checkpoint(run, ["nope"])
    with pytest.raises(ValueError, match="Unknown config key"):
        runner.score_checkpoint(run, ["mbpp"], overrides={"eval.limt": 3})
    other = tmp_path / "elsewhere"
    cli_main([f"--run_dir={run}", f"--workdir={other}", "--tasks=mbpp", f"--data={mbpp_path}"])
    capsys.readouterr()
    assert seen["corpus"][-1] == (512, str(other))  # --workdir: the root holding cache/
    with pytest.raises(SystemExit, match="--run_dir"):
        cli_main([f"--workdir={run}"])  # --workdir is the root of many runs, not one run
