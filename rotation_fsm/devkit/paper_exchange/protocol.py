"""Binance USDⓈ-M futures REST and user-data stream, as far as rotation-fsm uses them,
served from a PaperBook.

Same paths, same signing rules (HMAC-SHA256 of the query string, key in
`X-MBX-APIKEY`), same error codes and answer shapes (decimals as strings), so the
real `ExchangeClient` cannot tell it from the testnet. Every REST request is counted
in `book.requests` by path and weighed by `book.limits` (`X-MBX-USED-WEIGHT-1M`,
429 / 418), and the book's fault switch applies to every REST path. The websocket
paths (`/ws/<listenKey>`, `/private/ws?listenKey=`) are the user-data stream.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from decimal import Decimal
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ...core.market import Kline
from .book import PaperBook
from .limits import retry_after_text
from .metrics import PATH as METRICS_PATH
from .metrics import metrics_handler
from .user_stream import UserStream

BOOK = web.AppKey("book", PaperBook)
STREAM = web.AppKey("user_stream", UserStream)
API_KEY = web.AppKey("api_key", str)
API_SECRET = web.AppKey("api_secret", str)

#: the "timeout" fault answers after this long: longer than any client waits
STALL_S = 30.0
DEFAULT_RECV_WINDOW_MS = 5000
KLINES_DEFAULT_LIMIT = 500
KLINES_MAX_LIMIT = 1500
#: Binance accepts a timestamp up to this far ahead of its own clock
FUTURE_TOLERANCE_MS = 1000


WS_PATHS = ("/ws/", "/private/ws")
#: not Binance's: what the paper exchange counted (weight per minute, 429/418, stream)
STATS_PATH = "/paper/stats"


def make_app(
    book: PaperBook, *, api_key: str, api_secret: str, stream: UserStream | None = None
) -> web.Application:
    """An aiohttp app serving `book` on Binance's futures paths for one key pair; its
    user-data stream is `stream` (one of its own, reachable as `user_stream(app)`)."""
    app = web.Application(middlewares=[_count_and_fault])
    app[BOOK] = book
    app[STREAM] = stream or UserStream(book)
    app[API_KEY] = api_key
    app[API_SECRET] = api_secret
    app.router.add_post("/fapi/v1/listenKey", _listen_key_new)
    app.router.add_put("/fapi/v1/listenKey", _listen_key_keepalive)
    app.router.add_delete("/fapi/v1/listenKey", _listen_key_delete)
    app.router.add_get("/ws/{listen_key}", _ws_path)
    app.router.add_get("/private/ws", _ws_query)
    app.router.add_get(STATS_PATH, _stats)
    app.router.add_get("/fapi/v2/positionRisk", _position_risk)
    app.router.add_get("/fapi/v2/account", _account)
    app.router.add_get("/fapi/v1/klines", _klines)
    app.router.add_get("/fapi/v1/time", _time)
    app.router.add_get(METRICS_PATH, metrics_handler(book))
    return app


def _error(status: int, code: int, msg: str, **headers: str) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=status, headers=headers)


def _dec(value: float) -> str:
    """A float as Binance writes decimals: a plain string, no exponent, no rounding."""
    return format(Decimal(repr(value)), "f")


def user_stream(app: web.Application) -> UserStream:
    """The user-data stream `app` serves (for tests and the demo's faults)."""
    return app[STREAM]


@web.middleware
async def _count_and_fault(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == METRICS_PATH:  # Prometheus's scrapes are neither counted nor faulted
        return await handler(request)
    book = request.app[BOOK]
    if request.path.startswith(WS_PATHS) or request.path == STATS_PATH:
        # The stream is another host at Binance: no weight. Counted without its
        # listenKey (a credential of sorts, and one label per key).
        book.requests[request.path if request.path == STATS_PATH else "/ws"] += 1
        return await handler(request)
    book.requests[request.path] += 1
    refused = book.limits.admit(request.path, dict(request.query), book.clock_ms())
    if refused is not None:
        status, retry_s = refused
        book.limits.answers[status] += 1
        code, msg = (
            (-1003, "Too many requests; please use the websocket.")
            if status == 429
            else (-1003, "Way too many requests; IP banned.")
        )
        response: web.StreamResponse = _error(
            status, code, msg, **{"Retry-After": retry_after_text(retry_s)}
        )
    else:
        if book.answer_delay_s > 0:
            await asyncio.sleep(book.answer_delay_s)
        response = await _faulty_or_served(request, handler)
        book.limits.answers[response.status] += 1
    response.headers["X-MBX-USED-WEIGHT-1M"] = str(book.limits.used)
    return response


async def _faulty_or_served(request: web.Request, handler: Handler) -> web.StreamResponse:
    book = request.app[BOOK]
    fault = book.take_fault()
    if fault == "500":
        return _error(500, -1000, "An unknown error occured while processing the request.")
    if fault == "429":
        return _error(
            429, -1003, "Too many requests; please use the websocket.", **{"Retry-After": "1"}
        )
    if fault == "garbage":
        return web.Response(status=200, text="not json{", content_type="application/json")
    if fault == "timeout":
        # A server that hangs, then answers too late: the client must have given up.
        await asyncio.sleep(STALL_S)
    return await handler(request)


def _refusal(request: web.Request) -> web.Response | None:
    """Binance's checks of a signed request, in its order; None when it may proceed."""
    if request.headers.get("X-MBX-APIKEY") != request.app[API_KEY]:
        return _error(401, -2015, "Invalid API-key, IP, or permissions for action.")
    payload, sep, signature = request.rel_url.raw_query_string.partition("&signature=")
    if not sep or not signature:
        return _error(
            400, -1102, "Mandatory parameter 'signature' was not sent, was empty/malformed."
        )
    expected = hmac.new(
        request.app[API_SECRET].encode(), payload.encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return _error(400, -1022, "Signature for this request is not valid.")
    try:
        timestamp = int(request.query["timestamp"])
        recv_window = int(request.query.get("recvWindow", DEFAULT_RECV_WINDOW_MS))
    except (KeyError, ValueError):
        return _error(
            400, -1102, "Mandatory parameter 'timestamp' was not sent, was empty/malformed."
        )
    now_ms = request.app[BOOK].clock_ms()
    if timestamp > now_ms + FUTURE_TOLERANCE_MS or now_ms - timestamp > recv_window:
        return _error(400, -1021, "Timestamp for this request is outside of the recvWindow.")
    return None


def _api_key_refusal(request: web.Request) -> web.Response | None:
    if request.headers.get("X-MBX-APIKEY") != request.app[API_KEY]:
        return _error(401, -2015, "Invalid API-key, IP, or permissions for action.")
    if not request.app[STREAM].enabled:
        return _error(404, -1000, "No user-data stream on this exchange.")
    return None


async def _listen_key_new(request: web.Request) -> web.Response:
    refused = _api_key_refusal(request)
    if refused is not None:
        return refused
    return web.json_response({"listenKey": request.app[STREAM].new_key()})


async def _listen_key_keepalive(request: web.Request) -> web.Response:
    refused = _api_key_refusal(request)
    if refused is not None:
        return refused
    if not request.app[STREAM].keep_alive(request.query.get("listenKey", "")):
        return _error(400, -1125, "This listenKey does not exist.")
    return web.json_response({})


async def _listen_key_delete(request: web.Request) -> web.Response:
    refused = _api_key_refusal(request)
    if refused is not None:
        return refused
    request.app[STREAM].delete_key(request.query.get("listenKey", ""))
    return web.json_response({})


async def _ws_path(request: web.Request) -> web.StreamResponse:
    return await request.app[STREAM].serve(request, request.match_info["listen_key"])


async def _ws_query(request: web.Request) -> web.StreamResponse:
    return await request.app[STREAM].serve(request, request.query.get("listenKey", ""))


async def _position_risk(request: web.Request) -> web.Response:
    refused = _refusal(request)
    if refused is not None:
        return refused
    book = request.app[BOOK]
    # Like Binance, every symbol ever traded is listed, flat ones with positionAmt 0.
    rows = [_position_row(book, s) for s in sorted(book.traded)]
    if book.snapshot_delay_s > 0:
        await asyncio.sleep(book.snapshot_delay_s)
    return web.json_response(rows)


def _position_row(book: PaperBook, symbol: str) -> dict[str, Any]:
    position = book.positions.get(symbol)
    qty = position.qty if position else 0.0
    entry = position.entry_price if position else 0.0
    mark = book.mark(symbol)
    return {
        "symbol": symbol,
        "positionAmt": _dec(qty),
        "entryPrice": _dec(entry),
        "breakEvenPrice": _dec(entry),
        "markPrice": _dec(mark),
        "unRealizedProfit": _dec(book.unrealized_profit(symbol)),
        "liquidationPrice": "0",
        "leverage": "10",
        "maxNotionalValue": "1000000",
        "marginType": "cross",
        "isolatedMargin": "0.00000000",
        "isAutoAddMargin": "false",
        "positionSide": "BOTH",
        "notional": _dec(qty * mark),
        "isolatedWallet": "0",
        "updateTime": position.update_time_ms if position else 0,
    }


async def _account(request: web.Request) -> web.Response:
    refused = _refusal(request)
    if refused is not None:
        return refused
    book = request.app[BOOK]
    unrealized = sum(book.unrealized_profit(s) for s in book.positions)
    wallet = book.margin_balance - unrealized
    available = max(0.0, book.margin_balance - book.initial_margin)
    return web.json_response(
        {
            "feeTier": 0,
            "canTrade": True,
            "canDeposit": True,
            "canWithdraw": True,
            "updateTime": 0,
            "totalInitialMargin": _dec(book.initial_margin),
            "totalMaintMargin": _dec(book.initial_margin / 10),
            "totalWalletBalance": _dec(wallet),
            "totalUnrealizedProfit": _dec(unrealized),
            "totalMarginBalance": _dec(book.margin_balance),
            "totalPositionInitialMargin": _dec(book.initial_margin),
            "totalOpenOrderInitialMargin": "0.00000000",
            "totalCrossWalletBalance": _dec(wallet),
            "totalCrossUnPnl": _dec(unrealized),
            "availableBalance": _dec(available),
            "maxWithdrawAmount": _dec(available),
            "assets": [],
            "positions": [],
        }
    )


async def _klines(request: web.Request) -> web.Response:
    symbol = request.query.get("symbol", "")
    if not symbol:
        return _error(400, -1102, "Mandatory parameter 'symbol' was not sent, was empty/malformed.")
    if request.query.get("interval") != "1h":  # the only interval the paper book keeps
        return _error(400, -1120, "Invalid interval.")
    try:
        limit = int(request.query.get("limit", KLINES_DEFAULT_LIMIT))
    except ValueError:
        return _error(400, -1100, "Illegal characters found in parameter 'limit'.")
    limit = max(1, min(limit, KLINES_MAX_LIMIT))
    # A symbol without klines answers an empty list (the engine then reads UNKNOWN).
    candles = request.app[BOOK].klines.get(symbol, [])[-limit:]
    return web.json_response([_kline_row(k) for k in candles])


def _kline_row(k: Kline) -> list[Any]:
    # [openTime, open, high, low, close, volume, closeTime, quoteVolume, trades,
    #  takerBuyBase, takerBuyQuote, ignore]
    return [
        k.open_time_ms,
        _dec(k.open),
        _dec(k.high),
        _dec(k.low),
        _dec(k.close),
        "1000.000",
        k.close_time_ms,
        _dec(1000.0 * k.close),
        100,
        "500.000",
        _dec(500.0 * k.close),
        "0",
    ]


async def _stats(request: web.Request) -> web.Response:
    """The paper exchange's own counts, for benchmarks and the demo."""
    book, stream = request.app[BOOK], request.app[STREAM]
    limits = book.limits
    return web.json_response(
        {
            "weight_limit_1m": limits.limit_per_min,
            "weight_used_1m": limits.used,
            "weight_per_minute": [w for _, w in limits.history] + [limits.used],
            "answers": {str(status): n for status, n in sorted(limits.answers.items())},
            "requests": dict(book.requests),
            "stream": dict(stream.counts),
            "positions": len(book.positions),
        }
    )


async def _time(request: web.Request) -> web.Response:
    return web.json_response({"serverTime": request.app[BOOK].clock_ms()})
