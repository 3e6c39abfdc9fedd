"""Standard errors for the report, from the per-sample records the evaluator writes.

Two arms whose held-out bits/byte differ in the third decimal may or may not differ beyond
the sampling noise of 25 files or 50 lines; the report shows each held-out metric with its
standard error so a reader can tell. The unit resampled is what was sampled: a file
(`heldout_loss`), a masked example (`heldout_fim`, `repo_completion`) or a task (execution
and infilling benchmarks; a task's samples stay together). Ratio metrics (bits per byte =
total nats / ln 2 / total bytes) are resampled as ratios of sums, exactly how the
evaluator micro-averages them, so the standard error belongs to the number in the table.

`scipy.stats.bootstrap` does the resampling (2,000 resamples, a fixed seed, so the report
is deterministic); the tests check it against the analytic standard error of a mean and the
delta-method one of a ratio.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats

N_RESAMPLES = 2000
SEED = 0
LN2 = math.log(2.0)
EMA_WEIGHT = 0.8  # TensorBoard-style debiased EMA of the loss curve


def bootstrap_se(columns: Sequence[Sequence[float]], statistic: Callable[..., Any]) -> float:
    """Bootstrap standard error of `statistic(*columns, axis=-1)`, resampling rows (units)
    of the columns together. NaN for fewer than 2 units."""
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


def _per_task_mean(records: list[dict[str, Any]], field: str) -> list[float]:
    """Per task_id, the mean of `field` over its samples (pass@1 = mean over tasks of c/n)."""
    by: dict[str, list[float]] = {}
    for r in records:
        if field in r:
            by.setdefault(str(r.get("task_id", len(by))), []).append(float(r[field]))
    return [sum(v) / len(v) for v in by.values()]


def _fim_nats(r: dict[str, Any], name: str, mode: str) -> float | None:
    """An example's nats under prompt `name` (psm, spm, prefix_only); older records hold
    only bits/byte, which times the middle's bytes gives the same number."""
    if f"nats_{name}" in r:
        return float(r[f"nats_{name}"])
    bpb = r.get("middle_bpb_prefix_only" if name == "prefix_only" else "middle_bpb_fim")
    if bpb is None or (name != "prefix_only" and name != mode):
        return None
    return float(bpb) * LN2 * len(str(r.get("target", "")).encode("utf-8"))


def _heldout_fim(records: list[dict[str, Any]], mode: str) -> dict[str, float]:
    out: dict[str, float] = {}
    other = "spm" if mode == "psm" else "psm"
    for kind in sorted({str(r.get("kind", r["task_id"].split("/")[1])) for r in records}):
        rs = [r for r in records if str(r.get("kind", r["task_id"].split("/")[1])) == kind]
        out[f"{kind}/exact_match"] = mean_se([float(r["exact_match"]) for r in rs])
        nbytes = [float(r.get("bytes", len(str(r.get("target", "")).encode("utf-8")))) for r in rs]
        nats = {n: [_fim_nats(r, n, mode) for r in rs] for n in (mode, other, "prefix_only")}
        names = {mode: "middle_bpb_fim", other: f"middle_bpb_{other}"}
        names["prefix_only"] = "middle_bpb_prefix_only"
        for n, key in names.items():
            if all(v is not None for v in nats[n]):
                out[f"{kind}/{key}"] = ratio_se(nats[n], nbytes, 1 / LN2)
        if all(v is not None for v in nats[mode] + nats["prefix_only"]):
            gap = [p - f for p, f in zip(nats["prefix_only"], nats[mode])]
            out[f"{kind}/middle_gap"] = ratio_se(gap, nbytes, 1 / LN2)
    return out


def task_standard_errors(
    task: str, records: list[dict[str, Any]], mode: str = "psm"
) -> dict[str, float]:
    """{metric: standard error} for one task's records, keyed like the task's summary
    metrics (plus `{kind}/middle_gap` for heldout_fim). `mode`: the run's eval.fim_mode."""
    if not records:
        return {}
    if task == "heldout_loss":
        nats = [float(r["nats"]) for r in records]
        out = {"bits_per_byte": ratio_se(nats, [float(r["bytes"]) for r in records], 1 / LN2)}
        if all("tokens" in r for r in records):
            out["loss"] = ratio_se(nats, [float(r["tokens"]) for r in records])
        return out
    if task == "heldout_fim":
        return _heldout_fim(records, mode)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(f"{r['setting']}/" if "setting" in r else "", []).append(r)
    out = {}
    for prefix, rs in groups.items():
        if any("passed" in r for r in rs):
            se = mean_se(_per_task_mean(rs, "passed"))
            out[f"{prefix}pass@1"] = out[f"{prefix}functional"] = se
        for field in ("exact_match", "edit_similarity"):
            if any(field in r for r in rs):
                out[f"{prefix}{field}"] = mean_se(_per_task_mean(rs, field))
    return out


def derived_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The middle-loss gap per kind: prefix-only minus FIM-prompt bits/byte of the same
    held-out middles (how much the suffix and FIM format help; > 0 once FIM is learned)."""
    out = {}
    for key, value in metrics.items():
        if key.startswith("heldout_fim/") and key.endswith("/middle_bpb_prefix_only"):
            kind = key.split("/")[1]
            fim = metrics.get(f"heldout_fim/{kind}/middle_bpb_fim")
            if fim is not None:
                out[f"heldout_fim/{kind}/middle_gap"] = value - fim
    return out


def ema(values: Sequence[float], weight: float = EMA_WEIGHT) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing): s_t = w s_{t-1} +
    (1 - w) x_t, divided by 1 - w^t so the first points are not pulled towards 0."""
    out, acc = [], 0.0
    for t, x in enumerate(values, 1):
        acc = weight * acc + (1 - weight) * float(x)
        out.append(acc / (1 - weight**t))
    return out
