"""Engine bugs met while building the chaos run, reproduced through two real replicas of
one consumer group and a claim race (XAUTOCLAIM while the first reader still works).

Both were open when found (the second by the chaos run itself: "plan entries answered
more than once") and pinned here as strict xfails; both were fixed in 8deaab5, with
their core-level cases in tests/property, and stay as regression tests. A bug still
open goes here as a strict xfail.
"""

from __future__ import annotations

import asyncio
import json

from redis.asyncio import Redis

from rotation_fsm.core.market import Account, Kline, Position
from rotation_fsm.runtime.engine import BookEngine
from rotation_fsm.runtime.listener import Listener
from rotation_fsm.store.gateway import Store
from rotation_fsm.store.keys import Keys
from tests.stubs import UNIVERSE, plan_fields, rules

GROUP = "rotation-fsm"


class _Exchange:
    """An empty paper account; with a `gate`, the positions answer waits for it; `down`,
    it never answers (every OPEN plan is blocked positions_unavailable: not final)."""

    def __init__(self, gate: asyncio.Event | None = None, *, down: bool = False) -> None:
        self.gate = gate
        self.down = down
        self.asked = asyncio.Event()

    async def positions(self) -> list[Position]:
        self.asked.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise ConnectionError("exchange unreachable")
        return []

    async def account(self) -> Account:
        return Account(total_initial_margin=0.0, total_margin_balance=1000.0)

    async def klines(self, symbol: str) -> list[Kline]:
        return []


def _replica(redis: Redis, keys: Keys, exchange: _Exchange, name: str, claim_ms: int) -> Listener:
    store = Store(redis, keys, group=GROUP, retention_s=3600)
    engine = BookEngine(store, exchange, rules())
    return Listener(redis, engine, keys, group=GROUP, consumer=name, claim_idle_ms=claim_ms)


async def test_a_bad_entry_claimed_while_its_first_reader_works_is_dead_lettered_once(
    redis_client: Redis,
) -> None:
    # Was: a bad entry had no idempotency record, so each consumer committing it
    # dead-lettered it again.
    keys = Keys()
    await redis_client.hset(keys.policy, "universe_symbols", json.dumps(UNIVERSE))
    gate = asyncio.Event()
    slow = _Exchange(gate)
    first = _replica(redis_client, keys, slow, "first", claim_ms=60_000)
    second = _replica(redis_client, keys, _Exchange(), "second", claim_ms=1)
    await first.ensure_groups()
    await redis_client.xadd(keys.plans, plan_fields("p1", "NEWUSDT"))  # needs the exchange
    await redis_client.xadd(keys.plans, {"plan_id": "p2", "decision": "EXECUTE"})  # no symbol

    reading = asyncio.create_task(first.run_once())  # reads both, then waits on the exchange
    await slow.asked.wait()
    await asyncio.sleep(0.01)  # let both entries idle past the second replica's claim time
    await second.run_once()  # claims both and commits them: p1 decided, p2 dead-lettered
    await second.engine.flush()
    gate.set()
    await reading  # the first reader goes on with what it read
    await first.engine.flush()

    assert await redis_client.xlen(keys.dlq) == 1


async def _decisions_per_entry(redis: Redis, keys: Keys) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, fields in await redis.xrange(keys.decisions):
        entry_id = fields.get(b"entry_id", b"").decode()
        counts[entry_id] = counts.get(entry_id, 0) + 1
    return counts


async def test_a_duplicate_plan_claimed_while_its_first_reader_works_is_answered_once(
    redis_client: Redis,
) -> None:
    # Was: a fresh (non-final) decision replaced PlanRecord.entries with its own entry,
    # so the first reader's commit answered the older entry, then the newer, again.
    keys = Keys()
    await redis_client.hset(keys.policy, "universe_symbols", json.dumps(UNIVERSE))
    gate = asyncio.Event()
    slow = _Exchange(gate, down=True)
    first = _replica(redis_client, keys, slow, "first", claim_ms=60_000)
    second = _replica(redis_client, keys, _Exchange(down=True), "second", claim_ms=1)
    await first.ensure_groups()
    for _ in range(2):  # the bridge delivered the plan twice
        await redis_client.xadd(keys.plans, plan_fields("p1", "NEWUSDT"))

    reading = asyncio.create_task(first.run_once())  # reads both, then waits on the exchange
    await slow.asked.wait()
    await asyncio.sleep(0.01)  # let both entries idle past the second replica's claim time
    await second.run_once()  # claims both: BLOCK positions_unavailable, twice
    await second.engine.flush()
    gate.set()
    await reading  # the first reader goes on with what it read
    await first.engine.flush()

    assert set((await _decisions_per_entry(redis_client, keys)).values()) == {1}
