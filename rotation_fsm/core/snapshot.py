"""What one batch was decided on: positions, account, regime readings, correlations.

Pure. The shell builds a `Market` from exchange answers with `build_market`;
the audit stream records it as it is, and replay feeds it back to the core —
so it holds the *numbers* the decision used (regime readings, correlations),
not the 100 raw klines per symbol they came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property

import msgspec

from .market import Account, Kline, Position
from .regime import RegimeReading, classify, correlation


class Market(msgspec.Struct, kw_only=True, dict=True):
    """One batch's view of the exchange.

    `positions` is None when they could not be had (fail closed); `account`
    likewise. `readings` holds the regime of each plan symbol; `correlations`
    maps a plan symbol to each other open symbol's correlation (None: no
    variance or too little data). `klines_missing` lists symbols whose klines
    could not be fetched at all.

    `as_of_ms` is the local wall-clock time up to which the view is known to hold
    everything the exchange did: the start of the REST request it came from (an
    answer may be computed any time after the request was sent, never before).
    `seen_ms[s]` is when the view last learnt, from the exchange's own push, that
    symbol `s` is open. A view never proves a fill it is not as of (`shows_after`):
    that is what keeps a filled entry's slot counted until the view catches up.
    """

    positions: list[Position] | None = None
    positions_error: str = ""
    account: Account | None = None
    account_error: str = ""
    readings: dict[str, RegimeReading] = msgspec.field(default_factory=dict)
    correlations: dict[str, dict[str, float | None]] = msgspec.field(default_factory=dict)
    klines_missing: list[str] = msgspec.field(default_factory=list)
    as_of_ms: int = 0
    seen_ms: dict[str, int] = msgspec.field(default_factory=dict)
    # The live account view's word: `stale` when its last good snapshot is too old
    # (and the stream down), `view` naming the snapshot and stream event decided on.
    stale: bool = False
    view: str = ""

    def shows_after(self, symbol: str, moment_ms: int) -> bool:
        """True when this view is known to include what the exchange held for
        `symbol` at `moment_ms` (local clock): as of then or later."""
        if self.positions is None:
            return False
        return max(self.as_of_ms, self.seen_ms.get(symbol, 0)) >= moment_ms

    def reading(self, symbol: str) -> RegimeReading:
        """The regime of `symbol`; UNKNOWN when nothing was read for it."""
        found = self.readings.get(symbol)
        return found if found is not None else classify([])

    @cached_property  # asked for by every OPEN plan of a batch (`dict=True` keeps it)
    def open_symbols(self) -> frozenset[str]:
        return frozenset(p.symbol for p in self.positions or [])


def build_market(
    positions: list[Position] | None,
    account: Account | None,
    klines: Mapping[str, Sequence[Kline] | None],
    plan_symbols: Iterable[str],
    *,
    positions_error: str = "",
    account_error: str = "",
    as_of_ms: int = 0,
    seen_ms: Mapping[str, int] | None = None,
) -> Market:
    """The numbers the core needs, computed once per batch from raw answers.

    `klines[s]` None means fetching failed for `s`.
    """
    open_symbols = sorted({p.symbol for p in positions or []})
    readings: dict[str, RegimeReading] = {}
    correlations: dict[str, dict[str, float | None]] = {}
    for symbol in sorted(set(plan_symbols)):
        own = klines.get(symbol)
        readings[symbol] = classify(own or [])
        if own is None:
            continue
        row: dict[str, float | None] = {}
        for other in open_symbols:
            theirs = klines.get(other)
            if other != symbol and theirs is not None:
                row[other] = correlation(own, theirs)
        correlations[symbol] = row
    return Market(
        positions=positions,
        positions_error=positions_error,
        account=account,
        account_error=account_error,
        readings=readings,
        correlations=correlations,
        klines_missing=sorted(s for s, v in klines.items() if v is None),
        as_of_ms=as_of_ms,
        seen_ms=dict(seen_ms or {}),
    )
