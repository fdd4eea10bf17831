"""The real ExchangeClient against the paper exchange on loopback (and a few canned servers)."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from rotation_fsm.core.market import Account, Kline, Position
from rotation_fsm.core.regime import HOUR_MS, Regime, classify
from rotation_fsm.devkit.paper_exchange.book import PaperBook, synthetic_klines
from rotation_fsm.devkit.paper_exchange.protocol import make_app
from rotation_fsm.runtime.exchange import (
    ACCOUNT,
    KLINES,
    POSITION_RISK,
    ExchangeClient,
    ExchangeUnavailable,
)

API_KEY = "key-AAAA1111"
API_SECRET = "secret-BBBB2222"
# half past an hour: candles up to the one opened an hour before have closed
START_MS = 1_750_000_000_000 // HOUR_MS * HOUR_MS + HOUR_MS // 2
HEX64 = re.compile(r"[0-9a-f]{64}")


class Clock:
    """A settable clock shared by the paper book and the client."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


@dataclass
class Paper:
    book: PaperBook
    url: str
    clock: Clock


ClientFactory = Callable[..., Awaitable[ExchangeClient]]


@pytest.fixture
async def paper() -> AsyncIterator[Paper]:
    """The paper exchange on a free loopback port, on a clock the test controls."""
    clock = Clock(START_MS)
    book = PaperBook(clock_ms=clock)
    server = TestServer(
        make_app(book, api_key=API_KEY, api_secret=API_SECRET), host="127.0.0.1", port=0
    )
    await server.start_server()
    try:
        yield Paper(book=book, url=f"http://127.0.0.1:{server.port}", clock=clock)
    finally:
        await server.close()


@pytest.fixture
async def client_for() -> AsyncIterator[ClientFactory]:
    """Factory of started clients (defaults: the right credentials); all closed after."""
    started: list[ExchangeClient] = []

    async def make(url: str, clock: Clock | None = None, **overrides: Any) -> ExchangeClient:
        kwargs: dict[str, Any] = {"api_key": API_KEY, "api_secret": API_SECRET, **overrides}
        client = ExchangeClient(url, clock_ms=clock, **kwargs)
        await client.start()
        started.append(client)
        return client

    yield make
    for client in started:
        await client.close()


@pytest.fixture
async def client(paper: Paper, client_for: ClientFactory) -> ExchangeClient:
    return await client_for(paper.url, paper.clock)


def hourly(count: int, *, last_open_ms: int, price: float = 100.0) -> list[Kline]:
    first = last_open_ms - (count - 1) * HOUR_MS
    return [
        Kline(
            first + i * HOUR_MS,
            price,
            price + 1,
            price - 1,
            price + 0.5,
            first + (i + 1) * HOUR_MS - 1,
        )
        for i in range(count)
    ]


def last_closed_open_ms(now_ms: int) -> int:
    return now_ms // HOUR_MS * HOUR_MS - HOUR_MS


def assert_no_credentials(message: str, *secrets: str) -> None:
    for secret in (API_KEY, API_SECRET, *secrets):
        assert secret not in message
    assert "signature=" not in message and "timestamp=" not in message
    assert HEX64.search(message) is None  # no HMAC-SHA256 hex digest


# ------------------------------------------------------------ positions and account


async def test_open_positions_are_parsed_and_dust_and_flat_ones_dropped(
    paper: Paper, client: ExchangeClient
):
    paper.book.open("BTCUSDT", 0.5, 40_000.0)
    paper.book.set_mark("BTCUSDT", 41_000.0)
    paper.book.open("ETHUSDT", -2.0, 2_000.0, at_ms=START_MS - 30 * HOUR_MS)
    paper.book.set_mark("ETHUSDT", 2_100.0)
    paper.book.open("DUSTUSDT", 1e-9, 1.0)  # |amt| ≤ 1e-8: dust
    paper.book.open("XRPUSDT", 100.0, 0.5)
    assert paper.book.close("XRPUSDT")  # still listed by the exchange, flat

    positions = await client.positions()

    assert sorted(positions, key=lambda p: p.symbol) == [
        Position(
            symbol="BTCUSDT",
            position_amt=0.5,
            mark_price=41_000.0,
            unrealized_profit=500.0,
            update_time_ms=START_MS,
        ),
        Position(
            symbol="ETHUSDT",
            position_amt=-2.0,
            mark_price=2_100.0,
            unrealized_profit=-200.0,
            update_time_ms=START_MS - 30 * HOUR_MS,
        ),
    ]


async def test_no_positions_is_an_empty_list(client: ExchangeClient):
    assert await client.positions() == []


async def test_account_margin_numbers_are_parsed(paper: Paper, client: ExchangeClient):
    paper.book.initial_margin = 1_300.0
    paper.book.margin_balance = 2_000.0
    account = await client.account()
    assert account == Account(total_initial_margin=1_300.0, total_margin_balance=2_000.0)
    assert account.margin_usage == pytest.approx(0.65)


async def test_a_wrong_secret_fails_at_once_with_minus_1022_and_no_credentials(
    paper: Paper, client_for: ClientFactory
):
    client = await client_for(paper.url, paper.clock, api_secret="wrong-secret-CCCC3333")
    with pytest.raises(ExchangeUnavailable) as caught:
        await client.positions()
    message = str(caught.value)
    assert "-1022" in message and POSITION_RISK in message and "HTTP 400" in message
    assert_no_credentials(message, "wrong-secret-CCCC3333")
    assert paper.book.requests[POSITION_RISK] == 1  # not retried
    assert client.stats["positionRisk.failures"] == 1


async def test_a_wrong_key_fails_at_once_with_minus_2015(paper: Paper, client_for: ClientFactory):
    client = await client_for(paper.url, paper.clock, api_key="other-key-DDDD4444")
    with pytest.raises(ExchangeUnavailable, match="-2015") as caught:
        await client.account()
    assert caught.value.status == 401
    assert_no_credentials(str(caught.value), "other-key-DDDD4444")
    assert paper.book.requests[ACCOUNT] == 1


async def test_a_clock_outside_the_recv_window_is_refused_not_retried(
    paper: Paper, client_for: ClientFactory
):
    skewed = Clock(START_MS - 60_000)
    client = await client_for(paper.url, skewed)
    with pytest.raises(ExchangeUnavailable, match="-1021"):
        await client.positions()
    assert paper.book.requests[POSITION_RISK] == 1


# ------------------------------------------------------------ klines


async def test_klines_are_fetched_once_per_hour(paper: Paper, client: ExchangeClient):
    candles = hourly(100, last_open_ms=last_closed_open_ms(START_MS))
    paper.book.set_klines("BTCUSDT", candles)

    first = await client.klines("BTCUSDT")
    paper.clock.now_ms += HOUR_MS // 2 - 1  # the last millisecond of the same hour
    second = await client.klines("BTCUSDT")

    assert first == second == candles
    assert paper.book.requests[KLINES] == 1
    assert client.stats["klines.cache_hits"] == 1


async def test_klines_are_fetched_again_once_the_next_candle_has_closed(
    paper: Paper, client: ExchangeClient
):
    paper.book.set_klines("BTCUSDT", hourly(100, last_open_ms=last_closed_open_ms(START_MS)))
    await client.klines("BTCUSDT")
    paper.clock.now_ms += HOUR_MS  # next hour: one more candle has closed
    paper.book.set_klines("BTCUSDT", hourly(100, last_open_ms=last_closed_open_ms(paper.clock())))

    fresh = await client.klines("BTCUSDT")

    assert paper.book.requests[KLINES] == 2
    assert fresh[-1].open_time_ms == last_closed_open_ms(paper.clock())


async def test_the_cache_is_per_symbol(paper: Paper, client: ExchangeClient):
    paper.book.set_klines("BTCUSDT", hourly(60, last_open_ms=last_closed_open_ms(START_MS)))
    paper.book.set_klines(
        "ETHUSDT", hourly(60, last_open_ms=last_closed_open_ms(START_MS), price=5.0)
    )
    btc = await client.klines("BTCUSDT")
    eth = await client.klines("ETHUSDT")
    assert btc[0].close != eth[0].close
    assert paper.book.requests[KLINES] == 2


async def test_the_candle_still_open_is_dropped(paper: Paper, client: ExchangeClient):
    # Binance's answer ends with the current, still-open candle.
    with_open_one = hourly(100, last_open_ms=last_closed_open_ms(START_MS) + HOUR_MS)
    assert with_open_one[-1].close_time_ms > START_MS
    paper.book.set_klines("BTCUSDT", with_open_one)

    klines = await client.klines("BTCUSDT")

    assert klines == with_open_one[:-1]


async def test_a_symbol_without_klines_is_an_empty_list_asked_again_next_hour(
    paper: Paper, client: ExchangeClient
):
    assert await client.klines("NEWUSDT") == []
    assert await client.klines("NEWUSDT") == []
    assert paper.book.requests[KLINES] == 1  # nothing closes before the hour turns
    paper.book.set_klines("NEWUSDT", hourly(60, last_open_ms=last_closed_open_ms(START_MS)))
    paper.clock.now_ms = START_MS + HOUR_MS
    assert len(await client.klines("NEWUSDT")) == 60
    assert paper.book.requests[KLINES] == 2


@pytest.mark.parametrize("regime", [Regime.BASE, Regime.TREND_STRONG, Regime.CHOP, Regime.UNKNOWN])
async def test_synthetic_klines_classify_as_their_regime_through_the_wire(
    paper: Paper, client: ExchangeClient, regime: Regime
):
    paper.book.set_klines("BTCUSDT", synthetic_klines(regime, now_ms=START_MS, seed=7))
    klines = await client.klines("BTCUSDT")
    assert classify(klines).regime is regime


@pytest.mark.parametrize("regime", [Regime.BASE, Regime.TREND_STRONG, Regime.CHOP])
@pytest.mark.parametrize("base_price", [0.05, 100.0, 65_000.0])
def test_synthetic_klines_are_closed_hourly_candles_of_their_regime(
    regime: Regime, base_price: float
):
    for seed in range(25):
        klines = synthetic_klines(regime, now_ms=START_MS, base_price=base_price, seed=seed)
        assert len(klines) == 100
        assert classify(klines).regime is regime
        assert klines[-1].close_time_ms < START_MS
        assert klines[-1].open_time_ms == last_closed_open_ms(START_MS)
        assert all(
            b.open_time_ms - a.open_time_ms == HOUR_MS for a, b in itertools.pairwise(klines)
        )
        assert all(k.low <= min(k.open, k.close) and k.high >= max(k.open, k.close) for k in klines)


def test_synthetic_klines_are_reproducible():
    one = synthetic_klines(Regime.CHOP, now_ms=START_MS, seed=3)
    assert one == synthetic_klines(Regime.CHOP, now_ms=START_MS, seed=3)
    assert one != synthetic_klines(Regime.CHOP, now_ms=START_MS, seed=4)


# ------------------------------------------------------------ faults and retries


async def test_500s_are_retried_and_the_call_recovers_within_the_budget(
    paper: Paper, client: ExchangeClient
):
    paper.book.open("BTCUSDT", 1.0, 100.0)
    paper.book.fail("500", times=2)

    positions = await client.positions()

    assert [p.symbol for p in positions] == ["BTCUSDT"]
    assert paper.book.requests[POSITION_RISK] == 3
    assert client.stats["positionRisk.retries"] == 2
    assert client.stats.get("positionRisk.failures", 0) == 0


async def test_500s_past_the_budget_fail_with_the_status(paper: Paper, client_for: ClientFactory):
    client = await client_for(paper.url, paper.clock, retry_budget_s=0.6)
    paper.book.fault = "500"
    started = time.monotonic()
    with pytest.raises(ExchangeUnavailable) as caught:
        await client.account()
    elapsed = time.monotonic() - started
    assert caught.value.status == 500 and "-1000" in str(caught.value)
    assert elapsed < 0.6 + 0.5
    assert paper.book.requests[ACCOUNT] >= 2  # it did retry
    assert_no_credentials(str(caught.value))


async def test_429_waits_the_retry_after_seconds(paper: Paper, client: ExchangeClient):
    paper.book.set_klines("BTCUSDT", hourly(60, last_open_ms=last_closed_open_ms(START_MS)))
    paper.book.fail("429", times=1)
    started = time.monotonic()

    klines = await client.klines("BTCUSDT")

    assert len(klines) == 60
    assert time.monotonic() - started >= 1.0  # the paper exchange says Retry-After: 1
    assert paper.book.requests[KLINES] == 2


async def test_429_with_retry_after_beyond_the_budget_fails_without_waiting(
    paper: Paper, client_for: ClientFactory
):
    client = await client_for(paper.url, paper.clock, retry_budget_s=0.5)
    paper.book.fault = "429"
    started = time.monotonic()
    with pytest.raises(ExchangeUnavailable) as caught:
        await client.positions()
    assert time.monotonic() - started < 0.5
    assert caught.value.status == 429
    assert paper.book.requests[POSITION_RISK] == 1


async def test_a_hanging_exchange_fails_within_timeout_plus_budget(
    paper: Paper, client_for: ClientFactory
):
    client = await client_for(paper.url, paper.clock, request_timeout_s=0.3, retry_budget_s=0.6)
    paper.book.fault = "timeout"
    started = time.monotonic()
    with pytest.raises(ExchangeUnavailable, match="no answer within") as caught:
        await client.positions()
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 0.3 + 0.6 + 0.3
    assert caught.value.status is None
    assert paper.book.requests[POSITION_RISK] >= 2  # timeouts are retried
    assert_no_credentials(str(caught.value))


async def test_one_timeout_then_an_answer_recovers(paper: Paper, client_for: ClientFactory):
    client = await client_for(paper.url, paper.clock, request_timeout_s=0.3, retry_budget_s=2.0)
    paper.book.initial_margin = 10.0
    paper.book.fail("timeout", times=1)
    account = await client.account()
    assert account.total_initial_margin == 10.0
    assert paper.book.requests[ACCOUNT] == 2


@pytest.mark.parametrize(
    ("call", "path"),
    [("positions", POSITION_RISK), ("account", ACCOUNT), ("klines", KLINES)],
)
async def test_a_garbage_answer_fails_closed_at_once(
    paper: Paper, client: ExchangeClient, call: str, path: str
):
    paper.book.fault = "garbage"
    method = getattr(client, call)
    args = ("BTCUSDT",) if call == "klines" else ()
    with pytest.raises(ExchangeUnavailable, match="not JSON"):
        await method(*args)
    assert paper.book.requests[path] == 1


async def test_a_closed_port_fails_after_retrying(client_for: ClientFactory):
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = await client_for(f"http://127.0.0.1:{port}", retry_budget_s=0.3)
    with pytest.raises(ExchangeUnavailable, match="connection failed") as caught:
        await client.positions()
    assert client.stats["positionRisk.requests"] >= 2
    assert_no_credentials(str(caught.value))


async def test_an_unstarted_client_fails_closed():
    client = ExchangeClient("http://127.0.0.1:9", API_KEY, API_SECRET)
    with pytest.raises(ExchangeUnavailable, match="not started"):
        await client.positions()


async def test_the_client_works_as_an_async_context_manager(paper: Paper):
    async with ExchangeClient(paper.url, API_KEY, API_SECRET, clock_ms=paper.clock) as client:
        assert await client.positions() == []


# ------------------------------------------------------------ malformed JSON answers

GOOD_POSITION = {
    "symbol": "BTCUSDT",
    "positionAmt": "1.0",
    "markPrice": "100.0",
    "unRealizedProfit": "0.0",
    "updateTime": 1,
}


@pytest.fixture
async def canned() -> AsyncIterator[Callable[[Any], Awaitable[str]]]:
    """Factory: a server answering every GET with this JSON body; returns its URL."""
    servers: list[TestServer] = []

    async def serve(body: Any) -> str:
        async def answer(request: web.Request) -> web.Response:
            return web.json_response(body)

        app = web.Application()
        app.router.add_get("/{tail:.*}", answer)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield serve
    for server in servers:
        await server.close()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"code": 0}, "expected a list"),
        ([{k: v for k, v in GOOD_POSITION.items() if k != "markPrice"}], "markPrice is missing"),
        ([{**GOOD_POSITION, "positionAmt": "NaN"}], "positionAmt is not finite"),
        ([{**GOOD_POSITION, "unRealizedProfit": "abc"}], "unRealizedProfit is not a number"),
        ([{**GOOD_POSITION, "updateTime": "1.5"}], "updateTime is not a time"),
        ([{**GOOD_POSITION, "symbol": ""}], "symbol"),
        ([{**GOOD_POSITION, "positionAmt": None}], "positionAmt is a NoneType"),
        (["BTCUSDT"], "expected an object"),
    ],
)
async def test_malformed_positions_fail_closed(
    canned: Callable[[Any], Awaitable[str]], client_for: ClientFactory, body: Any, reason: str
):
    client = await client_for(await canned(body))
    with pytest.raises(ExchangeUnavailable, match=re.escape(reason)):
        await client.positions()


async def test_numbers_as_json_numbers_are_accepted(
    canned: Callable[[Any], Awaitable[str]], client_for: ClientFactory
):
    row = {**GOOD_POSITION, "positionAmt": 2, "markPrice": 50.5, "unRealizedProfit": -1}
    client = await client_for(await canned([row]))
    [position] = await client.positions()
    assert (position.position_amt, position.mark_price, position.unrealized_profit) == (
        2.0,
        50.5,
        -1.0,
    )


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"totalInitialMargin": "1.0"},
        {"totalInitialMargin": "1.0", "totalMarginBalance": "inf"},
    ],
)
async def test_a_malformed_account_fails_closed(
    canned: Callable[[Any], Awaitable[str]], client_for: ClientFactory, body: Any
):
    client = await client_for(await canned(body))
    with pytest.raises(ExchangeUnavailable, match="malformed answer"):
        await client.account()


GOOD_ROW = [0, "1", "2", "0.5", "1.5", "10", HOUR_MS - 1]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"rows": []}, "expected a list"),
        ([GOOD_ROW[:5]], "not a kline array"),
        ([[0, "1", "2", "0", "1.5", "10", HOUR_MS - 1]], "low is not a positive price"),
        ([[0, "1", "x", "0.5", "1.5", "10", HOUR_MS - 1]], "high is not a number"),
        ([[HOUR_MS, *GOOD_ROW[1:6], 2 * HOUR_MS - 1], GOOD_ROW], "not in ascending open time"),
    ],
)
async def test_malformed_klines_fail_closed(
    canned: Callable[[Any], Awaitable[str]], client_for: ClientFactory, body: Any, reason: str
):
    client = await client_for(await canned(body), Clock(START_MS))
    with pytest.raises(ExchangeUnavailable, match=re.escape(reason)):
        await client.klines("BTCUSDT")


# ------------------------------------------------------------ the paper protocol itself


async def test_signed_paths_require_a_timestamp(paper: Paper):
    query = "recvWindow=5000"
    signature = hmac.new(API_SECRET.encode(), query.encode(), hashlib.sha256).hexdigest()
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{paper.url}{POSITION_RISK}?{query}&signature={signature}",
            headers={"X-MBX-APIKEY": API_KEY},
        ) as resp,
    ):
        assert resp.status == 400
        assert (await resp.json())["code"] == -1102


async def test_server_time_is_the_book_clock_and_faults_apply_to_it(paper: Paper):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{paper.url}/fapi/v1/time") as resp:
            assert await resp.json() == {"serverTime": START_MS}
        paper.book.fail("500", times=1)
        async with http.get(f"{paper.url}/fapi/v1/time") as resp:
            assert resp.status == 500
        async with http.get(f"{paper.url}/fapi/v1/time") as resp:
            assert resp.status == 200  # the fault lasted one request
    assert paper.book.requests["/fapi/v1/time"] == 3


def test_an_unknown_fault_is_refused():
    with pytest.raises(ValueError, match="unknown fault"):
        PaperBook().fault = "503"
