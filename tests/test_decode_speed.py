"""The `decode_speed` task (eval/decode_speed.py): what it measures and its options.

It reports the per-token decode cost at batch 1 without the prefill: the wall time of an
n-token completion minus that of a 1-token one, over the n - 1 extra tokens. Checked with
a fake clock that charges a fixed prefill plus a fixed cost per generated token (the
answer must be that per-token cost exactly, whatever the prefill), and on the real clock
(> 0, tokens/s its inverse); the options bound the tokens and set the timed repeats."""

from __future__ import annotations

import pytest

from zen_code_jax.config import base_config
from zen_code_jax.eval import decode_speed
from zen_code_jax.eval.base import EvalContext
from zen_code_jax.infer.engine import InferenceEngine, random_params
from zen_code_jax.model import get_preset

CFG = get_preset("tiny")
PREFILL_S, PER_TOKEN_S = 0.050, 0.003


class Clock:
    """A perf_counter that only moves when a completion says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def engine(tiny_tokenizer) -> InferenceEngine:
    return InferenceEngine(random_params(CFG, seed=0, scale=0.2), CFG, tiny_tokenizer)


def _ctx(engine, **options) -> EvalContext:
    c = base_config()
    c.eval.task_options = {"decode_speed": options}
    return EvalContext(config=c, engine=engine)


def _counting(engine, monkeypatch, clock: Clock | None) -> list[int]:
    """Wrap the engine's scheduler: record each completion's token budget, and with a
    clock charge it PREFILL_S + PER_TOKEN_S per generated token."""
    budgets: list[int] = []
    make = engine.scheduler

    def scheduler(decoder):
        sched = make(decoder)
        run = sched.run

        def timed_run(job):
            budgets.append(job.rows[0].request.max_new_tokens)
            out = run(job)
            if clock is not None:
                tokens = job.rows[0].completion().completion_tokens
                clock.now += PREFILL_S + PER_TOKEN_S * tokens
            return out

        sched.run = timed_run
        return sched

    monkeypatch.setattr(engine, "scheduler", scheduler)
    return budgets


def test_measures_decode_cost_per_token_without_prefill(engine, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(decode_speed.time, "perf_counter", clock)
    budgets = _counting(engine, monkeypatch, clock)
    res = decode_speed.DecodeSpeed().evaluate(_ctx(engine, new_tokens=6, repeats=2))
    assert res.metrics["ms_per_token"] == pytest.approx(1000 * PER_TOKEN_S, rel=1e-9)
    assert res.metrics["tokens_per_s"] == pytest.approx(1 / PER_TOKEN_S, rel=1e-9)
    assert res.records and all(2 <= r["tokens"] <= 6 for r in res.records)
    # Per prompt: a warm-up of each shape, then `repeats` timed runs of each.
    n = len(decode_speed.PROMPTS)
    assert budgets == [1, 6, 1, 1, 6, 6] * n


def test_real_clock_reports_positive_ms_and_respects_options(engine, monkeypatch):
    budgets = _counting(engine, monkeypatch, None)
    res = decode_speed.DecodeSpeed().evaluate(_ctx(engine, new_tokens=4, repeats=1))
    ms = res.metrics["ms_per_token"]
    assert ms > 0 and res.metrics["tokens_per_s"] == pytest.approx(1000 / ms)
    assert all(2 <= r["tokens"] <= 4 and r["ms_per_token"] > 0 for r in res.records)
    assert budgets == [1, 4, 1, 4] * len(decode_speed.PROMPTS)
    with pytest.raises(ValueError, match="unknown option"):
        decode_speed.DecodeSpeed().evaluate(_ctx(engine, new_token=4))
