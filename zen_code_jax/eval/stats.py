"""Standard errors of task metrics, from the per-sample records a task writes.

Each task knows what it sampled, so each task reports its own standard errors
(`Task.standard_errors`); this module holds the resampling they share. The unit resampled is
what was sampled: a file, a masked example, or a problem (a problem's samples stay
together). Ratio metrics (bits per byte = total nats / ln 2 / total bytes) are resampled as
ratios of sums, exactly how the tasks micro-average them, so the standard error belongs to
the number in the table.

`scipy.stats.bootstrap` does the resampling (2,000 resamples, a fixed seed, so a report is
deterministic); tests/test_report.py checks it against the analytic standard error of a
mean and the delta-method one of a ratio.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

N_RESAMPLES = 2000
SEED = 0
LN2 = math.log(2.0)
# Per-sample fields averaged per problem, then over problems (pass@1 = mean over problems of
# c/n), and the metric names they stand behind in a task's summary.
MEAN_FIELDS: dict[str, tuple[str, ...]] = {
    "passed": ("pass@1", "functional"),
    "exact_match": ("exact_match",),
    "edit_similarity": ("edit_similarity",),
}


def bootstrap_se(columns: Sequence[Sequence[float]], statistic: Callable[..., Any]) -> float:
    """Bootstrap standard error of `statistic(*columns, axis=-1)`, resampling rows (units)
    of the columns together. NaN for fewer than 2 units."""
    from scipy import stats  # scipy.stats is slow to import; only reports need it

    cols = [np.asarray(c, dtype=np.float64) for c in columns]
    if len(cols[0]) < 2:
        return float("nan")
    with warnings.catch_warnings():  # constant data (e.g. all-zero exact match): SE 0
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            tuple(cols),
            statistic,
            paired=True,
            vectorized=True,
            n_resamples=N_RESAMPLES,
            method="percentile",
            rng=np.random.default_rng(SEED),
        )
    return float(res.standard_error)


def mean_se(values: Sequence[float]) -> float:
    """Standard error of a mean over units."""
    return bootstrap_se([values], lambda x, axis: x.mean(axis=axis))


def ratio_se(
    numerators: Sequence[float], denominators: Sequence[float], scale: float = 1.0
) -> float:
    """Standard error of scale * sum(numerators) / sum(denominators) over units."""
    return bootstrap_se(
        [numerators, denominators], lambda a, b, axis: scale * a.sum(axis=axis) / b.sum(axis=axis)
    )


def per_problem_mean(records: list[dict[str, Any]], field: str) -> list[float]:
    """Per task_id, the mean of `field` over its samples (pass@1 = mean over problems of c/n)."""
    by: dict[str, list[float]] = {}
    for r in records:
        if field in r:
            by.setdefault(str(r.get("task_id", len(by))), []).append(float(r[field]))
    return [sum(v) / len(v) for v in by.values()]


def per_problem_standard_errors(records: list[dict[str, Any]]) -> dict[str, float]:
    """{metric: SE} of the per-problem means of `MEAN_FIELDS` present in the records, one
    group per record `setting` (metrics `<setting>/<name>`) when records carry one. The
    default of `Task.standard_errors`: right for every task whose summary is such a mean."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(f"{r['setting']}/" if "setting" in r else "", []).append(r)
    out: dict[str, float] = {}
    for prefix, rs in groups.items():
        for field, names in MEAN_FIELDS.items():
            if any(field in r for r in rs):
                se = mean_se(per_problem_mean(rs, field))
                for name in names:
                    out[f"{prefix}{name}"] = se
    return out
