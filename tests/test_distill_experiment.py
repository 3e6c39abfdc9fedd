"""experiments/flash_distill.py at smoke scale, end to end through experiments/run.py: a
tiny teacher trained inside (arm big_teacher), the scratch / online / offline students,
their metrics, the offline logits and the Flash report table."""

from __future__ import annotations

import json

import pytest
from test_experiments import check_run_dir, ok, run_cli, smoke_workdir

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# No evaluation (the held-out tasks run in the FIM ablation's smoke test; decode_speed's
# compiles would double the time); one device keeps compiles short.
FAST_EVAL = ("--config.eval.tasks=()",)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return smoke_workdir(tmp_path_factory)


def test_flash_distill_smoke_with_a_teacher_trained_inside(workdir):
    config = "experiments/flash_distill.py:smoke,teacher=train"
    out = ok(run_cli(workdir, config, *FAST_EVAL, devices=1, timeout=1800))
    assert "Plan (4 arm(s)" in out
    exp = workdir / "flash_distill"
    for arm in ("big_teacher", "scratch", "distill", "offline"):
        check_run_dir(exp / arm, steps=6)
    teacher = str(exp / "big_teacher")
    for arm in ("distill", "offline"):
        cfg = json.loads((exp / arm / "config.json").read_text())
        assert cfg["train"]["objective"] == "distill"
        assert cfg["distill"]["teacher"] == teacher  # arm:big_teacher, resolved
        records = [json.loads(x) for x in (exp / arm / "metrics.jsonl").open()]
        last = [r for r in records if "train/loss" in r][-1]
        assert {"train/ce", "train/kl", "train/teacher_ce"} <= set(last)
        assert last["train/kl"] > 0 and last["train/teacher_ce"] > 0
    meta = json.loads((exp / "offline" / "teacher_logits" / "meta.json").read_text())
    assert meta["top_k"] == 16 and meta["batches"] == 6 and meta["teacher"] == f"{teacher}@6"
    report = (exp / "report.md").read_text()
    assert "Zen-Coder-Flash" in report and "| big_teacher | lm |" in report
    assert "| offline | distill (offline top-16, α=0.5, T=1.0) |" in report

    # A teacher that does not exist: one line, exit 2, before any training step.
    missing = "experiments/flash_distill.py:smoke,teacher=arm:fim_ablation/nope"
    proc = run_cli(workdir, missing, "--arm=distill", devices=1, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "has no checkpoint; train the teacher first" in proc.stderr
    assert "Traceback" not in proc.stderr
