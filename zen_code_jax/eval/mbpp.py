"""MBPP (Austin et al. 2021) from a user-supplied JSONL file in a published format.

No MBPP data ships offline, so `eval.mbpp_path` must point at a file. Both published
layouts are accepted, one JSON object per line:

- original (`mbpp.jsonl`): task_id, text, code, test_list, test_setup_code,
  challenge_test_list;
- sanitized (`sanitized-mbpp.json` rows): source_file, task_id, prompt, code, test_imports,
  test_list.

Prompt (as in the common harnesses): a docstring with the description and the first test,
`'\"\"\"\\n{description}\\n{test_list[0]}\\n\"\"\"\\n'`; the completion is cut at the stop
sequences; the program `test_imports + prompt + completion + test_setup_code + tests` runs in
the sandbox; pass@k as for HumanEval. `code` is the reference solution (canonical_solution).
"""

from __future__ import annotations

import json
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
from zen_code_jax.eval.humaneval import python_job, score_programs
from zen_code_jax.eval.sandbox import SandboxLimits

STOP_SEQUENCES: tuple[str, ...] = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```")


def read_jsonl(path: str | Path, what: str, setting: str) -> list[dict[str, Any]]:
    p = Path(path) if path else None
    if p is None or not p.is_file():
        raise FileNotFoundError(
            f"{what} needs a JSONL file: set {setting} (or --data=PATH); got {str(path)!r}."
        )
    rows = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(
                        f"{p}:{n} is not valid JSON ({e}); one object per line."
                    ) from e
    return rows


def normalize_row(row: dict[str, Any]) -> dict[str, Any]:
    """One MBPP row (original or sanitized layout) -> our problem dict."""
    desc = row.get("text", row.get("prompt"))
    missing = [k for k in ("task_id", "code", "test_list") if k not in row]
    if desc is None or missing:
        raise ValueError(
            f"MBPP row {row.get('task_id', '?')} lacks {missing or ['text/prompt']}; expected the "
            "published fields task_id, text (or prompt), code, test_list."
        )
    tests = list(row["test_list"])
    if not tests:
        raise ValueError(f"MBPP row {row['task_id']} has an empty test_list")
    return {
        "task_id": f"MBPP/{row['task_id']}",
        "prompt": f'"""\n{desc.strip()}\n{tests[0]}\n"""\n',
        "canonical_solution": row["code"],
        "tests": tests,
        "test_setup_code": row.get("test_setup_code", "") or "",
        "test_imports": "\n".join(row.get("test_imports", []) or []),
    }


def load_problems(path: str | Path) -> list[dict[str, Any]]:
    return [normalize_row(r) for r in read_jsonl(path, "The mbpp task", "eval.mbpp_path")]


def build_program(problem: dict[str, Any], completion: str) -> str:
    return (
        (problem["test_imports"] + "\n" if problem["test_imports"] else "")
        + problem["prompt"]
        + completion
        + "\n\n"
        + problem["test_setup_code"]
        + "\n"
        + "\n".join(problem["tests"])
        + "\n"
    )


def score_completions(
    problems: list[dict[str, Any]],
    completions: dict[str, list[str]],
    *,
    limits: SandboxLimits | None = None,
    workers: int = 2,
) -> TaskResult:
    keys, progs, comps = [], [], []
    for p in problems:
        for c in completions.get(p["task_id"]) or []:
            c = truncate_at_stops(c, STOP_SEQUENCES)
            keys.append(p["task_id"])
            comps.append(c)
            progs.append(python_job(build_program(p, c)))
    if set(keys) != {p["task_id"] for p in problems}:
        raise ValueError("Every MBPP problem needs at least one completion.")
    return score_programs(keys, progs, comps, limits=limits or SandboxLimits(), workers=workers)


class MbppTask(Task):
    name = "mbpp"
    description = "MBPP from a user-supplied JSONL (eval.mbpp_path): pass@k in the sandbox"

    def problems(self, ctx: EvalContext) -> list[dict[str, Any]]:
        return apply_limit(load_problems(ctx.eval_cfg.mbpp_path), ctx.limit)

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        engine = ctx.need_engine()
        probs = self.problems(ctx)
        kw = ctx.decode_kwargs()

        def call(idx: list[int], seed: int) -> list[str]:
            return engine.generate(
                [probs[i]["prompt"] for i in idx], stop=STOP_SEQUENCES, seed=seed, **kw
            )

        samples = sample_many(ctx, call, len(probs))
        comps = {p["task_id"]: s for p, s in zip(probs, samples)}
        return score_completions(probs, comps, limits=ctx.sandbox_limits(), workers=ctx.workers)


TASKS = (MbppTask(),)
