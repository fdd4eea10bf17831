"""Timer precision: how late `TIMED_OUT` comes after the deadline, with many rotations in flight.

The rotations are written straight into Redis in the engine's own format — the
rotation hash (`rotation_to_hash` of a `RotationRecord` in `CLOSE_EMITTED`), the
close-plan index, the in-flight set, the deadline in the sorted set, the seed's
lock key and the waiting plan's record, exactly as `Store._save_rotation` and
the plan record of a BLOCK `active_slots_waiting_rotation_close` leave them —
because making 100,000 of them through the exchange would take the whole time
budget. They are written with deadlines an hour ahead; once the engine is up,
one Lua call brings every deadline forward (sorted-set score and the hash's
`deadline_ms` together) so they fall evenly over `spread_s`, the first `lead_s`
from then — writing and start-up never eat into a deadline.

Lag = `ended_ms − deadline_ms` of each rotation's hash after the run. The run
stops when every rotation has timed out, or `grace_s` after the last deadline;
a rotation still in flight then counts with the lag it had reached (a lower
bound), and the number still in flight is reported.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

from rotation_fsm.core import reasons as R
from rotation_fsm.core.machine import State, Trigger
from rotation_fsm.core.messages import (
    PlanRecord,
    RotationRecord,
    encode_json,
    lock_body,
    rotation_to_hash,
)
from rotation_fsm.store.keys import Keys

from .resp import RawConnection
from .rig import Rig
from .stats import percentile

CHUNK = 2000
RETENTION_MS = 604_800_000
BOOK_SYMBOLS = ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
#: rotations are written with deadlines this far ahead, then brought forward at once
PARKED_S = 3600
# KEYS[1] the deadline sorted set; ARGV[1] ms to add to every deadline; ARGV[2] the
# rotation hash key prefix. Keeps each hash's deadline_ms equal to its score (the seed's
# lock key keeps the deadline it was written with: nothing reads it back).
SHIFT_LUA = """
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  local deadline = tonumber(members[i + 1]) + tonumber(ARGV[1])
  redis.call('ZADD', KEYS[1], deadline, members[i])
  redis.call('HSET', ARGV[2] .. members[i], 'deadline_ms', string.format('%d', deadline))
end
return #members / 2
"""


@dataclass
class TimerResult:
    """Lag percentiles (ms) of one run, and how far it got."""

    in_flight: int
    fired: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    write_s: float
    engine_rss: int
    used_memory: int
    timeouts_per_s: float = math.nan  # fired ÷ (last TIMED_OUT − first deadline)

    @property
    def complete(self) -> bool:
        return self.fired == self.in_flight


def _records(index: int, now_ms: int, deadline_ms: int) -> tuple[RotationRecord, PlanRecord]:
    """The rotation and its waiting plan's record, as the engine would have saved them."""
    plan_id = f"t{index:07d}x"
    close_symbol = BOOK_SYMBOLS[index % len(BOOK_SYMBOLS)]
    rotation_id = f"{plan_id}@{now_ms}"
    rotation = RotationRecord(
        rotation_id=rotation_id,
        state=State.CLOSE_EMITTED.value,
        version=1,
        new_plan_id=plan_id,
        new_symbol=f"T{index % 50:02d}USDT",
        new_action="OPEN_LONG",
        new_confidence=None,
        close_symbol=close_symbol,
        close_plan_id=f"rot_{plan_id[:8]}_{close_symbol}",
        close_weakness=0.01,
        created_ms=now_ms,
        deadline_ms=deadline_ms,
        updated_ms=now_ms,
        regime="UNKNOWN",
        desired_slots=3,
        trigger_entry_id=f"{now_ms}-{index}",
        history=[
            [now_ms, Trigger.LOCK.value, State.LOCKED.value],
            [now_ms, Trigger.EMIT_CLOSE.value, State.CLOSE_EMITTED.value],
        ],
        snapshot=[[s, -0.01, 0.01] for s in BOOK_SYMBOLS],
    )
    plan = PlanRecord(
        plan_id=plan_id,
        symbol=rotation.new_symbol,
        action="OPEN_LONG",
        decision=R.BLOCK,
        reason=R.WAITING_ROTATION_CLOSE,
        final=False,
        rotation_id=rotation_id,
        regime="UNKNOWN",
        desired_slots=3,
        entries=[rotation.trigger_entry_id],
        decided_ms=now_ms,
    )
    return rotation, plan


def _commands(keys: Keys, rotation: RotationRecord, plan: PlanRecord) -> list[tuple[Any, ...]]:
    """What `Store._save_rotation` (in flight) and the waiting plan's record write."""
    rid = rotation.rotation_id
    fields = [x for pair in rotation_to_hash(rotation).items() for x in pair]
    return [
        ("HSET", keys.rotation(rid), *fields),
        ("SET", keys.close_index(rotation.close_plan_id), rid, "PX", RETENTION_MS),
        ("SADD", keys.inflight, rid),
        ("ZADD", keys.deadlines, rotation.deadline_ms, rid),
        ("SET", keys.lock(rotation.new_plan_id), encode_json(lock_body(rotation))),
        ("SET", keys.plan(plan.plan_id), encode_json(plan), "PX", RETENTION_MS),
    ]


def write_in_flight(
    port: int, keys: Keys, count: int, first_deadline_ms: int, spread_s: float
) -> None:
    """`count` rotations in flight, deadlines evenly from `first_deadline_ms` over `spread_s`
    (blocking: run it in a thread)."""
    now_ms = int(time.time() * 1000)
    step = spread_s * 1000 / max(1, count)
    with RawConnection(port) as conn:
        for start in range(0, count, CHUNK):
            commands: list[tuple[Any, ...]] = []
            for index in range(start, min(count, start + CHUNK)):
                rotation, plan = _records(index, now_ms, first_deadline_ms + int(index * step))
                commands += _commands(keys, rotation, plan)
            conn.pipeline(commands)


async def run_timer(
    rig: Rig, *, in_flight: int, lead_s: float, spread_s: float, grace_s: float, tag: str
) -> TimerResult:
    """Time out `in_flight` rotations with one engine; lag of each after its deadline."""
    await rig.reset(BOOK_SYMBOLS)
    began = time.monotonic()
    parked_ms = int(time.time() * 1000) + PARKED_S * 1000
    await asyncio.to_thread(
        write_in_flight, rig.server.port, rig.keys, in_flight, parked_ms, spread_s
    )
    write_s = time.monotonic() - began
    engine = rig.start_engine(f"{tag}-engine")
    try:
        first_deadline_ms = await _bring_forward(rig, parked_ms, lead_s)
        stop_at = first_deadline_ms / 1000 + spread_s + grace_s
        while time.time() < stop_at and engine.child.alive():
            if await rig.redis.zcard(rig.keys.deadlines) == 0:
                break
            await asyncio.sleep(0.1)
        rss = engine.rss_bytes()
    finally:
        rig.stop_engines()
    lags, fired, span_ms = await _lags(rig, int(time.time() * 1000))
    return TimerResult(
        in_flight=in_flight,
        fired=fired,
        p50_ms=percentile(lags, 50),
        p99_ms=percentile(lags, 99),
        max_ms=lags[-1] if lags else float("nan"),
        write_s=write_s,
        engine_rss=rss,
        used_memory=await rig.used_memory(),
        timeouts_per_s=fired / (span_ms / 1000) if span_ms > 0 else math.nan,
    )


async def _bring_forward(rig: Rig, parked_ms: int, lead_s: float) -> int:
    """Move every deadline (sorted set and hash) so the first is `lead_s` from now; the
    new first deadline (ms)."""
    first_ms = int(time.time() * 1000 + lead_s * 1000)
    await rig.redis.eval(
        SHIFT_LUA, 1, rig.keys.deadlines, first_ms - parked_ms, rig.keys.rotation("")
    )
    return first_ms


async def _lags(rig: Rig, now_ms: int) -> tuple[list[float], int, int]:
    """Sorted lags (ms) of every rotation — fired or, as a lower bound, not — how many
    fired, and the ms from the first deadline to the last timeout. Timed-out rotations
    are in the `finished` index, the others still in flight."""
    finished = [_text(m) for m in await rig.redis.zrange(rig.keys.finished, 0, -1)]
    in_flight = [_text(m) for m in await rig.redis.smembers(rig.keys.inflight)]
    ended_times = await _times(rig, finished)
    waiting = await _times(rig, in_flight)
    lags = [float(ended - deadline) for deadline, ended in ended_times]
    lags += [float(now_ms - deadline) for deadline, _ in waiting]
    first = min((d for d, _ in ended_times + waiting), default=0)
    last = max((e for _, e in ended_times), default=0)
    return sorted(lags), len(finished), last - first


async def _times(rig: Rig, rotation_ids: list[str]) -> list[tuple[int, int]]:
    """(deadline_ms, ended_ms) of each rotation."""
    out: list[tuple[int, int]] = []
    for start in range(0, len(rotation_ids), CHUNK):
        async with rig.redis.pipeline(transaction=False) as pipe:
            for rid in rotation_ids[start : start + CHUNK]:
                pipe.hmget(rig.keys.rotation(rid), ["deadline_ms", "ended_ms"])
            replies = await pipe.execute()
        out += [(int(deadline), int(ended or 0)) for deadline, ended in replies]
    return out


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
