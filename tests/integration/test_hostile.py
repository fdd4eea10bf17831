"""What a hostile afternoon tried against a running engine, each held by a test."""

from __future__ import annotations

import json
import time

import pytest

from rotation_fsm import reasons as R
from tests.integration.harness import Stack, fields_of
from tests.stubs import plan_fields

pytestmark = pytest.mark.timeout(60)


async def test_an_entry_with_a_field_name_written_twice_is_dead_lettered(stack: Stack):
    await stack.start_engine()
    flat = [x for k, v in plan_fields("p-twice").items() for x in (k, v)]
    twice = await stack.redis.execute_command("XADD", stack.keys.plans, "*", *flat, "qty", "-5")
    await stack.send_plan("p-after")
    assert (await stack.decision("p-after"))["reason"] == R.SLOTS_AVAILABLE
    (letter,) = [fields_of(raw) for _, raw in await stack.redis.xrange(stack.keys.dlq)]
    assert letter["entry_id"] == twice.decode()
    assert "'qty'" in letter["error"] and "more than once" in letter["error"]
    assert (letter["qty"], letter["orig_qty"]) == ("0.1", "-5")  # both values kept
    assert await stack.decisions_for("p-twice") == []


async def test_a_value_redis_cannot_carry_written_into_the_settings_hash_is_ignored(
    stack: Stack,
):
    await stack.start_engine(GOV_RESERVATION_TTL="30")
    await stack.redis.hset(stack.keys.settings, "GOV_RESERVATION_TTL", "1e17")
    await stack.send_plan("p-1")
    assert (await stack.decision("p-1"))["reason"] == R.SLOTS_AVAILABLE
    await stack.send_plan("p-2", "BNBUSDT")
    assert (await stack.decision("p-2"))["reason"] == R.SLOTS_AVAILABLE  # still running
    held = json.loads(await stack.redis.hget(stack.keys.reservations, "NEWUSDT"))
    assert held["until_ms"] - time.time() * 1000 <= 30_000  # the last good TTL
    pending = await stack.redis.xpending(stack.keys.plans, "rotation-fsm")
    assert pending["pending"] == 0
