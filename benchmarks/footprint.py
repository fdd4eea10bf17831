"""Redis memory per finished rotation, measured on rotations the engine really finished.

Two figures, because they answer two questions:

- **engine state**: what the engine itself keeps per finished rotation until
  `GOV_RETENTION_S` expires it — the rotation hash, its close-plan index key, the
  plan records of the entry plan and of the close plan (`MEMORY USAGE` of each,
  averaged over a sample; they carry that TTL), plus its share of the `finished`
  index (a sorted set the engine trims to the same retention);
- **everything**: the growth of `used_memory` over the run divided by the
  rotations finished — this adds the stream entries (plan, close plan, results,
  three decisions, two events, the audit entry's share), permits and blocks,
  which the trading stack's own stream retention trims, not the engine.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from rotation_fsm.store.keys import Keys

SAMPLE = 200


@dataclass(frozen=True)
class Footprint:
    """Bytes per finished rotation, and what of it expires."""

    engine_state_bytes: float
    everything_bytes: float
    expires: bool
    sampled: int
    parts: dict[str, float]


async def measure_footprint(
    redis: Redis, keys: Keys, *, finished: int, used_before: int, used_after: int
) -> Footprint:
    """Footprint of the rotations in `keys.finished`, given `used_memory` before and after
    the `finished` rotations were made."""
    ids = [_text(m) for m in await redis.zrange(keys.finished, 0, SAMPLE - 1)]
    totals: Counter[str] = Counter()
    for rotation_id in ids:
        totals.update(await _rotation_bytes(redis, keys, rotation_id))
    parts = {name: total / max(1, len(ids)) for name, total in totals.items()}
    parts["finished index entry"] = await _usage(redis, keys.finished) / max(
        1, await redis.zcard(keys.finished)
    )
    expires = bool(ids) and all([await redis.pttl(keys.rotation(rid)) > 0 for rid in ids[:20]])
    return Footprint(
        engine_state_bytes=sum(parts.values()),
        everything_bytes=(used_after - used_before) / max(1, finished),
        expires=expires,
        sampled=len(ids),
        parts=parts,
    )


async def _rotation_bytes(redis: Redis, keys: Keys, rotation_id: str) -> dict[str, int]:
    """MEMORY USAGE of a finished rotation's own keys, by kind."""
    new_plan_id, close_plan_id = await redis.hmget(
        keys.rotation(rotation_id), ["new_plan_id", "close_plan_id"]
    )
    names = {
        "rotation hash": [keys.rotation(rotation_id)],
        "close index key": [],
        "plan records": [],
    }
    if close_plan_id:
        names["close index key"].append(keys.close_index(_text(close_plan_id)))
        names["plan records"].append(keys.plan(_text(close_plan_id)))
    if new_plan_id:
        names["plan records"].append(keys.plan(_text(new_plan_id)))
    return {kind: sum([await _usage(redis, k) for k in found]) for kind, found in names.items()}


async def _usage(redis: Redis, key: str) -> int:
    # SAMPLES 0: every element of an aggregate is counted, not an estimate from five.
    used: Any = await redis.memory_usage(key, samples=0)
    return int(used or 0)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
