"""The completions server's Prometheus metrics (prometheus_client, one registry a server).

Label values come from fixed sets only: `route` is one of `ROUTES` or "other", `code` one
of `CODES` or "other", so no client can grow the exposition (random paths, `/a"b`) and
every scrape stays small and valid. Time to first token is a `Histogram` fed by the
scheduler's `on_first_token` hook: constant memory however many requests were served
(the old per-request list grew forever and every scrape walked it). Gauges and the
scheduler's counters are read at scrape time by a collector, so they cost nothing
between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

ROUTES = frozenset(
    {
        "/v1/completions",
        "/completions",
        "/infill",
        "/v1/cancel",
        "/v1/models",
        "/v1/chat/completions",
        "/chat/completions",
        "/health",
        "/metrics",
    }
)
CODES = frozenset({200, 400, 401, 404, 405, 408, 413, 429, 500, 503})
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SCHEDULER_COUNTERS = (
    "generated_tokens",
    "prefill_tokens",
    "prefix_reused_tokens",
    "decode_steps",
    "cancelled_rows",
    "wasted_tokens",
    "rejected_queue_full",
    "spec_draft_tokens",
    "spec_accepted_tokens",
    "spec_verify_steps",
)


def route_label(path: str) -> str:
    """The `route` label of a request path: a known route, else "other"."""
    return path if path in ROUTES else "other"


def code_label(status: int) -> str:
    return str(status) if status in CODES else "other"


class _Live(Collector):
    """Gauges and scheduler counters, read when scraped."""

    def __init__(self, gauges: Callable[[], dict[str, float]], stats: Any):
        self.gauges, self.stats = gauges, stats

    def collect(self) -> Iterator[Metric]:
        for name, value in self.gauges().items():
            yield GaugeMetricFamily(name, name.removeprefix("zen_").replace("_", " "), value)
        for k in SCHEDULER_COUNTERS:
            yield CounterMetricFamily(f"zen_{k}", k.replace("_", " "), value=self.stats[k])


class ServerMetrics:
    """A server's registry: requests by (route, code), TTFT histogram, live gauges."""

    def __init__(self, gauges: Callable[[], dict[str, float]], stats: Any):
        """gauges: name -> current value (queue depth, busy slots, ...); stats: the
        scheduler's counter dict."""
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "zen_requests",
            "HTTP requests by route and status code",
            ("route", "code"),
            registry=self.registry,
        )
        self.ttft = Histogram(
            "zen_time_to_first_token_seconds",
            "Seconds from a request's submission to its first token",
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Live(gauges, stats))

    def count(self, path: str, status: int) -> None:
        self.requests.labels(route_label(path), code_label(status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
