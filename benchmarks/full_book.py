"""Full-book throughput: every plan rotates, every close is executed by the paper exchange.

The book starts full: the paper exchange opens `positions` positions and the
engine has exactly that many CHOP slots. Each plan is for a symbol that is not
held, so it starts a rotation; the paper exchange's apply loop (no latency)
executes the close plan the engine emits and writes its result; the engine
confirms and answers the plan ALLOW `rotation_complete`; the apply loop opens
the new position — and the book is full again.

A book holds only so many rotations at once (each needs a close target of its
own), so the producer keeps `window` plans outstanding and sends the next as
one finishes — a closed loop, never more in flight than the book allows.
Throughput = plans / (first XADD → last final decision), client clock. A plan
whose answer is anything but a completed rotation is counted apart.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from rotation_fsm.core import reasons as R

from .exchange import held_symbol
from .footprint import Footprint, measure_footprint
from .rig import Engine, Rig, plan_fields
from .stats import percentile
from .usage import CpuWindow, cpu_window


@dataclass
class FullBookResult:
    """One closed-loop run over a full book."""

    plans: int
    rotated: int
    rate: float
    seconds: float
    other: dict[str, int]
    cycle_ms_p50: float
    cycle_ms_p99: float
    engine_rss: int
    footprint: Footprint | None
    cpu_us_per_plan: dict[str, float] = field(default_factory=dict)
    others_cores: float = 0.0

    @property
    def complete(self) -> bool:
        return self.rotated == self.plans


@dataclass
class _Loop:
    """The producer's bookkeeping: what is outstanding, which symbols are free."""

    plans: int
    window: int
    tag: str
    free: deque[str]
    sent_at: dict[str, float] = field(default_factory=dict)
    symbol_of: dict[str, str] = field(default_factory=dict)
    sent: int = 0
    done: int = 0
    rotated: int = 0
    other: Counter[str] = field(default_factory=Counter)
    cycle_ms: list[float] = field(default_factory=list)
    first_send: float = 0.0
    last_done: float = 0.0

    def next_plans(self) -> list[dict[str, str]]:
        """Plans to send now: up to the window, each for a symbol nobody holds."""
        batch = []
        while self.sent - self.done < self.window and self.sent < self.plans and self.free:
            plan_id = f"{self.sent:07d}-{self.tag}"
            symbol = self.free.popleft()
            self.symbol_of[plan_id] = symbol
            batch.append(plan_fields(plan_id, symbol))
            self.sent += 1
        return batch

    def on_decision(self, fields: dict[bytes, bytes], now: float) -> None:
        plan_id = fields.get(b"plan_id", b"").decode()
        reason = fields.get(b"reason", b"").decode()
        if plan_id not in self.sent_at or reason == R.WAITING_ROTATION_CLOSE:
            return  # a close plan's decision, or the rotation has started
        started = self.sent_at.pop(plan_id)
        self.done += 1
        self.last_done = now
        if reason == R.ROTATION_COMPLETE:
            self.rotated += 1
            self.cycle_ms.append((now - started) * 1000)
        else:
            self.other[f"{fields.get(b'decision', b'').decode()} {reason}"] += 1
            self.free.append(self.symbol_of[plan_id])  # it never became a position

    def on_event(self, fields: dict[bytes, bytes]) -> None:
        if fields.get(b"event") == R.EV_COMPLETE.encode():
            self.free.append(fields[b"close_symbol"].decode())  # closed on the exchange


async def run_full_book(
    rig: Rig, *, plans: int, positions: int, window: int, tag: str
) -> FullBookResult:
    """Push `plans` through a book of `positions`, `window` outstanding at a time."""
    fresh = [f"N{i:04d}USDT" for i in range(window + 8)]
    await rig.reset([held_symbol(i) for i in range(positions)] + fresh)
    exchange, url = rig.start_exchange(positions=positions, apply=True)
    try:
        engine = rig.start_engine(
            f"{tag}-engine",
            exchange_url=url,
            GOV_ACTIVE_SLOTS_CHOP=str(positions),
            GOV_MAX_CONCURRENT_ROTATIONS=str(window),
            GOV_ROTATION_LOCK_TTL="60",
            # One engine, one clock: a fill is trusted in the next view fetched after it
            # (the default margin is for replicas whose clocks differ; kept, a fresh
            # entry's slot stays settling long enough that half the plans find no
            # position left to rotate at 10 in flight).
            GOV_CLOCK_SKEW_MS="0",
        )
        await rig.wait_groups()
        loop = _Loop(plans, window, tag, deque(fresh))
        used_before = await rig.used_memory()
        window_cpu = cpu_window([engine.pid], rig.server.pid, exchange.pid)
        window_cpu.start()
        await _drive(rig, loop, timeout_s=60 + plans / 20)
        window_cpu.stop()
        await asyncio.sleep(0.5)  # the apply loop's last results (new positions) land
        footprint = await measure_footprint(
            rig.redis,
            rig.keys,
            finished=loop.rotated,
            used_before=used_before,
            used_after=await rig.used_memory(),
        )
        return _result(loop, engine, footprint, window_cpu)
    finally:
        rig.stop_engines()
        exchange.stop()


async def _drive(rig: Rig, loop: _Loop, timeout_s: float) -> None:
    """Send, read decisions and events, top up — until every plan is answered."""
    streams = {rig.keys.decisions: "0-0", rig.keys.events: "0-0"}
    deadline = time.monotonic() + timeout_s
    loop.first_send = time.perf_counter()
    await _send(rig, loop)
    while loop.done < loop.plans and time.monotonic() < deadline:
        reply = await rig.redis.xread(streams, count=1000, block=500)
        now = time.perf_counter()
        for stream, entries in _items(reply):
            name = stream.decode() if isinstance(stream, bytes) else stream
            for entry_id, fields in entries:
                streams[name] = entry_id
                if name == rig.keys.decisions:
                    loop.on_decision(fields, now)
                else:
                    loop.on_event(fields)
        await _send(rig, loop)


async def _send(rig: Rig, loop: _Loop) -> None:
    batch = loop.next_plans()
    if not batch:
        return
    async with rig.redis.pipeline(transaction=False) as pipe:
        for fields in batch:
            pipe.xadd(rig.keys.plans, fields)  # type: ignore[arg-type]
        now = time.perf_counter()
        for fields in batch:
            loop.sent_at[fields["plan_id"]] = now
        await pipe.execute()


def _items(reply: Any) -> list[tuple[Any, list[tuple[Any, dict[bytes, bytes]]]]]:
    if not reply:
        return []
    return list(reply.items()) if isinstance(reply, dict) else list(reply)


def _result(loop: _Loop, engine: Engine, footprint: Footprint, window: CpuWindow) -> FullBookResult:
    seconds = loop.last_done - loop.first_send
    cycles = sorted(loop.cycle_ms)
    return FullBookResult(
        plans=loop.plans,
        rotated=loop.rotated,
        rate=loop.done / seconds if seconds > 0 else float("nan"),
        seconds=seconds,
        other=dict(loop.other),
        cycle_ms_p50=percentile(cycles, 50),
        cycle_ms_p99=percentile(cycles, 99),
        engine_rss=engine.rss_bytes(),
        footprint=footprint,
        cpu_us_per_plan=window.per_item_us(loop.plans),
        others_cores=window.others_cores,
    )
