"""The hooks every trainer runs: progress line + scalars, non-finite check, checkpoint,
and SIGTERM (preemption) handling. Generic (no corpus, evaluation or experiment
knowledge), so a second trainer wires them with `add_standard_hooks` instead of copying
an orchestrator; what is experiment-specific (held-out batches, HF export) stays in
`zen_code_jax.experiment.hooks`.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from zen_code_jax.checkpoint import Checkpointer
from zen_code_jax.model.config import ModelConfig
from zen_code_jax.parallel import multihost
from zen_code_jax.train import flops
from zen_code_jax.train.hooks import Hooks, StepInfo


class NonFiniteError(RuntimeError):
    """Loss or gradient norm became NaN/inf; the message names the step and last checkpoint."""


def format_duration(seconds: float) -> str:
    """`1h05m`, `3m07s`, or `?` for an unknown (non-finite) duration."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Preemption:
    """Turn SIGTERM into a flag the loop reads at step boundaries (installed for one run).

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


@contextlib.contextmanager
def preemption_stop() -> Iterator[Callable[[int], bool]]:
    """The loop's `stop_requested(step)` for this process: jax's preemption sync point
    when available (multi-host: every host stops at the same step), else SIGTERM."""
    sync = multihost.preemption_sync_available()
    with Preemption(install=not sync) as sigterm:
        yield multihost.reached_preemption if sync else (lambda step: sigterm.requested)


class ProgressHook:
    """A metric hook: the progress line (loss, steps/s, tokens/s, MFU, ETA) and `train/`
    scalars: every metric the step returned (the objective's, grad_norm, lr, tokens, padding), plus
    tokens_per_s and mfu. `tick` (a metric hook every step) starts the clock when the first
    step's metrics arrive, i.e. once the first step (which includes compiling) has finished."""

    def __init__(
        self,
        name: str,
        writer: Any,
        model_cfg: ModelConfig,
        seq_len: int,
        tokens_per_step: int,
        peak_flops: float,
        devices: int,
        printing: bool = True,
    ) -> None:
        self.name, self.writer, self.model_cfg = name, writer, model_cfg
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
        self.writer.scalars(info.step, {**m, "tokens_per_s": tok_s, "mfu": mfu}, prefix="train/")
        if self.printing:
            print(
                f"[{self.name}] step {info.step}/{info.total_steps} loss {m['loss']:.4f} "
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


def nonfinite_check(name: str, checkpoint: CheckpointHook) -> Callable[[StepInfo], None]:
    """A metric hook (first, every step): stop before anything non-finite is saved."""

    def check(info: StepInfo) -> None:
        bad = {k: info.metrics[k] for k in ("loss", "grad_norm") if k in info.metrics}
        if all(math.isfinite(v) for v in bad.values()):
            return
        checkpoint.ckpt.wait()
        raise NonFiniteError(
            f"[{name}] non-finite values at step {info.step}: "
            + ", ".join(f"{k}={v}" for k, v in bad.items())
            + f". Last good checkpoint: {checkpoint.where()}. Lower optimizer.peak_lr or "
            "raise optimizer.warmup_steps, then rerun (it resumes from that checkpoint)."
        )

    return check


def add_standard_hooks(
    hooks: Hooks,
    name: str,
    *,
    progress: ProgressHook,
    checkpoint: CheckpointHook,
    log_every: int,
    checkpoint_every: int,
) -> None:
    """Metric hooks in order (the non-finite check first, so nothing is logged past a NaN;
    the clock; the progress line every `log_every` and at the end) and the checkpoint as a
    state hook (every `checkpoint_every` and at the end). State hooks added before this
    call run before the checkpoint, those added after run after it."""
    hooks.on_metrics(nonfinite_check(name, checkpoint), every=1, name="nonfinite")
    hooks.on_metrics(progress.tick, every=1, name="clock")
    hooks.on_metrics(progress, int(log_every), at_end=True, name="log")
    hooks.on_state(checkpoint, int(checkpoint_every), at_end=True, name="checkpoint")


def rng_data(key: jax.Array) -> list[int]:
    """A PRNG key as JSON-able ints (checkpoint metadata; restored with wrap_key_data)."""
    return np.asarray(jax.random.key_data(key)).tolist()
