"""The per-book gauges of /metrics, read from Redis when Prometheus scrapes.

Read, not tracked: every replica reports the same numbers for a book, they are right
right after a restart, and the hot path pays nothing for them. One pipelined round
trip per book: rotations in flight, the newest decisions (regime and slots as the
engine last decided them), the oldest deadline (how late the timer is) and the
consumer group's pending entries and lag on the two input streams.
"""

from __future__ import annotations

from typing import Any

from ..core.messages import as_text_lenient, fields_text
from ..core.regime import Regime
from ..store.gateway import AnyRedis
from ..store.keys import Keys
from .metrics import Metrics

#: newest decisions looked at for one that carries a regime (a BLOCK before the
#: slots gate, e.g. a paused book, has none)
DECISIONS_SCANNED = 20


async def read_book_gauges(
    metrics: Metrics, book: str, redis: AnyRedis, keys: Keys, group: str, now_ms: int
) -> None:
    """Set `book`'s gauges from Redis (`book` is the label: "-" for the unnamed book)."""
    inputs = {"plans": keys.plans, "results": keys.results}
    async with redis.pipeline(transaction=False) as pipe:
        pipe.scard(keys.inflight)
        pipe.xrevrange(keys.decisions, count=DECISIONS_SCANNED)
        pipe.zrange(keys.deadlines, 0, 0, withscores=True)
        for stream in inputs.values():
            pipe.xinfo_groups(stream)
        # A stream not created yet answers XINFO with an error: that book has no group.
        in_flight, decisions, oldest, *groups = await pipe.execute(raise_on_error=False)
    if not isinstance(in_flight, Exception):
        metrics.in_flight.labels(book).set(in_flight)
    if not isinstance(decisions, Exception):
        _slots(metrics, book, decisions)
    if not isinstance(oldest, Exception):
        overdue_ms = now_ms - oldest[0][1] if oldest else 0
        metrics.timer_lag.labels(book).set(max(0.0, overdue_ms / 1000))
    for name, reply in zip(inputs, groups, strict=True):
        if not isinstance(reply, Exception):
            _group(metrics, book, name, reply, group)


def _slots(metrics: Metrics, book: str, decisions: list[Any]) -> None:
    for _, raw in decisions:
        fields = fields_text(raw, "replace")
        regime, desired, free = (
            fields.get(k, "") for k in ("regime", "desired_slots", "open_slots")
        )
        if not regime or not desired.isdigit() or not free.isdigit():
            continue
        metrics.slots_desired.labels(book).set(int(desired))
        metrics.slots_free.labels(book).set(int(free))
        for known in Regime:
            metrics.regime.labels(book, known.value).set(1 if known.value == regime else 0)
        return


def _group(metrics: Metrics, book: str, stream: str, groups: list[Any], group: str) -> None:
    for info in groups:
        if as_text_lenient(info.get("name", b"")) != group:
            continue
        metrics.group_pending.labels(book, stream).set(info.get("pending") or 0)
        if info.get("lag") is not None:  # Redis 6.2 does not report it
            metrics.group_lag.labels(book, stream).set(info["lag"])
