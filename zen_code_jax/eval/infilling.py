"""HumanEval-Infilling (Fried et al. 2022, InCoder; used by Bavarian et al. 2022), derived from
HumanEval's canonical solutions (the `human-eval-infilling` pip package is empty).

Let `lines = canonical_solution.split("\\n")` (a trailing newline gives a last empty entry;
line numbers count blank lines too, as in the original task ids):

- single-line: for every non-blank line i, the middle is `lines[i] + "\\n"`:
  `SingleLineInfilling/HumanEval/{n}/L{i}` -> 1,033 tasks.
- multi-line: for every pair i <= j of non-blank lines, the middle is lines i..j:
  `MultiLineInfilling/HumanEval/{n}/L{i}_L{j}` -> 5,815 tasks. (Pairs i < j give 4,782;
  only i <= j reproduces the original's 5,815, so one-line spans are included.)

prompt = HumanEval prompt + lines[:i] (each with its newline); suffix = "\\n".join(lines[j+1:]);
so prompt + middle + suffix is exactly the original program. This matches the published
SingleLineInfilling examples character for character; one published MultiLineInfilling example
(HumanEval/0/L0_L7) shows an extra "\\n" after the docstring that our rule does not add
(see docs/eval.md).

Scores: exact match (lines compared with trailing whitespace stripped, trailing blank lines
ignored) and functional correctness (prompt + infill + suffix passes the tests in the sandbox).
For single-line tasks the generation is cut at its first newline (the task is one line).

Two published conventions, each a task of its own whose settings are pinned (never read from
`config.eval`'s decoding fields), because papers mix them and their numbers differ:

- `humaneval_fim_qwen`: Qwen2.5-Coder's "HumanEval-FIM" (QwenLM qwencoder-eval,
  `fim-bench/hm_fim`): the single-line tasks, PSM prompt, greedy, 64 new tokens, no stop
  words; the prediction is the generation's first line (its second when the generation
  starts with "\n" or " \n"), stripped, compared with the stripped target: exact match.
- `humaneval_infilling_openai_{single,multi,random_span,random_span_light}`: OpenAI's
  HumanEval-Infilling (Bavarian et al. 2022): the completion as generated (no stop words, no
  post-processing) runs as `prompt + completion + suffix + "\n" + test + "\n" +
  check(entry_point)`; functional pass@1, and exact match of the completion against the
  file's canonical middle (`normalize`d as above), as the paper's Table 6 has both. Single and multi are derived as above unless the
  task's `dir` option (`eval.task_options = {TASK: dict(dir=...)}`, or `--data`) holds the
  official files; random-span(-light) spans are random draws, so they exist only as the
  official files in that folder. `humaneval_fim_qwen` takes the same option.

Each record carries `decoding`, the exact settings it was scored with.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zen_code_jax.eval.base import (
    EvalContext,
    Task,
    TaskResult,
    apply_limit,
    sample_many,
)
from zen_code_jax.eval.execution import given_texts, python_job, score_programs
from zen_code_jax.eval.humaneval import load_problems
from zen_code_jax.eval.sandbox import SandboxLimits

SINGLE, MULTI = "single", "multi"
EXPECTED_COUNTS = {SINGLE: 1033, MULTI: 5815}


def _split(solution: str) -> list[str]:
    return solution.split("\n")


@functools.lru_cache(maxsize=2)
def _build(kind: str) -> tuple[dict[str, Any], ...]:
    if kind not in (SINGLE, MULTI):
        raise ValueError(f"Unknown infilling kind {kind!r}; use 'single' or 'multi'.")
    out = []
    for p in load_problems():
        n = p["task_id"].split("/")[1]
        lines = _split(p["canonical_solution"])
        nonblank = [i for i, ln in enumerate(lines) if ln.strip()]
        spans = (
            [(i, i) for i in nonblank]
            if kind == SINGLE
            else [(i, j) for a, i in enumerate(nonblank) for j in nonblank[a:]]
        )
        for i, j in spans:
            tid = (
                f"SingleLineInfilling/HumanEval/{n}/L{i}"
                if kind == SINGLE
                else f"MultiLineInfilling/HumanEval/{n}/L{i}_L{j}"
            )
            out.append(
                {
                    "task_id": tid,
                    "prompt": p["prompt"] + "".join(ln + "\n" for ln in lines[:i]),
                    "suffix": "\n".join(lines[j + 1 :]),
                    "canonical_solution": "\n".join(lines[i : j + 1]) + "\n",
                    "test": p["test"],
                    "entry_point": p["entry_point"],
                    "num_lines": j - i + 1,
                }
            )
    return tuple(out)


def load_infilling(kind: str) -> list[dict[str, Any]]:
    """All single- or multi-line infilling tasks, in (problem, span) order."""
    return [dict(t) for t in _build(kind)]


def normalize(text: str) -> str:
    """For exact match: trailing whitespace per line and trailing blank lines dropped."""
    lines = [ln.rstrip() for ln in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def postprocess(task: dict[str, Any], generation: str) -> str:
    """The infill as used for scoring: single-line tasks keep only the first line; every
    infill ends with a newline (the suffix starts a new line)."""
    text = generation
    if task["num_lines"] == 1 and task["task_id"].startswith("Single"):
        text = text.split("\n", 1)[0]
    return text if text.endswith("\n") else text + "\n"


def exact_match(task: dict[str, Any], infill: str) -> bool:
    return normalize(infill) == normalize(task["canonical_solution"])


def build_program(task: dict[str, Any], infill: str) -> str:
    return (
        task["prompt"]
        + infill
        + task["suffix"]
        + "\n\n"
        + task["test"]
        + "\n\n"
        + f"check({task['entry_point']})\n"
    )


def score_infills(
    tasks: Sequence[dict[str, Any]],
    generations: dict[str, list[str]],
    *,
    functional: bool = True,
    limits: SandboxLimits | None = None,
    workers: int = 2,
) -> TaskResult:
    """Exact match (and, if functional, pass rate in the sandbox) of generated infills.

    Metrics are means over all samples: exact_match, functional (= pass@1 over samples).
    """
    keys, infills, ems = [], [], []
    for t in tasks:
        gens = generations.get(t["task_id"])
        if not gens:
            raise ValueError(f"No generations for {t['task_id']}; give each task >= 1 sample.")
        for g in gens:
            inf = postprocess(t, g)
            keys.append(t["task_id"])
            infills.append(inf)
            ems.append(exact_match(t, inf))
    by_id = {t["task_id"]: t for t in tasks}
    if functional:
        progs = [python_job(build_program(by_id[k], inf)) for k, inf in zip(keys, infills)]
        run = score_programs(
            keys, progs, infills, limits=limits or SandboxLimits(), workers=workers
        )
        records = [{k: v for k, v in r.items() if k != "completion"} for r in run.records]
    else:
        records = [{"task_id": k} for k in keys]
    for r, inf, em in zip(records, infills, ems):
        r["infill"] = inf
        r["exact_match"] = em
    metrics = {"exact_match": sum(ems) / len(ems), "num_tasks": float(len(tasks))}
    if functional:
        metrics["functional"] = sum(r["passed"] for r in records) / len(records)
    return TaskResult(metrics, records)


class InfillingTask(Task):
    def __init__(self, kind: str):
        self.kind = kind
        self.name = f"humaneval_infill_{kind}"
        self.description = (
            f"HumanEval-Infilling {kind}-line ({EXPECTED_COUNTS[kind]} tasks): "
            "exact match and functional correctness"
        )

    def problems(self, ctx: EvalContext) -> list[dict[str, Any]]:
        return apply_limit(load_infilling(self.kind), ctx.limit)

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        engine = ctx.need_engine()
        tasks = self.problems(ctx)
        kw = ctx.decode_kwargs()
        stop = ("\n",) if self.kind == SINGLE else ()
        mode = str(ctx.eval_cfg.fim_mode)

        def call(idx: list[int], seed: int) -> list[str]:
            return engine.infill(
                [tasks[i]["prompt"] for i in idx],
                [tasks[i]["suffix"] for i in idx],
                mode=mode,
                stop=stop,
                seed=seed,
                **kw,
            )

        samples = sample_many(ctx, call, len(tasks))
        gens = {t["task_id"]: s for t, s in zip(tasks, samples)}
        return score_infills(tasks, gens, limits=ctx.sandbox_limits(), workers=ctx.workers)


# ----------------------------------------------------------------------------- conventions
# The official files of openai/human-eval-infilling (data/), by benchmark name.
OFFICIAL_FILES = {
    "single-line": "HumanEval-SingleLineInfilling",
    "multi-line": "HumanEval-MultiLineInfilling",
    "random-span": "HumanEval-RandomSpanInfilling",
    "random-span-light": "HumanEval-RandomSpanInfillingLight",
}
OFFICIAL_COUNTS = {
    "single-line": 1033,
    "multi-line": 5815,
    "random-span": 1640,
    "random-span-light": 164,
}
DERIVED = {"single-line": SINGLE, "multi-line": MULTI}
# Qwen's fim-bench truncation (utils.prepare_prompt, codelm_leftright_context): the left
# context keeps its last (max_seq_length - gen_length - right_context_length) tokens, the
# right context its first right_context_length tokens.
QWEN_MAX_SEQ_LENGTH, QWEN_RIGHT_CONTEXT = 2048, 512


@dataclasses.dataclass(frozen=True)
class OfficialFilesOptions:
    """`dir`: the folder of the official files (`OFFICIAL_FILES`); "" = derive single/multi."""

    dir: str = ""


@dataclasses.dataclass(frozen=True)
class Decoding:
    """What a convention pins: decoding, prompt layout, stop words and post-processing.

    Recorded verbatim in every record (`decoding`), so a number can always be traced to the
    settings that produced it; `recipes.py` refuses command-line flags that contradict it.
    """

    convention: str
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    num_samples: int = 1
    fim_mode: str = "psm"
    stop: tuple[str, ...] = ()
    postprocess: str = ""

    def fields(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def official_path(folder: str, benchmark: str) -> Path | None:
    """The official file for `benchmark` in `folder` (.jsonl.gz or .jsonl), or None."""
    if not folder:
        return None
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"The HumanEval-Infilling option dir={folder!r} is not a folder; point it at the "
            "data/ folder of github.com/openai/human-eval-infilling."
        )
    for ext in (".jsonl.gz", ".jsonl"):
        path = root / (OFFICIAL_FILES[benchmark] + ext)
        if path.is_file():
            return path
    return None


def load_benchmark(benchmark: str, folder: str = "") -> tuple[list[dict[str, Any]], str]:
    """(tasks, source) for an OpenAI HumanEval-Infilling benchmark: the official file from
    `folder` when it is there, else (single/multi only) the tasks derived from HumanEval.

    Random-span spans are random draws (Bavarian et al. 2022), so they cannot be derived;
    without the official file this raises with where to get it.
    """
    if benchmark not in OFFICIAL_FILES:
        raise ValueError(f"Unknown benchmark {benchmark!r}; use one of {sorted(OFFICIAL_FILES)}.")
    path = official_path(folder, benchmark)
    if path is None:
        if benchmark not in DERIVED:
            raise FileNotFoundError(
                f"HumanEval-Infilling {benchmark} cannot be derived from HumanEval (its spans "
                f"are random draws): download {OFFICIAL_FILES[benchmark]}.jsonl.gz from "
                "github.com/openai/human-eval-infilling (data/) and set the task's dir option "
                "(eval.task_options.<task>.dir, or --data) to its folder."
            )
        return load_infilling(DERIVED[benchmark]), "derived from HumanEval"
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8")
    rows = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    need = {"task_id", "prompt", "suffix", "canonical_solution", "test", "entry_point"}
    for r in rows:
        if need - set(r):
            raise ValueError(f"{path}: row {r.get('task_id', '?')} lacks {sorted(need - set(r))}.")
    if len(rows) != OFFICIAL_COUNTS[benchmark]:
        raise ValueError(
            f"{path} has {len(rows)} tasks; the official {benchmark} file has "
            f"{OFFICIAL_COUNTS[benchmark]}. Use the unmodified file (eval.limit takes a subset)."
        )
    return rows, str(path)


def truncate_context(
    prefix: str, suffix: str, tok: Any, left_tokens: int, right_tokens: int
) -> tuple[str, str, bool]:
    """Qwen's token-level truncation: the prefix's last `left_tokens` tokens and the suffix's
    first `right_tokens` (decoded back to text). No tokenizer: unchanged."""
    if tok is None:
        return prefix, suffix, False
    cut = False
    ids = tok.encode(prefix)
    if len(ids) > left_tokens:
        prefix, cut = (tok.decode(ids[-left_tokens:]) if left_tokens > 0 else ""), True
    ids = tok.encode(suffix)
    if len(ids) > right_tokens:
        suffix, cut = (tok.decode(ids[:right_tokens]) if right_tokens > 0 else ""), True
    return prefix, suffix, cut


def context_budget(ctx: EvalContext, max_new_tokens: int) -> dict[str, int]:
    """Token budgets of the prompt: Qwen's (2048 total, 512 right context) scaled down to the
    model's context (`eval.context_tokens`, default `train.seq_len`), less 3 FIM sentinels."""
    seq = min(QWEN_MAX_SEQ_LENGTH, ctx.context_tokens())
    right = QWEN_RIGHT_CONTEXT * seq // QWEN_MAX_SEQ_LENGTH
    left = max(0, seq - max_new_tokens - right - 3)
    return {"max_seq_length": seq, "left_context_tokens": left, "right_context_tokens": right}


def qwen_prediction(generation: str) -> str:
    """Qwen's hm_fim post-processing: the first line, or the second when the generation
    starts with "\\n" or " \\n"; stripped."""
    parts = generation.split("\n")
    start = generation.startswith("\n") or generation.startswith(" \n")
    return (parts[1] if start else parts[0]).strip()


def _generate(ctx: EvalContext, tasks: list[dict[str, Any]], dec: Decoding) -> tuple[list, dict]:
    """[task][sample] generations under `dec`, prompts truncated to the context budget;
    returns them and the settings to record."""
    engine = ctx.need_engine()
    budget = context_budget(ctx, dec.max_new_tokens)
    fitted = [
        truncate_context(
            t["prompt"],
            t["suffix"],
            ctx.tokenizer,
            budget["left_context_tokens"],
            budget["right_context_tokens"],
        )
        for t in tasks
    ]
    out: list[list[str]] = [[] for _ in tasks]
    for j in range(dec.num_samples):
        texts = engine.infill(
            [p for p, _, _ in fitted],
            [s for _, s, _ in fitted],
            mode=dec.fim_mode,
            stop=dec.stop,
            seed=ctx.seed + j,
            max_new_tokens=dec.max_new_tokens,
            temperature=dec.temperature,
            top_p=dec.top_p,
        )
        if len(texts) != len(tasks):
            raise RuntimeError(f"completer returned {len(texts)} texts for {len(tasks)} prompts")
        for row, text in zip(out, texts):
            row.append(text)
    settings = {
        **dec.fields(),
        **budget,
        "seed": ctx.seed,
        "limit": ctx.limit,
        "truncated": sum(c for _, _, c in fitted),
    }
    return out, settings


def _limited_benchmark(ctx: EvalContext, benchmark: str, folder: str) -> tuple[list[Any], str]:
    tasks, source = load_benchmark(benchmark, folder)
    return apply_limit(tasks, ctx.limit), source


QWEN_FIM = Decoding(
    convention="Qwen2.5-Coder HumanEval-FIM (qwencoder-eval fim-bench/hm_fim)",
    max_new_tokens=64,
    postprocess="first line (second if the generation starts with '\\n' or ' \\n'), "
    "stripped; exact match against the stripped target",
)


class QwenFimTask(Task):
    name = "humaneval_fim_qwen"
    description = (
        "HumanEval-FIM as Qwen2.5-Coder reports it: 1,033 single-line tasks, greedy, 64 new "
        "tokens, first-line exact match"
    )
    decoding = QWEN_FIM
    options_type = OfficialFilesOptions
    data_option = "dir"

    def problems(self, ctx: EvalContext) -> list[dict[str, Any]]:
        return _limited_benchmark(ctx, "single-line", ctx.options(self).dir)[0]

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        tasks, source = _limited_benchmark(ctx, "single-line", ctx.options(self).dir)
        gens, settings = _generate(ctx, tasks, self.decoding)
        settings["source"] = source
        records, hits = [], []
        for t, samples in zip(tasks, gens):
            for g in samples:
                pred = qwen_prediction(g)
                ok = pred == t["canonical_solution"].strip()
                hits.append(ok)
                records.append(
                    {
                        "task_id": t["task_id"],
                        "generation": g,
                        "prediction": pred,
                        "target": t["canonical_solution"],
                        "exact_match": ok,
                        "decoding": settings,
                    }
                )
        metrics = {"exact_match": sum(hits) / max(1, len(hits)), "num_tasks": float(len(tasks))}
        return TaskResult(metrics, records)


def openai_program(task: dict[str, Any], completion: str) -> str:
    """The program human-eval-infilling's `check_correctness` runs."""
    return (
        task["prompt"]
        + completion
        + task["suffix"]
        + "\n"
        + task["test"]
        + "\n"
        + f"check({task['entry_point']})"
    )


OPENAI_MAX_NEW_TOKENS = {
    "single-line": 128,
    "multi-line": 256,
    "random-span": 256,
    "random-span-light": 256,
}


class OpenAIInfillingTask(Task):
    options_type = OfficialFilesOptions
    data_option = "dir"
    scores_samples = True

    def __init__(self, benchmark: str):
        self.benchmark = benchmark
        self.name = "humaneval_infilling_openai_" + benchmark.replace("-line", "").replace("-", "_")
        self.description = (
            f"OpenAI HumanEval-Infilling {benchmark} ({OFFICIAL_COUNTS[benchmark]} tasks): "
            "functional pass@1 and exact match, greedy, completion used as generated"
        )
        self.decoding = Decoding(
            convention=f"OpenAI HumanEval-Infilling {benchmark} (openai/human-eval-infilling)",
            max_new_tokens=OPENAI_MAX_NEW_TOKENS[benchmark],
            postprocess="none: prompt + completion + suffix + '\\n' + test + '\\n' + "
            "check(entry_point) runs in the sandbox; pass@1",
        )

    def problems(self, ctx: EvalContext) -> list[dict[str, Any]]:
        return _limited_benchmark(ctx, self.benchmark, ctx.options(self).dir)[0]

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        tasks, source = _limited_benchmark(ctx, self.benchmark, ctx.options(self).dir)
        if ctx.samples is not None:  # completions made elsewhere (--samples), as given
            gens, settings = given_texts(self.name, tasks, ctx.samples), {"samples": "given"}
        else:
            gens, settings = _generate(ctx, tasks, self.decoding)
        settings["source"] = source
        settings["sandbox_timeout_s"] = float(ctx.eval_cfg.sandbox_timeout_s)
        return score_openai(tasks, gens, settings, ctx.sandbox_limits(), ctx.workers)


def score_openai(
    tasks: Sequence[dict[str, Any]],
    generations: Sequence[Sequence[str]],
    settings: dict[str, Any],
    limits: SandboxLimits,
    workers: int,
) -> TaskResult:
    """pass@1 of [task][sample] completions, each used as generated (`openai_program`)."""
    keys, progs, comps = [], [], []
    for t, samples in zip(tasks, generations):
        for g in samples:
            keys.append(t["task_id"])
            comps.append(g)
            progs.append(python_job(openai_program(t, g)))
    res = score_programs(keys, progs, comps, limits=limits, workers=workers, ks=(1,))
    middles = {t["task_id"]: t["canonical_solution"] for t in tasks}
    for r, c in zip(res.records, comps):  # exact match against the file's canonical middle
        r["decoding"], r["exact_match"] = settings, normalize(c) == normalize(middles[r["task_id"]])
    em = sum(r["exact_match"] for r in res.records) / max(1, len(res.records))
    metrics = {"pass@1": res.metrics["pass@1"], "exact_match": em}
    return TaskResult({**metrics, "num_tasks": float(len(tasks))}, res.records)


CONVENTION_TASKS = (QwenFimTask(),) + tuple(OpenAIInfillingTask(b) for b in OFFICIAL_FILES)
TASKS = (InfillingTask(SINGLE), InfillingTask(MULTI)) + CONVENTION_TASKS
