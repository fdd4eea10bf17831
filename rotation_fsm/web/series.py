"""The console's charts: the last 15 minutes of one book, in 5-second buckets.

Read from the decision and event streams (their entry ids are Redis's clock), so a
page opened now shows the history it missed; from then on the page adds each entry
the live stream pushes into the same buckets (static/charts.js). A decision carries
the regime, desired slots and free slots it was decided with: the slot chart's history
(the page then samples the book's state as it refetches it). A busy book writes
hundreds of decisions a second: only the newest `MAX_DECISIONS` are read, and the
answer says from when its counts are complete.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..core import reasons as R
from ..core.messages import fields_text
from ..store.gateway import AnyRedis
from ..store.keys import Keys
from ..store.stream_pages import scan_stream
from .state import entry_ms

WINDOW_S = 900
STEP_S = 5
MAX_DECISIONS = 20_000
MAX_EVENTS = 5_000
#: the rotation events a chart counts, by the series it counts them in
ROTATION_SERIES = {
    R.EV_LOCK_CREATED: "started",
    R.EV_COMPLETE: "confirmed",
    R.EV_TIMEOUT: "timed_out",
}


@dataclass
class Bucket:
    """What happened in one STEP_S-second bucket."""

    allow: int = 0
    block: int = 0
    latencies_ms: list[int] = field(default_factory=list)
    started: int = 0
    confirmed: int = 0
    timed_out: int = 0
    #: slots as of the bucket's last decision that carried them
    desired: int | None = None
    occupied: int | None = None
    regime: str | None = None


def quantile(values: list[int], q: float) -> int | None:
    """The nearest-rank quantile `q` of `values` (None for none): charts.js does the same."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def add_decision(bucket: Bucket, decision_ms: int, fields: dict[str, str]) -> None:
    """Count one decision entry in its bucket."""
    if fields.get("decision") == R.ALLOW:
        bucket.allow += 1
    else:
        bucket.block += 1
    plan_ms = entry_ms(fields.get("entry_id", ""))
    if plan_ms and decision_ms >= plan_ms:
        bucket.latencies_ms.append(decision_ms - plan_ms)
    desired, free = fields.get("desired_slots", ""), fields.get("open_slots", "")
    if fields.get("regime") and desired.isdigit() and free.isdigit():
        bucket.desired, bucket.occupied = int(desired), int(desired) - int(free)
        bucket.regime = fields["regime"]


def add_event(bucket: Bucket, fields: dict[str, str]) -> None:
    """Count one rotation event in its bucket (events no chart shows are ignored)."""
    series = ROTATION_SERIES.get(fields.get("event", ""))
    if series is not None:
        setattr(bucket, series, getattr(bucket, series) + 1)


async def newest_entries(
    redis: AnyRedis, stream: str, since_ms: int, limit: int
) -> tuple[list[tuple[int, dict[str, str]]], bool]:
    """Entries of `stream` from `since_ms` on, newest first, at most `limit`; and
    whether the limit cut older ones off (one more than it is read to tell)."""
    found = [
        (entry_ms(entry_id), fields_text(raw, "replace"))
        async for entry_id, raw in scan_stream(
            redis, stream, low=f"{since_ms}-0", newest_first=True, limit=limit + 1
        )
    ]
    return found[:limit], len(found) > limit


def bucket_json(start_s: int, bucket: Bucket) -> dict[str, Any]:
    """One bucket as the page reads it."""
    return {
        "t": start_s,
        "allow": bucket.allow,
        "block": bucket.block,
        "p50_ms": quantile(bucket.latencies_ms, 0.5),
        "p99_ms": quantile(bucket.latencies_ms, 0.99),
        "started": bucket.started,
        "confirmed": bucket.confirmed,
        "timed_out": bucket.timed_out,
        "desired": bucket.desired,
        "occupied": bucket.occupied,
        "regime": bucket.regime,
    }


async def console_series(
    redis: AnyRedis, keys: Keys, now_ms: int, *, max_decisions: int = MAX_DECISIONS
) -> dict[str, Any]:
    """The book's last WINDOW_S seconds in STEP_S buckets (only buckets with something
    in them), oldest first, and `complete_from_ms`: counts before it are partial."""
    since_ms = (now_ms // 1000 - WINDOW_S) // STEP_S * STEP_S * 1000
    decisions, cut = await newest_entries(redis, keys.decisions, since_ms, max_decisions)
    events, _ = await newest_entries(redis, keys.events, since_ms, MAX_EVENTS)
    buckets: dict[int, Bucket] = {}

    def bucket_of(ms: int) -> Bucket:
        return buckets.setdefault(ms // 1000 // STEP_S * STEP_S, Bucket())

    for ms, fields in reversed(decisions):  # oldest first: a bucket keeps its last slots
        add_decision(bucket_of(ms), ms, fields)
    for ms, fields in events:
        add_event(bucket_of(ms), fields)
    return {
        "now_ms": now_ms,
        "window_s": WINDOW_S,
        "step_s": STEP_S,
        "complete_from_ms": decisions[-1][0] if cut else since_ms,
        "buckets": [bucket_json(t, buckets[t]) for t in sorted(buckets)],
    }
