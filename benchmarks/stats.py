"""Figures of a benchmark run: repeated values, their median/min/max, targets, ratios.

A `Figure` is one row of the table. It holds every repetition's value so the
median, min and max are computed in one place, and knows its target (a bound
and a direction) so "met?" is never judged by hand.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Target:
    """A bound a figure should stay on the right side of: `at_least` or at most."""

    value: float
    at_least: bool

    def met(self, measured: float) -> bool:
        """True when `measured` is on the right side of the bound."""
        return measured >= self.value if self.at_least else measured <= self.value

    def text(self, unit: str) -> str:
        """`≥ 25,000 plans/s`, `≤ 5 ms`."""
        sign = "≥" if self.at_least else "≤"
        return f"{sign} {fmt(self.value)} {unit}".rstrip()


def at_least(value: float) -> Target:
    """A lower bound (throughputs)."""
    return Target(value, at_least=True)


def at_most(value: float) -> Target:
    """An upper bound (latencies, memory)."""
    return Target(value, at_least=False)


@dataclass
class Figure:
    """One row of the table: a measured quantity over several repetitions.

    `throughput` marks rows that are also shown as a ratio to the raw Redis bound
    of the same run. `note` says anything a reader must know to trust the number
    (e.g. that some rotations had not fired when the clock stopped).
    """

    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    target: Target | None = None
    throughput: bool = False
    ratio_target: Target | None = None
    note: str = ""

    @property
    def measured(self) -> bool:
        return bool(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else math.nan

    @property
    def low(self) -> float:
        return min(self.values) if self.values else math.nan

    @property
    def high(self) -> float:
        return max(self.values) if self.values else math.nan

    def met(self) -> bool | None:
        """Whether the median meets the target; None when there is no target or no value."""
        if self.target is None or not self.values:
            return None
        return self.target.met(self.median)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0–100) by the nearest-rank method; NaN for no values.

    Nearest rank never invents a value between two samples: p99.9 of 10,000
    samples is the 9,990th smallest, a latency that really happened.
    """
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def fmt(value: float) -> str:
    """A number for the table: thousands separated, precision by magnitude."""
    if math.isnan(value):
        return "—"
    if math.isinf(value):
        return "∞"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:,.1f}"
    return f"{value:,.2f}"
