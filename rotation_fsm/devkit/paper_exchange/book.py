"""The paper exchange's state: positions, marks, klines, account numbers and fault switches.

Plain in-memory data that `protocol.py` serves in Binance's shape. Tests and the
demo change it directly (open, close, set_mark, set_klines, fault) and read
`requests` to see what the client really asked for.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from ...core.market import Kline
from ...core.regime import HOUR_MS, MIN_KLINES, Regime, classify
from .limits import PaperLimits

#: what `fault` may be set to; None is "healthy"
FAULTS = frozenset({"500", "429", "timeout", "garbage"})


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Trade:
    """One fill, as the user-data stream's ORDER_TRADE_UPDATE reports it."""

    symbol: str
    client_order_id: str
    side: str  # BUY or SELL
    qty: float
    price: float
    reduce_only: bool


@dataclass
class PaperPosition:
    """One position: signed quantity (negative is short) and the price it was opened at."""

    symbol: str
    qty: float
    entry_price: float
    update_time_ms: int


class PaperBook:
    """Positions by symbol, mark prices, klines and account numbers of one paper account.

    `fault` (one of `FAULTS`, or None) makes every endpoint fail that way; with
    `fail_next` > 0 it lasts for that many requests and then switches itself off.
    `position_watchers` are called with a symbol whenever its position opens, changes
    or closes, `trade_watchers` with each fill (the user-data stream listens there).
    """

    def __init__(self, *, clock_ms: Callable[[], int] | None = None) -> None:
        self.clock_ms = clock_ms or _wall_clock_ms
        self.positions: dict[str, PaperPosition] = {}
        self.marks: dict[str, float] = {}
        self.klines: dict[str, list[Kline]] = {}
        #: symbols ever traded: Binance keeps listing them, flat, after a close
        self.traded: set[str] = set()
        self.initial_margin = 0.0
        self.margin_balance = 10_000.0
        self.requests: Counter[str] = Counter()
        self.fail_next = 0
        self._fault: str | None = None
        #: seconds between taking a positionRisk snapshot and answering with it (a
        #: slow exchange: the answer shows the book as it was when asked)
        self.snapshot_delay_s = 0.0
        #: request-weight accounting (429 / 418), shared by every client
        self.limits = PaperLimits()
        #: every REST answer waits this long first: a real exchange's distance
        self.answer_delay_s = 0.0
        self.position_watchers: list[Callable[[str], None]] = []
        self.trade_watchers: list[Callable[[Trade], None]] = []

    @property
    def fault(self) -> str | None:
        return self._fault

    @fault.setter
    def fault(self, value: str | None) -> None:
        if value is not None and value not in FAULTS:
            raise ValueError(f"unknown fault {value!r}; one of {sorted(FAULTS)} or None")
        self._fault = value

    def fail(self, fault: str, times: int) -> None:
        """Fail the next `times` requests (any endpoint) with `fault`, then recover."""
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        self.fault = fault
        self.fail_next = times

    def take_fault(self) -> str | None:
        """The fault the request being served suffers (counts down `fail_next`)."""
        fault = self._fault
        if fault is not None and self.fail_next > 0:
            self.fail_next -= 1
            if self.fail_next == 0:
                self._fault = None
        return fault

    def open(self, symbol: str, qty: float, price: float, *, at_ms: int | None = None) -> None:
        """Open (or replace) the position in `symbol`: `qty` signed, entered and marked at
        `price`, updated at `at_ms` (default now; an old time makes a stale position)."""
        self.positions[symbol] = PaperPosition(
            symbol=symbol,
            qty=qty,
            entry_price=price,
            update_time_ms=self.clock_ms() if at_ms is None else at_ms,
        )
        self.marks[symbol] = price
        self.traded.add(symbol)
        self._changed(symbol)

    def close(self, symbol: str) -> bool:
        """Close the position in `symbol`; False if there was none."""
        closed = self.positions.pop(symbol, None) is not None
        if closed:
            self._changed(symbol)
        return closed

    def filled(self, trade: Trade) -> None:
        """Tell the trade watchers of a fill (the apply loop calls this)."""
        for watcher in self.trade_watchers:
            watcher(trade)

    def _changed(self, symbol: str) -> None:
        for watcher in self.position_watchers:
            watcher(symbol)

    def set_mark(self, symbol: str, price: float) -> None:
        """Move the mark price of `symbol` (its unrealised profit follows)."""
        self.marks[symbol] = price

    def mark(self, symbol: str) -> float:
        """The mark price of `symbol` (its entry price if never marked, else 0)."""
        if symbol in self.marks:
            return self.marks[symbol]
        position = self.positions.get(symbol)
        return position.entry_price if position else 0.0

    def unrealized_profit(self, symbol: str) -> float:
        """qty * (mark - entry) of the position in `symbol`; 0 when flat."""
        position = self.positions.get(symbol)
        if position is None:
            return 0.0
        return position.qty * (self.mark(symbol) - position.entry_price)

    def set_klines(self, symbol: str, klines: list[Kline]) -> None:
        """The candles `/fapi/v1/klines` serves for `symbol`, oldest first, as given."""
        self.klines[symbol] = list(klines)


# (growth per hour, wick as a fraction of price, noise as a fraction, alternating swing)
# chosen with wide margins around contract §4's thresholds.
_SHAPES: dict[Regime, tuple[float, float, float, float]] = {
    Regime.TREND_STRONG: (0.006, 0.001, 0.0005, 0.0),  # trend ≈ 0.08, ATR% ≈ 0.007
    Regime.BASE: (0.002, 0.001, 0.0005, 0.0),  # trend ≈ 0.03, ATR% ≈ 0.004
    Regime.CHOP: (0.0, 0.015, 0.003, 0.01),  # trend ≈ 0, ATR% ≈ 0.05
}


def synthetic_klines(
    regime: Regime,
    *,
    now_ms: int,
    count: int = 100,
    base_price: float = 100.0,
    seed: int = 0,
) -> list[Kline]:
    """Closed hourly candles, the last one closing before `now_ms`, that
    `rotation_fsm.core.regime.classify` classifies as `regime`.

    For UNKNOWN, fewer candles than `MIN_KLINES` (at most `count`). Same arguments,
    same candles. Raises ValueError if `count` is too small for a known regime.
    """
    if regime is Regime.UNKNOWN:
        count = min(count, MIN_KLINES - 1)
        shape = _SHAPES[Regime.BASE]
    elif count < MIN_KLINES:
        raise ValueError(f"{regime} needs at least {MIN_KLINES} klines, got {count}")
    else:
        shape = _SHAPES[regime]
    klines = _candles(shape, now_ms=now_ms, count=count, base_price=base_price, seed=seed)
    got = classify(klines).regime
    if got is not regime:  # a broken promise here would mislead every demo and test
        raise RuntimeError(f"synthetic {regime} klines classify as {got} (seed {seed})")
    return klines


def _candles(
    shape: tuple[float, float, float, float],
    *,
    now_ms: int,
    count: int,
    base_price: float,
    seed: int,
) -> list[Kline]:
    growth, wick, noise, swing = shape
    rng = random.Random(seed)
    last_open_ms = now_ms // HOUR_MS * HOUR_MS - HOUR_MS  # the last candle that has closed
    first_open_ms = last_open_ms - (count - 1) * HOUR_MS
    klines: list[Kline] = []
    prev_close = base_price
    for i in range(count):
        level = base_price * (1.0 + growth) ** i * (1.0 + swing * (1 if i % 2 else -1))
        close = level * (1.0 + noise * rng.uniform(-1.0, 1.0))
        high = max(prev_close, close) * (1.0 + wick * rng.uniform(0.5, 1.5))
        low = min(prev_close, close) * (1.0 - wick * rng.uniform(0.5, 1.5))
        open_ms = first_open_ms + i * HOUR_MS
        klines.append(Kline(open_ms, prev_close, high, low, close, open_ms + HOUR_MS - 1))
        prev_close = close
    return klines
