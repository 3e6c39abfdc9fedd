"""Fault tolerance of a real (smoke-scale) run through experiments/run.py:

- SIGKILL at any step, then rerunning the same command, gives bitwise the same loss at
  every step as an uninterrupted run;
- SIGTERM saves at the next step boundary and exits 0; the rerun finishes identically;
- a non-finite loss stops the run naming the step and the last good checkpoint;
(a checkpoint from another model or tokenizer, and corrupt ones: tests/test_checkpoint.py)
- `restore_for_inference` gives params, model config, tokenizer and config of a run.
"""

from __future__ import annotations

import json
import math
import re
import signal
from pathlib import Path

import numpy as np
import pytest
from test_experiments import ok, run_cli, smoke_workdir

from zen_code_jax.experiment.phases import Timings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CONFIG = "experiments/pretrain.py:smoke"
STEPS = 8


def train(workdir: Path, name: str, *args: str, env: dict | None = None, devices: int = 1):
    return run_cli(
        workdir,
        CONFIG,
        f"--config.name={name}",
        "--mode=train",
        f"--config.train.steps={STEPS}",
        "--config.checkpoint.every=3",
        "--config.checkpoint.keep_last=5",
        *args,
        env=env,
        # One device by default (the cpu scale's layout); the 8-device test below checks the
        # sharded layout, where restored shards must feed the same all-reduces.
        devices=devices,
    )


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "train/loss" in rec:
            out[rec["step"]] = rec["train/loss"]
    return out


def checkpoints(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return smoke_workdir(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(workdir) -> dict[int, float]:
    ok(train(workdir, "resume_ref"))
    ref = losses(workdir / "resume_ref" / "main")
    assert sorted(ref) == list(range(1, STEPS + 1))
    return ref


def test_sigkill_then_rerun_is_bitwise_identical(workdir, reference):
    run_dir = workdir / "resume_kill" / "main"
    # Killed at step 4 (the async save of step 3 may not have committed yet), then at step
    # 7 (step 3 has committed: Orbax finishes one save before starting the next, at 6).
    for kill_at in (4, 7):
        proc = train(workdir, "resume_kill", env={"ZEN_TEST_FAULT": f"{kill_at}:SIGKILL"})
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        assert max(checkpoints(run_dir), default=0) < kill_at
    assert 3 in checkpoints(run_dir)
    out = ok(train(workdir, "resume_kill"))
    assert "resumed from" in out
    assert losses(run_dir) == reference  # every step, exactly


def test_sigkill_then_rerun_on_8_devices_is_bitwise_identical(workdir):
    """Data-parallel over 8 simulated devices: the resumed run's losses equal an
    uninterrupted 8-device run's bit for bit (checked by hand also under full CPU load)."""
    ok(train(workdir, "resume_ref8", devices=8))
    ref = losses(workdir / "resume_ref8" / "main")
    run_dir = workdir / "resume_kill8" / "main"
    proc = train(workdir, "resume_kill8", env={"ZEN_TEST_FAULT": "7:SIGKILL"}, devices=8)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    out = ok(train(workdir, "resume_kill8", devices=8))
    assert "resumed from" in out
    assert losses(run_dir) == ref and sorted(ref) == list(range(1, STEPS + 1))


def test_sigterm_saves_at_the_step_boundary_and_exits_0(workdir, reference):
    run_dir = workdir / "resume_term" / "main"
    # The notice arrives during step 3's hooks; the run stops at the next boundary, 4.
    out = ok(train(workdir, "resume_term", env={"ZEN_TEST_FAULT": "3:SIGTERM"}))
    assert "SIGTERM: saved step 4" in out and "Preempted" in out
    assert checkpoints(run_dir)[-1] == 4
    out = ok(train(workdir, "resume_term"))
    assert "resumed from" in out and "(step 4/8)" in out
    assert losses(run_dir) == reference
    # timings.json (experiment.phases) keeps the preempted command beside the resumed one.
    first, resumed = Timings.read(run_dir.parent / "timings.json").invocations
    assert (first.arms["main"].steps, resumed.arms["main"].steps) == (4, 4)
    assert first.finished and first.arms["main"].train_s > 0 and not first.arms["main"].evaluated


def test_non_finite_loss_stops_naming_step_and_last_good_checkpoint(workdir):
    proc = train(
        workdir, "nonfinite", "--config.optimizer.peak_lr=1e30", "--config.checkpoint.every=1"
    )
    assert proc.returncode == 3
    # Warm-up starts at LR 0, so update 2 is the first with LR 1e30: the loss of step 3 is
    # the first non-finite value, and step 2 the last checkpoint saved.
    m = re.search(r"non-finite values at step (\d+): loss=(\S+)", proc.stderr)
    assert m and int(m.group(1)) == 3, proc.stderr[-1500:]
    assert not math.isfinite(float(m.group(2).rstrip(",")))
    assert "Last good checkpoint:" in proc.stderr and "checkpoints/2." in proc.stderr
    assert checkpoints(workdir / "nonfinite" / "main") == [1, 2]  # nothing saved after


def test_restore_for_inference(workdir, reference):
    from zen_code_jax.checkpoint import restore_for_inference
    from zen_code_jax.data.tokenizer_load import load_tokenizer
    from zen_code_jax.model.config import get_preset

    run_dir = workdir / "resume_ref" / "main"
    params, model_cfg, tokenizer, config = restore_for_inference(run_dir)
    assert model_cfg == get_preset("tiny")
    assert config.name == "resume_ref" and config.train.steps == STEPS
    assert tokenizer.fingerprint() == load_tokenizer(run_dir / "tokenizer").fingerprint()
    assert params["embed"]["embedding"].shape == (model_cfg.vocab_size, model_cfg.hidden_size)


def test_serve_a_run_params_only_on_a_mesh_at_a_step(workdir, reference, tmp_path):
    """`python -m zen_code_jax.infer --run_dir`: params only (no moments), restored onto
    --mesh at --step, in --dtype; a --tokenizer that is not the run's is refused."""
    import jax.numpy as jnp

    from zen_code_jax.data.tokenizer import Tokenizer
    from zen_code_jax.infer.__main__ import build_engine, parse_args

    run_dir = workdir / "resume_ref" / "main"
    args = parse_args([f"--run_dir={run_dir}", "--mesh=data=2,fsdp=-1", "--step=3"])
    engine, name = build_engine(args)
    emb = engine.params["embed"]["embedding"]
    assert name == "main" and emb.dtype == jnp.float32  # CPU default
    assert emb.sharding.mesh.shape["data"] == 2 and engine.mesh is not None
    assert "opt_state" not in engine.params and "embed" in engine.params
    from zen_code_jax.checkpoint import restore_params_only

    at3 = restore_params_only(run_dir, step=3)[0]["embed"]["embedding"]
    newest = restore_params_only(run_dir)[0]["embed"]["embedding"]
    assert np.array_equal(np.asarray(emb), np.asarray(at3))
    assert not np.array_equal(np.asarray(at3), np.asarray(newest))
    other = Tokenizer.train(["def f():\n    return 1\n"] * 20, engine.model_cfg.vocab_size)
    other.save(tmp_path / "tok")
    with pytest.raises(SystemExit, match="not the tokenizer"):
        build_engine(parse_args([f"--run_dir={run_dir}", f"--tokenizer={tmp_path / 'tok'}"]))
