"""Binance USDⓈ-M futures REST client: positions, account, 1 h klines and the user-data
stream's listenKey — or ExchangeUnavailable.

Fail closed: an answer we cannot fully parse is an error, never a guess. Transient
failures (5xx, 429, timeouts, lost connections) are retried with jittered exponential
backoff inside a time budget; everything else fails at once. Every call goes through
the process's request-weight budget (`weights.WeightBudget`): a 429 holds every call
back until its `Retry-After` has passed, a 418 stops every call until the ban ends.
The API key, the secret, the signature and the signed query string never appear in an
error message.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import aiohttp
import msgspec
from yarl import URL

from ..core.errors import RotationFsmError
from ..core.market import Account, Kline, Position
from ..core.regime import WINDOW
from .weights import RateLimited, WeightBudget, request_weight

log = logging.getLogger("rotation_fsm.runtime.exchange")

POSITION_RISK = "/fapi/v2/positionRisk"
ACCOUNT = "/fapi/v2/account"
KLINES = "/fapi/v1/klines"
LISTEN_KEY = "/fapi/v1/listenKey"
USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
#: Binance's error code for a listenKey that does not exist (any more)
LISTEN_KEY_MISSING = -1125

RECV_WINDOW_MS = 5000
KLINE_INTERVAL = "1h"
#: the regime's window of closed candles plus the one still open, which is dropped: the
#: smallest limit the maths needs (weight 2; a limit under 100 weighs 1 but is too short)
KLINE_LIMIT = WINDOW + 1
HOUR_MS = 3_600_000

BACKOFF_FIRST_S = 0.1
BACKOFF_CAP_S = 1.0
#: a retry that would have less time than this before the budget ends is not begun
MIN_ATTEMPT_S = 0.05
#: error details quoted from an answer are cut to this many characters
DETAIL_MAX_CHARS = 120


class ExchangeUnavailable(RotationFsmError):
    """The exchange gave no usable answer: names the endpoint, the HTTP status (if any)
    and a short reason — never a credential, a signature or a signed query string.
    `code` is Binance's error code when it sent one."""

    def __init__(
        self, endpoint: str, reason: str, *, status: int | None = None, code: int | None = None
    ) -> None:
        self.endpoint = endpoint
        self.status = status
        self.reason = reason
        self.code = code
        where = f"{endpoint}: HTTP {status}" if status is not None else endpoint
        super().__init__(f"exchange unavailable: {where}: {reason}")


class _Transient(Exception):
    """One attempt failed in a way worth retrying."""

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        unsent: bool = False,
    ):
        super().__init__(reason)
        self.reason = reason
        self.unsent = unsent  # the request never reached the exchange: no weight used
        self.status = status
        self.retry_after_s = retry_after_s


class _Garbage(ValueError):
    """An answer that is not shaped like Binance's."""


def wall_clock_ms() -> int:
    """Milliseconds since the epoch."""
    return int(time.time() * 1000)


class ExchangeClient:
    """One account on one Binance USDⓈ-M futures endpoint (testnet, live or the paper one).

    Owns a single aiohttp session between `start()` and `close()` (or `async with`).
    `stats` counts, per endpoint name (`positionRisk`, `account`, `klines`), the HTTP
    `requests` made, `retries`, `failures` (ExchangeUnavailable raised) and `cache_hits`.
    `clock_ms` (default: wall clock) stamps signed requests and decides which candles
    have closed. A call that keeps failing transiently gives up once `retry_budget_s`
    have passed (each attempt waits at most `request_timeout_s`). `budget` is the
    process's request-weight budget (one of its own when none is given).
    `bad_pnl_symbols` names the open positions whose `unRealizedProfit` was not finite
    in the last answer (counted open, with a profit of 0).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        api_secret: str,
        *,
        request_timeout_s: float = 2.0,
        retry_budget_s: float = 4.0,
        clock_ms: Callable[[], int] | None = None,
        budget: WeightBudget | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.budget = budget or WeightBudget()
        self.bad_pnl_symbols: frozenset[str] = frozenset()
        self._api_key = api_key
        self._api_secret = api_secret
        self.request_timeout_s = request_timeout_s
        self.retry_budget_s = retry_budget_s
        self._clock_ms = clock_ms or wall_clock_ms
        self._session: aiohttp.ClientSession | None = None
        # symbol → (valid while now ≤ this ms, closed klines)
        self._klines_cache: dict[str, tuple[int, list[Kline]]] = {}
        self._rng = random.Random()
        self.stats: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"ExchangeClient({self.base_url!r})"  # never the credentials

    async def start(self) -> None:
        """Open the HTTP session (idempotent)."""
        if self._session is None:
            self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> ExchangeClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------ endpoints

    async def positions(self) -> list[Position]:
        """The open positions (|positionAmt| > 1e-8); dust and flat entries are dropped.

        A position whose `unRealizedProfit` is not finite still holds its slot: it is
        kept with a profit of 0, said once in the log and counted in `stats`
        (`positionRisk.bad_pnl`), rather than failing every decision closed."""
        answer = await self._get(POSITION_RISK, [], signed=True)
        try:
            if not isinstance(answer, list):
                raise _Garbage(f"expected a list, got {type(answer).__name__}")
            parsed = [_position(row) for row in answer]
        except _Garbage as exc:
            raise self._failed(POSITION_RISK, f"malformed answer: {exc}") from None
        opened = [p for p, _ in parsed if p.is_open]
        self._note_bad_pnl(frozenset(p.symbol for p, bad in parsed if bad and p.is_open))
        return opened

    def _note_bad_pnl(self, symbols: frozenset[str]) -> None:
        if symbols - self.bad_pnl_symbols:
            log.warning(
                "positionRisk: unRealizedProfit not finite for %s: counted open, profit 0",
                ",".join(sorted(symbols - self.bad_pnl_symbols)),
            )
        if symbols:
            self._count(POSITION_RISK, "bad_pnl", len(symbols))
        self.bad_pnl_symbols = symbols

    async def new_listen_key(self) -> str:
        """A listenKey for the user-data stream (POST: the same key while one is valid)."""
        answer = await self._send("POST", LISTEN_KEY, [], signed=False)
        key = answer.get("listenKey") if isinstance(answer, dict) else None
        if not isinstance(key, str) or not key:
            raise self._failed(LISTEN_KEY, "malformed answer: no listenKey")
        return key

    async def keep_alive(self, listen_key: str) -> None:
        """Extend the listenKey's validity by 60 minutes (PUT); code -1125 when it is gone."""
        await self._send("PUT", LISTEN_KEY, [("listenKey", listen_key)], signed=False)

    async def account(self) -> Account:
        """Total initial margin and total margin balance of the futures account."""
        answer = await self._get(ACCOUNT, [], signed=True)
        try:
            row = _mapping(answer)
            return Account(
                total_initial_margin=_number(row, "totalInitialMargin"),
                total_margin_balance=_number(row, "totalMarginBalance"),
            )
        except _Garbage as exc:
            raise self._failed(ACCOUNT, f"malformed answer: {exc}") from None

    async def klines(self, symbol: str) -> list[Kline]:
        """The last closed 1 h klines of `symbol` (up to 100, oldest first).

        The candle still open is dropped. An answer (an empty one too) is reused until
        its next candle closes, so asking again within the same hour costs no request.
        """
        cached = self._klines_cache.get(symbol)
        if cached is not None and self._clock_ms() <= cached[0]:
            self._count(KLINES, "cache_hits")
            return list(cached[1])
        params = [("symbol", symbol), ("interval", KLINE_INTERVAL), ("limit", str(KLINE_LIMIT))]
        answer = await self._get(KLINES, params, signed=False)
        try:
            candles = _klines(answer)
        except _Garbage as exc:
            raise self._failed(KLINES, f"malformed answer for {symbol}: {exc}") from None
        now_ms = self._clock_ms()
        closed = [k for k in candles if k.close_time_ms < now_ms]
        # The next candle closes one hour after the last closed one (with none, when
        # the hour turns); until then the exchange has nothing new for us.
        until_ms = (
            closed[-1].close_time_ms + HOUR_MS if closed else (now_ms // HOUR_MS + 1) * HOUR_MS
        )
        self._klines_cache[symbol] = (until_ms, closed)
        return list(closed)

    # ------------------------------------------------------------ transport

    async def _get(self, path: str, params: list[tuple[str, str]], *, signed: bool) -> Any:
        """The decoded JSON of a 200 answer, retrying transient failures within the budget."""
        return await self._send("GET", path, params, signed=signed)

    async def _send(
        self, method: str, path: str, params: list[tuple[str, str]], *, signed: bool
    ) -> Any:
        session = self._require_session(path)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_budget_s
        timeout_s = self.request_timeout_s  # the first attempt always gets the full timeout
        attempt = 0
        while True:
            attempt += 1
            weight = request_weight(path, dict(params))
            try:
                await self.budget.acquire(weight, max(0.0, deadline - loop.time()))
            except RateLimited as limited:
                raise self._failed(path, limited.reason) from None
            try:
                return await self._attempt(session, method, path, params, signed, timeout_s)
            except _Transient as failure:
                if failure.unsent:
                    self.budget.refund(weight)
                wait_s = failure.retry_after_s
                if wait_s is None:
                    wait_s = self._backoff_s(attempt)
                left_s = deadline - loop.time()
                # A Retry-After beyond the budget is not shortened: retrying before the
                # exchange allows it would only earn another 429 (or a ban).
                if wait_s + MIN_ATTEMPT_S > left_s:
                    suffix = f" (gave up after {attempt} attempt{'s' if attempt > 1 else ''})"
                    raise self._failed(path, failure.reason + suffix, failure.status) from None
                self._count(path, "retries")
                await asyncio.sleep(wait_s)
                timeout_s = min(self.request_timeout_s, deadline - loop.time())

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        params: list[tuple[str, str]],
        signed: bool,
        timeout_s: float,
    ) -> Any:
        if signed:
            query, headers = self._signed(params)
        else:
            query = urlencode(params)
            # The listenKey calls need the key (not a signature); klines need neither.
            headers = {"X-MBX-APIKEY": self._api_key} if path == LISTEN_KEY else {}
        # encoded=True: the bytes sent must be the bytes signed.
        url = URL(
            f"{self.base_url}{path}?{query}" if query else f"{self.base_url}{path}", encoded=True
        )
        self._count(path, "requests")
        try:
            async with session.request(
                method,
                url,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                # A redirect could carry the key header to another host.
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                self.budget.observe(
                    status, resp.headers.get(USED_WEIGHT_HEADER), _seconds(retry_after)
                )
        except TimeoutError:
            raise _Transient(f"no answer within {timeout_s:.2f}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            # The exception text may quote the URL (with the signature): only its type.
            unsent = isinstance(exc, aiohttp.ClientConnectorError)  # never reached it
            raise _Transient(f"connection failed ({type(exc).__name__})", unsent=unsent) from None
        return self._answer(path, status, body, retry_after)

    def _answer(self, path: str, status: int, body: bytes, retry_after: str | None) -> Any:
        if status == 200:
            try:
                return msgspec.json.decode(body)
            except msgspec.DecodeError:
                raise self._failed(path, "answer is not JSON", status) from None
        detail, code = self._detail(body)
        if status == 429 or status >= 500:
            raise _Transient(detail, status=status, retry_after_s=_seconds(retry_after))
        # 418 (banned) and other 4xx (-1022 bad signature, -2015 bad key, -1021 clock
        # skew...) will not get better by asking again.
        raise self._failed(path, detail, status, code)

    def _signed(self, params: list[tuple[str, str]]) -> tuple[str, dict[str, str]]:
        stamped = [
            *params,
            ("timestamp", str(self._clock_ms())),
            ("recvWindow", str(RECV_WINDOW_MS)),
        ]
        query = urlencode(stamped)
        signature = hmac.new(self._api_secret.encode(), query.encode(), hashlib.sha256).hexdigest()
        return f"{query}&signature={signature}", {"X-MBX-APIKEY": self._api_key}

    def _backoff_s(self, attempt: int) -> float:
        # "Equal jitter": at least half the exponential step, so retries spread out
        # without ever hammering the exchange back to back.
        step = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2.0 ** min(attempt - 1, 16))
        return step / 2 + self._rng.uniform(0.0, step / 2)

    def _detail(self, body: bytes) -> tuple[str, int | None]:
        """Binance's `code msg` (and the code), or the start of a non-JSON body;
        credentials scrubbed."""
        try:
            error = msgspec.json.decode(body)
        except msgspec.DecodeError:
            error = None
        code = None
        if isinstance(error, dict) and "code" in error:
            text = f"{error.get('code')} {error.get('msg', '')}".strip()
            raw_code = error.get("code")
            if isinstance(raw_code, int) and not isinstance(raw_code, bool):
                code = raw_code
        else:
            text = body[:DETAIL_MAX_CHARS].decode("utf-8", errors="replace").strip()
        return self._redact(text)[:DETAIL_MAX_CHARS] or "no detail", code

    def _redact(self, text: str) -> str:
        for secret in (self._api_key, self._api_secret):
            if secret:  # replacing "" would insert the mask between every character
                text = text.replace(secret, "***")
        return text

    def _failed(
        self, path: str, reason: str, status: int | None = None, code: int | None = None
    ) -> ExchangeUnavailable:
        self._count(path, "failures")
        return ExchangeUnavailable(path, self._redact(reason), status=status, code=code)

    def _count(self, path: str, kind: str, n: int = 1) -> None:
        key = f"{path.rsplit('/', 1)[-1]}.{kind}"
        self.stats[key] = self.stats.get(key, 0) + n

    def _require_session(self, path: str) -> aiohttp.ClientSession:
        if self._session is None:
            raise self._failed(path, "client not started (call start() first)")
        return self._session


# ---------------------------------------------------------------- parsing


def _seconds(header: str | None) -> float | None:
    """Retry-After as seconds (Binance sends an integer); None when absent or unreadable."""
    if header is None:
        return None
    try:
        value = float(header)
    except ValueError:
        return None
    return max(0.0, value) if math.isfinite(value) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _Garbage(f"expected an object, got {type(value).__name__}")
    return value


def _field(row: Mapping[str, Any], name: str) -> Any:
    if name not in row:
        raise _Garbage(f"{name} is missing")
    return row[name]


def _to_float(value: Any, name: str) -> float:
    # Binance sends decimals as strings, but some answers (and proxies) use numbers.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _Garbage(f"{name} is a {type(value).__name__}")
    try:
        number = float(value)
    except (ValueError, OverflowError):  # an integer past 1.8e308 overflows a float
        raise _Garbage(f"{name} is not a number: {str(value)[:40]!r}") from None
    if not math.isfinite(number):
        raise _Garbage(f"{name} is not finite: {value!r:.40}")
    return number


def _number(row: Mapping[str, Any], name: str) -> float:
    return _to_float(_field(row, name), name)


def _millis(value: Any, name: str) -> int:
    number = _to_float(value, name)
    if number < 0 or number != int(number):
        raise _Garbage(f"{name} is not a time in ms: {value!r:.40}")
    return int(number)


def _price(value: Any, name: str) -> float:
    number = _to_float(value, name)
    if number <= 0:
        raise _Garbage(f"{name} is not a positive price: {value!r:.40}")
    return number


def _position(raw: Any) -> tuple[Position, bool]:
    """One positionRisk row, and whether its `unRealizedProfit` was not finite."""
    row = _mapping(raw)
    symbol = _field(row, "symbol")
    if not isinstance(symbol, str) or not symbol:
        raise _Garbage(f"symbol is not a non-empty string: {symbol!r:.40}")
    profit = _loose_number(_field(row, "unRealizedProfit"), "unRealizedProfit")
    position = Position(
        symbol=symbol,
        position_amt=_number(row, "positionAmt"),
        mark_price=_number(row, "markPrice"),
        unrealized_profit=0.0 if profit is None else profit,
        update_time_ms=_millis(_field(row, "updateTime"), "updateTime"),
    )
    return position, profit is None


def _loose_number(value: Any, name: str) -> float | None:
    """A number that may be non-finite (None then); anything else malformed raises."""
    if isinstance(value, str) and value.strip().lower().lstrip("+-") in {"nan", "inf", "infinity"}:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return _to_float(value, name)


def _kline(raw: Any, index: int) -> Kline:
    # [openTime, "open", "high", "low", "close", "volume", closeTime, ...]
    if not isinstance(raw, list) or len(raw) < 7:
        raise _Garbage(f"row {index} is not a kline array")
    return Kline(
        _millis(raw[0], f"row {index} openTime"),
        _price(raw[1], f"row {index} open"),
        _price(raw[2], f"row {index} high"),
        _price(raw[3], f"row {index} low"),
        _price(raw[4], f"row {index} close"),
        _millis(raw[6], f"row {index} closeTime"),
    )


def _klines(answer: Any) -> list[Kline]:
    if not isinstance(answer, list):
        raise _Garbage(f"expected a list, got {type(answer).__name__}")
    candles = [_kline(row, i) for i, row in enumerate(answer)]
    for prev, k in itertools.pairwise(candles):
        if k.open_time_ms <= prev.open_time_ms:
            raise _Garbage("klines are not in ascending open time")
    return candles
