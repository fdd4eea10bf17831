"""The request-weight budget: one per process, shared by every REST call to the exchange.

Binance USDⓈ-M futures count request weight per IP in one-minute windows (2,400 by
default) and answer 429 past it, then ban the IP (418, two minutes up to three days)
when the client keeps going. Several processes often share an IP, so a process keeps
to a share of the limit (half by default). The budget counts each call's documented
weight before it is sent, reads `X-MBX-USED-WEIGHT-1M` from every answer (the
exchange's own count wins when it is higher), holds every call back until a 429's
`Retry-After` has passed, and refuses every call until a 418 ban ends.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..core.errors import RotationFsmError

MINUTE_MS = 60_000
#: Binance's per-IP request-weight limit per minute (USDⓈ-M futures)
DEFAULT_LIMIT_PER_MIN = 2400
#: the part of the limit one process keeps to
DEFAULT_SHARE = 0.5
#: a 418 without a Retry-After is taken for Binance's shortest ban
DEFAULT_BAN_S = 120.0
#: a 429 without a Retry-After holds calls back this long
DEFAULT_BACKOFF_S = 1.0
#: minutes of used weight kept for /readyz and the benchmark
HISTORY_MINUTES = 15

# Binance's documented weights (GET unless said); klines depend on `limit`.
PATH_WEIGHTS: dict[str, int] = {
    "/fapi/v2/positionRisk": 5,
    "/fapi/v3/positionRisk": 5,
    "/fapi/v2/account": 5,
    "/fapi/v3/account": 5,
    "/fapi/v1/listenKey": 1,
    "/fapi/v1/time": 1,
}
KLINES_PATH = "/fapi/v1/klines"


def klines_weight(limit: int) -> int:
    """Binance's weight of a klines call asking for `limit` candles."""
    if limit < 100:
        return 1
    if limit < 500:
        return 2
    if limit <= 1000:
        return 5
    return 10


def request_weight(path: str, params: Mapping[str, str] | None = None) -> int:
    """The weight Binance charges for one call of `path` with `params` (unknown: 1)."""
    if path == KLINES_PATH:
        return klines_weight(int((params or {}).get("limit", "500")))
    return PATH_WEIGHTS.get(path, 1)


class RateLimited(RotationFsmError):
    """No call may be sent now: the budget is spent, a 429 is being waited out, or
    the IP is banned. `until_ms` is when calls may go again (wall clock)."""

    def __init__(self, reason: str, until_ms: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.until_ms = until_ms


def _wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class WeightCounts:
    """What the budget saw since the process started."""

    requests: int = 0
    weight: int = 0
    throttled: int = 0  # answers 429
    banned: int = 0  # answers 418
    refused: int = 0  # calls the budget did not let out


class WeightBudget:
    """Request weight for every REST call of one process (see the module docstring).

    `acquire(weight)` is called before a request is sent, `observe(...)` with its
    answer. The minute windows follow the wall clock, as Binance's do.
    """

    def __init__(
        self,
        limit_per_min: int = DEFAULT_LIMIT_PER_MIN,
        share: float = DEFAULT_SHARE,
        *,
        clock_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        if limit_per_min < 1 or not 0.0 < share <= 1.0:
            raise ValueError(f"limit {limit_per_min} and share {share} must be > 0")
        self.limit_per_min = limit_per_min
        self.share = share
        self.budget_per_min = max(1, int(limit_per_min * share))
        self._clock_ms = clock_ms
        self._minute = clock_ms() // MINUTE_MS
        self._sent = 0  # weight this process sent this minute
        self._reported = 0  # the exchange's count for this minute (whole IP)
        self.blocked_until_ms = 0
        self.block_reason = ""
        self.counts = WeightCounts()
        #: (minute start ms, weight used) of finished minutes, newest last
        self.history: deque[tuple[int, int]] = deque(maxlen=HISTORY_MINUTES)

    # ---------------------------------------------------------------- reading

    @property
    def used_1m(self) -> int:
        """Weight used in the current minute: ours, or the exchange's count if higher."""
        self._roll()
        return max(self._sent, self._reported)

    @property
    def banned(self) -> bool:
        """A 418 ban is in force."""
        return self.block_reason.startswith("banned") and self._clock_ms() < self.blocked_until_ms

    def state(self) -> dict[str, object]:
        """A summary for /readyz, the console and the log."""
        now = self._clock_ms()
        return {
            "used_1m": self.used_1m,
            "budget_1m": self.budget_per_min,
            "limit_1m": self.limit_per_min,
            "blocked_for_ms": max(0, self.blocked_until_ms - now),
            "blocked_reason": self.block_reason if now < self.blocked_until_ms else "",
            "requests": self.counts.requests,
            "weight_total": self.counts.weight,
            "answers_429": self.counts.throttled,
            "answers_418": self.counts.banned,
            "refused": self.counts.refused,
        }

    # ---------------------------------------------------------------- sending

    def try_acquire(self, weight: int) -> None:
        """Count `weight` for a call about to be sent; RateLimited when it may not go."""
        now = self._clock_ms()
        self._roll(now)
        if now < self.blocked_until_ms:
            self.counts.refused += 1
            raise RateLimited(self.block_reason, self.blocked_until_ms)
        if max(self._sent, self._reported) + weight > self.budget_per_min:
            self.counts.refused += 1
            next_minute = (self._minute + 1) * MINUTE_MS
            raise RateLimited(
                f"request weight budget spent ({self.used_1m}/{self.budget_per_min} this minute)",
                next_minute,
            )
        self._sent += weight
        self._reported += weight  # the exchange will count it too
        self.counts.requests += 1
        self.counts.weight += weight

    async def acquire(self, weight: int, max_wait_s: float) -> None:
        """Like `try_acquire`, waiting up to `max_wait_s` for the budget to allow it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait_s
        while True:
            try:
                self.try_acquire(weight)
                return
            except RateLimited as limited:
                wait_s = (limited.until_ms - self._clock_ms()) / 1000
                if loop.time() + wait_s > deadline:
                    raise
                self.counts.refused -= 1  # it will go, later
            await asyncio.sleep(max(0.001, wait_s))

    def refund(self, weight: int) -> None:
        """Give back the weight of a call that never reached the exchange (no connection)."""
        self._sent = max(0, self._sent - weight)
        self._reported = max(0, self._reported - weight)
        self.counts.weight -= weight

    def observe(self, status: int, used_header: str | None, retry_after_s: float | None) -> None:
        """Learn from an answer: the exchange's weight count, a 429 or a 418."""
        now = self._clock_ms()
        self._roll(now)
        if used_header is not None:
            try:
                reported = int(used_header)
            except ValueError:
                reported = -1
            if reported >= 0:
                self._reported = reported
        if status == 429:
            self.counts.throttled += 1
            wait_s = DEFAULT_BACKOFF_S if retry_after_s is None else retry_after_s
            self._block(now + int(wait_s * 1000), "throttled (HTTP 429): waiting out Retry-After")
        elif status == 418:
            self.counts.banned += 1
            wait_s = DEFAULT_BAN_S if retry_after_s is None else retry_after_s
            self._block(now + int(wait_s * 1000), "banned (HTTP 418): no REST until the ban ends")

    def _block(self, until_ms: int, reason: str) -> None:
        if until_ms >= self.blocked_until_ms or self._clock_ms() >= self.blocked_until_ms:
            self.blocked_until_ms = until_ms
            self.block_reason = reason

    def _roll(self, now_ms: int | None = None) -> None:
        minute = (self._clock_ms() if now_ms is None else now_ms) // MINUTE_MS
        if minute != self._minute:
            self.history.append((self._minute * MINUTE_MS, max(self._sent, self._reported)))
            self._minute, self._sent, self._reported = minute, 0, 0
