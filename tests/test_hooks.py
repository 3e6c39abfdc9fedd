"""The standard hooks (`train/standard_hooks.py`) and the arm's one config resolution."""

from __future__ import annotations

import math
import signal

import pytest

from zen_code_jax.config import base_config, model_config_from, model_group
from zen_code_jax.experiment.arm import resolve_config, resolve_steps
from zen_code_jax.train.hooks import Hooks, StepInfo
from zen_code_jax.train.standard_hooks import (
    CheckpointHook,
    NonFiniteError,
    Preemption,
    ProgressHook,
    add_standard_hooks,
    format_duration,
    nonfinite_check,
)


class RecordingWriter:
    def __init__(self) -> None:
        self.records: list[tuple[int, dict[str, float], str]] = []

    def scalars(self, step, values, prefix=""):
        self.records.append((step, dict(values), prefix))


class FakeCheckpointer:
    def __init__(self) -> None:
        self.saved: list[int] = []

    def save(self, step, state, data_iter, meta, tokenizer_json):
        self.saved.append(step)

    def wait(self) -> None:
        pass

    def step_dir(self, step):
        return f"ckpts/{step}"


def _progress(writer) -> ProgressHook:
    mcfg = model_config_from(model_group("tiny"))
    return ProgressHook("t", writer, mcfg, 16, 64, 1e12, 1, printing=False)


def test_progress_logs_every_metric_of_the_step():
    writer = RecordingWriter()
    hook = _progress(writer)
    metrics = {"loss": 2.0, "z_loss": 9.0, "grad_norm": 1.5, "lr": 1e-3, "tokens": 64.0, "kl": 0.25}
    hook(StepInfo(1, 4, None, metrics))
    (step, values, prefix), = writer.records  # fmt: skip
    assert (step, prefix) == (1, "train/")
    assert {k: values[k] for k in metrics} == metrics
    assert math.isnan(values["tokens_per_s"]) and math.isnan(values["mfu"])  # clock not started


def test_nonfinite_check_names_step_and_last_checkpoint():
    ckpt = FakeCheckpointer()
    checkpoint = CheckpointHook(ckpt, None, dict, {}, last_good=None)
    check = nonfinite_check("arm", checkpoint)
    check(StepInfo(1, 4, None, {"loss": 1.0, "grad_norm": 2.0}))  # finite: no error
    with pytest.raises(NonFiniteError, match="step 2: loss=nan.*none \\(no checkpoint"):
        check(StepInfo(2, 4, None, {"loss": float("nan"), "grad_norm": 2.0}))
    checkpoint(StepInfo(3, 4, object(), {}))
    assert ckpt.saved == [3]
    with pytest.raises(NonFiniteError, match="grad_norm=inf. Last good checkpoint: ckpts/3"):
        check(StepInfo(4, 4, None, {"loss": 1.0, "grad_norm": float("inf")}))


def test_add_standard_hooks_order_and_schedule():
    hooks = Hooks()
    hooks.on_state(lambda info: None, 2, name="before")
    checkpoint = CheckpointHook(FakeCheckpointer(), None, dict, {}, last_good=None)
    add_standard_hooks(
        hooks,
        "arm",
        progress=_progress(RecordingWriter()),
        checkpoint=checkpoint,
        log_every=5,
        checkpoint_every=3,
    )
    assert [h.name for h in hooks.metric] == ["nonfinite", "clock", "log"]
    assert [(h.every, h.at_end) for h in hooks.metric] == [(1, False), (1, False), (5, True)]
    assert [h.name for h in hooks.state] == ["before", "checkpoint"]
    assert (hooks.state[1].every, hooks.state[1].at_end) == (3, True)


def test_preemption_turns_sigterm_into_a_flag():
    previous = signal.getsignal(signal.SIGTERM)
    with Preemption() as p:
        assert not p.requested
        signal.raise_signal(signal.SIGTERM)
        assert p.requested
    assert signal.getsignal(signal.SIGTERM) == previous


def test_format_duration():
    assert format_duration(65) == "1m05s"
    assert format_duration(3 * 3600 + 125) == "3h02m"
    assert format_duration(float("nan")) == "?"


def test_resolve_config_builds_one_copy_only_when_the_data_changes_it():
    cfg = base_config()
    cfg.train.steps = 7
    assert resolve_config(cfg, repo_format=str(cfg.data.repo_format), steps=7) is cfg
    final = resolve_config(cfg, repo_format="qwen2.5", steps=12)
    assert final is not cfg
    assert (final.data.repo_format, final.train.steps) == ("qwen2.5", 12)
    assert (cfg.data.repo_format, cfg.train.steps) == ("", 7)  # the caller's is untouched


def test_resolve_steps_from_epochs():
    cfg = base_config()
    cfg.train.steps = 5

    class Data:
        batches_per_epoch = 4

    assert resolve_steps(cfg, Data()) == 5
    cfg.train.epochs = 3
    assert resolve_steps(cfg, Data()) == 12
    with pytest.raises(ValueError, match="batches_per_epoch"):
        resolve_steps(cfg, object())
