"""Prometheus series of the exchange views and the request-weight budget, read at scrape
time from the views themselves (so they are right whatever happened between scrapes)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .account_view import POLLING, STALE, STARTING, STREAM, AccountView
from .weights import WeightBudget

SOURCES = (STREAM, POLLING, STALE, STARTING)


class ViewCollector(Collector):
    """One book's view per label `book`; the weight budget is the process's."""

    def __init__(self, views: Mapping[str, AccountView]) -> None:
        self.views = views

    def collect(self) -> Iterator[Metric]:
        """The series, computed now."""
        source = GaugeMetricFamily(
            "rotation_exchange_view_source",
            "1 for the exchange view's current source (stream, polling, stale, starting)",
            labels=["book", "source"],
        )
        age = GaugeMetricFamily(
            "rotation_exchange_view_snapshot_age_seconds",
            "Age of the exchange view's last good REST snapshot",
            labels=["book"],
        )
        errors = CounterMetricFamily(
            "rotation_exchange_errors",
            "Exchange failures by kind (auth, http_5xx, rate_limited, weight_budget, ...)",
            labels=["book", "kind"],
        )
        mismatches = CounterMetricFamily(
            "rotation_exchange_view_mismatches",
            "Reconciles that found the stream view wrong (REST won)",
            labels=["book"],
        )
        events = CounterMetricFamily(
            "rotation_exchange_stream_events", "User-data stream events applied", labels=["book"]
        )
        bad_pnl = CounterMetricFamily(
            "rotation_exchange_nonfinite_pnl_positions",
            "Open positions read with a non-finite unRealizedProfit (kept open, profit 0)",
            labels=["book"],
        )
        budget: WeightBudget | None = None
        for book, view in self.views.items():
            label = book or "-"
            now_source = view.source
            for name in SOURCES:
                source.add_metric([label, name], 1.0 if name == now_source else 0.0)
            if view.as_of_ms:
                age.add_metric([label], max(0.0, (view.clock_ms() - view.as_of_ms) / 1000))
            for kind, count in sorted(view.causes.items()):
                errors.add_metric([label, kind], count)
            mismatches.add_metric([label], view.mismatches)
            events.add_metric([label], view.events)
            bad_pnl.add_metric([label], view.client.stats.get("positionRisk.bad_pnl", 0))
            budget = view.client.budget  # one per process, shared by the books
        yield from (source, age, errors, mismatches, events, bad_pnl)
        yield from _budget_series(budget)


def _budget_series(budget: WeightBudget | None) -> Iterator[Metric]:
    used = GaugeMetricFamily(
        "rotation_exchange_weight_used", "Request weight used this minute (this process)"
    )
    allowed = GaugeMetricFamily(
        "rotation_exchange_weight_budget", "Request weight this process may use per minute"
    )
    limited = CounterMetricFamily(
        "rotation_exchange_rate_limited",
        "Answers 429 (throttled) and 418 (banned) from the exchange",
        labels=["status"],
    )
    if budget is not None:
        used.add_metric([], budget.used_1m)
        allowed.add_metric([], budget.budget_per_min)
        limited.add_metric(["429"], budget.counts.throttled)
        limited.add_metric(["418"], budget.counts.banned)
    yield from (used, allowed, limited)
