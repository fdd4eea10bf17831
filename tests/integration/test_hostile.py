"""What a hostile afternoon tried against a running engine, each held by a test."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from redis.asyncio import Redis

from rotation_fsm.core import reasons as R
from rotation_fsm.devkit.intent_simulator.simulator import IntentSimulator, SimConfig
from rotation_fsm.store.keys import Keys
from tests.integration.harness import Stack, fields_of, open_stack
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


# A producer that got its entries in as memory ran out: a script allowed to write
# while Redis is out of memory (XADD itself would be refused).
XADD_ALLOW_OOM = "#!lua flags=allow-oom\nreturn redis.call('XADD', KEYS[1], '*', unpack(ARGV))"


async def readyz(port: int) -> tuple[int, dict[str, object]]:
    url = f"http://127.0.0.1:{port}/readyz"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.json()


async def test_redis_out_of_memory_is_waited_out_reported_and_nothing_left_pending(
    redis_factory,
):
    server = redis_factory()
    async with open_stack(server.url) as stack:
        running = await stack.start_engine()
        await stack.redis.set("ballast", b"x" * 2_000_000)  # past the 1 MB below
        await stack.redis.config_set("maxmemory", "1mb")
        ids = [f"p-oom-{i}" for i in range(5)]
        for plan_id in ids:
            flat = [x for k, v in plan_fields(plan_id, "BNBUSDT").items() for x in (k, v)]
            await stack.redis.eval(XADD_ALLOW_OOM, 1, stack.keys.plans, *flat)
        while not running.health.redis_out_of_memory:
            await asyncio.sleep(0.05)  # a readiness probe, as an orchestrator would
        status, body = await readyz(running.http_port)
        assert status == 503 and body["redis_out_of_memory"] is True
        assert "maxmemory" in str(body["error"])
        assert running.metrics.redis_out_of_memory._value.get() == 1
        await asyncio.sleep(3.0)  # the out-of-memory spell lasts 3 s
        assert all(not task.done() for task, _ in stack.engines)

        await stack.redis.config_set("maxmemory", "0")
        await stack.redis.delete("ballast")
        decisions = [await stack.decision(plan_id, timeout_s=20) for plan_id in ids]
        assert [d["decision"] for d in decisions] == ["ALLOW"] * 5
        assert (await readyz(running.http_port))[0] == 200
        pending = await stack.redis.xpending(stack.keys.plans, "rotation-fsm")
        assert pending["pending"] == 0
        assert running.metrics.redis_out_of_memory._value.get() == 0


async def test_the_intent_simulator_survives_a_redis_restart(redis_factory):
    server = redis_factory()  # no persistence: the restart loses the policy too
    redis = Redis.from_url(server.url)
    keys = Keys()
    config = SimConfig(redis_url=server.url, rate=50, duplicate_rate=0, resend_rate=0, seed=7)
    simulator = IntentSimulator(redis, config)
    await simulator.seed_policy()
    stop = asyncio.Event()
    task = asyncio.create_task(simulator.run(stop))
    try:
        assert await redis.xread({keys.plans: "0"}, count=1, block=5000)
        server.kill()
        while not simulator.outages:
            await asyncio.sleep(0.02)  # the simulator's own probe runs meanwhile
        server.restart()
        assert await redis.xread({keys.plans: "0"}, count=1, block=10_000)  # publishing again
        assert await redis.exists(keys.policy)
        assert not task.done()
    finally:
        stop.set()
        await task
        await redis.aclose()


async def test_the_engine_logs_json_objects_when_asked(stack: Stack, engine_process):
    proc = await engine_process(stack.env(GOV_LOG_FORMAT="json", METRICS_PORT="0"))
    record = json.loads(proc.log_lines[-1])
    assert record["logger"] == "rotation_fsm.runtime.service" and record["level"] == "INFO"
    assert record["msg"].startswith("rotation-fsm running")
    assert all(json.loads(line) for line in proc.log_lines)  # every line an object
