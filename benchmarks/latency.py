"""Decision latency at a steady rate: XADD of a plan → its decision entry seen by a reader.

A paced producer XADDs plans at `rate` per second: every event-loop turn it
sends, in one pipeline, the plans that are due by then, and notes the moment it
hands them to the socket. A reader on its own connection blocks on XREAD of the
decision stream and matches each entry's `plan_id`; latency = the moment the
reader has the entry − the plan's send moment (one monotonic clock, one
process). It is an upper bound on the engine's share: it includes Redis, the
reader's wake-up and the producer's own pacing jitter (≈ 1 ms, the event loop's
timer resolution).

The first `warmup_s` of plans are decided but not counted (connections are
opened, caches warm). Plans not decided by the end of the drain are reported and
counted with the time they had waited: a latency that exceeds the run is never
silently dropped.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from .burst import SYMBOLS
from .rig import Rig, plan_fields
from .stats import percentile
from .usage import CpuWindow, cpu_window

MAX_PER_TURN = 500
DRAIN_S = 10.0


@dataclass
class LatencyResult:
    """Percentiles (ms) of one steady run, and what it covered."""

    rate: float
    achieved_rate: float
    measured: int
    undecided: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    engine_rss: int
    cpu_us_per_plan: dict[str, float] = field(default_factory=dict)
    others_cores: float = 0.0


@dataclass
class _Books:
    """Send moments by plan id, and the latencies of the counted plans."""

    counted_from: int
    sent_at: dict[str, float] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    seen: int = 0

    def received(self, plan_id: str, now: float) -> None:
        sent = self.sent_at.pop(plan_id, None)
        if sent is None:
            return
        self.seen += 1
        if _serial(plan_id) >= self.counted_from:
            self.latencies_ms.append((now - sent) * 1000)


def _serial(plan_id: str) -> int:
    return int(plan_id.rsplit("-", 1)[1])


async def run_latency(
    rig: Rig, *, rate: float, seconds: float, warmup_s: float, tag: str
) -> LatencyResult:
    """Decide plans arriving at `rate`/s for `warmup_s + seconds` with one engine."""
    await rig.reset(SYMBOLS)
    engine = rig.start_engine(f"{tag}-engine")
    reader = Redis.from_url(rig.server.url, socket_timeout=None)
    try:
        await rig.wait_groups()
        books = _Books(counted_from=int(rate * warmup_s))
        total = int(rate * (warmup_s + seconds))
        window = cpu_window([engine.pid], rig.server.pid, rig.exchange.pid)
        window.start()
        done = asyncio.Event()
        reading = asyncio.create_task(_read(reader, rig.keys.decisions, books, total, done))
        started = time.perf_counter()
        await _produce(rig, books, rate, total, tag)
        achieved = total / (time.perf_counter() - started)
        await _drain(reading, done)
        window.stop()
        return _result(books, rate, achieved, engine.rss_bytes(), window, total)
    finally:
        await reader.aclose()
        rig.stop_engines()


async def _produce(rig: Rig, books: _Books, rate: float, total: int, tag: str) -> None:
    """XADD `total` plans, paced at `rate` per second from now."""
    start = time.perf_counter()
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        batch = min(due - sent, MAX_PER_TURN)
        if batch > 0:
            await _send(rig, books, sent, batch, tag)
            sent += batch
        await asyncio.sleep(0.0005)


async def _send(rig: Rig, books: _Books, first: int, count: int, tag: str) -> None:
    async with rig.redis.pipeline(transaction=False) as pipe:
        ids = []
        for serial in range(first, first + count):
            plan_id = f"{tag}-{serial}"
            ids.append(plan_id)
            pipe.xadd(rig.keys.plans, plan_fields(plan_id, SYMBOLS[serial % len(SYMBOLS)]))  # type: ignore[arg-type]
        now = time.perf_counter()
        for plan_id in ids:
            books.sent_at[plan_id] = now
        await pipe.execute()


async def _read(reader: Redis, stream: str, books: _Books, total: int, done: asyncio.Event) -> None:
    """Match decision entries to plans until `total` are seen or `done` is set."""
    last = "0-0"
    while books.seen < total and not done.is_set():
        reply: Any = await reader.xread({stream: last}, count=2000, block=200)
        now = time.perf_counter()
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id
                books.received(fields.get(b"plan_id", b"").decode(), now)


async def _drain(reading: asyncio.Task[None], done: asyncio.Event) -> None:
    """Give the reader `DRAIN_S` to see the last decisions, then stop it."""
    try:
        await asyncio.wait_for(asyncio.shield(reading), DRAIN_S)
    except TimeoutError:
        done.set()
        await reading


def _result(
    books: _Books, rate: float, achieved: float, rss: int, window: CpuWindow, total: int
) -> LatencyResult:
    now = time.perf_counter()
    waited = [
        (now - sent) * 1000
        for pid, sent in books.sent_at.items()
        if _serial(pid) >= books.counted_from
    ]
    latencies = sorted(books.latencies_ms + waited)
    return LatencyResult(
        rate=rate,
        achieved_rate=achieved,
        measured=len(latencies),
        undecided=len(books.sent_at),
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        p999_ms=percentile(latencies, 99.9),
        max_ms=latencies[-1] if latencies else float("nan"),
        engine_rss=rss,
        cpu_us_per_plan=window.per_item_us(total),
        others_cores=window.others_cores,
    )
