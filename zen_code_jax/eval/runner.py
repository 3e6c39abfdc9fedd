"""Score a run's checkpoint on named tasks and record the results in the run directory.

Per task: `RUN/eval/<task>.jsonl` (one line per scored sample), and summary scalars as
`eval/<task>/<metric>` in TensorBoard (the run's event files, via `tracking.SummaryWriter`,
which also appends them to `RUN/metrics.jsonl` for the report) at the checkpoint's step;
all summaries also go to `RUN/eval/summary.json`. Every file is written through
`zen_code_jax.rundir.RunDir`, the one writer of each.

`run_tasks` scores whatever engine it is given (the training loop's, the orchestrator's);
`score_checkpoint` is the command line's path: restore a run's newest checkpoint, then
`run_tasks`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from zen_code_jax.checkpoint import latest_step
from zen_code_jax.config import apply_overrides
from zen_code_jax.data.prepare import prepare_corpus
from zen_code_jax.eval.base import EvalContext
from zen_code_jax.eval.registry import check_task_options, get_task
from zen_code_jax.infer.engine import InferenceEngine
from zen_code_jax.resolve import run_facts
from zen_code_jax.rundir import RunDir
from zen_code_jax.tracking import SummaryWriter


def run_tasks(
    ctx: EvalContext,
    task_names: Sequence[str],
    run_dir: str | Path,
    *,
    step: int = 0,
    log: Callable[[str], Any] | None = None,
    writer: SummaryWriter | None = None,
) -> dict[str, dict[str, float]]:
    """Evaluate each task, write its records and scalars under run_dir; returns summaries.

    `writer`: an open `tracking.SummaryWriter` for run_dir to reuse (the training loop's);
    by default one is opened and closed here. Every name is checked before any work, so a
    typo fails fast.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    run = RunDir(run_dir)
    tasks = [get_task(n) for n in task_names]  # fail on a typo before any work
    check_task_options(ctx.eval_cfg)  # ... or in a task's options
    summaries: dict[str, dict[str, float]] = {}
    own_writer = writer is None
    writer = writer if writer is not None else SummaryWriter(run.path)
    try:
        for task in tasks:
            t0 = time.time()
            result = task.evaluate(ctx)
            metrics = {**result.metrics, "eval_seconds": time.time() - t0}
            run.write_records(task.name, result.records)
            writer.scalars(step, metrics, prefix=f"eval/{task.name}/")
            writer.flush()
            summaries[task.name] = metrics
            log(
                f"[eval] {task.name} @ step {step}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            )
    finally:
        if own_writer:
            writer.close()
        else:
            writer.flush()
    run.update_summary(step, summaries)
    return summaries


def corpus_loader(
    config: ml_collections.ConfigDict, vocab_size: int, workdir: str | Path
) -> Callable[[], Any]:
    """A zero-argument callable that prepares (or loads the cached) corpus on first use, so
    tasks that do not need the corpus never pay for preparing it."""

    def load() -> Any:
        return prepare_corpus(config.data, vocab_size, str(workdir))

    return load


def score_checkpoint(
    run_dir: str | Path,
    task_names: Sequence[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    workdir: str | Path | None = None,
) -> dict[str, dict[str, float]]:
    """Load RUN's newest checkpoint (`InferenceEngine.from_run`: params only, with the
    run's tokenizer and repository format) and score it on the tasks (default: the run's
    config.eval.tasks), labelled with the step it loaded.

    `overrides`: dotted config keys (`{"eval.limit": 20}`, via `config.apply_overrides`).
    `workdir`: the WORKDIR holding `cache/` for held-out tasks (default: the run's own).
    """
    run = RunDir(run_dir)
    config = run_facts(run.path).config
    assert config is not None  # a run directory always has one
    if overrides:
        apply_overrides(config, overrides)
    names = list(task_names) if task_names else list(config.eval.tasks)
    for n in names:
        get_task(n)
    engine = InferenceEngine.from_run(run.path, max_batch_size=max(1, int(config.eval.batch_size)))
    facts = engine.facts
    ctx = EvalContext(
        config=config,
        engine=engine,
        tokenizer=engine.tokenizer,
        corpus=corpus_loader(config, engine.model_cfg.vocab_size, workdir or run.workdir),
        repo_format=engine.repo_format.name,
    )
    step = facts.step if facts is not None else latest_step(run.path)
    return run_tasks(ctx, names, run.path, step=step if step is not None else 0)
