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

import dataclasses
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


# --- paired differences between arms (issue 21 item 5) ----------------------------------


@dataclasses.dataclass(frozen=True)
class Estimator:
    """A metric as a statistic of per-unit columns, with the units' ids: what a bootstrap
    resamples. `statistic(*columns, axis=-1)` is the metric (e.g. a ratio of sums)."""

    units: tuple[str, ...]
    columns: tuple[tuple[float, ...], ...]
    statistic: Callable[..., Any]

    def value(self) -> float:
        return float(self.statistic(*(np.asarray(c, np.float64) for c in self.columns), axis=-1))

    def se(self) -> float:
        """The metric's bootstrap standard error (`bootstrap_se`)."""
        return bootstrap_se(self.columns, self.statistic)


def _mean(x: Any, axis: int) -> Any:
    return x.mean(axis=axis)


def mean_estimator(units: Sequence[str], values: Sequence[float]) -> Estimator:
    """The mean of `values` over units (the statistic of `mean_se`)."""
    return Estimator(tuple(map(str, units)), (tuple(map(float, values)),), _mean)


def ratio_estimator(
    units: Sequence[str],
    numerators: Sequence[float],
    denominators: Sequence[float],
    scale: float = 1.0,
) -> Estimator:
    """scale * sum(numerators) / sum(denominators) over units (the statistic of `ratio_se`)."""

    def ratio(a: Any, b: Any, axis: int) -> Any:
        return scale * a.sum(axis=axis) / b.sum(axis=axis)

    cols = (tuple(map(float, numerators)), tuple(map(float, denominators)))
    return Estimator(tuple(map(str, units)), cols, ratio)


def per_problem_estimators(records: list[dict[str, Any]]) -> dict[str, Estimator]:
    """The estimators behind `per_problem_standard_errors` (same groups, metrics and per-
    problem means), each unit a problem (`task_id`)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(f"{r['setting']}/" if "setting" in r else "", []).append(r)
    out: dict[str, Estimator] = {}
    for prefix, rs in groups.items():
        for field, names in MEAN_FIELDS.items():
            by: dict[str, list[float]] = {}
            for r in rs:
                if field in r:
                    by.setdefault(str(r.get("task_id", len(by))), []).append(float(r[field]))
            if by:
                est = mean_estimator(list(by), [sum(v) / len(v) for v in by.values()])
                out.update({f"{prefix}{name}": est for name in names})
    return out


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """arm - baseline on the units both scored: the difference, its paired-bootstrap
    standard error and 95% percentile interval, and how many units were paired."""

    value: float
    se: float
    low: float
    high: float
    units: int


def paired_difference(arm: Estimator, base: Estimator) -> PairedDifference | None:
    """Paired bootstrap of `arm - base` over their common units (the baseline's order):
    every resample draws one set of unit indices and evaluates both arms' statistics on it
    (`scipy.stats.bootstrap(paired=True)`, `N_RESAMPLES`, seed `SEED`, percentile
    interval), so what the arms share (which files are hard) cancels. None for < 2 units.

    Why paired: the arms of an ablation are scored on the same held-out files and tasks,
    so their per-arm errors are strongly correlated and an independent interval per arm
    overstates the noise of the difference (the report's ± 0.16 bits/byte per arm against
    differences in the second decimal)."""
    from scipy import stats  # scipy.stats is slow to import; only reports need it

    where = {u: i for i, u in enumerate(arm.units)}
    common = [(where[u], j) for j, u in enumerate(base.units) if u in where]
    if len(common) < 2:
        return None
    ia = np.array([i for i, _ in common])
    ib = np.array([j for _, j in common])
    cols_a = [np.asarray(c, np.float64)[ia] for c in arm.columns]
    cols_b = [np.asarray(c, np.float64)[ib] for c in base.columns]
    k = len(cols_a)

    def diff(*cols: Any, axis: int) -> Any:
        return arm.statistic(*cols[:k], axis=axis) - base.statistic(*cols[k:], axis=axis)

    with warnings.catch_warnings():  # identical arms: a zero-width distribution
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            tuple(cols_a + cols_b),
            diff,
            paired=True,
            vectorized=True,
            n_resamples=N_RESAMPLES,
            confidence_level=0.95,
            method="percentile",
            rng=np.random.default_rng(SEED),
        )
    ci = res.confidence_interval
    return PairedDifference(
        value=float(diff(*cols_a, *cols_b, axis=-1)),
        se=float(res.standard_error),
        low=float(ci.low),
        high=float(ci.high),
        units=len(common),
    )
