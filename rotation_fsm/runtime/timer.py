"""Deadlines → `Tick` inputs. Not key expiry: the deadline index is a sorted set.

The seed timed rotations out by checking a lock key that had already expired,
so its timeout never fired. Here a task scans `deadlines` every `interval_s`
(default 0.1 s) and hands overdue rotations to the engine, whose guarded commit
makes sure exactly one replica fires each timeout.

Overdue rotations are taken `batch` at a time (one `ZRANGE … BYSCORE … LIMIT`) and
submitted pipelined, like the listener's batches: the next batch is read and
decided while the commit of the one before is still in Redis. That commit's
rotations are still in the index when the next read comes, so the read skips them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..core.decide import Tick
from ..store.gateway import AnyRedis
from ..store.keys import Keys
from .engine import BookEngine, wall_ms

log = logging.getLogger("rotation_fsm.runtime.timer")


#: the shortest wait between scans (a deadline whose tick changes nothing must not spin)
MIN_PAUSE_S = 0.002


class Timer:
    """Fires the timeouts of one book."""

    def __init__(
        self,
        redis: AnyRedis,
        engine: BookEngine,
        keys: Keys,
        *,
        interval_s: float = 0.1,
        batch: int = 1000,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.redis = redis
        self.engine = engine
        self.keys = keys
        self.interval_s = interval_s
        self.batch = batch
        self.clock = clock
        self.fired = 0
        self._sent: set[str] = set()  # ticked in the submission whose commit may be in flight

    async def pause_s(self) -> float:
        """How long to wait before the next scan: until the next deadline, at most
        `interval_s`, at least `MIN_PAUSE_S` — a deadline is fired as it passes, not up
        to a whole interval later. (ZRANGEBYSCORE: the command the engine's ACL allows.)"""
        head = await self.redis.zrangebyscore(
            self.keys.deadlines, "-inf", "+inf", start=0, num=1, withscores=True
        )
        if not head:
            return self.interval_s
        due_in_s = (float(head[0][1]) - self.clock()) / 1000
        return min(self.interval_s, max(MIN_PAUSE_S, due_in_s))

    async def run_once(self) -> int:
        """Hand overdue rotations (up to `batch`) to the engine; return the count.

        When nothing new is due, the commit in flight is settled before the caller
        waits, so a timeout is never left unconfirmed through a quiet spell.
        """
        sent = self._sent if self.engine.commit_in_flight else set()
        due = await self.redis.zrangebyscore(
            self.keys.deadlines, "-inf", self.clock(), start=0, num=self.batch + len(sent)
        )
        fresh = [m.decode() if isinstance(m, bytes) else str(m) for m in due]
        fresh = [rid for rid in fresh if rid not in sent][: self.batch]
        if not fresh:
            self._sent = set()
            if self.engine.commit_in_flight:
                await self.engine.flush()
            return 0
        await self.engine.submit([Tick(rid) for rid in fresh])
        self._sent = set(fresh)
        self.fired += len(fresh)
        return len(fresh)
