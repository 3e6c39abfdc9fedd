"""Every experiment file's `smoke` scale runs end to end through experiments/run.py:
training, checkpoints, TensorBoard events, evaluation, and the report.

The runs share one WORKDIR (so one prepared corpus and one JAX compilation cache) and a
tiny corpus made of a few stdlib packages (one repository each).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from zen_code_jax.experiment.phases import Timings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SMOKE_PACKAGES = ("json", "http", "logging", "urllib", "html", "wsgiref", "concurrent")


def smoke_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """WORKDIR shared by every smoke run of the session, with its tiny corpus."""
    wd = tmp_path_factory.getbasetemp() / "smoke_workdir"
    corpus = wd / "corpus"
    if not corpus.exists():
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        for name in SMOKE_PACKAGES:
            shutil.copytree(
                stdlib / name, corpus / name, ignore=shutil.ignore_patterns("__pycache__")
            )
    return wd


def run_cli(
    workdir: Path,
    config: str,
    *args: str,
    env: dict | None = None,
    timeout: int = 900,
    devices: int = 8,
) -> subprocess.CompletedProcess:
    """python experiments/run.py with the smoke corpus on `devices` simulated CPU devices."""
    # A fault to inject (ZEN_TEST_FAULT=STEP:SIGNAL) runs the command through tests/fault_run.py.
    script = "tests/fault_run.py" if "ZEN_TEST_FAULT" in (env or {}) else "experiments/run.py"
    cmd = [
        sys.executable,
        script,
        f"--config={config}",
        f"--workdir={workdir}",
        "--config.data.source=dir",
        f"--config.data.path={workdir / 'corpus'}",
        *args,
    ]
    full_env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    full_env.update(env or {})
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc.stdout


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return smoke_workdir(tmp_path_factory)


def check_run_dir(run_dir: Path, steps: int) -> None:
    """The run-directory contract of docs/architecture.md (zen_code_jax/rundir.py)."""
    assert (run_dir / "config.json").is_file()
    assert any((run_dir / "tokenizer").iterdir())
    ckpts = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts and ckpts[-1] == steps
    assert list(run_dir.glob("events.out.tfevents.*"))
    losses = [r for r in map(json.loads, (run_dir / "metrics.jsonl").open()) if "train/loss" in r]
    assert [r["step"] for r in losses][-1] == steps


def test_fim_ablation_smoke_runs_every_arm_and_writes_the_report(workdir):
    started = time.perf_counter()
    out = ok(run_cli(workdir, "experiments/fim_ablation.py:smoke"))
    wall = time.perf_counter() - started
    assert "Plan (4 arm(s)" in out and "fim25" in out
    assert "[fim75] step 6/6 loss" in out and "tok/s" in out and "ETA" in out
    exp = workdir / "fim_ablation"
    for arm, rate in [("fim0", 0.0), ("fim25", 0.25), ("fim50", 0.5), ("fim75", 0.75)]:
        check_run_dir(exp / arm, steps=6)
        assert json.loads((exp / arm / "config.json").read_text())["fim"]["rate"] == rate
        summary = json.loads((exp / arm / "eval" / "summary.json").read_text())
        assert "single/middle_bpb_spm" in summary["heldout_fim"]  # both FIM layouts
        assert (exp / arm / "eval" / "heldout_fim.jsonl").stat().st_size > 0
    report = (exp / "report.md").read_text()
    assert "Table 7" in report and "| fim50 | 0.5 |" in report and "82.3" in report
    assert "Scale: smoke" in report
    assert (exp / "report.png").stat().st_size > 10_000

    # Wall time per phase (experiment.phases): every arm's phases, adding up to the
    # command's wall time; the table printed last and in report.md.
    (run,) = Timings.read(exp / "timings.json").invocations
    assert run.finished and list(run.arms) == ["fim0", "fim25", "fim50", "fim75"]
    for phases in run.arms.values():
        assert phases.steps == 6 and phases.evaluated
        for name in ("prepare_s", "setup_s", "compile_s", "train_s", "checkpoint_s", "eval_s"):
            assert getattr(phases, name) > 0, name
    assert run.startup_s > 0 and run.report_s > 0
    assert run.total_s <= wall  # since the process started, measured apart from the phases
    assert run.total_s - run.attributed_s() < max(2.0, 0.05 * run.total_s)
    assert "Wall time per phase (seconds):" in out and "compile (first train step)" in out
    assert "## Wall time per phase (seconds)" in report

    # --mode=report rebuilds both from the logs alone (the phase table too: a command that
    # runs no arm adds its own record to timings.json but no phase of the arms).
    (exp / "report.md").unlink()
    (exp / "report.png").unlink()
    ok(run_cli(workdir, "experiments/fim_ablation.py:smoke", "--mode=report"))
    assert (exp / "report.md").read_text() == report and (exp / "report.png").exists()
    first, rebuild = Timings.read(exp / "timings.json").invocations
    assert first == run and rebuild.mode == "report" and not rebuild.arms

    # The HParams dashboard sees one session per arm with its override.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(exp / "fim25"))
    ea.Reload()
    assert "_hparams_/session_start_info" in ea.Tags()["tensors"]
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/mfu"} <= set(
        ea.Tags()["scalars"]
    )


def test_fim_variants_smoke(workdir):
    """Every arm of experiments/fim_variants.py trains and the report pairs it with the
    baseline. `line` and `ast` need `fim.span` (issue 21 items 1-2): on a tree without that
    key they are skipped, loudly, and only then."""
    from zen_code_jax.config import base_config

    proc = run_cli(workdir, "experiments/fim_variants.py:smoke")
    out = ok(proc)
    has_span = "span" in base_config().fim
    arms = ["baseline", "best_fit", "hlp"] + (["ast", "line"] if has_span else [])
    exp = workdir / "fim_variants"
    if not has_span:
        assert "need config keys this tree lacks (['fim.span'])" in proc.stderr
        assert not (exp / "line").exists() and not (exp / "ast").exists()
    assert f"Plan ({len(arms)} arm(s)" in out
    for arm in arms:
        check_run_dir(exp / arm, steps=6)
    hlp = json.loads((exp / "hlp" / "config.json").read_text())["train"]
    assert hlp["hlp_weight"] == 1.0 and len(hlp["hlp_sentinels"]) == 2
    rows = [json.loads(ln) for ln in (exp / "hlp" / "metrics.jsonl").open()]
    assert any("train/hlp" in r and "train/hlp_tokens" in r for r in rows)
    assert all(
        "train/hlp" not in r for r in map(json.loads, (exp / "baseline" / "metrics.jsonl").open())
    )
    best = json.loads((exp / "best_fit" / "config.json").read_text())
    assert best["data"]["packing"] == "best_fit"
    report = (exp / "report.md").read_text()
    assert "## Differences from the baseline (baseline), paired bootstrap" in report
    assert "| heldout_fim/single/middle_bpb_psm |" in report
    assert "- best_fit (best_fit): " in report and "% of training-row tokens" in report


def test_pretrain_smoke(workdir):
    out = ok(run_cli(workdir, "experiments/pretrain.py:smoke"))
    assert "[main] step 6/6" in out
    check_run_dir(workdir / "pretrain" / "main", steps=6)
    summary = json.loads((workdir / "pretrain" / "main" / "eval" / "summary.json").read_text())
    assert summary["heldout_loss"]["bits_per_byte"] > 0


def test_repo_ft_smoke_starts_from_the_base_arm(workdir):
    out = ok(run_cli(workdir, "experiments/repo_ft_ablation.py:smoke"))
    exp = workdir / "repo_ft_ablation"
    assert "[repo8k] initialized params from" in out and "[repo64k] initialized params" in out
    check_run_dir(exp / "base", steps=6)
    for arm, seq in [("repo8k", 64), ("repo64k", 512), ("repo64k_symbols", 512)]:
        check_run_dir(exp / arm, steps=4)
        cfg = json.loads((exp / arm / "config.json").read_text())
        assert cfg["data"]["mode"] == "repo" and cfg["train"]["seq_len"] == seq
        prefix = "paths+symbols" if arm == "repo64k_symbols" else "none"
        assert cfg["data"]["repo_prefix"] == prefix
        assert "repo_completion" in json.loads((exp / arm / "eval" / "summary.json").read_text())
    assert "Table 8" in (exp / "report.md").read_text()


def test_sft_smoke_trains_on_docstring_pairs(workdir):
    out = ok(run_cli(workdir, "experiments/sft.py:smoke"))
    run_dir = workdir / "sft" / "main"
    cfg = json.loads((run_dir / "config.json").read_text())
    steps = cfg["train"]["epochs"] * (64 // cfg["train"]["global_batch_size"])
    check_run_dir(run_dir, steps=steps)
    assert f"step {steps}/{steps}" in out
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert summary["heldout_batches"]["loss"] > 0
    # One step count for everything (the epochs bug: the schedule, plan and report were
    # sized from train.steps=6 while 16 steps ran, so LR sat at final_lr from step 11).
    assert cfg["train"]["steps"] == steps == 16
    opt = cfg["optimizer"]
    lrs = {r["step"]: r["train/lr"] for r in map(json.loads, open(run_dir / "metrics.jsonl"))
           if "train/lr" in r}  # fmt: skip
    peak, final, warm = opt["peak_lr"], opt["final_lr"], opt["warmup_steps"]
    for step in (12, steps):  # update `step` uses the schedule at count step - 1
        t = (step - 1 - warm) / (steps - warm)
        want = final + (peak - final) * 0.5 * (1 + math.cos(math.pi * t))
        assert lrs[step] == pytest.approx(want, rel=1e-5), (step, lrs[step], want)
    assert lrs[steps] > 2 * final


def test_sft_pairs_and_response_only_loss_mask():
    sys.path.insert(0, str(ROOT / "experiments"))
    import importlib

    sft = importlib.import_module("sft")
    src = 'def add(a, b):\n    """Return the sum of a and b, as numbers."""\n    return a + b\n'
    (pair,) = sft.docstring_pairs(src)
    assert "def add(a, b):" in pair["instruction"] and "Return the sum" in pair["instruction"]
    assert pair["response"] == "    return a + b\n"

    class Tok:  # one id per character; eot = 0
        eot_id = 0

        def encode(self, text):
            return [ord(c) for c in text]

    row = sft.encode_pair(Tok(), pair, seq_len=512)
    prompt_len = len(sft.PROMPT.format(instruction=pair["instruction"]))
    masked = row["targets"][row["loss_mask"] == 1]
    assert bytes(masked[:-1].tolist()).decode() == pair["response"]  # response tokens only
    assert masked[-1] == 0 and row["loss_mask"][: prompt_len - 1].sum() == 0
