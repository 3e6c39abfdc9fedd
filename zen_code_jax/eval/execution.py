"""The skeleton of a pass@k task read from a user-supplied JSONL (MBPP, MultiPL-E, ...).

Such a task differs from its siblings only in how a row becomes a problem, which stop
sequences end a completion, and how a completion becomes a sandboxed program; `PassAtKTask`
does the rest once: the `path` option (the `--data` of the eval CLI), the limit, sampling
through `base.sample_many`, one `generate` call per distinct stop list, cutting at the
stops, and scoring in the sandbox (`humaneval.score_programs`: pass@k per problem plus
per-sample records).
"""

from __future__ import annotations

import abc
import dataclasses
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
from zen_code_jax.eval.humaneval import score_programs
from zen_code_jax.eval.sandbox import Program, SandboxLimits


@dataclasses.dataclass(frozen=True)
class FileOptions:
    """A task scored on a user-supplied file: `path` to it (published format)."""

    path: str = ""


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


class PassAtKTask(Task):
    """pass@k of sampled completions run in the sandbox; problems from `options.path`.

    Subclasses set `name`, `description` (and `options_type`, when they take more than
    `FileOptions`) and define `load`, `stop` and `program`. Problems are dicts with at
    least `task_id` and `prompt`.
    """

    options_type: type = FileOptions
    data_option: str | None = "path"

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

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        engine = ctx.need_engine()
        probs = self.problems(ctx)
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
        return self.score(probs, comps, limits=ctx.sandbox_limits(), workers=ctx.workers)

    def score(
        self,
        problems: list[dict[str, Any]],
        completions: dict[str, list[str]],
        *,
        limits: SandboxLimits | None = None,
        workers: int = 2,
    ) -> TaskResult:
        """pass@k of completions ({task_id: [completion, ...]}), each cut at the stops."""
        keys, progs, comps = [], [], []
        for p in problems:
            cs = completions.get(p["task_id"])
            if not cs:
                raise ValueError(f"No completions for {p['task_id']}; give each problem >= 1.")
            for c in cs:
                c = truncate_at_stops(c, self.stop(p))
                keys.append(p["task_id"])
                comps.append(c)
                progs.append(self.program(p, c))
        return score_programs(keys, progs, comps, limits=limits or SandboxLimits(), workers=workers)
