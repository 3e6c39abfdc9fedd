"""Typed step hooks: what the generic loop (`train.loop.train`) calls, and when.

The loop stays readable, and knows nothing of corpora, evaluation or experiments, because
logging, checkpointing, held-out evaluation and fault injection are hooks rather than
branches in its body (Levanter's `Trainer.add_hook` is the model). Two kinds:

  metric hooks see host floats of a step, fetched one step late so logging never stalls
               the device pipeline; `info.state` is None. They run in the order added,
               so a check that raises (non-finite loss) stops the hooks after it.
  state hooks  see the train state after their step, once that step's metrics passed the
               metric hooks, so nothing non-finite is ever saved.

`every=N` runs a hook at steps N, 2N, ...; `every=0` never on a schedule. `at_end=True`
also runs it at the final step and when the run stops early (preemption), e.g. the
checkpoint and the progress line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """What a hook sees after optimizer step `step` (1-based) of `total_steps`."""

    step: int
    total_steps: int
    state: Any  # the TrainState after the step (state hooks), None for metric hooks
    metrics: dict[str, float]


HookFn = Callable[[StepInfo], None]


@dataclasses.dataclass(frozen=True)
class Hook:
    fn: HookFn
    every: int = 0
    at_end: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"Hook {self.name!r}: every={self.every} must be >= 0.")

    def due(self, step: int, end: bool) -> bool:
        return bool(self.every and step % self.every == 0) or (end and self.at_end)


@dataclasses.dataclass
class Hooks:
    """The hooks of one run, in order."""

    metric: list[Hook] = dataclasses.field(default_factory=list)
    state: list[Hook] = dataclasses.field(default_factory=list)

    def on_metrics(
        self, fn: HookFn, every: int = 1, *, at_end: bool = False, name: str = ""
    ) -> None:
        self.metric.append(Hook(fn, int(every), at_end, name or _name(fn)))

    def on_state(self, fn: HookFn, every: int = 0, *, at_end: bool = False, name: str = "") -> None:
        self.state.append(Hook(fn, int(every), at_end, name or _name(fn)))

    def state_due(self, step: int) -> bool:
        return any(h.due(step, end=False) for h in self.state)


def _name(fn: Any) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def run_hooks(
    hooks: list[Hook], info: StepInfo, *, end: bool = False, skip: set[str] = ()
) -> set[str]:
    """Run the hooks due at `info.step` (and the at_end ones if `end`); returns their names."""
    ran = set()
    for h in hooks:
        if h.name not in skip and h.due(info.step, end):
            h.fn(info)
            ran.add(h.name)
    return ran
