"""Message and market stubs for tests: one place builds them."""

from __future__ import annotations

from typing import Any

from rotation_fsm.core.decide import Market
from rotation_fsm.core.market import Account, Kline, Position
from rotation_fsm.core.messages import Plan, Result
from rotation_fsm.core.settings import Rules

NOW_MS = 1_770_135_000_000
HOUR_MS = 3_600_000
UNIVERSE = [
    "BTCUSDT",
    "ETHUSDT",
    "SOLUSDT",
    "XRPUSDT",
    "ADAUSDT",
    "DOGEUSDT",
    "NEWUSDT",
    "BNBUSDT",
    "AVAXUSDT",
    "LINKUSDT",
]


def plan(plan_id: str = "a1b2c3d4e5f67890", symbol: str = "NEWUSDT", **extra: Any) -> Plan:
    fields = {
        "plan_id": plan_id,
        "symbol": symbol,
        "decision": "EXECUTE",
        "action": "OPEN_LONG",
        "side": "BUY",
        "qty": 0.1,
        **extra,
    }
    return Plan(**fields)


def plan_fields(
    plan_id: str = "a1b2c3d4e5f67890", symbol: str = "NEWUSDT", **extra: str
) -> dict[str, str]:
    """A plan as the intent bridge writes it to the stream: all strings."""
    return {
        "plan_id": plan_id,
        "symbol": symbol,
        "decision": "EXECUTE",
        "action": "OPEN_LONG",
        "side": "BUY",
        "qty": "0.1",
        "timestamp": "1770135000.0",
        **extra,
    }


def result(
    plan_id: str, *, executed: bool = True, reduce_only: bool = True, symbol: str = "OLDUSDT"
) -> Result:
    return Result(plan_id=plan_id, symbol=symbol, executed=executed, reduce_only=reduce_only)


def result_fields(
    plan_id: str, *, executed: bool = True, reduce_only: bool = True, symbol: str = "OLDUSDT"
) -> dict[str, str]:
    return {
        "plan_id": plan_id,
        "symbol": symbol,
        "executed": str(executed).lower(),
        "reduceOnly": str(reduce_only).lower(),
        "timestamp": "1770135150.0",
    }


def position(
    symbol: str, pnl_pct: float = 0.0, *, age_h: float = 1.0, now_ms: int = NOW_MS
) -> Position:
    """An open position of notional 1000 with the given pnl fraction."""
    return Position(
        symbol=symbol,
        position_amt=10.0,
        mark_price=100.0,
        unrealized_profit=pnl_pct * 1000.0,
        update_time_ms=now_ms - int(age_h * HOUR_MS),
    )


def market(*positions: Position, usage: float = 0.1, **kw: Any) -> Market:
    return Market(
        positions=list(positions),
        account=Account(total_initial_margin=usage * 1000, total_margin_balance=1000),
        **kw,
    )


def exchange_down() -> Market:
    """A snapshot where the exchange answered nothing usable."""
    return Market(positions=None, positions_error="HTTP 500")


def rules(**kw: Any) -> Rules:
    """Rules with the correlation gate off (unit tests give no klines) unless asked."""
    return Rules(**{"max_correlation": 1.0, **kw})


def book_of(n: int) -> list[Position]:
    """n open positions, the i-th with pnl −i % (so the last is the weakest)."""
    names = [s for s in UNIVERSE if s != "NEWUSDT"]
    return [position(names[i], -0.01 * i) for i in range(n)]


class StubExchange:
    """An exchange answering `positions` (none by default), a calm account and no
    klines (regime UNKNOWN)."""

    def __init__(self, positions: list[Position] | None = None) -> None:
        self._positions = positions or []

    async def positions(self) -> list[Position]:
        return self._positions

    async def account(self) -> Account:
        return Account(total_initial_margin=0.0, total_margin_balance=1000.0)

    async def klines(self, symbol: str) -> list[Kline]:
        return []
