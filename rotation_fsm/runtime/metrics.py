"""Prometheus metrics, fed once per commit with the counts of what it applied."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..core.tally import Tally

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    """One registry per process; `observe` is registered on each book's engine."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._decision_children: dict[tuple[str, str], Any] = {}
        self.decisions = Counter(
            "rotation_decisions", "Plans decided", ["decision", "reason"], registry=self.registry
        )
        self.events = Counter(
            "rotation_events", "Rotation events emitted", ["event"], registry=self.registry
        )
        self.dead_letters = Counter(
            "rotation_dead_letters", "Entries dead-lettered", ["stream"], registry=self.registry
        )
        self.transitions = Counter(
            "rotation_transitions",
            "Rotation records saved by state",
            ["state"],
            registry=self.registry,
        )
        # Read from Redis when scraped (http.py), so it is right after a restart too.
        self.in_flight = Gauge(
            "rotation_in_flight", "Rotations in flight", ["book"], registry=self.registry
        )
        self.latency = Histogram(
            "rotation_decision_latency_seconds",
            "Plan entry written → decision committed",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.conflicts = Counter(
            "rotation_commit_conflicts",
            "Commits refused by the version guard (another replica moved first)",
            registry=self.registry,
        )
        self.redis_up = Gauge(
            "rotation_redis_up", "1 when the last Redis call succeeded", registry=self.registry
        )
        self.redis_out_of_memory = Gauge(
            "rotation_redis_out_of_memory",
            "1 while Redis refuses writes for maxmemory (nothing is decided meanwhile)",
            registry=self.registry,
        )

        # Read per book when scraped (book_gauges.py), so every replica reports the same.
        def per_book(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(name, doc, ["book", *labels], registry=self.registry)

        self.slots_desired = per_book(
            "rotation_slots_desired", "Slots the regime allows, as of the book's newest decision"
        )
        self.slots_free = per_book(
            "rotation_slots_free", "Free slots, as of the book's newest decision"
        )
        self.regime = per_book(
            "rotation_regime",
            "1 for the book's regime as of its newest decision, 0 for the others",
            "regime",
        )
        self.timer_lag = per_book(
            "rotation_timer_lag_seconds",
            "How long the oldest rotation deadline has been overdue (0: none overdue)",
        )
        self.group_pending = per_book(
            "rotation_group_pending",
            "Entries delivered to the consumer group and not yet acknowledged",
            "stream",
        )
        self.group_lag = per_book(
            "rotation_group_lag",
            "Entries not yet delivered to the consumer group (Redis >= 7)",
            "stream",
        )

    def _decided(self, verdict: str, reason: str) -> Any:
        # labels() takes a lock and builds a key on every call: keep the children.
        child = self._decision_children.get((verdict, reason))
        if child is None:
            child = self._decision_children[verdict, reason] = self.decisions.labels(
                verdict, reason
            )
        return child

    def observe(self, counted: Tally, now_ms: int) -> None:
        """Count one commit from its tally: one increment per label set, not per plan."""
        for (verdict, reason), n in counted.decisions.items():
            self._decided(verdict, reason).inc(n)
        for event, n in counted.events.items():
            self.events.labels(event).inc(n)
        for stream, n in counted.dead_letters.items():
            self.dead_letters.labels(stream).inc(n)
        for state, n in counted.transitions.items():
            self.transitions.labels(state).inc(n)
        if counted.entry_ms:
            observe_many(self.latency, [max(0.0, (now_ms - t) / 1000) for t in counted.entry_ms])


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """`histogram.observe` for each of `values`, with one increment per bucket touched.

    prometheus_client has no batch observe; its per-value call takes a lock per
    bucket. This adds each bucket's count at once through the same value objects
    (`_buckets`, `_sum`: the attributes `observe` itself uses), or falls back to
    observing one by one if a later version names them differently.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for value in values:
            histogram.observe(value)
        return
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    for index, count in enumerate(counts):
        if count:
            buckets[index].inc(count)
    total.inc(sum(values))
