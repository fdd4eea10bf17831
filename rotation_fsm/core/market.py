"""What the exchange tells us, as plain data: positions, account, klines.

Pure: no I/O. The exchange adapter builds these from Binance answers; the core
and replay consume them.
"""

from __future__ import annotations

import msgspec

#: |positionAmt| at or below this is dust, not an open position (contract §2).
OPEN_QTY_EPSILON = 1e-8
#: a position older than this gets a weakness penalty (seed behaviour)
STALE_AGE_MS = 24 * 3600 * 1000
STALE_PENALTY = 0.05


class Position(msgspec.Struct, frozen=True, kw_only=True):
    """One open futures position, as `/fapi/v2/positionRisk` reports it."""

    symbol: str
    position_amt: float
    mark_price: float
    unrealized_profit: float
    update_time_ms: int

    @property
    def is_open(self) -> bool:
        return abs(self.position_amt) > OPEN_QTY_EPSILON

    @property
    def pnl_pct(self) -> float:
        """Unrealised profit as a fraction of notional; 0 when notional is 0."""
        notional = abs(self.position_amt) * self.mark_price
        if notional <= 0.0:
            return 0.0
        return self.unrealized_profit / notional

    def weakness(self, now_ms: int) -> float:
        """Higher is weaker: minus pnl% plus a penalty once the position is a day old."""
        penalty = STALE_PENALTY if now_ms - self.update_time_ms > STALE_AGE_MS else 0.0
        return -self.pnl_pct + penalty


class Account(msgspec.Struct, frozen=True, kw_only=True):
    """The two numbers of `/fapi/v2/account` the margin gate needs."""

    total_initial_margin: float
    total_margin_balance: float

    @property
    def margin_usage(self) -> float:
        """Initial margin / margin balance; an empty account counts as fully used."""
        if self.total_margin_balance <= 0.0:
            return float("inf") if self.total_initial_margin > 0.0 else 1.0
        return self.total_initial_margin / self.total_margin_balance


class Kline(msgspec.Struct, frozen=True, array_like=True):
    """One closed 1 h candle (open time, OHLC, close time), oldest first in lists."""

    open_time_ms: int
    open: float
    high: float
    low: float
    close: float
    close_time_ms: int
