"""The evaluation step of an arm: the configured tasks, plus the hparams record.

The same path serves the end of training and `--mode=eval` (an arm run with zero steps),
so a score never depends on how the checkpoint was reached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_collections

from zen_code_jax.data.batch import Batch
from zen_code_jax.eval.base import EvalContext
from zen_code_jax.eval.runner import run_tasks
from zen_code_jax.eval.suite import plan_suite, write_suite_report
from zen_code_jax.experiment.hooks import batches_loss
from zen_code_jax.infer.engine import InferenceEngine
from zen_code_jax.model.config import ModelConfig
from zen_code_jax.rundir import RunDir

DatasetFn = Callable[..., Any]
PIPELINE_HELDOUT_BATCHES = 50


def heldout_batches(
    dataset_fn: DatasetFn, corpus: Any, config: ml_collections.ConfigDict, n: int
) -> list[Batch]:
    """A fixed, left-to-right (FIM off) sample of the pipeline's held-out batches."""
    cfg = ml_collections.ConfigDict(config.to_dict(), allow_dotted_keys=True)
    cfg.fim.rate = 0.0
    try:
        it = dataset_fn(
            corpus,
            cfg,
            split="heldout",
            seq_len=int(config.train.seq_len),
            batch_size=int(config.train.global_batch_size),
            seed=int(config.seed),
        )
    except ValueError as e:  # a corpus without a held-out split
        print(f"note: no held-out batches for periodic eval ({e})")
        return []
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out


def arm_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What distinguishes this arm in the HParams dashboard: its name, scale, overrides."""
    hp: dict[str, Any] = {"arm": config.arm or "main", "scale": str(config.scale)}
    if config.arm and config.arm in config.arms:
        for key, value in config.arms[config.arm].items():
            hp[key] = value if isinstance(value, bool | int | float | str) else str(value)
    return hp


def evaluate(
    run_dir: RunDir,
    config: ml_collections.ConfigDict,
    *,
    params: Any,
    model_cfg: ModelConfig,
    tokenizer: Any,
    corpus: Any,
    writer: Any,
    step: int,
    eval_step: Callable | None = None,
    dataset_fn: DatasetFn | None = None,
) -> dict[str, float]:
    """Run `config.eval.tasks` on `params` and record the arm's hparams + final metrics;
    with `eval.suite` also the suite's tasks that have data, then its tables (eval/report/).

    `eval.runner.run_tasks` writes eval/<task>.jsonl, eval/summary.json and the
    `eval/<task>/<metric>` scalars. With an experiment's own data pipeline (e.g. SFT) the
    loss on that pipeline's held-out split is measured too (`heldout_batches/loss`, over
    at most 50 batches). Returns {"task/metric": value}.
    """
    metrics: dict[str, float] = {}
    if dataset_fn is not None and eval_step is not None:
        batches = heldout_batches(dataset_fn, corpus, config, PIPELINE_HELDOUT_BATCHES)
        if batches:
            loss = batches_loss(eval_step, params, batches)["loss"]
            metrics["heldout_batches/loss"] = loss
            run_dir.update_summary(step, {"heldout_batches": {"loss": loss}})
            writer.scalars(step, {"heldout_batches/loss": loss}, prefix="eval/")
    tasks = list(config.eval.tasks)
    suite = plan_suite(config.eval, config.eval.suite) if config.eval.get("suite") else None
    tasks += [t for t in (suite.run if suite else ()) if t not in tasks]
    if tasks:
        # The trainer's weights, with every other fact (repository format, ...) resolved
        # from the run directory as for any checkpoint (`step` given: no checkpoint listing,
        # which would be a collective in a multi-process run; only process 0 is here).
        engine = InferenceEngine.from_run(
            run_dir.path,
            params=params,
            step=step,
            max_batch_size=max(1, int(config.eval.batch_size)),
        )
        if engine.model_cfg != model_cfg:
            raise ValueError(
                f"{run_dir.config_json} describes another model than the one trained; "
                "rerun the arm so its config.json is rewritten."
            )
        ctx = EvalContext(
            config=config,
            engine=engine,
            tokenizer=tokenizer,
            corpus=corpus,
            repo_format=engine.repo_format.name,
        )
        summaries = run_tasks(ctx, tasks, run_dir.path, step=step, writer=writer)
        for task, values in summaries.items():
            metrics.update({f"{task}/{k}": float(v) for k, v in values.items()})
    if suite is not None:  # eval.suite: the paper's tables into RUN/eval/report/
        write_suite_report(run_dir.path, config.eval, suite)
    writer.hparams(arm_hparams(config), metrics, step)
    writer.flush()
    return metrics
