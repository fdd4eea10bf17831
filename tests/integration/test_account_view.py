"""The live exchange view and the request-weight budget against the paper exchange on
loopback: REST snapshot + user-data stream, reconnects, reconcile, polling, 429/418."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from rotation_fsm.core.settings import Rules
from rotation_fsm.devkit.paper_exchange.book import PaperBook
from rotation_fsm.devkit.paper_exchange.protocol import make_app
from rotation_fsm.devkit.paper_exchange.user_stream import UserStream
from rotation_fsm.runtime.account_view import POLLING, STREAM, AccountView, ViewConfig, ws_url_for
from rotation_fsm.runtime.exchange import POSITION_RISK, ExchangeClient, ExchangeUnavailable
from rotation_fsm.runtime.weights import WeightBudget
from tests.integration.harness import until_view as until

pytestmark = pytest.mark.timeout(60)

API_KEY = "view-key-AAAA1111"
API_SECRET = "view-secret-BBBB2222"
RULES = Rules(max_correlation=1.0)  # no klines needed for these tests


class Clock:
    """A wall clock the test can move forward."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> int:
        import time

        return int(time.time() * 1000) + self.offset_ms


@dataclass
class Paper:
    book: PaperBook
    stream: UserStream
    url: str
    clock: Clock


@pytest.fixture
async def paper() -> AsyncIterator[Paper]:
    clock = Clock()
    book = PaperBook(clock_ms=clock)
    stream = UserStream(book)
    app = make_app(book, api_key=API_KEY, api_secret=API_SECRET, stream=stream)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield Paper(book, stream, f"http://127.0.0.1:{server.port}", clock)
    finally:
        await server.close()


ViewFactory = Callable[..., Any]


@pytest.fixture
async def view_for(paper: Paper) -> AsyncIterator[ViewFactory]:
    """Factory of running views on `paper` (config overrides as keywords); all stopped."""
    running: list[tuple[asyncio.Event, asyncio.Task[None], ExchangeClient]] = []

    async def make(
        *, stream: bool = True, budget: WeightBudget | None = None, **config: Any
    ) -> AccountView:
        client = ExchangeClient(
            paper.url, API_KEY, API_SECRET, clock_ms=paper.clock, retry_budget_s=0.5,
            budget=budget or WeightBudget(clock_ms=paper.clock),
        )  # fmt: skip
        await client.start()
        settings = {"reconnect_backoff_s": 0.05, "heartbeat_s": 1.0, **config}
        url = ws_url_for(paper.url) if stream else ""
        view = AccountView(client, ViewConfig(ws_url=url, **settings), clock_ms=paper.clock)
        stop = asyncio.Event()
        running.append((stop, asyncio.create_task(view.run(stop)), client))
        return view

    yield make
    for stop, task, client in running:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        await client.close()


# ------------------------------------------------------------ the stream


async def test_the_view_starts_from_a_rest_snapshot_then_follows_the_stream(
    paper: Paper, view_for: ViewFactory
):
    paper.book.open("BTCUSDT", 0.5, 60_000.0)
    view = await view_for()
    await until(view, lambda: view.source == STREAM)
    assert set(view.positions) == {"BTCUSDT"}
    rest_calls = paper.book.requests[POSITION_RISK]

    paper.book.open("ETHUSDT", 2.0, 3_000.0)
    await until(view, lambda: "ETHUSDT" in view.positions)

    assert view.positions["ETHUSDT"].position_amt == 2.0
    assert view.seen_ms["ETHUSDT"] >= view.as_of_ms
    assert paper.book.requests[POSITION_RISK] == rest_calls  # the stream told it, not REST


async def test_a_close_on_the_stream_removes_the_position(paper: Paper, view_for: ViewFactory):
    paper.book.open("BTCUSDT", 0.5, 60_000.0)
    view = await view_for()
    await until(view, lambda: view.source == STREAM)
    paper.book.close("BTCUSDT")
    await until(view, lambda: not view.positions)
    assert "BTCUSDT" not in view.seen_ms


async def test_a_batch_decides_on_the_view_without_a_round_trip(
    paper: Paper, view_for: ViewFactory
):
    paper.book.open("BTCUSDT", 0.5, 60_000.0)
    view = await view_for()
    await until(view, lambda: view.source == STREAM)
    before = sum(paper.book.requests.values())

    market = await view.market(["NEWUSDT"], RULES.__class__(max_correlation=1.0))
    # klines are the only call (and cached per closed hour); positions and account not
    assert market.positions is not None and [p.symbol for p in market.positions] == ["BTCUSDT"]
    assert market.account is not None
    assert market.view.startswith("stream snapshot#1@")
    assert sum(paper.book.requests.values()) - before <= 1
    await view.market(["NEWUSDT"], RULES)
    assert sum(paper.book.requests.values()) - before <= 1


async def test_events_during_the_snapshot_are_applied_after_it(paper: Paper, view_for: ViewFactory):
    paper.book.fault, paper.book.fail_next = None, 0
    view = await view_for()
    await until(view, lambda: view.source == STREAM)
    # Open and close while a reconcile's REST call is on its way: REST may show either,
    # the events received after the call began win.
    view.want_refresh(view.clock_ms())
    paper.book.open("SOLUSDT", 3.0, 150.0)
    paper.book.close("SOLUSDT")
    await until(view, lambda: view.snapshots >= 2 and view.events >= 2)
    assert "SOLUSDT" not in view.positions


async def test_an_expired_listen_key_gets_a_new_key(paper: Paper, view_for: ViewFactory):
    view = await view_for()
    await until(view, lambda: view.source == STREAM)
    assert paper.stream.counts["keys"] == 1

    paper.stream.expire_keys()
    await until(view, lambda: view.listen_keys == 2 and view.source == STREAM)

    assert paper.stream.counts["keys"] == 2
    paper.book.open("BTCUSDT", 1.0, 60_000.0)  # and the new stream speaks
    await until(view, lambda: "BTCUSDT" in view.positions)


async def test_a_listen_key_the_keepalive_finds_gone_gets_a_new_key(
    paper: Paper, view_for: ViewFactory
):
    view = await view_for(keepalive_s=0.2)
    await until(view, lambda: view.source == STREAM)
    paper.stream.expire_keys(say=False)  # no event: the PUT answers -1125

    await until(view, lambda: view.listen_keys == 2 and view.source == STREAM)

    assert paper.stream.counts["keys"] == 2
    assert view.reconnects == 1


async def test_the_connection_is_renewed_before_the_24_hour_cut_off(
    paper: Paper, view_for: ViewFactory
):
    view = await view_for(reconnect_s=0.3)
    await until(view, lambda: view.source == STREAM)
    await until(view, lambda: view.reconnects >= 1 and view.source == STREAM)
    assert paper.stream.counts["connections"] >= 2


async def test_a_dropped_stream_reconnects_and_resyncs_from_rest(
    paper: Paper, view_for: ViewFactory
):
    view = await view_for()
    await until(view, lambda: view.source == STREAM)
    paper.stream.silent = True  # what happens while the connection is down goes unsaid
    paper.stream.drop_sockets()
    await until(view, lambda: view.source != STREAM)
    paper.book.open("ADAUSDT", 100.0, 0.45)
    paper.stream.silent = False

    await until(view, lambda: view.source == STREAM and view.snapshots >= 2)
    assert "ADAUSDT" in view.positions  # from the new session's REST snapshot


async def test_a_lost_event_is_repaired_by_the_reconcile_and_counted(
    paper: Paper, view_for: ViewFactory
):
    view = await view_for(reconcile_s=0.3)
    await until(view, lambda: view.source == STREAM)
    paper.stream.lose_events(1)
    # updated a while ago: the stream had time to say it (a change just made may be
    # on its way, not a mismatch)
    paper.book.open("XRPUSDT", 500.0, 0.6, at_ms=paper.clock() - 5_000)

    await until(view, lambda: "XRPUSDT" in view.positions)

    assert view.mismatches == 1
    assert paper.stream.counts["lost"] == 1


async def test_a_silent_stream_is_repaired_by_the_reconcile(paper: Paper, view_for: ViewFactory):
    view = await view_for(reconcile_s=0.3)
    await until(view, lambda: view.source == STREAM)
    paper.stream.silent = True
    paper.book.open("DOTUSDT", 10.0, 7.0, at_ms=paper.clock() - 5_000)
    await until(view, lambda: "DOTUSDT" in view.positions)
    assert view.mismatches == 1 and view.source == STREAM


async def test_stream_and_rest_down_make_the_view_stale_then_it_resumes(
    paper: Paper, view_for: ViewFactory
):
    view = await view_for(stale_ms=2000)
    await until(view, lambda: view.source == STREAM)
    paper.book.fault = "500"
    paper.stream.drop_sockets()
    await until(view, lambda: view.source != STREAM)

    paper.clock.offset_ms += 2001  # past the freshness bound since the last snapshot
    market = await view.market(["NEWUSDT"], RULES)

    assert market.positions is None and market.stale
    assert "stale" in market.positions_error and "HTTP 500" in market.positions_error
    assert "HTTP 500" in view.state()["error"]

    paper.book.fault = None
    await until(view, lambda: view.source == STREAM)
    market = await view.market(["NEWUSDT"], RULES)
    assert market.positions == [] and not market.stale


async def test_an_exchange_without_a_user_data_stream_is_polled_within_the_budget(
    paper: Paper, view_for: ViewFactory
):
    paper.stream.enabled = False
    budget = WeightBudget(2400, 0.02, clock_ms=paper.clock)  # 48 per minute
    view = await view_for(budget=budget, poll_s=0.01)
    await until(view, lambda: view.snapshots >= 1)
    assert view.source == POLLING
    await until(view, lambda: budget.counts.refused > 0)  # polling ran into the budget

    assert budget.used_1m <= 48
    assert paper.book.limits.answers[429] == 0 and paper.book.limits.answers[418] == 0
    assert "No user-data stream" in view.cause or "budget" in view.cause


# ------------------------------------------------------------ request weight


async def _client(paper: Paper, budget: WeightBudget) -> ExchangeClient:
    client = ExchangeClient(
        paper.url, API_KEY, API_SECRET, clock_ms=paper.clock, retry_budget_s=0.1, budget=budget
    )
    await client.start()
    return client


async def test_a_429_stops_every_rest_call_until_retry_after_passes(paper: Paper):
    paper.book.limits.limit_per_min = 12  # two positionRisk calls of weight 5
    paper.clock.offset_ms = 60_000 - paper.clock() % 60_000 + 100  # early in a minute
    budget = WeightBudget(clock_ms=paper.clock)
    client = await _client(paper, budget)
    try:
        await client.positions()
        await client.positions()
        with pytest.raises(ExchangeUnavailable, match="429"):
            await client.positions()
        sent = paper.book.requests[POSITION_RISK]

        with pytest.raises(ExchangeUnavailable, match="throttled"):
            await client.account()  # any call: refused here, never sent
        assert paper.book.requests[POSITION_RISK] == sent and budget.counts.throttled == 1

        paper.clock.offset_ms += 60_000  # Retry-After was the rest of the minute
        assert await client.positions() == []
    finally:
        await client.close()


async def test_a_418_stops_every_rest_call_until_the_ban_ends(paper: Paper):
    paper.book.limits.banned_until_ms = paper.clock() + 120_000
    budget = WeightBudget(clock_ms=paper.clock)
    client = await _client(paper, budget)
    try:
        with pytest.raises(ExchangeUnavailable, match="418"):
            await client.positions()
        assert paper.book.requests[POSITION_RISK] == 1
        for call in (client.positions, client.account, client.new_listen_key):
            with pytest.raises(ExchangeUnavailable, match="banned"):
                await call()
        assert sum(paper.book.requests.values()) == 1
        assert budget.banned

        paper.clock.offset_ms += 120_000
        assert await client.positions() == []
        assert not budget.banned
    finally:
        await client.close()


async def test_the_exchanges_weight_count_is_read_from_every_answer(paper: Paper):
    budget = WeightBudget(clock_ms=paper.clock)
    client = await _client(paper, budget)
    try:
        await client.positions()
        paper.book.limits.used += 700  # other processes on the same IP
        await client.positions()
        assert budget.used_1m == 710
    finally:
        await client.close()


async def test_a_non_finite_profit_keeps_the_position_open_and_is_counted(
    paper: Paper, caplog: pytest.LogCaptureFixture
):
    paper.book.open("BTCUSDT", 1.0, float("-inf"))
    paper.book.set_mark("BTCUSDT", 60_000.0)  # unRealizedProfit = 1 × (mark − entry) = inf
    client = await _client(paper, WeightBudget(clock_ms=paper.clock))
    try:
        [position] = await client.positions()
        await client.positions()
    finally:
        await client.close()
    assert position.symbol == "BTCUSDT" and position.unrealized_profit == 0.0
    assert client.stats["positionRisk.bad_pnl"] == 2
    said = [r for r in caplog.records if "not finite" in r.getMessage()]
    assert len(said) == 1  # once per change of cause, not per call
