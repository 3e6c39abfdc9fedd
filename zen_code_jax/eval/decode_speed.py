"""`decode_speed`: milliseconds per decoded token at batch 1 (the editor-autocomplete case).

Why a task: the Flash report (experiments/flash_distill.py) sets a student's latency
beside its teacher's, and a task's number lands in eval/summary.json where the report
reads every other column. One slot, greedy, on the one decoder (`infer/slots.py` through
the engine's scheduler): for each fixed code prompt, the wall time of a 1-token and of an
`max_new_tokens`-token completion after a warm-up of both (compiles excluded); the
difference over the extra tokens is the per-token decode cost without the prefill.
Metrics: ms_per_token (median over prompts) and tokens_per_s (its inverse). A timing
depends on the machine and its load: say both beside the number.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

from zen_code_jax.eval.base import EvalContext, Task, TaskResult
from zen_code_jax.infer.request import CompletionRequest
from zen_code_jax.infer.scheduler import Job
from zen_code_jax.infer.slots import SlotDecoder

PROMPTS = (
    "import os\nimport sys\n\n\ndef main(argv):\n",
    "class Config:\n    def __init__(self, path):\n",
    "def parse_args(args):\n    result = {}\n    for arg in args:\n",
    "# Read the file and count the lines\nwith open(path) as f:\n",
    "for i in range(len(items)):\n    if items[i] is None:\n",
)


@dataclasses.dataclass(frozen=True)
class DecodeSpeedOptions:
    new_tokens: int = 32  # tokens per timed completion (the model may stop earlier)
    repeats: int = 3  # timed runs per prompt (the fastest counts)


class DecodeSpeed(Task):
    name = "decode_speed"
    description = "ms per decoded token at batch 1 (greedy, one slot)"
    options_type = DecodeSpeedOptions

    def problems(self, ctx: EvalContext) -> list[dict[str, Any]]:
        return [{"task_id": f"decode_speed/{i}", "prompt": p} for i, p in enumerate(PROMPTS)]

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        engine: Any = ctx.need_engine()
        opts = ctx.options(self)
        decoder = SlotDecoder(
            engine.params,
            engine.model_cfg,
            slots=1,
            max_len=256,
            chunk=min(int(engine.prefill_chunk), 256),
            mesh=engine.mesh,
            rules=engine.rules,
            windows=(256,),
        )
        scheduler = engine.scheduler(decoder)

        def run(ids: list[int], n: int) -> tuple[float, int]:
            job = Job([CompletionRequest(ids, n)], stream=False)
            t0 = time.perf_counter()
            scheduler.run(job)
            return time.perf_counter() - t0, job.rows[0].completion().completion_tokens

        records = []
        for problem in self.problems(ctx):
            ids = list(engine.tokenizer.encode(problem["prompt"]))
            run(ids, 1), run(ids, opts.new_tokens)  # warm-up: compile both shapes
            one = min(run(ids, 1)[0] for _ in range(opts.repeats))
            timed = [run(ids, opts.new_tokens) for _ in range(opts.repeats)]
            wall, tokens = min(timed)
            if tokens < 2:
                continue  # stopped at once: no decode step to time
            ms = 1000.0 * (wall - one) / (tokens - 1)
            records.append({"task_id": problem["task_id"], "tokens": tokens, "ms_per_token": ms})
        if not records:
            return TaskResult({}, [])
        ms = statistics.median(r["ms_per_token"] for r in records)
        return TaskResult({"ms_per_token": ms, "tokens_per_s": 1000.0 / ms}, records)

    def standard_errors(self, records: list[dict[str, Any]], eval_cfg: Any) -> dict[str, float]:
        return {}  # a timing on one machine: no resampling makes it portable


TASKS = (DecodeSpeed(),)
