"""The pipelined commit path (BookEngine.submit), on fakeredis."""

import asyncio
import json

import fakeredis
import pytest

from rotation_fsm.core import reasons as R
from rotation_fsm.core.decide import PlanIn
from rotation_fsm.runtime.engine import BookEngine
from rotation_fsm.store.gateway import Store
from rotation_fsm.store.keys import Keys
from tests.stubs import NOW_MS, UNIVERSE, StubExchange, book_of, plan, rules


@pytest.fixture
async def redis():
    r = fakeredis.FakeAsyncRedis()
    await r.hset(Keys().policy, "universe_symbols", json.dumps(UNIVERSE))
    yield r
    await r.aclose()


def engine(redis, positions, consumer="a"):
    store = Store(redis, Keys(), group="rotation-fsm", retention_s=3600)
    return BookEngine(store, StubExchange(positions), rules(), clock=lambda: NOW_MS)


async def decisions(redis):
    rows = await redis.xrange(Keys().decisions)
    return [(f[b"plan_id"].decode(), f[b"reason"].decode()) for _, f in rows]


async def test_the_next_batch_sees_the_batch_in_flight(redis):
    eng = engine(redis, book_of(1))  # 3 slots (UNKNOWN → CHOP), 1 open
    await eng.submit([PlanIn("1-0", plan("p-1", "NEWUSDT"))])
    assert eng._ahead is not None  # its commit is in flight
    await eng.submit([PlanIn("2-0", plan("p-2", "BNBUSDT")), PlanIn("2-1", plan("p-3", "XRPUSDT"))])
    await eng.flush()
    assert await decisions(redis) == [
        ("p-1", R.SLOTS_AVAILABLE),
        ("p-2", R.SLOTS_AVAILABLE),
        ("p-3", R.WAITING_ROTATION_CLOSE),
    ]
    assert await redis.hlen(Keys().reservations) == 2
    assert int(await redis.get(Keys().version)) == 2


async def test_a_refused_commit_in_flight_is_redone_before_the_next_batch(redis):
    a, b = engine(redis, book_of(1)), engine(redis, book_of(1), "b")
    gate, real_commit = asyncio.Event(), a.store.commit

    async def gated_commit(*args, **kw):
        await gate.wait()  # A's first commit stays in flight until B has committed
        return await real_commit(*args, **kw)

    a.store.commit = gated_commit
    hooked: list[int] = []
    a.conflict_hooks.append(lambda: hooked.append(1))  # what feeds the metric
    await a.submit([PlanIn("1-0", plan("p-1", "NEWUSDT"))])
    await b.handle([PlanIn("1-1", plan("p-2", "BNBUSDT"))])  # B commits first: A's is refused
    gate.set()
    await a.submit([PlanIn("2-0", plan("p-3", "XRPUSDT"))])
    await a.flush()
    rows = await decisions(redis)
    assert sorted(rows) == sorted(
        [
            ("p-1", R.SLOTS_AVAILABLE),
            ("p-2", R.SLOTS_AVAILABLE),
            ("p-3", R.WAITING_ROTATION_CLOSE),
        ]
    )
    assert len(rows) == 3 and a.conflicts >= 1  # nothing twice, nothing lost
    assert len(hooked) == a.conflicts
    assert await redis.hlen(Keys().reservations) == 2
