"""A toy evaluation task, written the way a new task is added (docs: notes "add a task"):
this one module plus one registry line (the test adds the line with monkeypatch).

`toy_echo`: each line of a text file (its `path` option, also `--data`) is a problem; a
sample hits when the completion repeats the line `repeats` times. Its standard error is
its own (the binomial formula over samples, not the default bootstrap over problems), so
a test can tell that the report used it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zen_code_jax.eval.base import EvalContext, Task, TaskResult, apply_limit, sample_many


@dataclasses.dataclass(frozen=True)
class ToyOptions:
    path: str = ""  # a text file, one problem per line
    repeats: int = 1  # how often the completion must repeat the line

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"toy_echo: repeats must be >= 1, got {self.repeats}.")


class ToyEchoTask(Task):
    name = "toy_echo"
    description = "repeat the prompt line (a test task)"
    options_type = ToyOptions
    data_option = "path"

    def problems(self, ctx: EvalContext) -> list[dict[str, Any]]:
        opts = ctx.options(self)
        lines = Path(opts.path).read_text(encoding="utf-8").splitlines()
        return apply_limit(
            [{"task_id": f"toy/{i}", "prompt": ln} for i, ln in enumerate(lines)], ctx.limit
        )

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        engine, opts = ctx.need_engine(), ctx.options(self)
        probs = self.problems(ctx)

        def call(idx: list[int], seed: int) -> list[str]:
            return engine.generate([probs[i]["prompt"] for i in idx], seed=seed)

        records = []
        for p, samples in zip(probs, sample_many(ctx, call, len(probs))):
            for s in samples:
                records.append({"task_id": p["task_id"], "hit": s == p["prompt"] * opts.repeats})
        rate = sum(r["hit"] for r in records) / len(records)
        return TaskResult({"hit_rate": rate}, records)

    def standard_errors(
        self, records: list[dict[str, Any]], eval_cfg: Mapping[str, Any]
    ) -> dict[str, float]:
        p = sum(r["hit"] for r in records) / len(records)
        return {"hit_rate": math.sqrt(p * (1 - p) / len(records))}

    def derived_metrics(self, metrics: Mapping[str, float]) -> dict[str, float]:
        return {"miss_rate": 1.0 - metrics["hit_rate"]} if "hit_rate" in metrics else {}


TASKS = (ToyEchoTask(),)
