"""Waiting out something that is down: one backoff schedule for every retry loop.

The schedule is redis-py's equal-jitter exponential backoff: the n-th wait lies
between half and all of min(cap, first × 2ⁿ), so replicas that failed together do
not come back together, and no retry follows another back to back.
"""

from __future__ import annotations

import asyncio
import contextlib

from redis.backoff import EqualJitterBackoff

#: past this many failures the wait is the cap anyway; 2ⁿ stays a float
_MAX_DOUBLINGS = 32


class Backoff:
    """The waits of one run of failures: `next_s()` after each, `reset()` once it works."""

    def __init__(self, first_s: float, cap_s: float) -> None:
        # the first wait lies between first_s / 2 and first_s
        self._schedule = EqualJitterBackoff(cap=cap_s, base=first_s)
        self.failures = 0

    def next_s(self) -> float:
        """Seconds to wait after one more failure."""
        wait_s = self._schedule.compute(min(self.failures, _MAX_DOUBLINGS))
        self.failures += 1
        return wait_s

    def reset(self) -> None:
        """It worked: the next failure starts the schedule again."""
        self.failures = 0


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds`, cut short when `stop` is set; True when stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()
