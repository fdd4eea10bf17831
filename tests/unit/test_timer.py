"""The timer's wait between scans, on fakeredis: until the next deadline, bounded."""

import fakeredis
import pytest

from rotation_fsm.runtime.engine import BookEngine
from rotation_fsm.runtime.timer import MIN_PAUSE_S, Timer
from rotation_fsm.store.gateway import Store
from rotation_fsm.store.keys import Keys
from tests.stubs import NOW_MS, StubExchange, rules


@pytest.fixture
async def timer():
    redis = fakeredis.FakeAsyncRedis()
    keys = Keys()
    store = Store(redis, keys, group="rotation-fsm", retention_s=3600)
    engine = BookEngine(store, StubExchange(), rules(), clock=lambda: NOW_MS)
    yield Timer(redis, engine, keys, interval_s=0.1, clock=lambda: NOW_MS)
    await redis.aclose()


async def test_the_timer_waits_until_the_next_deadline(timer):
    await timer.redis.zadd(timer.keys.deadlines, {"r1": NOW_MS + 30, "r2": NOW_MS + 80})
    assert await timer.pause_s() == pytest.approx(0.03)


async def test_the_timer_waits_an_interval_at_most(timer):
    await timer.redis.zadd(timer.keys.deadlines, {"r1": NOW_MS + 60_000})
    assert await timer.pause_s() == 0.1
    await timer.redis.delete(timer.keys.deadlines)
    assert await timer.pause_s() == 0.1  # nothing in flight


async def test_a_deadline_already_passed_never_makes_the_timer_spin(timer):
    await timer.redis.zadd(timer.keys.deadlines, {"r1": NOW_MS - 5_000})
    assert await timer.pause_s() == MIN_PAUSE_S
