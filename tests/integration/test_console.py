"""The web console's HTTP side against a real engine, Redis and paper exchange."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from rotation_fsm.core import reasons as R
from rotation_fsm.web.routes import CSP
from tests.integration.harness import Stack

pytestmark = pytest.mark.timeout(60)
SLOTS = {"GOV_ACTIVE_SLOTS_CHOP": "3", "GOV_HTTP_TOKEN": "console-token-123"}


async def full_book(stack: Stack) -> None:
    stack.fill_book("BTCUSDT", "ETHUSDT", "SOLUSDT")  # SOL the weakest


async def sse(http: aiohttp.ClientSession, url: str) -> AsyncIterator[tuple[str, dict]]:
    """(event, data) of a Server-Sent Events stream."""
    async with http.get(url) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        event = ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                yield event, json.loads(line[6:])


async def test_pages_and_api_carry_a_strict_csp_and_nothing_secret(stack: Stack) -> None:
    running = await stack.start_engine(**SLOTS)
    base = f"http://127.0.0.1:{running.http_port}"
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/rotation/x@1", "/plan/p", "/console/static/console.js"):
            async with http.get(base + path) as resp:
                assert resp.status == 200, path
                assert resp.headers["Content-Security-Policy"] == CSP
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
                body = await resp.text()
                assert "console-token-123" not in body and "test-secret" not in body
        async with http.get(base + "/api/console/books") as resp:
            assert await resp.json() == {"books": [""], "controls": True}
        async with http.get(base + "/console/static/index.html") as resp:
            page = await resp.text()
    assert "<script>" not in page and "style=" not in page  # nothing inline for the CSP
    assert "http://" not in page and "https://" not in page  # no CDN


async def test_state_shows_the_rotation_in_flight_then_its_end(stack: Stack) -> None:
    await full_book(stack)
    running = await stack.start_engine(**SLOTS)
    await stack.send_plan("a1b2c3d4e5f67890")
    lock = await stack.event(R.EV_LOCK_CREATED)
    await running.engine.flush()
    url = f"http://127.0.0.1:{running.http_port}/api/console/state"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            state = await resp.json()
        (flight,) = state["in_flight"]
        assert flight["rotation_id"] == lock["rotation_id"]
        assert flight["state"] == "CLOSE_EMITTED"
        assert flight["deadline_ms"] > state["now_ms"] > flight["created_ms"] - 1
        assert (flight["close_symbol"], flight["new_symbol"]) == ("SOLUSDT", "NEWUSDT")
        kinds = {c.get("symbol"): c["kind"] for c in state["cells"]}
        assert kinds == {"BTCUSDT": "open", "ETHUSDT": "open", "SOLUSDT": "closing"}
        assert state["slots"]["desired"] == 3
        (row,) = [d for d in state["decisions"] if d["plan_id"] == "a1b2c3d4e5f67890"]
        assert row["reason"] == R.WAITING_ROTATION_CLOSE
        assert row["latency_ms"] is not None and 0 <= row["latency_ms"] < 5000

        await stack.send_result(lock["close_plan_id"], symbol="SOLUSDT")
        await stack.event(R.EV_COMPLETE)
        await running.engine.flush()
        async with http.get(url) as resp:
            state = await resp.json()
    assert state["in_flight"] == []
    (done,) = state["finished"]
    assert (done["rotation_id"], done["state"]) == (lock["rotation_id"], "CONFIRMED")
    assert [d["reason"] for d in state["decisions"]][:1] == [R.ROTATION_COMPLETE]


async def test_a_story_comes_with_its_diagram_path(stack: Stack) -> None:
    await full_book(stack)
    running = await stack.start_engine(**SLOTS)
    await stack.send_plan("a1b2c3d4e5f67890")
    lock = await stack.event(R.EV_LOCK_CREATED)
    await running.engine.flush()
    base = f"http://127.0.0.1:{running.http_port}/api/console/story/"
    async with aiohttp.ClientSession() as http:
        async with http.get(base + lock["rotation_id"]) as resp:
            story = await resp.json()
        async with http.get(base + "no-such-id") as resp:
            assert resp.status == 404
    assert story["kind"] == "rotation" and story["lines"]
    assert 'class="state current" data-state="CLOSE_EMITTED"' in story["svg"]
    assert 'class="state onpath" data-state="LOCKED"' in story["svg"]


async def test_one_reader_pushes_each_change_to_every_page(stack: Stack) -> None:
    running = await stack.start_engine(**SLOTS)
    url = f"http://127.0.0.1:{running.http_port}/api/console/events"
    async with aiohttp.ClientSession() as http:
        pages = [sse(http, url) for _ in range(3)]
        for page in pages:
            assert await anext(page) == ("hello", {})
        await stack.send_plan("p-live", "BNBUSDT")
        for page in pages:
            event, data = await asyncio.wait_for(anext(page), 10)
            assert event == "change" and data["kind"] == "decisions"
            assert data["fields"]["plan_id"] == "p-live"
        for page in pages:
            await page.aclose()


async def test_abort_from_the_console_needs_the_token(stack: Stack) -> None:
    await full_book(stack)
    running = await stack.start_engine(**SLOTS)
    await stack.send_plan("a1b2c3d4e5f67890")
    lock = await stack.event(R.EV_LOCK_CREATED)
    url = f"http://127.0.0.1:{running.http_port}/api/rotations/{lock['rotation_id']}/abort"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"by": "console"}) as resp:
            assert resp.status == 401
        headers = {"Authorization": "Bearer console-token-123"}
        async with http.post(url, json={"by": "console"}, headers=headers) as resp:
            assert resp.status == 200 and (await resp.json())["state"] == "ABORTED"


async def test_a_change_that_decides_nothing_is_pushed_too(stack: Stack) -> None:
    # A fill's result only gives its share of the reservation back: no decision, no event. The
    # audit entry of that commit is what tells the pages.
    running = await stack.start_engine(**SLOTS)
    await stack.send_plan("p-entry", "BNBUSDT")
    await stack.decision("p-entry")
    url = f"http://127.0.0.1:{running.http_port}/api/console/events"
    async with aiohttp.ClientSession() as http:
        page = sse(http, url)
        assert await anext(page) == ("hello", {})
        await stack.send_result("p-entry", reduce_only=False, symbol="BNBUSDT")
        event, data = await asyncio.wait_for(anext(page), 10)
        await page.aclose()
    assert (event, data["kind"]) == ("change", "audit") and "fields" not in data
    # Its share is given back; the slot stays counted until a newer exchange view.
    body = json.loads(await stack.redis.hget(stack.keys.reservations, "BNBUSDT"))
    assert body["holders"] == 0 and body["filled_ms"] > 0
