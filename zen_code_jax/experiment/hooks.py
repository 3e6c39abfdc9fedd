"""The hooks one arm runs: progress line + scalars, non-finite check, checkpoint, held-out
loss, periodic HF export, and SIGTERM handling. Built here, not in `train`, so the loop stays generic."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from zen_code_jax.checkpoint import Checkpointer
from zen_code_jax.data.batch import Batch
from zen_code_jax.experiment.plan import format_duration
from zen_code_jax.hf.export import export_params
from zen_code_jax.model.config import ModelConfig
from zen_code_jax.train import flops
from zen_code_jax.train.hooks import StepInfo


class NonFiniteError(RuntimeError):
    """Loss or gradient norm became NaN/inf; the message names the step and last checkpoint."""


class Preemption:
    """Turn SIGTERM into a flag the loop reads at step boundaries (installed for one arm).

    Multi-process runs leave SIGTERM to jax's preemption sync manager instead
    (`install=False`), which agrees on one stopping step across hosts.
    """

    def __init__(self, install: bool = True) -> None:
        self.requested = False
        self._install = install
        self._previous: Any = None

    def __enter__(self) -> Preemption:
        if self._install:
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handle)
            except ValueError:  # not the main thread: no preemption handling
                self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class ProgressHook:
    """A metric hook: the progress line (loss, steps/s, tokens/s, MFU, ETA) and train/
    scalars. `tick` (a metric hook every step) starts the clock when the first step's
    metrics arrive, i.e. once the first step (which includes compiling) has finished."""

    def __init__(
        self,
        arm: str,
        writer: Any,
        model_cfg: ModelConfig,
        seq_len: int,
        tokens_per_step: int,
        peak_flops: float,
        devices: int,
        printing: bool = True,
    ) -> None:
        self.arm, self.writer, self.model_cfg = arm, writer, model_cfg
        self.seq_len, self.tokens_per_step = seq_len, tokens_per_step
        self.peak, self.devices, self.printing = peak_flops, devices, printing
        self.t0: float | None = None
        self.s0 = 0

    def tick(self, info: StepInfo) -> None:
        if self.t0 is None:
            self.t0, self.s0 = time.perf_counter(), info.step

    def __call__(self, info: StepInfo) -> None:
        m = info.metrics
        if self.t0 is None or info.step <= self.s0:
            rate = float("nan")
        else:
            rate = (info.step - self.s0) / (time.perf_counter() - self.t0)
        tok_s = rate * self.tokens_per_step
        mfu = (
            flops.mfu(tok_s, self.model_cfg, self.seq_len, self.devices, self.peak)
            if rate == rate
            else math.nan
        )
        eta = (info.total_steps - info.step) / rate if rate > 0 else float("nan")
        scalars = {
            "loss": m["loss"],
            "lr": m.get("lr", math.nan),
            "grad_norm": m.get("grad_norm", math.nan),
            "tokens_per_s": tok_s,
            "mfu": mfu,
        }
        self.writer.scalars(info.step, scalars, prefix="train/")
        if self.printing:
            print(
                f"[{self.arm}] step {info.step}/{info.total_steps} loss {m['loss']:.4f} "
                f"| {rate:.2f} steps/s {tok_s / 1e3:.1f}K tok/s MFU {100 * mfu:.1f}% "
                f"| ETA {format_duration(eta)}",
                flush=True,
            )


class CheckpointHook:
    """A state hook: save state + data iterator + metadata; remembers the last good step."""

    def __init__(
        self,
        ckpt: Checkpointer,
        data_iter: Any,
        meta: Callable[[], dict[str, Any]],
        tokenizer_json: dict[str, Any],
        last_good: int | None,
    ) -> None:
        self.ckpt, self.data_iter, self.meta = ckpt, data_iter, meta
        self.tokenizer_json = tokenizer_json
        self.last_good = last_good

    def __call__(self, info: StepInfo) -> None:
        self.ckpt.save(info.step, info.state, self.data_iter, self.meta(), self.tokenizer_json)
        self.last_good = info.step

    def where(self) -> str:
        if self.last_good is None:
            return "none (no checkpoint was saved yet)"
        return str(self.ckpt.step_dir(self.last_good))


def nonfinite_check(arm: str, checkpoint: CheckpointHook) -> Callable[[StepInfo], None]:
    """A metric hook (first, every step): stop before anything non-finite is saved."""

    def check(info: StepInfo) -> None:
        bad = {k: info.metrics[k] for k in ("loss", "grad_norm") if k in info.metrics}
        if all(math.isfinite(v) for v in bad.values()):
            return
        checkpoint.ckpt.wait()
        raise NonFiniteError(
            f"[{arm}] non-finite values at step {info.step}: "
            + ", ".join(f"{k}={v}" for k, v in bad.items())
            + f". Last good checkpoint: {checkpoint.where()}. Lower optimizer.peak_lr or "
            "raise optimizer.warmup_steps, then rerun (it resumes from that checkpoint)."
        )

    return check


def batches_loss(eval_step: Callable, params: Any, batches: Sequence[Batch]) -> dict[str, float]:
    """Mean next-token loss (nats per token) over fixed batches. (Bits per byte need the
    bytes behind the tokens, which packed batches do not carry: the `heldout_loss` task
    reports them.)"""
    loss_sum, tokens = 0.0, 0.0
    for batch in batches:
        out = eval_step(params, batch)
        loss_sum += float(out["loss_sum"])
        tokens += float(out["tokens"])
    return {"loss": loss_sum / max(tokens, 1.0)}


def periodic_heldout(
    writer: Any, eval_step: Callable, batches: Sequence[Batch]
) -> Callable[[StepInfo], None]:
    """A state hook: `eval/heldout_batches/loss` on fixed held-out batches (left to right,
    FIM off): the learning curve between final evaluations."""

    def hook(info: StepInfo) -> None:
        if batches:
            values = batches_loss(eval_step, info.state.params, batches)
            writer.scalars(info.step, values, prefix="eval/heldout_batches/")

    return hook


def rng_data(key: jax.Array) -> list[int]:
    return np.asarray(jax.random.key_data(key)).tolist()


def hf_export(root: Path, model_cfg: Any, tokenizer: Any) -> Callable[[StepInfo], None]:
    """A state hook (`checkpoint.hf_export_every`): write ROOT/<step>/ as an HF directory
    (sharded safetensors + index + configs + tokenizer), atomically, so a schedule of
    exports is loadable by transformers / vLLM while training goes on. Single-process
    runs (each tensor is gathered to this host in turn)."""

    def hook(info: StepInfo) -> None:
        export_params(
            info.state.params, model_cfg, root / str(info.step), tokenizer=tokenizer, overwrite=True
        )

    return hook
