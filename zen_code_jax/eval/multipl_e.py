"""MultiPL-E (Cassano et al. 2022) from a user-supplied JSONL in the published format.

Each line is one translated problem: name, language, prompt, tests, stop_tokens (and
doctests, original, prompt_terminology, which we ignore). The program
`prompt + completion + "\\n" + tests` runs in the sandbox with the language's interpreter
(see `sandbox.LANGUAGES`); a test suite passes when the program exits 0. MultiPL-E ships no
reference solutions; a row may carry an extra `canonical_solution` field (our fixtures do,
so tests can check that a correct program passes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zen_code_jax.eval.base import (
    EvalContext,
    Task,
    TaskResult,
    apply_limit,
    sample_many,
    truncate_at_stops,
)
from zen_code_jax.eval.humaneval import score_programs
from zen_code_jax.eval.mbpp import read_jsonl
from zen_code_jax.eval.sandbox import LANGUAGES, Program, SandboxLimits

# MultiPL-E language codes -> sandbox languages.
LANGUAGE_CODES = {
    "py": "python",
    "python": "python",
    "js": "javascript",
    "javascript": "javascript",
    "sh": "shell",
    "pl": "perl",
}


def normalize_row(row: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in ("name", "language", "prompt", "tests") if k not in row]
    if missing:
        raise ValueError(
            f"MultiPL-E row {row.get('name', '?')} lacks {missing}; expected the published "
            "fields name, language, prompt, tests, stop_tokens."
        )
    lang = LANGUAGE_CODES.get(row["language"])
    if lang is None or lang not in LANGUAGES:
        raise ValueError(
            f"MultiPL-E language {row['language']!r} has no sandbox interpreter; supported: "
            f"{sorted(LANGUAGE_CODES)}. Add it to sandbox.LANGUAGES and LANGUAGE_CODES."
        )
    return {
        "task_id": f"MultiPL-E/{row['language']}/{row['name']}",
        "language": lang,
        "prompt": row["prompt"],
        "tests": row["tests"],
        "stop_tokens": list(row.get("stop_tokens") or []),
        "canonical_solution": row.get("canonical_solution"),
    }


def load_problems(path: str | Path) -> list[dict[str, Any]]:
    return [normalize_row(r) for r in read_jsonl(path, "The multipl_e task", "eval.multipl_e_path")]


def build_program(problem: dict[str, Any], completion: str) -> str:
    return problem["prompt"] + completion + "\n" + problem["tests"] + "\n"


def score_completions(
    problems: list[dict[str, Any]],
    completions: dict[str, list[str]],
    *,
    limits: SandboxLimits | None = None,
    workers: int = 2,
) -> TaskResult:
    keys, progs, comps = [], [], []
    for p in problems:
        cs = completions.get(p["task_id"])
        if not cs:
            raise ValueError(f"No completions for {p['task_id']}")
        for c in cs:
            c = truncate_at_stops(c, p["stop_tokens"])
            keys.append(p["task_id"])
            comps.append(c)
            progs.append(Program(build_program(p, c), language=p["language"]))
    return score_programs(keys, progs, comps, limits=limits or SandboxLimits(), workers=workers)


class MultiplETask(Task):
    name = "multipl_e"
    description = "MultiPL-E from a user-supplied JSONL (eval.multipl_e_path): pass@k"

    def problems(self, ctx: EvalContext) -> list[dict[str, Any]]:
        return apply_limit(load_problems(ctx.eval_cfg.multipl_e_path), ctx.limit)

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        engine = ctx.need_engine()
        probs = self.problems(ctx)
        kw = ctx.decode_kwargs()

        def call(idx: list[int], seed: int) -> list[str]:
            # Stop tokens differ per language; the engine gets each row's own list by
            # calling once per distinct list.
            out: dict[int, str] = {}
            groups: dict[tuple[str, ...], list[int]] = {}
            for i in idx:
                groups.setdefault(tuple(probs[i]["stop_tokens"]), []).append(i)
            for stop, rows in groups.items():
                texts = engine.generate(
                    [probs[i]["prompt"] for i in rows], stop=stop, seed=seed, **kw
                )
                out.update(zip(rows, texts))
            return [out[i] for i in idx]

        samples = sample_many(ctx, call, len(probs))
        comps = {p["task_id"]: s for p, s in zip(probs, samples)}
        return score_completions(probs, comps, limits=ctx.sandbox_limits(), workers=ctx.workers)


TASKS = (MultiplETask(),)
