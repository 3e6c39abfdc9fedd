"""Levanter-style step hooks: `hooks.add(fn, every=N)` runs `fn(info)` every N steps.

The loop stays readable because logging, evaluation and checkpointing are hooks rather
than branches in its body. A hook with every=0 never fires on a schedule but still runs
when forced by name (e.g. the checkpoint hook at the end of training or on preemption).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from typing import Any


@dataclasses.dataclass
class StepInfo:
    """What a hook sees after an optimizer step.

    `metrics` are the host-side floats of this step (already fetched), `state` the train
    state after the step (device arrays; do not block on them unless you must).
    """

    step: int
    total_steps: int
    state: Any
    metrics: dict[str, float]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Hook:
    fn: Callable[[StepInfo], None]
    every: int
    name: str


class Hooks:
    """An ordered list of (fn, every) run after each step."""

    def __init__(self) -> None:
        self._hooks: list[_Hook] = []

    def add(self, fn: Callable[[StepInfo], None], every: int, name: str = "") -> None:
        if every < 0:
            raise ValueError(f"Hook {name or fn!r}: every={every} must be >= 0 (0 = only forced).")
        self._hooks.append(_Hook(fn, int(every), name or getattr(fn, "__name__", "hook")))

    def due(self, step: int) -> bool:
        return any(h.every and step % h.every == 0 for h in self._hooks)

    def run(self, info: StepInfo, force: Collection[str] = ()) -> None:
        """Run every hook due at `info.step`, plus the hooks named in `force`."""
        for h in self._hooks:
            if h.name in force or (h.every and info.step % h.every == 0):
                h.fn(info)
