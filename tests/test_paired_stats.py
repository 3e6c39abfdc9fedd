"""Paired differences between arms (`eval.stats.paired_difference`, the report's
"Differences from the baseline" section) against a brute-force resampling reference: the
same unit indices drawn for both arms, the statistic recomputed resample by resample in
plain Python over records joined by unit id."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_report import fim_config, write_arm, write_records

from zen_code_jax.eval.stats import (
    N_RESAMPLES,
    SEED,
    mean_estimator,
    paired_difference,
    ratio_estimator,
)
from zen_code_jax.experiment.report import write_report
from zen_code_jax.experiment.report_stats import task_estimators

LN2 = math.log(2)


def _files(rng, shift: float, hardness: np.ndarray, nbytes: np.ndarray) -> list[dict]:
    """heldout_loss records whose per-file bits/byte = shared hardness + arm shift + noise."""
    n = len(nbytes)
    bpb = hardness + shift + rng.normal(0, 0.02, n)
    return [
        {"task_id": f"heldout_loss/{i}", "bytes": b, "nats": b * LN2 * v, "tokens": int(b) // 3}
        for i, (b, v) in enumerate(zip(nbytes, bpb))
    ]


def _brute_force(arm: list[dict], base: list[dict]) -> tuple[float, float, float, float]:
    """(difference, SE, 2.5th, 97.5th percentile) of arm - base bits/byte, paired by task_id,
    one Python loop per resample."""
    by_id = {r["task_id"]: r for r in arm}
    pairs = [(by_id[r["task_id"]], r) for r in base if r["task_id"] in by_id]
    n = len(pairs)

    def bpb(rows):
        return sum(r["nats"] for r in rows) / LN2 / sum(r["bytes"] for r in rows)

    idx = np.random.default_rng(SEED).integers(0, n, (N_RESAMPLES, n))
    diffs = []
    for row in idx:
        diffs.append(bpb([pairs[i][0] for i in row]) - bpb([pairs[i][1] for i in row]))
    diffs = np.array(diffs)
    full = bpb([a for a, _ in pairs]) - bpb([b for _, b in pairs])
    return full, float(diffs.std(ddof=1)), *np.percentile(diffs, [2.5, 97.5])


def test_paired_bootstrap_against_brute_force():
    rng = np.random.default_rng(0)
    hardness = rng.normal(2.4, 0.4, 40)  # what both arms share: which files are hard
    nbytes = rng.integers(100, 900, 40).astype(float)  # the same files: the same bytes
    base = _files(rng, 0.0, hardness, nbytes)
    arm = _files(rng, -0.03, hardness, nbytes)
    arm = [arm[i] for i in rng.permutation(40)[:37]]  # another order, 3 units missing
    est = {name: task_estimators("heldout_loss", rs, {}) for name, rs in (("a", arm), ("b", base))}
    got = paired_difference(est["a"]["bits_per_byte"], est["b"]["bits_per_byte"])
    value, se, low, high = _brute_force(arm, base)
    assert got.units == 37
    assert got.value == pytest.approx(value, rel=1e-12)
    assert got.se == pytest.approx(se, rel=1e-9)
    assert (got.low, got.high) == pytest.approx((low, high), rel=1e-9)
    # the point of pairing: far narrower than either arm's own standard error
    assert got.se < 0.2 * est["b"]["bits_per_byte"].se()
    assert got.high < 0  # the 0.03 bits/byte improvement is resolved


def test_paired_mean_difference_matches_its_analytic_se():
    rng = np.random.default_rng(1)
    n = 400
    shared = rng.normal(0, 1, n)
    a, b = shared + rng.normal(0.1, 0.3, n), shared + rng.normal(0, 0.3, n)
    ids = [str(i) for i in range(n)]
    d = paired_difference(mean_estimator(ids, a), mean_estimator(ids, b))
    analytic = np.std(a - b, ddof=1) / math.sqrt(n)
    assert d.value == pytest.approx(np.mean(a - b), rel=1e-12)
    assert d.se == pytest.approx(analytic, rel=0.06)  # 2,000 resamples: ~1.6% MC error
    # identical arms: a zero difference with a zero-width interval
    z = paired_difference(mean_estimator(ids, a), mean_estimator(ids, a))
    assert (z.value, z.se, z.low, z.high) == (0.0, 0.0, 0.0, 0.0)
    # fewer than two shared units: nothing to report
    assert (
        paired_difference(ratio_estimator(["x"], [1.0], [2.0]), mean_estimator(["x"], [1])) is None
    )


def test_report_section_and_baseline(tmp_path):
    config = fim_config("cpu,train.steps=100")
    exp = tmp_path / "fim_ablation"
    for arm, rate in (("fim0", 0.0), ("fim25", 0.25), ("fim50", 0.5), ("fim75", 0.75)):
        write_arm(exp, arm, rate, 2.4, 2.5)
        write_records(exp / arm, np.random.default_rng(int(rate * 100)), 2.4 + rate / 10)
    md, _ = write_report(exp, config)
    text = md.read_text()
    assert "## Differences from the baseline (fim0), paired bootstrap" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| heldout_loss/bits_per_byte |"))
    cells = row.split(" | ")
    assert cells[1] == "60" and len(cells) == 5  # metric, units, three arms
    recs = {
        a: [json.loads(x) for x in (exp / a / "eval/heldout_loss.jsonl").read_text().splitlines()]
        for a in ("fim0", "fim50")
    }
    value, se, low, high = _brute_force(recs["fim50"], recs["fim0"])
    assert cells[3] == f"{value:+.4f} ± {se:.4f} [{low:+.4f}, {high:+.4f}]"
    rows = [ln.split(" | ")[0] for ln in text.splitlines()]
    assert "| heldout_fim/single/middle_bpb_psm" in rows  # one name per metric
    assert "| heldout_fim/single/middle_bpb_fim" not in rows
    # report.baseline picks another arm; an unknown one is a one-line error
    config.report.baseline = "fim50"
    md, _ = write_report(exp, config)
    assert "## Differences from the baseline (fim50)" in md.read_text()
    config.report.baseline = "fim99"
    with pytest.raises(ValueError, match="report.baseline='fim99' is not one of the arms"):
        write_report(exp, config)
