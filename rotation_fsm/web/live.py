"""Live updates for the console: one reader per app, fanned out to every open page.

A single task follows the decision, event and audit streams of every book with a
blocking XREAD and hands each new entry to all subscribers (Server-Sent Events). The
audit stream gets one entry per commit and per setting change, so a change that
writes no decision or event (a fill releasing a reservation, a pause) is pushed too;
its body is not sent, only that it happened. Ten open
tabs cost Redis one reader, not ten, and no page polls. A subscriber that cannot keep
up loses the oldest entries, never blocks the others: the page refetches the state
on every message anyway, so a dropped one costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from ..messages import as_text_lenient, fields_text
from ..store import Store

log = logging.getLogger("rotation_fsm.web")

BLOCK_MS = 1000  # below redis-py's default socket timeout (5 s)
KINDS = ("decisions", "events", "audit")
QUEUE = 256


@dataclass
class Hub:
    """Fans out new decision and event entries of `stores` (book → Store)."""

    stores: dict[str, Store]
    subscribers: set[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=set)
    _task: asyncio.Task[None] | None = None
    reads: int = 0  # XREAD calls made: tests check one reader serves every page

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE)
        self.subscribers.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._follow())
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self.subscribers.discard(queue)

    async def close(self) -> None:
        """End every page's stream (None tells it) and stop reading: the server is
        shutting down and would otherwise wait for those streams."""
        self.publish(None)
        self.subscribers.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def publish(self, message: dict[str, Any] | None) -> None:
        for queue in list(self.subscribers):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(message)

    async def _follow(self) -> None:
        """Follow every book's streams from now on, while anyone listens."""
        cursors = {(book, kind): "$" for book in self.stores for kind in KINDS}
        delay = 0.2
        while self.subscribers:
            try:
                for book, store in self.stores.items():
                    await self._read_book(book, store, cursors)
                delay = 0.2
            except RedisError as exc:  # an outage: say so, and try again
                self.publish({"kind": "redis", "ok": False, "error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    async def _read_book(
        self, book: str, store: Store, cursors: dict[tuple[str, str], str]
    ) -> None:
        keys = store.keys
        names = {keys.decisions: "decisions", keys.events: "events", keys.audit: "audit"}
        streams = {name: cursors[(book, kind)] for name, kind in names.items()}
        block = BLOCK_MS // max(1, len(self.stores))
        self.reads += 1
        reply = await store.redis.xread(streams, count=100, block=block)
        items = reply.items() if isinstance(reply, dict) else reply or []
        for stream, entries in items:
            kind = names[as_text_lenient(stream)]
            for entry_id, fields in entries:
                cursors[(book, kind)] = as_text_lenient(entry_id)
                message: dict[str, Any] = {
                    "kind": kind,
                    "book": book,
                    "id": as_text_lenient(entry_id),
                }
                if kind != "audit":  # an audit entry is large and says nothing new here
                    message["fields"] = fields_text(fields, "replace")
                self.publish(message)


async def sse_messages(hub: Hub, heartbeat_s: float = 15.0) -> AsyncIterator[bytes]:
    """The bytes of one page's event stream: a hello, then every message, with a
    comment line as heartbeat so proxies and the browser keep the connection."""
    queue = hub.subscribe()
    try:
        yield b"retry: 2000\nevent: hello\ndata: {}\n\n"
        while True:
            try:
                message = await asyncio.wait_for(queue.get(), timeout=heartbeat_s)
            except TimeoutError:
                yield b": heartbeat\n\n"
                continue
            if message is None:
                return  # the server is shutting down: the page reconnects
            yield f"event: change\ndata: {json.dumps(message)}\n\n".encode()
    finally:
        hub.unsubscribe(queue)
