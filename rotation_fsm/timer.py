"""Deadlines → `Tick` inputs. Not key expiry: the deadline index is a sorted set.

The seed timed rotations out by checking a lock key that had already expired,
so its timeout never fired. Here a task scans `deadlines` every `interval_s`
(default 0.1 s) and hands overdue rotations to the engine, whose guarded commit
makes sure exactly one replica fires each timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from .decide import Tick
from .engine import BookEngine, wall_ms
from .keys import Keys
from .store import AnyRedis

log = logging.getLogger("rotation_fsm.timer")


class Timer:
    """Fires the timeouts of one book."""

    def __init__(
        self,
        redis: AnyRedis,
        engine: BookEngine,
        keys: Keys,
        *,
        interval_s: float = 0.1,
        batch: int = 500,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.redis = redis
        self.engine = engine
        self.keys = keys
        self.interval_s = interval_s
        self.batch = batch
        self.clock = clock
        self.fired = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Scan until `stop` is set."""
        while not stop.is_set():
            due = await self.run_once()
            if due < self.batch:  # a full batch means more are overdue: go again now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.interval_s)

    async def run_once(self) -> int:
        """Hand every overdue rotation (up to `batch`) to the engine; return the count."""
        due = await self.redis.zrangebyscore(
            self.keys.deadlines, "-inf", self.clock(), start=0, num=self.batch
        )
        if not due:
            return 0
        ticks = [Tick(m.decode() if isinstance(m, bytes) else str(m)) for m in due]
        await self.engine.handle(ticks)
        self.fired += len(ticks)
        return len(ticks)
