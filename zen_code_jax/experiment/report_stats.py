"""Standard errors and smoothing for the report, from what the evaluator wrote.

Two arms whose held-out bits/byte differ in the third decimal may or may not differ beyond
the sampling noise of 25 files or 50 lines; the report shows each metric with its standard
error so a reader can tell. Each task knows what it sampled, so each task computes its own
standard errors (`eval.base.Task.standard_errors`, on the resampling of
`zen_code_jax.eval.stats`) and its own derived metrics (`Task.derived_metrics`): this module
only finds the task by name and names no task itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from zen_code_jax.eval.base import Task
from zen_code_jax.eval.registry import get_task
from zen_code_jax.eval.stats import (
    Estimator,
    PairedDifference,
    bootstrap_se,
    mean_se,
    paired_difference,
    per_problem_estimators,
    per_problem_standard_errors,
    ratio_se,
)

# The resampling primitives stay importable from here for the report's readers.
__all__ = [
    "bootstrap_se",
    "derived_metrics",
    "ema",
    "mean_se",
    "paired_differences",
    "ratio_se",
    "task_estimators",
    "task_standard_errors",
]

EMA_WEIGHT = 0.8  # TensorBoard-style debiased EMA of the loss curve


def _task(name: str) -> Task | None:
    """The registered task `name`, or None for a name this version does not know (an old
    run's task keeps its values in the report, with per-problem standard errors)."""
    try:
        return get_task(name)
    except ValueError:
        return None


def task_standard_errors(
    task: str, records: list[dict[str, Any]], eval_cfg: Mapping[str, Any]
) -> dict[str, float]:
    """{metric: standard error} for one task's records, keyed like the task's summary
    metrics. `eval_cfg`: the run's `eval` group (from its config.json)."""
    if not records:
        return {}
    t = _task(task)
    if t is None:
        return per_problem_standard_errors(records)
    return t.standard_errors(records, eval_cfg)


def task_estimators(
    task: str, records: list[dict[str, Any]], eval_cfg: Mapping[str, Any]
) -> dict[str, Estimator]:
    """{metric: Estimator} for one task's records (what paired differences resample),
    keyed like `task_standard_errors`."""
    if not records:
        return {}
    t = _task(task)
    if t is None:
        return per_problem_estimators(records)
    return t.estimators(records, eval_cfg)


def paired_differences(
    arms: Sequence[str], estimators: Mapping[str, Mapping[str, Estimator]], baseline: str
) -> dict[str, dict[str, PairedDifference]]:
    """{arm: {metric: arm - baseline}} for every other arm and every metric both have an
    estimator for, by a paired bootstrap over the units both scored (same files, examples
    and tasks; `eval.stats.paired_difference`)."""
    base = estimators.get(baseline, {})
    out: dict[str, dict[str, PairedDifference]] = {}
    for arm in arms:
        if arm == baseline:
            continue
        diffs = {}
        for key, est in estimators.get(arm, {}).items():
            if key in base:
                d = paired_difference(est, base[key])
                if d is not None:
                    diffs[key] = d
        out[arm] = diffs
    return out


def derived_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Every task's derived metrics (`Task.derived_metrics`) from `task/metric` keys."""
    by_task: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        task, _, name = key.partition("/")
        by_task.setdefault(task, {})[name] = value
    out: dict[str, float] = {}
    for task, values in by_task.items():
        t = _task(task)
        if t is not None:
            out.update({f"{task}/{k}": v for k, v in t.derived_metrics(values).items()})
    return out


def ema(values: Sequence[float], weight: float = EMA_WEIGHT) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing): s_t = w s_{t-1} +
    (1 - w) x_t, divided by 1 - w^t so the first points are not pulled towards 0."""
    out, acc = [], 0.0
    for t, x in enumerate(values, 1):
        acc = weight * acc + (1 - weight) * float(x)
        out.append(acc / (1 - weight**t))
    return out
