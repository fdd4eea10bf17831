"""The store's atomic commit, on fakeredis (Lua via lupa): fast checks of the mechanism.

The same behaviours run against a real redis-server in tests/integration.
"""

import json

import fakeredis
import pytest

from rotation_fsm.core import reasons as R
from rotation_fsm.core.decide import Market, PlanIn, ResultIn, Tick, decide_batch
from rotation_fsm.store.gateway import CommitRefused, Store
from rotation_fsm.store.keys import Keys
from tests.stubs import NOW_MS, UNIVERSE, book_of, market, plan, result, rules


@pytest.fixture
async def store():
    redis = fakeredis.FakeAsyncRedis()
    keys = Keys()
    await redis.hset(keys.policy, "universe_symbols", json.dumps(UNIVERSE))
    for stream in (keys.plans, keys.results):
        await redis.xgroup_create(stream, "rotation-fsm", id="$", mkstream=True)
    yield Store(redis, keys, group="rotation-fsm", retention_s=3600)
    await redis.aclose()


async def decide_and_commit(store, inputs, mkt, now_ms=NOW_MS, rl=None):
    view = await store.load(inputs, mkt)
    effects = decide_batch(inputs, view, mkt, rl or rules(), now_ms)
    assert await store.commit(view.version, effects, now_ms)
    return effects


async def test_a_rotation_commits_every_key_together(store):
    mkt = market(*book_of(3))
    await decide_and_commit(store, [PlanIn("1-0", plan())], mkt)
    r, k = store.redis, store.keys
    (rotation_id,) = [m.decode() for m in await r.smembers(k.inflight)]
    rec = await store.rotation(rotation_id)
    assert rec.state == "CLOSE_EMITTED"
    assert await r.get(k.close_index(rec.close_plan_id)) == rotation_id.encode()
    assert await r.zscore(k.deadlines, rotation_id) == rec.deadline_ms
    lock = json.loads(await r.get(k.lock("a1b2c3d4e5f67890")))
    assert lock["close_plan_id"] == rec.close_plan_id
    assert json.loads(await r.get(k.block("a1b2c3d4e5f67890")))["reason"] == (
        R.WAITING_ROTATION_CLOSE
    )
    assert await r.xlen(k.plans) == 1 and await r.xlen(k.events) == 1
    assert await r.xlen(k.decisions) == 1
    assert await r.get(k.version) == b"1"


async def test_confirmation_ends_the_rotation_and_cleans_its_indexes(store):
    await decide_and_commit(store, [PlanIn("1-0", plan())], market(*book_of(3)))
    r, k = store.redis, store.keys
    (rotation_id,) = [m.decode() for m in await r.smembers(k.inflight)]
    rec = await store.rotation(rotation_id)
    await decide_and_commit(
        store, [ResultIn("2-0", result(rec.close_plan_id))], Market(), NOW_MS + 10
    )
    assert (await store.rotation(rotation_id)).state == "CONFIRMED"
    assert await r.scard(k.inflight) == 0 and await r.zcard(k.deadlines) == 0
    assert await r.get(k.lock("a1b2c3d4e5f67890")) is None
    assert await r.get(k.block("a1b2c3d4e5f67890")) is None
    permit = json.loads(await r.get(k.permit("a1b2c3d4e5f67890")))
    assert permit["granted"] is True and permit["consumed"] is False
    assert 0 < await r.ttl(k.permit("a1b2c3d4e5f67890")) <= 60
    assert 0 < await r.pttl(k.rotation(rotation_id)) <= 3_600_000


async def test_a_stale_version_changes_nothing(store):
    inputs = [PlanIn("1-0", plan())]
    view = await store.load(inputs, market())
    effects = decide_batch(inputs, view, market(), rules(), NOW_MS)
    await store.redis.incr(store.keys.version)  # another replica committed meanwhile
    assert not await store.commit(view.version, effects, NOW_MS)
    assert await store.redis.xlen(store.keys.decisions) == 0
    assert await store.redis.get(store.keys.permit("a1b2c3d4e5f67890")) is None


async def test_commit_refuses_a_command_outside_the_allow_list(store):
    head = [store.keys.decisions, "permit:", "block:", "plan:", "60", "3600"]
    ops = json.dumps([head, ["SET", "x", "v"], ["FLUSHALL", "x"]])
    with pytest.raises(Exception, match="not allowed"):
        await store._commit(keys=[store.keys.version], args=[0, ops])
    assert await store.redis.get("x") is None  # validated before anything ran


async def test_a_commit_with_a_ttl_out_of_range_writes_nothing_and_says_why(store):
    # A reservation TTL of 1e17 s: its hold's PX is past what Redis takes. Checked
    # before the first write: no decision, no permit, no ack, no reservation.
    r, k = store.redis, store.keys
    entry_id = (await r.xadd(k.plans, {"plan_id": "p", "symbol": "NEWUSDT"})).decode()
    await r.xreadgroup("rotation-fsm", "c1", {k.plans: ">"})
    inputs = [PlanIn(entry_id, plan("p"))]
    view = await store.load(inputs, market())
    effects = decide_batch(inputs, view, market(), rules(reservation_ttl_s=1e17), NOW_MS)
    with pytest.raises(CommitRefused, match=r"nothing written: .*PX 1\d+ is not an integer"):
        await store.commit(view.version, effects, NOW_MS)
    assert await r.xlen(k.decisions) == 0
    assert await r.get(k.permit("p")) is None
    assert await r.hgetall(k.reservations) == {}
    assert (await r.xpending(k.plans, "rotation-fsm"))["pending"] == 1
    assert await r.get(k.version) is None


async def test_a_commit_with_a_score_that_is_not_an_integer_writes_nothing(store):
    head = [store.keys.decisions, "permit:", "block:", "plan:", "60", "3600"]
    ops = json.dumps([head, ["SET", "x", "v"], ["ZADD", "z", "1e400", "m"]])
    with pytest.raises(Exception, match="score 1e400 is not an integer"):
        await store._commit(keys=[store.keys.version], args=[0, ops])
    assert await store.redis.get("x") is None


async def test_acks_are_part_of_the_commit(store):
    r, k = store.redis, store.keys
    entry_id = (
        await r.xadd(k.plans, {"plan_id": "p", "symbol": "NEWUSDT", "decision": "EXECUTE"})
    ).decode()
    await r.xreadgroup("rotation-fsm", "c1", {k.plans: ">"})
    assert (await r.xpending(k.plans, "rotation-fsm"))["pending"] == 1
    await decide_and_commit(store, [PlanIn(entry_id, plan("p"))], market())
    assert (await r.xpending(k.plans, "rotation-fsm"))["pending"] == 0


async def test_finished_index_is_trimmed_to_the_retention(store):
    r, k = store.redis, store.keys
    await r.zadd(k.finished, {"ancient@1": NOW_MS - 3_600_001})
    await decide_and_commit(store, [PlanIn("1-0", plan())], market(*book_of(3)))
    (rotation_id,) = [m.decode() for m in await r.smembers(k.inflight)]
    rec = await store.rotation(rotation_id)
    await decide_and_commit(store, [ResultIn("2-0", result(rec.close_plan_id))], Market(), NOW_MS)
    assert [m.decode() for m in await r.zrange(k.finished, 0, -1)] == [rotation_id]


async def test_a_rotation_end_keeps_the_waiting_plans_answered_entries(store):
    await decide_and_commit(store, [PlanIn("1-0", plan())], market(*book_of(3)))
    (rotation_id,) = [m.decode() for m in await store.redis.smembers(store.keys.inflight)]
    rec = await store.rotation(rotation_id)
    await decide_and_commit(
        store, [ResultIn("2-0", result(rec.close_plan_id))], Market(), NOW_MS + 10
    )
    # The plan's original entry is redelivered (XAUTOCLAIM after a crash): nothing new.
    effects = await decide_and_commit(
        store, [PlanIn("1-0", plan())], market(*book_of(3)), NOW_MS + 20
    )
    assert [type(e).__name__ for e in effects] == ["Ack"]
    assert await store.redis.xlen(store.keys.decisions) == 2  # waiting, then complete


async def test_only_a_batch_with_plans_loads_every_rotation_in_flight(store):
    # Two rotations in flight (cap 2): each closes one of the three positions.
    rl = rules(max_concurrent_rotations=2)
    await decide_and_commit(
        store, [PlanIn("1-0", plan("p-1", "NEWUSDT"))], market(*book_of(3)), rl=rl
    )
    await decide_and_commit(
        store, [PlanIn("1-1", plan("p-2", "BNBUSDT"))], market(*book_of(3)), NOW_MS + 1, rl=rl
    )
    r, k = store.redis, store.keys
    first, second = sorted(m.decode() for m in await r.smembers(k.inflight))
    plans = await store.load([PlanIn("1-2", plan("p-3", "XRPUSDT"))], market(*book_of(3)))
    assert set(plans.rotations) == plans.inflight == {first, second}
    # The timer's tick for one of them reads that one, whatever else is in flight.
    ticks = await store.load([Tick(first)], Market())
    assert set(ticks.rotations) == ticks.inflight == {first}
    assert set((await store.load([], Market(), whole=True)).rotations) == {first, second}


async def test_a_burst_into_one_symbol_keeps_its_reservation_small(store):
    # Each entry holds the slot through a key of its own: the reservation itself stays
    # one small record however many entries join it (no list rewritten per commit).
    for i in range(50):
        await decide_and_commit(store, [PlanIn(f"1-{i}", plan(f"p-{i}"))], market(), NOW_MS + i)
    r, k = store.redis, store.keys
    body = json.loads(await r.hget(k.reservations, "NEWUSDT"))
    assert body == {
        "plan_id": "p-0",
        "until_ms": NOW_MS + 49 + 60_000,
        "holders": 50,
        "filled_ms": 0,
    }
    hold = json.loads(await r.get(k.hold("p-49")))
    assert hold == {"symbol": "NEWUSDT", "made_by": "p-0"}
    assert 0 < await r.pttl(k.hold("p-49")) <= 60_000
    done = [ResultIn("2-0", result("p-49", executed=True, reduce_only=False))]
    await decide_and_commit(store, done, Market(), NOW_MS + 100)
    assert json.loads(await r.hget(k.reservations, "NEWUSDT"))["holders"] == 49
    assert await r.get(k.hold("p-49")) is None
