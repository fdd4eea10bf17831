"""Crashes and restarts: kill -9 of the engine, entries left pending, Redis restarted."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from rotation_fsm.core import reasons as R
from rotation_fsm.core.messages import rotation_from_hash
from rotation_fsm.runtime.engine import BookEngine
from rotation_fsm.runtime.listener import Listener
from rotation_fsm.runtime.timer import Timer
from rotation_fsm.store.gateway import Store
from rotation_fsm.store.keys import Keys
from tests.integration.harness import Stack, open_stack
from tests.stubs import UNIVERSE, StubExchange, plan_fields, rules

pytestmark = pytest.mark.timeout(90)

SLOTS = {"GOV_ACTIVE_SLOTS_CHOP": "3"}


async def rotation(stack: Stack, rotation_id: str):
    return rotation_from_hash(await stack.redis.hgetall(stack.keys.rotation(rotation_id)))


async def closes(stack: Stack) -> list[dict[str, str]]:
    return [
        p for p in await stack.all_entries(stack.keys.plans) if p.get("rotation_trigger") == "true"
    ]


async def test_kill9_after_the_close_then_confirmation_while_down(stack: Stack, engine_process):
    stack.fill_book("BTCUSDT", "ETHUSDT", "SOLUSDT")
    first = await engine_process(stack.env(**SLOTS))
    await stack.send_plan("a1b2c3d4e5f67890")
    lock = await stack.event(R.EV_LOCK_CREATED)
    first.kill9()
    await stack.send_result(lock["close_plan_id"], symbol=lock["close_symbol"])
    await engine_process(stack.env(**SLOTS))
    await stack.event(R.EV_COMPLETE)
    d = await stack.next_entry(
        stack.keys.decisions, {"plan_id": "a1b2c3d4e5f67890", "decision": R.ALLOW}
    )
    assert d["reason"] == R.ROTATION_COMPLETE
    assert len(await closes(stack)) == 1
    assert (await rotation(stack, lock["rotation_id"])).state == "CONFIRMED"


async def test_kill9_then_the_deadline_passes_and_the_timeout_fires_after_restart(
    stack: Stack, engine_process
):
    stack.fill_book("BTCUSDT", "ETHUSDT", "SOLUSDT")
    env = stack.env(**SLOTS, GOV_ROTATION_LOCK_TTL="1.5")
    first = await engine_process(env)
    await stack.send_plan("a1b2c3d4e5f67890")
    lock = await stack.event(R.EV_LOCK_CREATED)
    first.kill9()
    rec = await rotation(stack, lock["rotation_id"])
    # The scenario is that time passes while no engine runs: wait out the deadline.
    await asyncio.sleep(max(0.0, rec.deadline_ms / 1000 - time.time()) + 0.2)
    restarted_at = time.time()
    await engine_process(env)
    await stack.event(R.EV_TIMEOUT)
    done = await rotation(stack, lock["rotation_id"])
    assert done.state == "TIMED_OUT"
    assert done.ended_ms / 1000 - restarted_at < 5.0
    d = await stack.next_entry(
        stack.keys.decisions, {"plan_id": "a1b2c3d4e5f67890", "reason": R.ROTATION_TIMEOUT}
    )
    assert d["decision"] == R.BLOCK


async def test_an_entry_left_pending_by_a_dead_consumer_is_claimed(stack: Stack):
    await stack.start_engine(GOV_CLAIM_IDLE_MS="500")
    # A consumer that read the plan and died before committing:
    await stack.send_plan("p-orphan")
    # Race the engine for it with a raw read; whichever got it, it must be decided once.
    await stack.redis.xreadgroup("rotation-fsm", "dead-consumer", {stack.keys.plans: ">"})
    d = await stack.decision("p-orphan")
    assert d["reason"] == R.SLOTS_AVAILABLE
    assert len(await stack.decisions_for("p-orphan")) == 1


async def test_redis_restarted_with_aof_mid_rotation_completes(redis_factory):
    server = redis_factory(appendonly=True)
    async with open_stack(server.url) as stack:
        stack.fill_book("BTCUSDT", "ETHUSDT", "SOLUSDT")
        await stack.start_engine(**SLOTS)
        await stack.send_plan("a1b2c3d4e5f67890")
        lock = await stack.event(R.EV_LOCK_CREATED)
        server.kill()
        server.restart()
        await stack.send_result(lock["close_plan_id"], symbol=lock["close_symbol"])
        await stack.event(R.EV_COMPLETE, timeout_s=30)
        d = await stack.next_entry(
            stack.keys.decisions, {"plan_id": "a1b2c3d4e5f67890", "decision": R.ALLOW}, timeout_s=30
        )
        assert d["reason"] == R.ROTATION_COMPLETE
        assert len(await closes(stack)) == 1


async def _first_commit_lost(redis_client, keys: Keys) -> tuple[BookEngine, Listener]:
    """An engine and its listener on `redis_client` whose first commit is lost."""
    await redis_client.hset(keys.policy, "universe_symbols", json.dumps(UNIVERSE))
    store = Store(redis_client, keys, group="rotation-fsm", retention_s=3600)
    engine = BookEngine(store, StubExchange(), rules())
    listener = Listener(redis_client, engine, keys, group="rotation-fsm", consumer="c1")
    await listener.ensure_groups()
    real_commit, failures = store.commit, [ConnectionError("connection lost mid-commit")]

    async def commit_once_lost(*args, **kw):
        if failures:
            raise failures.pop()
        return await real_commit(*args, **kw)

    store.commit = commit_once_lost
    return engine, listener


async def test_a_pipelined_commit_that_fails_is_redone_before_the_listener_waits(
    redis_client,
):
    # Was: the commit of the last batch before a quiet spell ran as a task that
    # nobody awaited until the next entry came; when Redis dropped it (the restart
    # above, under load), the confirmation sat uncommitted until then.
    keys = Keys()
    engine, listener = await _first_commit_lost(redis_client, keys)
    await redis_client.xadd(keys.plans, plan_fields("p-lost", "NEWUSDT"))
    assert await listener.run_once(block_ms=50) == 1  # decided; its commit is in flight
    with pytest.raises(ConnectionError):
        await listener.run_once(block_ms=60_000)  # surfaces before blocking on the read
    assert await listener.run_once(block_ms=50) == 1  # its own pending entry, again
    await engine.flush()
    rows = await redis_client.xrange(keys.decisions)
    assert [(f[b"plan_id"], f[b"reason"]) for _, f in rows] == [
        (b"p-lost", R.SLOTS_AVAILABLE.encode())
    ]
    assert await redis_client.xpending(keys.plans, "rotation-fsm") == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }


async def test_a_listener_commit_lost_while_the_timer_settles_it_is_read_again(redis_client):
    # The timer and the listener share the engine's pipelined commit: when the timer
    # is the one that finds the listener's commit failed, the listener must still
    # re-read its entries, not leave them pending until another consumer claims them.
    keys = Keys()
    engine, listener = await _first_commit_lost(redis_client, keys)
    timer = Timer(redis_client, engine, keys)
    await redis_client.xadd(keys.plans, plan_fields("p-lost", "NEWUSDT"))
    assert await listener.run_once(block_ms=50) == 1  # decided; its commit is in flight
    with pytest.raises(ConnectionError):
        await timer.run_once()  # nothing due: settles the commit in flight, which failed
    assert await listener.run_once(block_ms=50) == 1  # its own pending entry, again
    await engine.flush()
    rows = await redis_client.xrange(keys.decisions)
    assert [f[b"plan_id"] for _, f in rows] == [b"p-lost"]
    assert (await redis_client.xpending(keys.plans, "rotation-fsm"))["pending"] == 0
