"""Crashes and restarts: kill -9 of the engine, entries left pending, Redis restarted."""

from __future__ import annotations

import asyncio
import time

import pytest

from rotation_fsm import reasons as R
from rotation_fsm.messages import rotation_from_hash
from tests.integration.harness import Stack, open_stack

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
