"""The paper exchange's apply layer: what the governor allowed, executed on the PaperBook.

It reads the decision stream through a consumer group of its own. For an ALLOW it
finds the plan (by the decision's `entry_id` on the plan stream; a decision made
when a rotation ends has none, so the plan seen with its earlier BLOCK is used),
executes it on the book after `latency_ms`, and writes one `apply.result`
(contract §2) — unless the dice say the order is rejected (a result with
`executed=false`) or its result is lost (nothing written at all), so that
rejections and timeouts happen in a run.

Never twice: a result and the ack of its decision are written in one MULTI/EXEC,
so a decision is either fully answered or still pending; and a plan id is executed
once, however often it is allowed again (a resend of an allowed plan is answered
ALLOW again by the engine, contract §3a).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...core import reasons as R
from ...core.market import Kline
from ...core.messages import CLOSE_ACTIONS, BadEntry, as_text, decode_fields
from ...core.regime import Regime
from ...core.settings import parse_bool
from ...store.keys import Keys
from ...store.retry import Backoff, wait_or_stop
from .book import PaperBook, Trade, synthetic_klines

log = logging.getLogger("rotation_fsm.devkit.paper_exchange.apply")
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)

DEFAULT_GROUP = "paper-apply"
DEFAULT_CONSUMER = "paper-exchange"
#: the paper account's leverage: initial margin = notional / LEVERAGE
LEVERAGE = 10.0
#: notional (USDT) of an order whose plan carries no usable qty
DEFAULT_NOTIONAL = 200.0
#: plan ids remembered as executed, and plans remembered for a rotation's end
MEMORY = 100_000
# Binance's own words for the refusals a paper account meets: nothing to close (or the
# dice said no to a close), and the dice said no to an open.
REDUCE_ONLY_REJECTED = "ReduceOnly Order is rejected."  # code -2022
MARGIN_INSUFFICIENT = "Margin is insufficient."  # code -2019


@dataclass
class ApplyConfig:
    """How the paper exchange behaves; mutable so the demo can turn faults on mid-run."""

    latency_ms: int = 200
    reject_rate: float = 0.0
    lost_rate: float = 0.0
    seed: int | None = None
    group: str = DEFAULT_GROUP
    consumer: str = DEFAULT_CONSUMER


@dataclass(frozen=True)
class Order:
    """What one allowed plan asks the exchange to do."""

    plan_id: str
    symbol: str
    close: bool  # a close action or reduceOnly: flattens the position
    qty: float  # signed (negative sells); ignored for a close
    new_plan_id: str = ""  # set on a rotation's close plan


@dataclass(frozen=True)
class Outcome:
    """What became of one order; `result` is None when the result was lost."""

    order: Order
    executed: bool
    filled_qty: float
    price: float
    error: str
    result: dict[str, str] | None
    lost: bool = False

    @property
    def status(self) -> str:
        if self.lost:
            return "LOST"
        return "FILLED" if self.executed else "REJECTED"


def _bounded_put(cache: OrderedDict[str, Any], key: str, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > MEMORY:
        cache.popitem(last=False)


#: the paper market's prices of common symbols (USDT), so fills and margins look real
REFERENCE_PRICES: dict[str, float] = {
    "BTCUSDT": 65_000.0,
    "ETHUSDT": 3_200.0,
    "SOLUSDT": 150.0,
    "BNBUSDT": 580.0,
    "XRPUSDT": 0.60,
    "ADAUSDT": 0.45,
    "DOGEUSDT": 0.15,
    "AVAXUSDT": 35.0,
    "LINKUSDT": 15.0,
    "DOTUSDT": 7.0,
}


def stable_price(symbol: str) -> float:
    """A plausible, stable price for a symbol the book knows nothing of: 0.1–1000 USDT,
    log-uniform, the same in every process (so replicas and restarts agree)."""
    unit = zlib.crc32(symbol.encode()) / 0xFFFFFFFF
    return round(10 ** (-1 + 4 * unit), 4)


def reference_price(symbol: str) -> float:
    """Where the paper market starts for `symbol`: `REFERENCE_PRICES`, else `stable_price`."""
    return REFERENCE_PRICES.get(symbol) or stable_price(symbol)


def price_for(book: PaperBook, symbol: str) -> float:
    """The price an order in `symbol` fills at: the mark, else the last kline close,
    else `reference_price`."""
    mark = book.marks.get(symbol)
    if mark:
        return mark
    candles = book.klines.get(symbol)
    if candles:
        return candles[-1].close
    return reference_price(symbol)


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def order_from_plan(fields: dict[str, str], book: PaperBook) -> Order:
    """The order a plan entry's fields describe (contract §2 field names)."""
    symbol = fields.get("symbol", "")
    action = fields.get("action", "")
    try:
        reduce_only = parse_bool(fields.get("reduceOnly", "false"))
    except ValueError:
        reduce_only = False
    close = reduce_only or action in CLOSE_ACTIONS
    qty = abs(_number(fields.get("qty")) or 0.0)
    if qty == 0.0 and not close:
        qty = DEFAULT_NOTIONAL / price_for(book, symbol)
    short = action == "OPEN_SHORT" or fields.get("side", "").upper() == "SELL"
    return Order(
        plan_id=fields.get("plan_id", ""),
        symbol=symbol,
        close=close,
        qty=-qty if short else qty,
        new_plan_id=fields.get("new_plan_id", ""),
    )


def execute(book: PaperBook, order: Order) -> tuple[bool, float, float, str]:
    """Fill `order` on `book`: (executed, filled qty, price, error). A close flattens the
    position (refused when there is none, as Binance refuses a reduce-only order); an
    open adds to the position at the current price. Keeps the account's margin in step."""
    price = price_for(book, order.symbol)
    position = book.positions.get(order.symbol)
    if order.close:
        if position is None:
            return False, 0.0, price, REDUCE_ONLY_REJECTED
        _reprice_margin(book, without=order.symbol)
        book.close(order.symbol)
        book.filled(Trade(order.symbol, order.plan_id, "SELL" if position.qty > 0 else "BUY",
                          abs(position.qty), price, reduce_only=True))  # fmt: skip
        return True, abs(position.qty), price, ""
    qty, entry = order.qty, price
    if position is not None:
        total = position.qty + order.qty
        if abs(total) > 1e-12 and (position.qty > 0) == (order.qty > 0):
            # Adding to a position: the entry price becomes the size-weighted average.
            entry = (position.qty * position.entry_price + order.qty * price) / total
        qty = total
    book.set_mark(order.symbol, price)
    # The margin first: the stream's ACCOUNT_UPDATE goes out as the position opens.
    _reprice_margin(book, extra=(order.symbol, qty, price))
    book.open(order.symbol, qty, entry)
    book.filled(Trade(order.symbol, order.plan_id, "BUY" if order.qty > 0 else "SELL",
                      abs(order.qty), price, reduce_only=False))  # fmt: skip
    return True, abs(order.qty), price, ""


def _reprice_margin(
    book: PaperBook, *, without: str = "", extra: tuple[str, float, float] | None = None
) -> None:
    """Initial margin of the positions as they are about to be (`without` closed,
    `extra` = (symbol, qty, mark) opened or changed)."""
    sizes = {s: (p.qty, book.mark(s)) for s, p in book.positions.items() if s != without}
    if extra is not None:
        sizes[extra[0]] = (extra[1], extra[2])
    book.initial_margin = sum(abs(qty) * mark / LEVERAGE for qty, mark in sizes.values())


def _qty_text(qty: float) -> str:
    return f"{qty:.8f}".rstrip("0").rstrip(".") or "0"


class ApplyLoop:
    """Consumes decisions for one book and answers them on the result stream.

    `observers` are called with each `Outcome` (the demo prints them). The demo may
    `lose_results_of(plan_id)`: the results of that plan and of any rotation close
    plan emitted for it are lost, whatever `lost_rate` says.
    """

    def __init__(
        self,
        redis: Redis,
        book: PaperBook,
        keys: Keys | None = None,
        config: ApplyConfig | None = None,
        *,
        clock_s: Callable[[], float] = time.time,
        count: int = 100,
    ) -> None:
        self.redis = redis
        self.book = book
        self.keys = keys or Keys()
        self.config = config or ApplyConfig()
        self.clock_s = clock_s
        self.count = count
        self.rng = random.Random(self.config.seed)
        self.stats: Counter[str] = Counter()
        self.observers: list[Callable[[Outcome], None]] = []
        self._executed: OrderedDict[str, None] = OrderedDict()
        self._waiting: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._lose: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending_done = False

    # -- control -------------------------------------------------------------------------

    def lose_results_of(self, plan_id: str) -> None:
        """Lose the result of `plan_id` and of any rotation close plan made for it."""
        self._lose.add(plan_id)

    async def ensure_group(self) -> None:
        """Create the consumer group on the decision stream at `$` when missing: like the
        engine, decisions written before the first start are never acted on."""
        try:
            await self.redis.xgroup_create(
                self.keys.decisions, self.config.group, id="$", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- running -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, block_ms: int = 1000) -> None:
        """Read and answer decisions until `stop`; orders waiting out their latency
        finish before it returns."""
        backoff = Backoff(first_s=0.2, cap_s=5.0)
        try:
            while not stop.is_set():
                try:
                    await self.ensure_group()
                    backoff.reset()
                    while not stop.is_set():
                        await self.read_once(block_ms=block_ms)
                except REDIS_DOWN as exc:
                    # Wait Redis out like the engine does; unanswered decisions stay
                    # pending in the group and are answered after it returns.
                    delay_s = backoff.next_s()
                    log.warning("redis unavailable, retrying in %.1f s: %s", delay_s, exc)
                    await wait_or_stop(stop, delay_s)
                    self._pending_done = False
        finally:
            await self.drain()

    async def run_once(self, *, block_ms: int | None = None) -> int:
        """One read, every order of it answered before returning: for tests."""
        started = await self.read_once(block_ms=block_ms)
        await self.drain()
        return started

    async def read_once(self, *, block_ms: int | None = None) -> int:
        """Read one batch and start answering it; returns how many decisions were read.

        The first read after a start (or a Redis outage) takes this consumer's pending
        entries: decisions read before but never answered (their result and ack are
        one transaction, so none of them was answered)."""
        entries: list[tuple[str, Any]] = []
        if not self._pending_done:
            entries = await self._read("0", None)
            self._pending_done = not entries
        if not entries:
            entries = await self._read(">", block_ms)
        for entry_id, raw in entries:
            # In stream order, so a plan seen with its BLOCK is known to the ALLOW that
            # ends its rotation; only the wait and the fill run concurrently.
            try:
                order = await self._prepare(entry_id, raw)
            except REDIS_DOWN:
                raise
            except Exception:  # one bad decision must not stop the exchange: it stays pending
                log.exception("could not read decision %s", entry_id)
                continue
            if order is not None:
                task = asyncio.create_task(self._complete(entry_id, *order))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return len(entries)

    async def _read(self, start: str, block_ms: int | None) -> list[tuple[str, Any]]:
        try:
            reply = await self.redis.xreadgroup(
                self.config.group,
                self.config.consumer,
                {self.keys.decisions: start},
                count=self.count,
                block=block_ms,
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()  # Redis lost its state: start again at `$`
            return []
        return [(as_text(eid), raw) for _, batch in _streams(reply) for eid, raw in batch]

    async def drain(self) -> None:
        """Wait for every order already read to be answered."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- one decision --------------------------------------------------------------------

    async def _prepare(
        self, entry_id: str, raw: dict[Any, Any] | None
    ) -> tuple[Order, bool, bool] | None:
        """The order an ALLOW asks for, with its dice (reject, lost); None when there is
        nothing to execute (then the decision is acknowledged here)."""
        try:
            decision = decode_fields(raw or {})
        except BadEntry:
            decision = {}
        plan_id = decision.get("plan_id", "")
        if decision.get("decision") != R.ALLOW:
            if decision.get("reason") == R.WAITING_ROTATION_CLOSE and plan_id:
                # Its rotation may end in an ALLOW without an entry id: keep the plan.
                plan = await self._plan_entry(decision.get("entry_id", ""))
                if plan is not None:
                    _bounded_put(self._waiting, plan_id, plan)
            await self._ack(entry_id)
            return None
        if not plan_id or plan_id in self._executed:
            self.stats["repeat"] += 1  # a resend answered ALLOW again: executed already
            await self._ack(entry_id)
            return None
        _bounded_put(self._executed, plan_id, None)
        order = order_from_plan(await self._plan_fields(decision), self.book)
        # Drawn here, in stream order: the same seed gives the same outcomes.
        reject = self.rng.random() < self.config.reject_rate
        lost = self.rng.random() < self.config.lost_rate or bool(
            {order.plan_id, order.new_plan_id} & self._lose
        )
        return order, reject, lost

    async def _complete(self, entry_id: str, order: Order, reject: bool, lost: bool) -> None:
        """After the latency: fill (or reject) on the book, write the result and the ack."""
        try:
            await asyncio.sleep(self.config.latency_ms / 1000)
            outcome = self._fill(order, reject=reject, lost=lost)
            await self._write(entry_id, outcome.result)
        except asyncio.CancelledError:
            raise
        except Exception:  # the decision stays pending and is retried after a restart
            log.exception("could not answer decision %s", entry_id)
            return
        self.stats[outcome.status.lower()] += 1
        for observer in self.observers:
            observer(outcome)

    def _fill(self, order: Order, *, reject: bool, lost: bool) -> Outcome:
        if reject:
            executed, filled, price = False, 0.0, price_for(self.book, order.symbol)
            error = REDUCE_ONLY_REJECTED if order.close else MARGIN_INSUFFICIENT
        else:
            executed, filled, price, error = execute(self.book, order)
        result = {
            "plan_id": order.plan_id,
            "symbol": order.symbol,
            "executed": "true" if executed else "false",
            "reduceOnly": "true" if order.close else "false",
            "order_status": "FILLED" if executed else "REJECTED",
            "filled_qty": _qty_text(filled),
            "timestamp": f"{self.clock_s():.3f}",
        }
        if error:
            result["error"] = error
        return Outcome(order, executed, filled, price, error, None if lost else result, lost=lost)

    async def _plan_fields(self, decision: dict[str, str]) -> dict[str, str]:
        plan_id = decision["plan_id"]
        plan = await self._plan_entry(decision.get("entry_id", ""))
        if plan is None:
            plan = self._waiting.pop(plan_id, None)
        if plan is None:
            # Neither: the decision's own symbol and action, a default size.
            plan = {k: decision.get(k, "") for k in ("plan_id", "symbol", "action")}
        return plan

    async def _plan_entry(self, entry_id: str) -> dict[str, str] | None:
        if not entry_id:
            return None
        entries: Any = await self.redis.xrange(self.keys.plans, entry_id, entry_id)
        if not entries:
            return None  # trimmed away
        try:
            return decode_fields(entries[0][1])
        except BadEntry:
            return None

    async def _write(self, entry_id: str, result: dict[str, str] | None) -> None:
        # Result and ack together: a crash leaves the decision pending and unanswered,
        # never answered twice.
        async with self.redis.pipeline(transaction=True) as pipe:
            if result is not None:
                pipe.xadd(self.keys.results, result)  # type: ignore[arg-type]
            pipe.xack(self.keys.decisions, self.config.group, entry_id)
            await pipe.execute()

    async def _ack(self, entry_id: str) -> None:
        await self.redis.xack(self.keys.decisions, self.config.group, entry_id)


def _streams(reply: Any) -> Iterable[tuple[Any, list[tuple[Any, Any]]]]:
    """(stream, entries) pairs of an XREADGROUP reply, RESP2 list or RESP3 dict."""
    if not reply:
        return []
    items: Iterable[Any] = reply.items() if isinstance(reply, dict) else reply
    return [(stream, list(entries)) for stream, entries in items]


def seed_regimes(
    book: PaperBook,
    regimes: Mapping[str, Regime],
    *,
    now_ms: int,
    prices: Mapping[str, float] | None = None,
) -> None:
    """Serve klines that classify as `regimes[symbol]` for each symbol, ending near its
    price (`prices`, else `reference_price`), and mark the symbol at its last close.

    Each symbol gets its own noise (seeded by its name): identical candles would make
    every pair perfectly correlated and trip the correlation gate (contract §5).
    """
    for symbol, regime in regimes.items():
        price = (prices or {}).get(symbol) or reference_price(symbol)
        candles = synthetic_klines(
            regime, now_ms=now_ms, base_price=price, seed=zlib.crc32(symbol.encode())
        )
        # The trend grows the price over the 100 hours: scale so the last close ≈ price.
        scale = price / candles[-1].close
        scaled = [
            Kline(k.open_time_ms, k.open * scale, k.high * scale, k.low * scale,
                  k.close * scale, k.close_time_ms)
            for k in candles
        ]  # fmt: skip
        book.set_klines(symbol, scaled)
        book.set_mark(symbol, scaled[-1].close)


async def walk_marks(
    book: PaperBook,
    stop: asyncio.Event,
    *,
    rng: random.Random,
    interval_s: float = 1.0,
    sigma: float = 0.004,
) -> None:
    """Move every open position's mark by a small random step each `interval_s`, so
    profits drift apart and the weakest position changes over a run."""
    while not stop.is_set():
        for symbol in list(book.positions):
            book.set_mark(symbol, book.mark(symbol) * math.exp(rng.gauss(0.0, sigma)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
