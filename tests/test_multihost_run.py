"""experiments/run.py as a multi-host job: two local processes (jax.distributed over the
ZEN_* environment, Gloo collectives), one CPU device each, sharing one run directory as
hosts share a filesystem (what Orbax expects):

- both processes train with their own rows of every batch, checkpoint their own shards
  and data-iterator state, and process 0 alone writes logs, evaluation and the report;
- SIGTERM to one host (a preemption notice) stops both at one agreed step, saved, exit 0;
  SIGKILL of the job mid-run; then the same command again resumes from the checkpoint
  with bitwise the same loss at every step as the uninterrupted two-process run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_experiments import ROOT, smoke_workdir

pytestmark = [pytest.mark.e2e, pytest.mark.multiprocess, pytest.mark.slow]

CONFIG = "experiments/pretrain.py:smoke"
STEPS = 8


def run_two(
    workdir: Path, name: str, *args: str, env: dict | None = None, env1: dict | None = None
) -> list[tuple]:
    """The same run.py command in two processes; [(returncode, stdout, stderr)] by rank.
    `env` goes to both, `env1` to process 1 only."""
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "experiments/run.py",
        f"--config={CONFIG}",
        f"--workdir={workdir}",
        "--config.data.source=dir",
        f"--config.data.path={workdir / 'corpus'}",
        f"--config.name={name}",
        f"--config.train.steps={STEPS}",
        "--config.checkpoint.every=3",
        "--config.checkpoint.keep_last=5",
        *args,
    ]
    procs = []
    for rank in range(2):
        full_env = {
            **os.environ,
            "ZEN_COORDINATOR_ADDRESS": f"localhost:{port}",
            "ZEN_NUM_PROCESSES": "2",
            "ZEN_PROCESS_ID": str(rank),
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
            **(env or {}),
            **((env1 or {}) if rank == 1 else {}),
        }
        # A fault to inject runs that process through tests/fault_run.py (same flags).
        script = "tests/fault_run.py" if "ZEN_TEST_FAULT" in full_env else cmd[1]
        procs.append(
            subprocess.Popen(
                [cmd[0], script, *cmd[2:]],
                cwd=ROOT,
                env=full_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, stdout, stderr))
    return out


def ok_both(results: list[tuple]) -> list[str]:
    for rank, (rc, stdout, stderr) in enumerate(results):
        assert rc == 0, f"process {rank} exit {rc}\n{stdout[-2000:]}\n{stderr[-4000:]}"
    return [r[1] for r in results]


def train_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "train/loss" in r]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return smoke_workdir(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(workdir) -> dict[int, float]:
    """An uninterrupted two-process run with evaluation and report (--mode=all)."""
    out0, out1 = ok_both(run_two(workdir, "mh_ref"))
    run_dir = workdir / "mh_ref" / "main"
    # Process 0 prints the plan and the progress; process 1 trains silently.
    assert "Plan (1 arm(s)" in out0 and f"[main] step {STEPS}/{STEPS} loss" in out0
    assert "step" not in out1 and "Plan" not in out1
    # One log: each step once (process 1 writes nothing).
    recs = train_records(run_dir)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    # Checkpoints hold both processes' data-iterator states.
    last = run_dir / "checkpoints" / str(STEPS)
    assert len([p for p in (last / "data").iterdir() if p.name.startswith("process_")]) == 2
    # Process 0 evaluated the gathered params and wrote the summary and the report.
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert summary and all(isinstance(v, dict) for v in summary.values())
    assert (workdir / "mh_ref" / "report.md").is_file()
    return {r["step"]: r["train/loss"] for r in recs}


def test_two_process_run_trains_evaluates_and_reports(reference):
    assert len(reference) == STEPS and all(v == v for v in reference.values())


def test_two_process_preemption_and_sigkill_then_rerun_is_bitwise_identical(workdir, reference):
    run_dir = workdir / "mh_kill" / "main"
    # SIGTERM reaches process 1 only, after step 2: both save one agreed step and exit 0.
    term = run_two(workdir, "mh_kill", "--mode=train", env1={"ZEN_TEST_FAULT": "2:SIGTERM"})
    out0, _ = ok_both(term)
    assert "SIGTERM: saved step" in out0 and "Preempted" in out0
    saved = max(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert 2 <= saved < 7, f"agreed step {saved}: the notice came too late\n{out0[-2000:]}"
    # Then both are SIGKILLed after step 7, and the same command finishes the run.
    killed = run_two(workdir, "mh_kill", "--mode=train", env={"ZEN_TEST_FAULT": "7:SIGKILL"})
    # Process 0 dies by its SIGKILL; process 1 by its own, or first by losing process 0
    # (the coordination service lives there): either way it must not exit 0.
    assert killed[0][0] == -signal.SIGKILL and killed[1][0] != 0, killed[0][2][-2000:]
    out0, _ = ok_both(run_two(workdir, "mh_kill", "--mode=train"))
    assert "resumed from" in out0
    recs = train_records(run_dir)
    assert {r["step"]: r["train/loss"] for r in recs} == reference
