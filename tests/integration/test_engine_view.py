"""The engine deciding on its live exchange view: no REST on the path, fills from the
stream, a dropped stream resynced from REST, fail closed when the view is stale."""

from __future__ import annotations

import json

import aiohttp
import pytest

from rotation_fsm.core import reasons as R
from rotation_fsm.runtime.account_view import STREAM, AccountView
from rotation_fsm.runtime.exchange import POSITION_RISK
from rotation_fsm.runtime.service import Running
from tests.integration.harness import Stack, until_view

pytestmark = pytest.mark.timeout(60)

TWO_SLOTS = {"GOV_ACTIVE_SLOTS_CHOP": "2"}  # no klines on the paper book: regime UNKNOWN → CHOP


def view_of(running: Running) -> AccountView:
    return running.books[""].view


async def streaming(stack: Stack, **env: str) -> AccountView:
    view = view_of(await stack.start_engine(**env))
    await until_view(view, lambda: view.source == STREAM)
    return view


async def test_a_plan_is_decided_on_the_stream_view_without_asking_rest(stack: Stack):
    stack.fill_book("BTCUSDT")
    await streaming(stack, **TWO_SLOTS)
    asked = stack.exchange.requests[POSITION_RISK]

    await stack.send_plan("p-on-view", "NEWUSDT")
    d = await stack.decision("p-on-view")

    assert (d["decision"], d["reason"], d["open_slots"]) == (R.ALLOW, R.SLOTS_AVAILABLE, "1")
    assert stack.exchange.requests[POSITION_RISK] == asked


async def test_a_fill_on_the_exchange_is_reflected_in_the_next_decision(stack: Stack):
    stack.fill_book("BTCUSDT")
    view = await streaming(stack, **TWO_SLOTS)
    asked = stack.exchange.requests[POSITION_RISK]

    stack.exchange.open("ETHUSDT", 1.0, 3_000.0)  # filled elsewhere: the stream says so
    await until_view(view, lambda: "ETHUSDT" in view.positions)
    await stack.send_plan("p-after-fill", "NEWUSDT")

    d = await stack.decision("p-after-fill")
    assert (d["decision"], d["reason"]) == (R.BLOCK, R.WAITING_ROTATION_CLOSE)
    assert stack.exchange.requests[POSITION_RISK] == asked


async def test_a_dropped_stream_is_resynced_from_rest_before_the_next_allow(stack: Stack):
    stack.fill_book("BTCUSDT")
    # Any age is too old once the stream is down: the next decision must ask REST.
    view = await streaming(stack, GOV_EXCHANGE_STALE_MS="1", **TWO_SLOTS)
    stack.stream.silent = True  # what happens while it is down is never said
    stack.stream.drop_sockets()
    await until_view(view, lambda: view.source != STREAM)
    stack.exchange.open("ETHUSDT", 1.0, 3_000.0)

    await stack.send_plan("p-after-drop", "NEWUSDT")

    d = await stack.decision("p-after-drop")
    assert (d["decision"], d["reason"]) == (R.BLOCK, R.WAITING_ROTATION_CLOSE)
    stack.stream.silent = False
    await until_view(view, lambda: view.source == STREAM and "ETHUSDT" in view.positions)


async def test_stream_and_rest_down_block_exchange_stale_then_allows_resume(stack: Stack):
    view = await streaming(stack, GOV_EXCHANGE_STALE_MS="1", **TWO_SLOTS)
    stack.exchange.fault = "500"
    stack.stream.drop_sockets()
    await until_view(view, lambda: view.source != STREAM)

    await stack.send_plan("p-stale", "NEWUSDT")
    d = await stack.decision("p-stale", timeout_s=20)
    assert (d["decision"], d["reason"]) == (R.BLOCK, R.EXCHANGE_STALE)

    stack.exchange.fault = None
    await until_view(view, lambda: view.source == STREAM)
    await stack.send_plan("p-stale", "NEWUSDT")  # a resend is decided afresh
    assert (await stack.decision("p-stale"))["reason"] == R.SLOTS_AVAILABLE


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as resp:
        return resp.status, await resp.text()


async def test_readyz_console_and_metrics_say_the_views_source_weight_and_failure(
    stack: Stack,
):
    running = await stack.start_engine()
    view = view_of(running)
    await until_view(view, lambda: view.source == STREAM)
    base = f"http://127.0.0.1:{running.http_port}"
    async with aiohttp.ClientSession() as http:
        up = json.loads((await _get(http, f"{base}/readyz"))[1])
        console = json.loads((await _get(http, f"{base}/api/console/state"))[1])
        stack.exchange.fault = "500"
        stack.stream.drop_sockets()
        await until_view(view, lambda: "HTTP 500" in view.cause)
        down = json.loads((await _get(http, f"{base}/readyz"))[1])
        metrics = (await _get(http, f"{base}/metrics"))[1]

    assert up["ready"] and up["exchange_views"]["-"]["source"] == STREAM
    assert up["exchange_views"]["-"]["weight"]["used_1m"] > 0
    assert up["exchange_views"]["-"]["weight"]["budget_1m"] == 1200
    assert console["exchange"]["source"] == STREAM
    assert "HTTP 500" in down["exchange_views"]["-"]["error"]
    assert 'rotation_exchange_errors_total{book="-",kind="http_5xx"}' in metrics
    assert 'rotation_exchange_view_source{book="-",source="stream"} 0.0' in metrics
    assert "rotation_exchange_weight_budget 1200.0" in metrics
