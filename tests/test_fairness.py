"""Fairness across requests: the scheduler's admission policy (`admission.Admission`).

The policy on its own (share cap, order, aging), then on the scheduler with the tiny
model: a hog request holds at most its share of the slots, a short request gets a slot at
once and finishes first, nothing starves, and a row's tokens do not depend on its slot or
on when it was admitted (compared with the same row decoded alone). A stub tokenizer keeps
the file fast: the scheduler only decodes text to look for stop strings.
"""

from __future__ import annotations

import time

import pytest

from zen_code_jax.infer.admission import Admission
from zen_code_jax.infer.engine import random_params
from zen_code_jax.infer.request import CompletionRequest
from zen_code_jax.infer.scheduler import Job, Scheduler
from zen_code_jax.infer.slots import SlotDecoder
from zen_code_jax.model import get_preset

CFG = get_preset("tiny")
SLOTS = 4
FAIR = Admission(max_slot_share=0.5, short_first=True)


class StubTokenizer:
    """One letter per token id: enough for the scheduler's text bookkeeping."""

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(97 + int(i) % 26) for i in ids)


@pytest.fixture(scope="module")
def decoder() -> SlotDecoder:
    return SlotDecoder(random_params(CFG, seed=0, scale=0.2), CFG, slots=SLOTS, max_len=64, chunk=8)


def scheduler(decoder: SlotDecoder, admission: Admission = FAIR) -> Scheduler:
    return Scheduler(decoder, StubTokenizer(), stop_ids=(), admission=admission)


PROMPT = [11, 12, 13, 14, 15]
SHORT = [21, 22, 23]


def hog(n: int = 8, budget: int = 24, temperature: float = 1.0) -> Job:
    return Job(
        [CompletionRequest(PROMPT, budget, temperature, seed=5, sample_index=j) for j in range(n)],
        stream=False,
    )


def short(budget: int = 4) -> Job:
    return Job([CompletionRequest(SHORT, budget)], stream=False)


def held(s: Scheduler, job: Job) -> int:
    return sum(e is not None and e[0] is job for e in s.slot_rows)


def drain(s: Scheduler, *jobs: Job, limit: int = 2000) -> list[Job]:
    """Step until every job is done; the jobs in the order they finished."""
    done: list[Job] = []
    for _ in range(limit):
        done += [j for j in jobs if j.finished and j not in done]
        if len(done) == len(jobs):
            return done
        s.step()
    raise AssertionError("jobs did not finish")


# ----------------------------------------------------------------------- the policy alone
def test_share_cap_is_at_least_one_slot():
    assert Admission().cap(8) == 8
    assert Admission(max_slot_share=0.5).cap(8) == 4
    assert Admission(max_slot_share=0.5).cap(3) == 1
    assert Admission(max_slot_share=0.01).cap(8) == 1
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="max_slot_share must be in"):
            Admission(max_slot_share=bad)
    with pytest.raises(ValueError, match="aging must be > 0"):
        Admission(aging=0.0)


def test_order_is_fifo_when_off_and_short_first_with_fifo_ties():
    rows = [(1024, 0), (16, 0), (64, 0), (16, 0)]  # (budget, turn queued)
    assert Admission().order(rows, turn=0) == [0, 1, 2, 3]
    assert FAIR.order(rows, turn=0) == [1, 3, 2, 0]


def test_aging_lets_a_long_row_pass_newcomers():
    fair = Admission(short_first=True, aging=1.0)
    # A 100-token row queued at turn 0 against a 1-token row queued at turn t.
    assert fair.order([(100, 0), (1, 98)], turn=98) == [1, 0]  # keys 2 vs 1: it waits
    assert fair.order([(100, 0), (1, 99)], turn=99) == [0, 1]  # 1 vs 1: queue order
    assert fair.order([(1, 100), (100, 0)], turn=100) == [1, 0]  # 0 < 1: it goes first


# ------------------------------------------------------------------ on the scheduler
def test_hog_holds_at_most_its_share_and_short_gets_a_slot_at_once(decoder):
    s = scheduler(decoder)
    h = hog()
    s.submit(h)
    s.step()
    assert held(s, h) == FAIR.cap(SLOTS) == 2
    s.step()
    sh = short()
    s.submit(sh)
    s.step()
    assert held(s, sh) == 1 and held(s, h) == 2  # two slots stay free of the hog
    order = drain(s, h, sh)
    assert order == [sh, h]
    assert all(r.finish_reason == "length" and len(r.ids) == 24 for r in h.rows)


def test_without_the_policy_the_short_request_waits_for_the_hog(decoder):
    """The behaviour the policy fixes (the default, kept for evaluation's single job)."""
    s = scheduler(decoder, Admission())
    h, sh = hog(), short()
    s.submit(h)
    s.step()
    s.submit(sh)
    s.step()
    assert held(s, h) == SLOTS and held(s, sh) == 0
    assert drain(s, h, sh) == [h, sh]  # it waited for both waves of the hog's rows
    second_wave = h.rows[SLOTS:]  # queued ahead of the short row
    assert sh.rows[0].t_admitted >= min(r.t_done for r in second_wave)


def test_short_budgets_are_admitted_first(decoder):
    """All slots busy; one frees at a time: the waiting rows get it shortest budget first."""
    s = scheduler(decoder, Admission(max_slot_share=1.0, short_first=True))
    budgets = [4] + [60] * (SLOTS - 1)  # one slot frees early, the others stay busy
    blocker = Job([CompletionRequest(PROMPT, b) for b in budgets], stream=False)
    s.submit(blocker)
    s.step()
    waiting = [Job([CompletionRequest(SHORT, b)], stream=False) for b in (40, 12, 3)]
    for j in waiting:
        s.submit(j)
    admitted: list[int] = []
    for _ in range(300):
        s.step()
        admitted += [
            j.rows[0].request.max_new_tokens
            for j in waiting
            if j.rows[0].slot is not None and j.rows[0].request.max_new_tokens not in admitted
        ]
        if len(admitted) == 3:
            break
    assert admitted == [3, 12, 40]


def test_aging_admits_a_long_row_despite_a_stream_of_short_ones(decoder):
    """One slot, a long-budget row waiting, a new short request every turn (more than the
    slot can serve): the long row is passed only by short rows queued less than
    (30 - 2) / aging turns after it, then gets the slot before every later one."""
    s = Scheduler(
        SlotDecoder(decoder.params, CFG, slots=1, max_len=64, chunk=8),
        StubTokenizer(),
        stop_ids=(),
        admission=Admission(short_first=True, aging=1.0),
    )
    s.submit(short(budget=2))
    s.step()
    long_ = Job([CompletionRequest(SHORT, 30)], stream=False)
    s.submit(long_)
    shorts = []
    for _ in range(300):
        shorts.append(short(budget=2))
        s.submit(shorts[-1])
        s.step()
        if long_.rows[0].slot is not None:
            break
    assert long_.rows[0].slot is not None, "the long row starved"
    horizon = long_.queued_turn + 28
    served = [j for j in shorts if j.rows[0].slot is not None and j.rows[0].finish_reason]
    waiting = [j for j in shorts if j.rows[0].slot is None]
    assert served and waiting
    assert all(j.queued_turn < horizon for j in served)
    assert all(j.queued_turn >= horizon for j in waiting)


def test_tokens_do_not_depend_on_slot_or_admission_time(decoder):
    """The short row (greedy) and the hog's rows (sampled) decoded alone give the same
    tokens as when they share the slots, admitted later and into other slots."""
    s = scheduler(decoder)
    sh_alone = short(budget=10)
    s.submit(sh_alone)
    drain(s, sh_alone)
    assert sh_alone.rows[0].slot == 0
    s = scheduler(decoder)
    h_alone = hog()
    s.submit(h_alone)
    drain(s, h_alone)

    s = scheduler(decoder)
    h, sh = hog(), short(budget=10)
    s.submit(h)
    for _ in range(3):
        s.step()
    s.submit(sh)
    drain(s, h, sh)
    assert sh.rows[0].slot != 0  # another slot, admitted at another time
    assert sh.rows[0].ids == sh_alone.rows[0].ids
    assert [r.ids for r in h.rows] == [r.ids for r in h_alone.rows]
    assert len({tuple(r.ids) for r in h.rows}) > 1  # the samples differ by sample index


def test_short_request_finishes_before_the_hog_on_the_scheduler_thread(decoder):
    """End to end on the scheduler's own thread (as the server drives it)."""
    s = scheduler(decoder).start()
    try:
        h = hog(n=8, budget=40)
        s.submit(h)
        while not any(r.ids for r in h.rows):
            time.sleep(0.001)
        sh = short(budget=4)
        s.submit(sh)
        while not (sh.finished and h.finished):
            time.sleep(0.01)
        assert max(r.t_done for r in sh.rows) < min(r.t_done for r in h.rows)
        assert all(r.finish_reason == "length" for r in h.rows)
    finally:
        s.shutdown()
