"""The console charts' history: the last 15 minutes of a book in 5-second buckets,
read from the decision and event streams (fakeredis: XADD with explicit ids)."""

from __future__ import annotations

import fakeredis
import pytest

from rotation_fsm.core import reasons as R
from rotation_fsm.store.keys import Keys
from rotation_fsm.web.series import STEP_S, WINDOW_S, console_series, quantile

NOW_MS = 1_800_000_000_000  # a multiple of 5 s
KEYS = Keys()


@pytest.fixture
async def redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis()


async def decide(redis, at_ms: int, verdict: str, *, plan_ms: int, desired: int, free: int):
    await redis.xadd(
        KEYS.decisions,
        {
            "plan_id": f"p{at_ms}",
            "decision": verdict,
            "reason": R.SLOTS_AVAILABLE,
            "regime": "CHOP",
            "desired_slots": str(desired),
            "open_slots": str(free),
            "entry_id": f"{plan_ms}-0",
        },
        id=f"{at_ms}-0",
    )


async def test_decisions_are_counted_by_verdict_with_latency_quantiles_and_slots(redis):
    at = NOW_MS - 60_000
    await decide(redis, at + 100, R.ALLOW, plan_ms=at + 90, desired=3, free=2)
    await decide(redis, at + 200, R.BLOCK, plan_ms=at + 170, desired=3, free=1)
    await decide(redis, at + 300, R.ALLOW, plan_ms=at + 280, desired=3, free=0)
    series = await console_series(redis, KEYS, NOW_MS)
    [bucket] = series["buckets"]
    assert bucket["t"] == at // 1000
    assert (bucket["allow"], bucket["block"]) == (2, 1)
    assert (bucket["p50_ms"], bucket["p99_ms"]) == (20, 30)  # latencies 10, 30, 20
    # the slots of the bucket's last decision
    assert (bucket["desired"], bucket["occupied"], bucket["regime"]) == (3, 3, "CHOP")


async def test_rotation_events_are_counted_as_started_confirmed_and_timed_out(redis):
    at = NOW_MS - 30_000
    for offset, event in enumerate(
        [R.EV_LOCK_CREATED, R.EV_COMPLETE, R.EV_LOCK_CREATED, R.EV_TIMEOUT, R.EV_ABORTED]
    ):
        await redis.xadd(KEYS.events, {"event": event}, id=f"{at + offset}-0")
    [bucket] = (await console_series(redis, KEYS, NOW_MS))["buckets"]
    assert (bucket["started"], bucket["confirmed"], bucket["timed_out"]) == (2, 1, 1)


async def test_only_the_window_is_read_and_buckets_are_oldest_first(redis):
    old = NOW_MS - (WINDOW_S + 60) * 1000
    await decide(redis, old, R.ALLOW, plan_ms=old, desired=3, free=2)
    recent = [NOW_MS - 20_000, NOW_MS - 10_000]
    for at in recent:
        await decide(redis, at, R.BLOCK, plan_ms=at, desired=3, free=0)
    series = await console_series(redis, KEYS, NOW_MS)
    assert [b["t"] for b in series["buckets"]] == [at // 1000 for at in recent]
    assert series["step_s"] == STEP_S and series["complete_from_ms"] <= recent[0]


async def test_a_busy_book_reads_only_the_newest_decisions_and_says_from_when(redis):
    for i in range(10):
        at = NOW_MS - 100_000 + i * 1000
        await decide(redis, at, R.ALLOW, plan_ms=at, desired=3, free=2)
    series = await console_series(redis, KEYS, NOW_MS, max_decisions=4)
    assert sum(b["allow"] for b in series["buckets"]) == 4
    assert series["complete_from_ms"] == NOW_MS - 100_000 + 6 * 1000


def test_quantiles_are_nearest_rank():
    assert quantile([], 0.5) is None
    assert quantile([5], 0.99) == 5
    assert quantile(list(range(1, 101)), 0.5) == 50
    assert quantile(list(range(1, 101)), 0.99) == 99
