"""The paper exchange's request-weight accounting, as Binance does it per IP.

Each request's documented weight is added to the current minute's count (wall-clock
minutes, from the book's clock) and the count is sent back in `X-MBX-USED-WEIGHT-1M`.
Past `limit_per_min` the answer is 429 with `Retry-After` (seconds to the next
minute); a client that goes on sending while throttled (`violations_before_ban`
requests) is banned: 418 with `Retry-After` = `ban_s`, every request refused until
then. The limit is a setting so tests can make it small.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from ...runtime.weights import DEFAULT_LIMIT_PER_MIN, MINUTE_MS, request_weight


@dataclass
class PaperLimits:
    """Weight limits of one paper exchange (all its clients count as one IP)."""

    limit_per_min: int = DEFAULT_LIMIT_PER_MIN
    violations_before_ban: int = 3
    ban_s: float = 120.0
    minute: int = -1
    used: int = 0
    violations: int = 0
    banned_until_ms: int = 0
    throttled_until_ms: int = 0
    #: answers given, by status (200, 429, 418, ...)
    answers: Counter[int] = field(default_factory=Counter)
    #: weight used per finished minute (minute start ms, weight), oldest first
    history: list[tuple[int, int]] = field(default_factory=list)

    def admit(self, path: str, query: dict[str, str], now_ms: int) -> tuple[int, float] | None:
        """Count one request; None when it may be served, else (status, Retry-After s)."""
        self._roll(now_ms)
        if now_ms < self.banned_until_ms:
            return 418, (self.banned_until_ms - now_ms) / 1000
        if now_ms < self.throttled_until_ms:
            # Still throttled and still sending: Binance bans such a client.
            self.violations += 1
            if self.violations >= self.violations_before_ban:
                self.banned_until_ms = now_ms + int(self.ban_s * 1000)
                return 418, self.ban_s
            return 429, (self.throttled_until_ms - now_ms) / 1000
        try:
            weight = request_weight(path, query)
        except ValueError:
            weight = 1
        if self.used + weight > self.limit_per_min:
            self.throttled_until_ms = (self.minute + 1) * MINUTE_MS
            self.violations += 1
            return 429, (self.throttled_until_ms - now_ms) / 1000
        self.used += weight
        return None

    def _roll(self, now_ms: int) -> None:
        minute = now_ms // MINUTE_MS
        if minute != self.minute:
            if self.minute >= 0:
                self.history.append((self.minute * MINUTE_MS, self.used))
            self.minute, self.used = minute, 0
            if now_ms >= self.throttled_until_ms:
                self.violations = 0


def retry_after_text(seconds: float) -> str:
    """Retry-After as Binance sends it: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
