"""The generic training loop: `train(state, step_fn, batches, hooks, start=, total=)`.

It knows nothing of corpora, evaluation, checkpoints, objectives or experiments (those are
hooks: `train.standard_hooks` and `zen_code_jax.experiment.hooks`; the objective lives in
the step), only the order of events in one step:

  1. next batch; dispatch the jitted step on (state, batch, extra) (asynchronous on
     accelerators; `extra` is the objective's frozen inputs, the same every step);
  2. the previous step's metrics, now finished, go to the metric hooks (one step late, so
     fetching them never stalls the device);
  3. the stop decision (`stop_requested(step)`, e.g. SIGTERM or the multi-host preemption
     sync point; asked at every step, on every host);
  4. at the final step, when stopping, or when a state hook is due: this step's metrics go
     to the metric hooks (at_end ones forced at the end), then the state hooks run (at_end
     ones forced), so a check that raises in a metric hook runs before anything is saved.

Exactness: with a checkpoint hook that saves the state after k updates and the data
iterator after k batches, a rerun from step k replays steps k+1.. with the same batches and
the same arithmetic, i.e. bitwise the same losses on CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from zen_code_jax.data.batch import Batch
from zen_code_jax.train.hooks import Hooks, StepInfo, run_hooks
from zen_code_jax.train.state import TrainState

# (state, batch, extra) -> (state, metrics); `extra` is the objective's frozen inputs.
StepFn = Callable[[TrainState, Batch, Any], tuple[TrainState, Mapping[str, Any]]]


class LazyMetrics:
    """Hold one step's device metrics; hand them over as floats one step later.

    `push(step, metrics)` stores the new (still computing) arrays and returns the previous
    step's values converted to Python floats, by which time the device has finished them.
    `flush()` blocks for the pending step.
    """

    def __init__(self) -> None:
        self._pending: tuple[int, Mapping[str, Any]] | None = None

    def push(self, step: int, metrics: Mapping[str, Any]) -> tuple[int, dict[str, float]] | None:
        ready = self.flush()
        self._pending = (step, metrics)
        return ready

    def flush(self) -> tuple[int, dict[str, float]] | None:
        if self._pending is None:
            return None
        step, metrics = self._pending
        self._pending = None
        return step, {k: float(np.asarray(v)) for k, v in metrics.items()}


@dataclasses.dataclass(frozen=True)
class LoopResult:
    state: TrainState
    step: int  # the last step run
    preempted: bool  # stopped early by stop_requested (the at_end hooks ran)


def train(
    state: TrainState,
    step_fn: StepFn,
    batches: Iterator[Batch],
    hooks: Hooks,
    *,
    start: int,
    total: int,
    stop_requested: Callable[[int], bool] = lambda step: False,
    extra: Any = None,
) -> LoopResult:
    """Run steps start+1 .. total (1-based) of `step_fn` on `batches`, calling `hooks`.

    `extra` (the objective's frozen inputs, e.g. a teacher's params) goes to every step
    unchanged; None means the objective has none."""
    lazy = LazyMetrics()

    def metric_hooks(ready: tuple[int, dict[str, float]] | None, end: bool = False) -> None:
        if ready is not None:
            run_hooks(hooks.metric, StepInfo(ready[0], total, None, ready[1]), end=end)

    step = start
    for step in range(start + 1, total + 1):
        state, metrics = step_fn(state, next(batches), extra)
        metric_hooks(lazy.push(step, metrics))
        final = step == total
        stop = stop_requested(step) and not final
        end = final or stop
        if end or hooks.state_due(step):
            ready = lazy.flush()
            metric_hooks(ready, end=end)
            values = ready[1] if ready is not None else {}
            run_hooks(hooks.state, StepInfo(step, total, state, values), end=end)
        if stop:
            return LoopResult(state, step, preempted=True)
    return LoopResult(state, step, preempted=False)
