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
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from zen_code_jax.eval.base import (
    EvalContext,
    Task,
    TaskResult,
    apply_limit,
    sample_many,
)
from zen_code_jax.eval.humaneval import load_problems, python_job, score_programs
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


TASKS = (InfillingTask(SINGLE), InfillingTask(MULTI))
