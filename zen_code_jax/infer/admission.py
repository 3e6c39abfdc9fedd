"""Admission policy of the scheduler: which waiting row gets a free slot.

Kept apart from the decoding loop (`scheduler.py`) because it is pure policy: a function of
the waiting rows' budgets and queueing turns and of the slots each request holds, tested
on its own and through the scheduler (tests/test_fairness.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Admission:
    """Who gets a free slot: fairness across requests (the server's; off by default, so
    evaluation's single job is admitted in order into every slot).

    Why. Without it one legal request (n=16, max_tokens=1024) fills every slot and queues
    its other rows ahead of everyone, so a single-line completion waits for the hog's whole
    run. With `max_slot_share` < 1 a request's rows hold at most
    max(1, floor(share x slots)) slots at once: the rest stay free for other requests (the
    hog still finishes, on its share). With `short_first`, waiting rows are admitted by
    their budget (`max_new_tokens`) minus `aging` tokens per scheduler turn they have
    waited, ties first come first served: short budgets go first, and a long row's key
    falls without bound while it waits (new rows start at their budget >= 0), so after
    about (its budget / aging) turns it outranks every newcomer: nothing starves. Turns, not
    seconds: the order is a pure function of what was submitted when.
    """

    max_slot_share: float = 1.0
    short_first: bool = False
    aging: float = 1.0  # budget tokens forgiven per turn waited

    def __post_init__(self) -> None:
        if not 0.0 < self.max_slot_share <= 1.0:
            raise ValueError(
                f"max_slot_share must be in (0, 1] (1: no cap), got {self.max_slot_share}."
            )
        if not self.aging > 0.0:
            raise ValueError(f"aging must be > 0 tokens per turn, got {self.aging}.")

    def order(self, rows: Sequence[tuple[int, int]], turn: int) -> list[int]:
        """Indices of waiting `rows` ((max_new_tokens, turn queued) each, in queue order)
        in the order they are offered a free slot at scheduler turn `turn`: as queued, or
        (`short_first`) by budget minus aging, ties as queued."""
        if not self.short_first:
            return list(range(len(rows)))
        return sorted(
            range(len(rows)), key=lambda k: (rows[k][0] - self.aging * (turn - rows[k][1]), k)
        )

    def cap(self, slots: int) -> int:
        """The most slots one request's rows may hold at once (at least 1)."""
        return max(1, int(self.max_slot_share * slots))
