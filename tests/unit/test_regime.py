"""Regime maths (contract §4) and return correlation (§5), against hand-computed values."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rotation_fsm.core.market import Kline
from rotation_fsm.core.regime import (
    HOUR_MS,
    MIN_KLINES,
    WINDOW,
    Regime,
    classify,
    correlation,
    ema_last,
    wilder_atr,
)

T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS  # an hour boundary


def candle(i: int, o: float, h: float, low: float, c: float) -> Kline:
    """The i-th hourly candle from T0."""
    start = T0 + i * HOUR_MS
    return Kline(start, o, h, low, c, start + HOUR_MS - 1)


def series(closes: list[float], *, spread: float, start: int = 0) -> list[Kline]:
    """Candles opening at the previous close, wicks `spread` (a fraction) beyond the body."""
    out = []
    prev = closes[0]
    for i, c in enumerate(closes):
        out.append(
            candle(start + i, prev, max(prev, c) * (1 + spread), min(prev, c) * (1 - spread), c)
        )
        prev = c
    return out


def growth(n: int, rate: float, base: float = 100.0) -> list[float]:
    return [base * (1 + rate) ** i for i in range(n)]


def closes_at(closes: list[float], start: int = 0) -> list[Kline]:
    """Flat candles (o = h = l = c) carrying just these closes."""
    return [candle(start + i, c, c, c, c) for i, c in enumerate(closes)]


# ------------------------------------------------------------------ EMA


def test_ema_matches_a_hand_computed_series():
    # span 3 → alpha 0.5: 1 → 1.5 → 2.25 → 5.125
    assert ema_last([1.0, 2.0, 3.0, 8.0], 3) == pytest.approx(5.125)


def test_ema_is_seeded_with_the_first_value_not_a_mean():
    # alpha = 2/21; after one step: 10 + (2/21)·(20 - 10)
    assert ema_last([10.0, 20.0], 20) == pytest.approx(10.0 + 20.0 / 21.0)


def test_ema_of_span_one_is_the_last_value():
    assert ema_last([5.0, 7.0, 11.0], 1) == 11.0


def test_ema_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        ema_last([], 20)


# ------------------------------------------------------------------ ATR

# TRs: 2 (first: high - low), 3 (|high - prev close|), 1 (|low - prev close|),
# 4 (high - low), 5 (gap down: |low - prev close|)
ATR_CANDLES = [
    candle(0, 9.0, 10.0, 8.0, 9.0),
    candle(1, 9.0, 11.0, 9.0, 10.0),  # TR = max(2, 2, 0) = 2
    candle(2, 10.0, 13.0, 10.5, 12.0),  # TR = max(2.5, 3, 0.5) = 3
    candle(3, 12.0, 12.0, 11.0, 11.5),  # TR = max(1, 0, 1) = 1
    candle(4, 11.5, 15.0, 11.0, 14.0),  # TR = max(4, 3.5, 0.5) = 4
    candle(5, 14.0, 10.0, 9.0, 9.5),  # TR = max(1, 4, 5) = 5
]


def test_wilder_atr_matches_a_hand_computed_series():
    # TRs 2, 2, 3, 1, 4, 5; period 3: seed (2+2+3)/3 = 7/3, then
    # (2·7/3 + 1)/3 = 17/9, (2·17/9 + 4)/3 = 70/27, (2·70/27 + 5)/3 = 275/81
    assert wilder_atr(ATR_CANDLES, 3) == pytest.approx(275 / 81)


def test_wilder_atr_with_exactly_period_candles_is_the_seed_mean():
    assert wilder_atr(ATR_CANDLES[:3], 3) == pytest.approx(7 / 3)


def test_wilder_atr_default_period_is_14():
    # 14 TRs of 1, then one of 15: (13·1 + 15)/14 = 2
    flat = [candle(i, 100.0, 100.5, 99.5, 100.0) for i in range(14)]
    spike = candle(14, 100.0, 115.0, 100.0, 110.0)
    assert wilder_atr([*flat, spike]) == pytest.approx(2.0)


def test_wilder_atr_needs_period_candles():
    with pytest.raises(ValueError, match="needs 3"):
        wilder_atr(ATR_CANDLES[:2], 3)


# ------------------------------------------------------------------ classify


def test_steady_uptrend_with_tight_candles_is_trend_strong():
    reading = classify(series(growth(100, 0.006), spread=0.001))
    assert reading.regime is Regime.TREND_STRONG
    assert reading.trend is not None and reading.trend > 0.05
    assert reading.atr_pct is not None and reading.atr_pct < 0.02


def test_wide_candles_are_chop_even_with_a_trend():
    reading = classify(series(growth(100, 0.004), spread=0.02))
    assert reading.regime is Regime.CHOP
    assert reading.trend is not None and reading.trend >= 0.01  # not chop by trend
    assert reading.atr_pct is not None and reading.atr_pct > 0.03


def test_a_flat_market_with_tight_candles_is_chop_by_low_trend():
    closes = [100.0 + (0.2 if i % 2 else -0.2) for i in range(100)]
    reading = classify(series(closes, spread=0.001))
    assert reading.regime is Regime.CHOP
    assert reading.trend is not None and reading.trend < 0.01
    assert reading.atr_pct is not None and reading.atr_pct <= 0.03  # not chop by ATR


def test_a_moderate_trend_is_base():
    reading = classify(series(growth(100, 0.002), spread=0.001))
    assert reading.regime is Regime.BASE
    assert reading.trend is not None and 0.01 <= reading.trend <= 0.05
    assert reading.atr_pct is not None and reading.atr_pct <= 0.03


def test_a_strong_trend_with_middling_atr_is_base_not_trend_strong():
    # trend > 0.05 but 0.02 ≤ ATR% ≤ 0.03: neither TREND_STRONG nor CHOP
    reading = classify(series(growth(100, 0.006), spread=0.01))
    assert reading.trend is not None and reading.trend > 0.05
    assert reading.atr_pct is not None and 0.02 <= reading.atr_pct <= 0.03
    assert reading.regime is Regime.BASE


def test_the_reading_carries_the_numbers_it_was_made_from():
    klines = series(growth(100, 0.006), spread=0.001)
    closes = [k.close for k in klines]
    reading = classify(klines)
    assert reading.ema20 == pytest.approx(ema_last(closes, 20))
    assert reading.ema50 == pytest.approx(ema_last(closes, 50))
    assert reading.trend == pytest.approx(abs(reading.ema20 - reading.ema50) / reading.ema50)
    assert reading.atr_pct == pytest.approx(wilder_atr(klines, 14) / closes[-1])
    assert reading.klines == 100


def test_49_klines_are_unknown_with_no_numbers():
    reading = classify(series(growth(MIN_KLINES - 1, 0.006), spread=0.001))
    assert reading.regime is Regime.UNKNOWN
    assert (reading.ema20, reading.ema50, reading.trend, reading.atr_pct) == (None,) * 4
    assert reading.klines == 49


def test_50_klines_are_enough():
    assert classify(series(growth(MIN_KLINES, 0.006), spread=0.001)).regime is not Regime.UNKNOWN


def test_no_klines_are_unknown():
    assert classify([]).regime is Regime.UNKNOWN


def test_only_the_newest_100_klines_count():
    # 50 wild candles before a clean uptrend: they are outside the window
    wild = series([100.0 * (3 if i % 2 else 1) for i in range(50)], spread=0.5)
    clean = series(growth(WINDOW, 0.006), spread=0.001, start=50)
    reading = classify([*wild, *clean])
    assert reading == classify(clean)
    assert reading.regime is Regime.TREND_STRONG


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_a_bad_price_makes_the_regime_unknown(bad: float):
    klines = series(growth(100, 0.006), spread=0.001)
    last = klines[-1]
    klines[-1] = Kline(last.open_time_ms, last.open, last.high, last.low, bad, last.close_time_ms)
    assert classify(klines).regime is Regime.UNKNOWN


def test_a_candle_with_high_below_low_makes_the_regime_unknown():
    klines = series(growth(100, 0.006), spread=0.001)
    k = klines[10]
    klines[10] = Kline(k.open_time_ms, k.open, k.low, k.high, k.close, k.close_time_ms)
    assert classify(klines).regime is Regime.UNKNOWN


positive = st.floats(min_value=0.0, exclude_min=True, allow_nan=False, allow_infinity=False)


@st.composite
def ohlc_series(draw: st.DrawFn) -> list[Kline]:
    n = draw(st.integers(min_value=0, max_value=120))
    out = []
    for i in range(n):
        o, h, low, c = (draw(positive) for _ in range(4))
        out.append(candle(i, o, h, low, c))
    return out


@given(ohlc_series())
def test_classify_never_raises_on_finite_positive_prices(klines: list[Kline]):
    reading = classify(klines)
    if reading.regime is not Regime.UNKNOWN:
        assert reading.trend is not None and math.isfinite(reading.trend)
        assert reading.atr_pct is not None and math.isfinite(reading.atr_pct)


# ------------------------------------------------------------------ correlation

WAVE = [100.0 * math.exp(0.01 * math.sin(i * 1.3) + 0.002 * i) for i in range(30)]


def test_a_series_correlates_perfectly_with_itself():
    assert correlation(closes_at(WAVE), closes_at(WAVE)) == pytest.approx(1.0)


def test_negated_returns_correlate_minus_one():
    inverse = [1.0 / c for c in WAVE]  # log(1/x) returns are the negated log(x) returns
    assert correlation(closes_at(WAVE), closes_at(inverse)) == pytest.approx(-1.0)


def test_scaled_prices_have_the_same_returns():
    assert correlation(closes_at(WAVE), closes_at([7.0 * c for c in WAVE])) == pytest.approx(1.0)


def test_a_flat_series_has_no_correlation():
    assert correlation(closes_at(WAVE), closes_at([50.0] * 30)) is None


def test_candles_are_aligned_by_open_time():
    # b starts 10 hours later; on the common hours it is a's prices times 3, after
    # them it is noise. Pairing candles by index instead of time would break both.
    a = closes_at(WAVE)
    b = closes_at([3.0 * c for c in WAVE[10:]] + [1.0, 500.0, 2.0, 900.0], start=10)
    assert correlation(a, b) == pytest.approx(1.0)
    assert correlation(b, a) == pytest.approx(1.0)


def test_returns_never_span_a_missing_candle():
    # b lacks hour 5: a return from hour 4 to 6 would be a 2 h return. b's prices after
    # the gap are rescaled so that spanning the gap would show a huge return.
    a = closes_at(WAVE)
    b = closes_at(WAVE[:5]) + closes_at([10.0 * c for c in WAVE[6:]], start=6)
    assert correlation(a, b) == pytest.approx(1.0)


def test_fewer_than_three_common_returns_have_no_correlation():
    a = closes_at(WAVE)
    assert correlation(a, closes_at(WAVE[27:], start=27)) is None  # hours 27..29: 2 returns
    assert correlation(a, closes_at(WAVE[26:], start=26)) == pytest.approx(1.0)  # 3 returns


def test_series_without_common_hours_have_no_correlation():
    assert correlation(closes_at(WAVE), closes_at(WAVE, start=100)) is None


def test_a_non_positive_close_has_no_correlation():
    bad = [*WAVE[:10], 0.0, *WAVE[11:]]
    assert correlation(closes_at(WAVE), closes_at(bad)) is None
