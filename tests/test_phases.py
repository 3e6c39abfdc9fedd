"""Wall time per phase (`zen_code_jax.experiment.phases`, issue 22's measurements).

Fast: a scripted clock stands in for time (no training), except the jax compile listener,
which compiles one tiny function for real. The real end-to-end record of a smoke run is
checked by tests/test_experiments.py (timings.json beside report.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from zen_code_jax.experiment import phases as phases_module
from zen_code_jax.experiment.phases import (
    TIMINGS_JSON,
    ArmClock,
    ArmPhases,
    RunTimer,
    Timings,
    note_corpus,
    time_state_hooks,
)
from zen_code_jax.experiment.report import write_report
from zen_code_jax.experiment.report_phases import command_table, report_section
from zen_code_jax.rundir import RunDir
from zen_code_jax.train.hooks import Hooks, StepInfo, run_hooks

ROOT = Path(__file__).resolve().parents[1]


def smoke_config():
    spec = importlib.util.spec_from_file_location(
        "fim_ablation", ROOT / "experiments/fim_ablation.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("smoke")


class FakeClock:
    """A clock that moves only when told (`tick`)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


def fake_arm(clock: FakeClock, *, steps: int = 3, evaluate: bool = True) -> ArmPhases:
    """Drive an ArmClock the way run_arm does (same phases, same nesting), the work being
    clock ticks: set-up 1 s (corpus 4 s inside), first step 5 s, later steps 0.5 s each,
    a checkpoint save 0.25 s, held-out loss 0.125 s, final wait 0.75 s, evaluation 2 s."""
    arm = ArmClock(clock)
    with arm.phase("setup_s"):
        clock.tick(0.5)
        with arm.phase("prepare_s"):
            clock.tick(4.0)
        clock.tick(0.5)
    hooks = Hooks()
    hooks.on_state(lambda info: clock.tick(0.25), 1, name="checkpoint")
    hooks.on_state(lambda info: clock.tick(0.125), 1, name="heldout_batches")
    time_state_hooks(hooks, arm)
    calls = []

    def step_fn() -> None:  # the first call compiles: 5 s, then 0.5 s per step
        calls.append(1)
        clock.tick(5.0 if len(calls) == 1 else 0.5)

    step = arm.first_call("compile_s", step_fn)
    with arm.phase("train_s"):
        for i in range(1, steps + 1):
            step()
            if i == steps:
                run_hooks(hooks.state, StepInfo(i, steps, None, {}), end=True)
    arm.phases.steps = steps
    with arm.phase("checkpoint_wait_s"):
        clock.tick(0.75)
    if evaluate:
        with arm.phase("eval_s"):
            clock.tick(2.0)
        arm.phases.evaluated = True
    return arm.phases


def test_phases_are_exclusive_and_every_one_is_measured():
    clock = FakeClock()
    start = clock()
    p = fake_arm(clock)
    assert p.prepare_s == 4.0 and p.setup_s == 1.0  # the corpus is not counted twice
    assert p.compile_s == 5.0  # the first call only
    assert p.train_s == 1.0  # steps 2 and 3
    assert p.checkpoint_s == 0.25 and p.heldout_s == 0.125
    assert p.checkpoint_wait_s == 0.75 and p.eval_s == 2.0
    assert all(getattr(p, f) > 0 for f in ArmPhases.PHASES)
    assert p.total_s() == clock() - start  # exclusive phases add up to the wall time


def test_unknown_phase_is_a_one_line_error():
    with pytest.raises(ValueError, match="Unknown phase 'trian_s'"):
        with ArmClock().phase("trian_s"):
            pass


def test_state_hooks_keep_their_order_and_names():
    calls = []
    hooks = Hooks()
    for name in ("heldout_batches", "checkpoint", "hf_export"):
        hooks.on_state(lambda info, n=name: calls.append(n), 1, name=name)
    time_state_hooks(hooks, ArmClock())
    run_hooks(hooks.state, StepInfo(1, 1, None, {}))
    assert calls == ["heldout_batches", "checkpoint", "hf_export"]
    assert [h.name for h in hooks.state] == ["heldout_batches", "checkpoint", "hf_export"]


def test_jax_compile_seconds_are_seen_once_per_compile():
    """The listener hears jax's compile events (names that a jax upgrade could rename)."""
    arm = ArmClock()
    f = jax.jit(lambda x: jnp.tanh(x) * 3.0 + 0.137)  # a function no other test compiles
    x = jnp.arange(7.0)
    with arm.compiles():
        f(x).block_until_ready()
    first = arm.phases.jax_compile_s
    assert first > 0
    with arm.compiles():
        f(x).block_until_ready()  # cached: no compile
    assert arm.phases.jax_compile_s == first
    f(x + 1).block_until_ready()  # listener removed outside the block
    assert arm.phases.jax_compile_s == first


def run_command(
    exp: Path, clock: FakeClock, arms: dict[str, dict], *, mode: str = "all", report: bool = True
) -> RunTimer:
    """What run.py does, on the fake clock: start-up 3 s (process age 2 s + 1 s), the arms,
    a report of 1.5 s, and 0.01 s of bookkeeping between phases."""
    timer = RunTimer(exp, mode=mode, arm="", clock=clock, process_age_s=2.0)
    clock.tick(1.0)
    timer.startup_done()
    for name, kw in arms.items():
        phases = fake_arm(clock, **kw)
        clock.tick(0.01)
        timer.arm_done(name, phases)
    if report:
        with timer.report():
            clock.tick(1.5)
    clock.tick(0.01)
    timer.finish()
    return timer


def test_the_record_adds_up_to_the_command_and_is_written_atomically(tmp_path):
    clock = FakeClock()
    t0 = clock() - 2.0  # the process started 2 s before the timer
    timer = run_command(tmp_path, clock, {"fim0": {}, "fim25": {}})
    inv = Timings.read(tmp_path / TIMINGS_JSON).invocations[0]
    assert inv.finished and set(inv.arms) == {"fim0", "fim25"}
    assert inv.startup_s == 3.0 and inv.report_s == 1.5
    assert inv.total_s == pytest.approx(clock() - t0)
    assert inv.total_s - inv.attributed_s() == pytest.approx(0.03)  # the bookkeeping only
    stored = json.loads((tmp_path / TIMINGS_JSON).read_text())
    assert set(stored["invocations"][0]["arms"]["fim0"]) >= set(ArmPhases.PHASES)
    # Written through a temporary file and a rename: nothing else is left beside it.
    assert {p.name for p in tmp_path.iterdir()} == {TIMINGS_JSON, f".{TIMINGS_JSON}.lock"}
    text = "\n".join(command_table(timer.invocation, tmp_path))
    assert (
        "compile (first train step)" in text and "total 32.8" in text
    )  # 2 x 14.125 + 3 + 1.5 + 0.03


def test_a_resumed_command_keeps_the_earlier_phases(tmp_path):
    clock = FakeClock()
    # Command 1 trains fim0 for 3 steps and stops (SIGTERM) before evaluating.
    run_command(tmp_path, clock, {"fim0": {"steps": 3, "evaluate": False}}, report=False)
    first = Timings.read(tmp_path / TIMINGS_JSON).invocations[0]
    # Command 2 resumes fim0 (3 more steps, evaluates), then fim25; command 3 re-evaluates
    # fim0 (eval 2 s again) and rebuilds the report; command 4 only rebuilds the report.
    run_command(tmp_path, clock, {"fim0": {"steps": 3}, "fim25": {}})
    run_command(tmp_path, clock, {"fim0": {"steps": 0}}, mode="eval")
    run_command(tmp_path, clock, {}, mode="report")
    timings = Timings.read(tmp_path / TIMINGS_JSON)
    assert len(timings.invocations) == 4
    assert timings.invocations[0] == first  # never rewritten by a later command
    arms, startup = timings.combined(["fim0", "fim25"])
    assert startup == 9.0  # the three commands that ran arms, not the report-only one
    fim0 = arms["fim0"]
    assert fim0.steps == 6 and fim0.prepare_s == 12.0  # work accumulates
    assert fim0.compile_s == 10.0  # each training command's first step (none in eval)
    assert fim0.eval_s == 2.0 and fim0.evaluated  # the newest evaluation, not the sum


def write_summary(run_dir: Path, seconds: dict[str, float]) -> None:
    RunDir(run_dir).update_summary(
        3, {t: {"eval_seconds": s, "x": 1.0} for t, s in seconds.items()}
    )


def test_report_section_renders_and_a_report_rebuild_leaves_it_unchanged(tmp_path, monkeypatch):
    loads = iter(range(100))  # the load average moves between any two readings
    monkeypatch.setattr(phases_module, "_load", lambda: float(next(loads)))
    exp = tmp_path / "fim_ablation"
    corpus = tmp_path / "cache" / "abc"
    corpus.mkdir(parents=True)
    (corpus / "manifest.json").write_text(json.dumps({"timings": {"tokenizer_s": 1.25}}))
    clock = FakeClock()
    timer = RunTimer(exp, mode="all", arm="", clock=clock, process_age_s=0.0)
    timer.startup_done()
    for name in ("fim0", "fim25"):
        phases = fake_arm(clock)
        phases.corpus_built, phases.corpus_dir = name == "fim0", str(corpus)
        (exp / name).mkdir(parents=True)
        write_summary(exp / name, {"heldout_fim": 1.5, "humaneval": 0.25})
        timer.arm_done(name, phases)
    lines = report_section(exp, ["fim0", "fim25"])
    text = "\n".join(lines)
    assert lines[0] == "## Wall time per phase (seconds)"
    assert "| phase | fim0 | fim25 | all arms |" in text
    assert "| ↳ of which tokenizer training | 1.2 | – | 1.2 |" in text
    assert "| ↳ heldout_fim | 1.5 | 1.5 | 3.0 |" in text  # from eval/summary.json
    assert "| ↳ other (engine, summaries) | 0.2 | 0.2 | 0.5 |" in text  # 2 - 1.5 - 0.25
    assert "| arm total | 14.1 | 14.1 | 28.2 |" in text
    assert "| steps run | 3 | 3 | 6 |" in text

    # In report.md, before the figure, written (as run.py does) before the command ends; its
    # end and a --mode=report command change nothing there.
    config = smoke_config()
    md, _ = write_report(exp, config)
    report = md.read_text()
    assert "## Wall time per phase (seconds)" in report and text in report
    clock.tick(1.0)
    timer.finish()
    run_command(exp, clock, {}, mode="report")
    md, _ = write_report(exp, config)
    assert md.read_text() == report


def test_no_timings_no_section(tmp_path):
    assert report_section(tmp_path, ["fim0"]) == []


def test_a_corpus_counts_as_built_only_when_its_manifest_is_newer_than_the_call(tmp_path):
    class Corpus:
        directory = tmp_path

    (tmp_path / "manifest.json").write_text("{}")
    now = time.time()
    os.utime(tmp_path / "manifest.json", (now - 60, now - 60))  # a cache hit: built earlier
    cached = ArmPhases()
    note_corpus(cached, Corpus(), started=now)
    assert cached.corpus_dir == str(tmp_path) and not cached.corpus_built
    built = ArmPhases()
    note_corpus(built, Corpus(), started=now - 61)  # written during the call
    assert built.corpus_built
    memory = ArmPhases()
    note_corpus(memory, object(), started=now)  # an in-memory corpus has no manifest
    assert memory.corpus_dir == "" and not memory.corpus_built


def test_a_damaged_record_never_stops_a_run(tmp_path, capsys):
    (tmp_path / TIMINGS_JSON).write_text('{"invocations": [{"id": ')
    with pytest.raises(ValueError, match=r"timings.json is not a timings record .*delete it"):
        Timings.read(tmp_path / TIMINGS_JSON)
    assert "Not shown:" in report_section(tmp_path, ["fim0"])[-1]
    run_command(tmp_path, FakeClock(), {"fim0": {}})
    assert len(Timings.read(tmp_path / TIMINGS_JSON).invocations) == 1
    assert (tmp_path / f"{TIMINGS_JSON}.bad").read_text().startswith('{"invocations"')
    assert "warning:" in capsys.readouterr().out
