"""Market regime from 1 h klines (contract §4) and return correlation (§5). Pure.

We compute what the contract names: a real exponential moving average (pandas
``ewm(span=N, adjust=False)``) and Wilder's ATR — not the seed's plain means of
closes and of high-low, which the seed only *called* EMA and ATR.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from enum import StrEnum

import msgspec

from .market import Kline

#: fewer closed klines than this and the regime is UNKNOWN (CHOP slots)
MIN_KLINES = 50
#: the regime is read from at most this many of the newest klines (contract §4)
WINDOW = 100
EMA_FAST = 20
EMA_SLOW = 50
ATR_PERIOD = 14
HOUR_MS = 3_600_000

TREND_STRONG_MIN_TREND = 0.05
TREND_STRONG_MAX_ATR_PCT = 0.02
CHOP_MIN_ATR_PCT = 0.03
CHOP_MAX_TREND = 0.01

#: fewer aligned returns than this and a correlation means nothing
MIN_RETURNS = 3


class Regime(StrEnum):
    BASE = "BASE"
    TREND_STRONG = "TREND_STRONG"
    CHOP = "CHOP"
    UNKNOWN = "UNKNOWN"


class RegimeReading(msgspec.Struct, frozen=True, kw_only=True):
    """A classification and the numbers it was made from (None when UNKNOWN)."""

    regime: Regime
    ema20: float | None
    ema50: float | None
    trend: float | None
    atr_pct: float | None
    klines: int


def ema_last(values: Sequence[float], span: int) -> float:
    """The last value of the EMA of `values` with alpha = 2/(span+1), seeded with the first.

    Matches pandas ``Series.ewm(span=span, adjust=False).mean().iloc[-1]``.
    Raises ValueError on an empty series or a span below 1.
    """
    if span < 1:
        raise ValueError(f"EMA span must be at least 1, got {span}")
    if not values:
        raise ValueError("EMA of an empty series")
    alpha = 2.0 / (span + 1)
    ema = values[0]
    for value in values[1:]:
        ema = alpha * value + (1.0 - alpha) * ema
    return ema


def true_ranges(klines: Sequence[Kline]) -> list[float]:
    """TR of every candle; the first, having no previous close, is its high - low."""
    if not klines:
        return []
    ranges = [klines[0].high - klines[0].low]
    for prev, k in itertools.pairwise(klines):
        ranges.append(max(k.high - k.low, abs(k.high - prev.close), abs(k.low - prev.close)))
    return ranges


def wilder_atr(klines: Sequence[Kline], period: int = ATR_PERIOD) -> float:
    """Wilder's ATR at the last candle.

    Seeded with the mean of the first `period` true ranges (the first of them being
    the first candle's high - low, see `true_ranges`), then
    ``ATR_t = ((period - 1)·ATR_{t-1} + TR_t) / period`` — for 14: ``(13·ATR + TR)/14``.
    Raises ValueError with fewer than `period` candles or a period below 1.
    """
    if period < 1:
        raise ValueError(f"ATR period must be at least 1, got {period}")
    ranges = true_ranges(klines)
    if len(ranges) < period:
        raise ValueError(f"ATR{period} needs {period} klines, got {len(ranges)}")
    atr = sum(ranges[:period]) / period
    for tr in ranges[period:]:
        atr = ((period - 1) * atr + tr) / period
    return atr


def _sane(k: Kline) -> bool:
    prices = (k.open, k.high, k.low, k.close)
    return all(math.isfinite(p) and p > 0.0 for p in prices) and k.high >= k.low


def _unknown(count: int) -> RegimeReading:
    return RegimeReading(
        regime=Regime.UNKNOWN, ema20=None, ema50=None, trend=None, atr_pct=None, klines=count
    )


def _label(trend: float, atr_pct: float) -> Regime:
    if trend > TREND_STRONG_MIN_TREND and atr_pct < TREND_STRONG_MAX_ATR_PCT:
        return Regime.TREND_STRONG
    if atr_pct > CHOP_MIN_ATR_PCT or trend < CHOP_MAX_TREND:
        return Regime.CHOP
    return Regime.BASE


def classify(klines: Sequence[Kline]) -> RegimeReading:
    """The regime of the newest `WINDOW` klines (oldest first), exactly as contract §4.

    UNKNOWN, with no numbers, when there are fewer than `MIN_KLINES` klines, when a
    candle has a non-finite or non-positive price or a high below its low, or when
    the numbers cannot be computed finitely. Never raises on a list of Klines.
    """
    window = list(klines[-WINDOW:])
    if len(window) < MIN_KLINES or not all(_sane(k) for k in window):
        return _unknown(len(window))
    closes = [k.close for k in window]
    ema20 = ema_last(closes, EMA_FAST)
    ema50 = ema_last(closes, EMA_SLOW)
    atr = wilder_atr(window, ATR_PERIOD)
    # Extreme (but finite) inputs can overflow a sum or underflow an EMA to 0:
    # no trustworthy number, so no more slots than UNKNOWN gives.
    if not (math.isfinite(ema20) and math.isfinite(ema50) and math.isfinite(atr)) or ema50 <= 0:
        return _unknown(len(window))
    trend = abs(ema20 - ema50) / ema50
    atr_pct = atr / closes[-1]
    if not (math.isfinite(trend) and math.isfinite(atr_pct)):
        return _unknown(len(window))
    return RegimeReading(
        regime=_label(trend, atr_pct),
        ema20=ema20,
        ema50=ema50,
        trend=trend,
        atr_pct=atr_pct,
        klines=len(window),
    )


def _hourly_log_returns(a: Sequence[Kline], b: Sequence[Kline]) -> tuple[list[float], list[float]]:
    """Log returns of both series over the same hours: only candles both have, and only
    pairs exactly one hour apart (a return across a missing candle is not a 1 h return)."""
    closes_a = {k.open_time_ms: k.close for k in a}
    closes_b = {k.open_time_ms: k.close for k in b}
    common = closes_a.keys() & closes_b.keys()
    returns_a: list[float] = []
    returns_b: list[float] = []
    for t in sorted(common):
        if t + HOUR_MS not in common:
            continue
        # log(x) - log(y), not log(x / y): the ratio of extreme prices can underflow to 0.
        returns_a.append(math.log(closes_a[t + HOUR_MS]) - math.log(closes_a[t]))
        returns_b.append(math.log(closes_b[t + HOUR_MS]) - math.log(closes_b[t]))
    return returns_a, returns_b


def correlation(a: Sequence[Kline], b: Sequence[Kline]) -> float | None:
    """Pearson correlation of the 1 h log returns of `a` and `b`, aligned by open time.

    None — "no correlation", which never blocks — when fewer than `MIN_RETURNS`
    common returns exist, when either side has no variance, or when a close is not a
    finite positive number (a log return of it does not exist).
    """
    closes = [k.close for k in (*a, *b)]
    if not all(math.isfinite(c) and c > 0.0 for c in closes):
        return None
    ra, rb = _hourly_log_returns(a, b)
    if len(ra) < MIN_RETURNS:
        return None
    mean_a = sum(ra) / len(ra)
    mean_b = sum(rb) / len(rb)
    da = [x - mean_a for x in ra]
    db = [y - mean_b for y in rb]
    var_a = sum(x * x for x in da)
    var_b = sum(y * y for y in db)
    if var_a == 0.0 or var_b == 0.0:
        return None
    value = sum(x * y for x, y in zip(da, db, strict=True)) / (math.sqrt(var_a) * math.sqrt(var_b))
    if not math.isfinite(value):
        return None
    # Rounding can put a perfect correlation a hair outside [-1, 1].
    return max(-1.0, min(1.0, value))
