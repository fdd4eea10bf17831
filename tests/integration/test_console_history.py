"""The console's history pages over HTTP: decisions and finished rotations by time
range, filter and cursor, every row once; malformed parameters refused with 400."""

from __future__ import annotations

import aiohttp
import pytest
import redis.asyncio

from rotation_fsm.core import reasons as R
from rotation_fsm.store.keys import Keys
from rotation_fsm.web.state import decision_page, rotation_page
from tests.integration.harness import Stack
from tests.integration.test_console_trader import BASE_MS, FINISHED, seed_finished

pytestmark = pytest.mark.timeout(60)
DECISIONS = 130


@pytest.fixture
async def decisions(redis_client: redis.asyncio.Redis) -> redis.asyncio.Redis:
    """130 decisions a millisecond apart; every third blocked `active_slots_paused`."""
    async with redis_client.pipeline(transaction=False) as pipe:
        for i in range(DECISIONS):
            reason = R.PAUSED if i % 3 == 0 else R.SLOTS_AVAILABLE
            fields = {"plan_id": f"d{i:03d}", "symbol": "NEWUSDT", "reason": reason}
            pipe.xadd(Keys().decisions, fields, id=f"{BASE_MS + i}-0")
        await pipe.execute()
    return redis_client


async def all_pages(client: redis.asyncio.Redis, **query: object) -> list[list[str]]:
    pages, before = [], ""
    while True:
        page = await decision_page(client, Keys(), before=before, limit=40, **query)  # type: ignore[arg-type]
        pages.append([r["plan_id"] for r in page["rows"]])
        if page["next"] is None:
            return pages
        before = page["next"]


async def test_decision_pages_hold_every_row_once_newest_first(decisions):
    pages = await all_pages(decisions)
    assert [len(p) for p in pages] == [40, 40, 40, 10]
    flat = [pid for page in pages for pid in page]
    assert flat == [f"d{i:03d}" for i in reversed(range(DECISIONS))]


async def test_a_reason_filter_pages_through_only_that_reason(decisions):
    flat = [pid for page in await all_pages(decisions, reason=R.PAUSED) for pid in page]
    assert flat == [f"d{i:03d}" for i in reversed(range(0, DECISIONS, 3))]


async def test_a_time_range_bounds_the_decisions(decisions):
    page = await decision_page(decisions, Keys(), from_ms=BASE_MS + 10, to_ms=BASE_MS + 19)
    assert [r["plan_id"] for r in page["rows"]] == [f"d{i:03d}" for i in range(19, 9, -1)]
    assert page["next"] is None


async def test_rotation_pages_count_the_range_and_filter_by_state(stack: Stack):
    await seed_finished(stack)
    first = await rotation_page(stack.redis, Keys(), limit=25)
    assert (first["total"], first["next"], len(first["rows"])) == (FINISHED, 25, 25)
    timed_out = await rotation_page(stack.redis, Keys(), state="TIMED_OUT", limit=100)
    assert {r["state"] for r in timed_out["rows"]} == {"TIMED_OUT"}
    assert len(timed_out["rows"]) == FINISHED // 2 and timed_out["next"] is None


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("decisions", "from=yesterday"),
        ("decisions", "before=1-0;DROP"),
        ("decisions", "limit=100000"),
        ("finished", "offset=-1"),
        ("finished", "to=1e12"),
    ],
)
async def test_malformed_history_parameters_are_refused(stack: Stack, path: str, query: str):
    running = await stack.start_engine()
    url = f"http://127.0.0.1:{running.http_port}/api/console/{path}?{query}"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["ok"] is False and body["error"].startswith(query.split("=")[0] + "=")
