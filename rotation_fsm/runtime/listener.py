"""Consumer groups on the plan and result streams → `BookEngine.handle`.

Entries are read as bytes and parsed one by one, so one bad entry is
dead-lettered without holding up its batch. Acks happen inside the commit.
Entries left pending by a dead consumer are claimed with XAUTOCLAIM at start
and every `claim_idle_ms / 2`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from redis.exceptions import ResponseError

from ..core.decide import BadIn, Input, PlanIn, ResultIn
from ..core.messages import (
    BadEntry,
    as_text,
    autoclaim_reply,
    parse_plan,
    parse_result,
    repeated_names_error,
    stream_reply,
)
from ..store.gateway import AnyRedis
from ..store.keys import Keys
from .engine import BookEngine

log = logging.getLogger("rotation_fsm.runtime.listener")


def to_input(stream: str, entry_id: str, fields: dict[bytes, bytes]) -> Input:
    """A parsed input, or a `BadIn` carrying the reason and the raw fields."""
    repeated = repeated_names_error(fields)
    if repeated is not None:  # every pair goes to the dead letter, both values shown
        return BadIn(stream, entry_id, list(getattr(fields, "pairs", ())), repeated)
    try:
        if stream == "plans":
            return PlanIn(entry_id, parse_plan(fields))
        return ResultIn(entry_id, parse_result(fields))
    except BadEntry as exc:
        return BadIn(stream, entry_id, list(fields.items()), str(exc))


class Listener:
    """Reads both input streams for one book through its consumer group."""

    def __init__(
        self,
        redis: AnyRedis,
        engine: BookEngine,
        keys: Keys,
        *,
        group: str,
        consumer: str,
        count: int = 500,  # per read: a burst in large batches spreads each commit's fixed cost
        block_ms: int = 1000,
        claim_idle_ms: int = 10_000,
    ) -> None:
        # `redis` must allow a blocking read longer than block_ms (socket_timeout).
        self.redis = redis
        # Parsed keeping every field as written, so a name written twice is seen.
        redis.set_response_callback("XREADGROUP", stream_reply)
        redis.set_response_callback("XAUTOCLAIM", autoclaim_reply)
        self.engine = engine
        self.keys = keys
        self.group = group
        self.consumer = consumer
        self.count = count
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self._streams = {keys.plans: "plans", keys.results: "results"}
        self._next_claim = 0.0
        self._failed = False
        self._commit_lost = False  # a pipelined commit of ours failed, settled by another
        self.handled = 0

    async def ensure_groups(self) -> None:
        """Create the consumer group on both streams at `$` when missing (contract §1)."""
        for stream in self._streams:
            try:
                await self.redis.xgroup_create(stream, self.group, id="$", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def run_once(self, *, block_ms: int | None = None, pending: bool = False) -> int:
        """One read (new entries, or this consumer's own pending ones) and any due
        claim; returns how many entries were handled.

        After a failure (Redis went away mid-batch) the next call first re-reads
        this consumer's own pending entries: they were delivered but not committed.
        """
        if self._failed or self._commit_lost:
            pending = True
        self._failed, self._commit_lost = True, False
        handled = await self._run_once(block_ms=block_ms, pending=pending)
        self._failed = False
        return handled

    async def _run_once(self, *, block_ms: int | None, pending: bool) -> int:
        handled = 0
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + self.claim_idle_ms / 2000
            handled += await self._handle(await self._claim())
        start = "0" if pending else ">"
        try:
            if block_ms is not None and self.engine.commit_in_flight:
                # Look without blocking first; when there is nothing to read, settle
                # the pipelined commit before waiting, so its failure surfaces (and
                # its entries are re-read) now, not when the next entry arrives.
                reply = await self._read(start, None)
                if not reply:
                    await self.engine.flush()
                    reply = await self._read(start, block_ms)
            else:
                reply = await self._read(start, block_ms)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis lost its state (restart without persistence): groups again.
            log.warning("consumer group missing, recreating: %s", exc)
            await self.ensure_groups()
            return handled
        handled += await self._handle(_entries(reply, self._streams))
        return handled

    async def _read(self, start: str, block_ms: int | None) -> Any:
        return await self.redis.xreadgroup(
            self.group,
            self.consumer,
            {s: start for s in self._streams},
            count=self.count,
            block=block_ms,
        )

    async def _claim(self) -> list[tuple[str, str, dict[bytes, bytes] | None]]:
        claimed: list[tuple[str, str, dict[bytes, bytes] | None]] = []
        for stream, logical in self._streams.items():
            cursor = "0-0"
            while True:
                reply = await self.redis.xautoclaim(
                    stream,
                    self.group,
                    self.consumer,
                    self.claim_idle_ms,
                    start_id=cursor,
                    count=self.count,
                )
                # [cursor, entries] on 6.2, [cursor, entries, deleted] on 7: never unpack 3.
                cursor = as_text(reply[0])
                for entry_id, fields in reply[1]:
                    claimed.append((logical, as_text(entry_id), fields))
                if cursor == "0-0" or not reply[1]:
                    break
        if claimed:
            log.info("claimed %d entries left pending by other consumers", len(claimed))
        return claimed

    async def _handle(self, entries: list[tuple[str, str, dict[bytes, bytes] | None]]) -> int:
        inputs: list[Input] = []
        for logical, entry_id, fields in entries:
            if fields is None:
                # Deleted from the stream while pending (XAUTOCLAIM on 6.2): nothing
                # to decide; ack it so it stops coming back.
                await self.redis.xack(self._stream_name(logical), self.group, entry_id)
                continue
            inputs.append(to_input(logical, entry_id, fields))
        if inputs:
            await self.engine.submit(inputs, on_lost=self._lost)
        self.handled += len(inputs)
        return len(inputs)

    def _lost(self) -> None:
        """Our commit failed where another task settled it (the timer's batch): its
        entries are pending on this consumer, to be read again."""
        self._commit_lost = True

    def _stream_name(self, logical: str) -> str:
        return self.keys.plans if logical == "plans" else self.keys.results


def _entries(
    reply: Any, streams: dict[str, str]
) -> list[tuple[str, str, dict[bytes, bytes] | None]]:
    """Flatten an XREADGROUP reply (RESP2 list or RESP3 dict) in stream order."""
    if not reply:
        return []
    items: Iterable[Any] = reply.items() if isinstance(reply, dict) else reply
    out: list[tuple[str, str, dict[bytes, bytes] | None]] = []
    for stream, entries in items:
        logical = streams[as_text(stream)]
        for entry in entries:
            entry_id, fields = entry[0], entry[1]
            out.append((logical, as_text(entry_id), fields if fields else None))
    return out
