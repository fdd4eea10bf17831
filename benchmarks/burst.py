"""Free-slot throughput: a burst of OPEN plans decided by one or more engine processes.

How the clock is run, so engine start-up never counts:

1. the burst is written first (pipelined XADDs) and the consumer group is
   created at `$`, *after* it: the engines start, find nothing new and block
   in XREADGROUP;
2. once every engine's consumer shows up in the group (it is blocked reading),
   the group is moved back to `0` (XGROUP SETID) and one more plan is XADDed:
   that wakes every blocked engine at once and releases the burst;
3. throughput = plans / (timestamp of the last decision entry − timestamp of
   that releasing XADD), both Redis stream ids, i.e. Redis's own clock.

Plans use a few symbols, all in the universe, so each is decided ALLOW
(`slots_available` for the first of a symbol, `slot_already_held` after).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .profile import Profiler
from .rig import GROUP, Engine, Rig, plan_fields
from .usage import CpuWindow, cpu_window

SYMBOLS = [f"F{i:02d}USDT" for i in range(8)]
_LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass
class BurstResult:
    """One burst: how many plans, how many decided, how fast, and what it cost."""

    plans: int
    decided: int
    rate: float
    seconds: float
    reasons: dict[str, int]
    pending: int
    dead_letters: int
    commits: int
    refused: int
    engine_rss: list[int]
    cpu_us_per_plan: dict[str, float] = field(default_factory=dict)
    others_cores: float = 0.0
    audit_bytes: int = 0  # MEMORY USAGE of the audit stream after the burst

    @property
    def complete(self) -> bool:
        """Every plan has its decision, nothing pending, nothing dead-lettered."""
        return self.decided == self.plans and self.pending == 0 and self.dead_letters == 0


async def run_burst(
    rig: Rig, *, plans: int, replicas: int, tag: str, profile: Path | None = None
) -> BurstResult:
    """Decide a burst of `plans` (the releasing plan included) with `replicas` engines."""
    await rig.reset(SYMBOLS)
    await rig.preload(
        plan_fields(f"{tag}-{i:07d}", SYMBOLS[i % len(SYMBOLS)]) for i in range(plans - 1)
    )
    await rig.create_groups("$")
    names = [f"{tag}-engine{n}" for n in range(replicas)]
    engines = rig.start_engines(names)
    try:
        await _until_reading(rig, names)
        await rig.redis.config_resetstat()
        profiler = Profiler.start(engines[0].pid, profile) if profile else None
        window = cpu_window([e.pid for e in engines], rig.server.pid, rig.exchange.pid)
        window.start()
        release_id = await _release(rig, f"{tag}-{plans - 1:07d}", SYMBOLS[0])
        decided = await rig.wait_length(rig.keys.decisions, plans, timeout_s=30 + plans / 500)
        window.stop()
        if profiler is not None:
            profiler.stop()
        return await _result(rig, engines, plans, decided, release_id, window)
    finally:
        rig.stop_engines()


async def _until_reading(rig: Rig, consumers: list[str], timeout_s: float = 20.0) -> None:
    """Until every consumer is known to the group: each engine has made its first read
    (and, with nothing new, is blocked in its next one)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        known = {_text(c["name"]) for c in await rig.redis.xinfo_consumers(rig.keys.plans, GROUP)}
        if set(consumers) <= known:
            await asyncio.sleep(0.05)  # from its first read into the blocking one
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"engines {consumers} never read the plan stream")


async def _release(rig: Rig, plan_id: str, symbol: str) -> str:
    """Point the group back at the burst and XADD the plan that wakes the engines."""
    await rig.redis.xgroup_setid(rig.keys.plans, GROUP, "0")
    return _text(await rig.redis.xadd(rig.keys.plans, plan_fields(plan_id, symbol)))


async def _result(
    rig: Rig,
    engines: list[Engine],
    plans: int,
    decided: int,
    release_id: str,
    window: CpuWindow,
) -> BurstResult:
    last = await rig.redis.xrevrange(rig.keys.decisions, count=1)
    seconds = (_ms(_text(last[0][0])) - _ms(release_id)) / 1000 if last else float("nan")
    reasons: Counter[str] = Counter()
    for engine in engines:
        if engine.child.alive():
            reasons.update(await _reasons(engine))
    tried, applied = await rig.commits()
    pending = await rig.redis.xpending(rig.keys.plans, GROUP)
    return BurstResult(
        plans=plans,
        decided=decided,
        rate=decided / seconds if seconds > 0 else float("nan"),
        seconds=seconds,
        reasons=dict(reasons),
        pending=int(pending["pending"]),
        dead_letters=int(await rig.redis.xlen(rig.keys.dlq)),
        commits=applied,
        refused=max(0, tried - applied),
        engine_rss=[e.rss_bytes() for e in engines],
        cpu_us_per_plan=window.per_item_us(plans),
        others_cores=window.others_cores,
        audit_bytes=int(await rig.redis.memory_usage(rig.keys.audit, samples=0) or 0),
    )


async def _reasons(engine: Engine) -> Counter[str]:
    """Decisions by `DECISION reason`, from the engine's own metrics."""
    counts: Counter[str] = Counter()
    for line in (await engine.metrics_text()).splitlines():
        if line.startswith("rotation_decisions_total{"):
            labels = dict(_LABEL.findall(line))
            counts[f"{labels['decision']} {labels['reason']}"] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def _ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
