"""Live updates for the console: one reader per app, fanned out to every open page.

A single task follows the decision, event and audit streams of every book with a
blocking XREAD and hands each new entry to all subscribers (Server-Sent Events). The
audit stream gets one entry per commit and per setting change, so a change that
writes no decision or event (a fill releasing a reservation, a pause) is pushed too;
its body is not sent, only that it happened. Ten open tabs cost Redis one reader,
not ten, and no page polls.

The pages share the engine's event loop, so the fan-out is kept small, bounded and sliced:
each XREAD's entries are encoded once, as one chunk, and every page gets that chunk
in one write; the reader runs at most `FANOUT_HZ` times a second, and less often
with many pages open, so the page writes stay within `FANOUT_WRITES_PER_S` (a busy
book's entries are gathered into fewer, larger chunks); at most `max_clients` pages are
served (more are answered 503); no timer or task per page (one heartbeat for all);
and a page that cannot keep up — `QUEUE` chunks behind, its socket full — is dropped
and its connection closed. A page refetches the state on every message anyway, and
reconnects by itself, so a dropped one costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, cast

from redis.exceptions import RedisError

from ..core.errors import RotationFsmError
from ..core.messages import as_text_lenient, fields_text
from ..store.gateway import Store

log = logging.getLogger("rotation_fsm.web")

BLOCK_MS = 1000  # below redis-py's default socket timeout (5 s)
KINDS = ("decisions", "events", "audit")
QUEUE = 64  # chunks a page may lag behind before it is dropped (16 s at FANOUT_HZ)
FANOUT_HZ = 4.0  # fan-outs per second at most (the page debounces its refetch as much)
# Page writes per second the fan-out may cost the engine's loop: with many pages open
# the fan-outs come less often (1,000 pages: one a second), whatever the book's pace.
FANOUT_WRITES_PER_S = 1000.0
FANOUT_SLICE = 50  # pages woken per turn of the event loop
HEARTBEAT_S = 15.0  # a comment line this often keeps proxies and browsers connected
HEARTBEAT = b": heartbeat\n\n"
DEFAULT_MAX_CLIENTS = 100


class HubFull(RotationFsmError):
    """As many pages as allowed are already open."""


Chunk = bytes | None  # None: the stream ends (shutdown, or a page dropped)


@dataclass
class Hub:
    """Fans out new decision, event and audit entries of `stores` (book → Store)."""

    stores: dict[str, Store]
    max_clients: int = DEFAULT_MAX_CLIENTS
    subscribers: dict[asyncio.Queue[Chunk], asyncio.Task[Any] | None] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    reads: int = 0  # XREAD calls made: tests check one reader serves every page
    _sent_at: float = 0.0
    dropped: int = 0  # pages dropped for falling behind
    refused: int = 0  # pages refused at the cap

    def subscribe(self, handler: asyncio.Task[Any] | None = None) -> asyncio.Queue[Chunk]:
        """A queue of chunks for the page served by `handler`; HubFull at the cap."""
        if len(self.subscribers) >= self.max_clients:
            self.refused += 1
            raise HubFull(f"{self.max_clients} live pages already open (GOV_SSE_MAX_CLIENTS)")
        queue: asyncio.Queue[Chunk] = asyncio.Queue(QUEUE)
        # The page's handler is cancelled if it falls behind: a write stuck on a full
        # socket would never read the end of its stream.
        self.subscribers[queue] = handler
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._follow())
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Chunk]) -> None:
        self.subscribers.pop(queue, None)

    async def close(self) -> None:
        """End every page's stream and stop reading: the server is shutting down and
        would otherwise wait for those streams."""
        for queue in list(self.subscribers):
            _end(queue)
        self.subscribers.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def publish(self, messages: list[dict[str, Any]]) -> None:
        """Hand `messages` to every page as one chunk; drop a page that lags."""
        if messages:
            await self.send(
                b"".join(f"event: change\ndata: {json.dumps(m)}\n\n".encode() for m in messages)
            )

    async def send(self, chunk: bytes) -> None:
        """Queue `chunk` for every page; a page `QUEUE` chunks behind is dropped.

        Pages are woken `FANOUT_SLICE` at a time, with a turn of the event loop in
        between: the engine's replies are read between slices instead of waiting
        for every page's write."""
        self._sent_at = time.monotonic()
        for i, (queue, handler) in enumerate(list(self.subscribers.items())):
            if i and i % FANOUT_SLICE == 0:
                await asyncio.sleep(0)
            if queue.full():
                self.dropped += 1
                del self.subscribers[queue]
                _end(queue)
                if handler is not None:
                    handler.cancel()
                continue
            queue.put_nowait(chunk)

    async def _follow(self) -> None:
        """Follow every book's streams from now on, while anyone listens."""
        cursors: dict[tuple[str, str], str] = {}
        delay = 0.2
        while self.subscribers:
            began = time.monotonic()
            try:
                for book, store in self.stores.items():
                    if (book, KINDS[0]) not in cursors:
                        cursors.update(await _tails(book, store))
                    await self.publish(await self._read_book(book, store, cursors))
                delay = 0.2
            except RedisError as exc:  # an outage: say so, and try again
                await self.publish([{"kind": "redis", "ok": False, "error": str(exc)}])
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
            if time.monotonic() - self._sent_at >= HEARTBEAT_S:
                await self.send(HEARTBEAT)
            # Entries arriving meanwhile wait in the stream and go out in one chunk.
            period_s = max(1 / FANOUT_HZ, len(self.subscribers) / FANOUT_WRITES_PER_S)
            await asyncio.sleep(max(0.0, began + period_s - time.monotonic()))

    async def _read_book(
        self, book: str, store: Store, cursors: dict[tuple[str, str], str]
    ) -> list[dict[str, Any]]:
        keys = store.keys
        names = {keys.decisions: "decisions", keys.events: "events", keys.audit: "audit"}
        streams = {name: cursors[(book, kind)] for name, kind in names.items()}
        block = BLOCK_MS // max(1, len(self.stores))
        self.reads += 1
        # redis-py types the stream map with wider keys, and the reply loosely
        reply: Any = await store.redis.xread(
            cast("dict[Any, Any]", streams), count=1000, block=block
        )
        items = reply.items() if isinstance(reply, dict) else reply or []
        messages: list[dict[str, Any]] = []
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
                messages.append(message)
        return messages


async def _tails(book: str, store: Store) -> dict[tuple[str, str], str]:
    """Each stream's newest entry id now ("0-0" when empty): where following starts.

    Never "$" as a cursor kept between reads: "$" means "after whatever is newest when
    this XREAD runs", so a stream that stayed quiet in one read would lose every entry
    written before the next one (between reads the hub sleeps)."""
    keys = store.keys
    names = {"decisions": keys.decisions, "events": keys.events, "audit": keys.audit}
    tails: dict[tuple[str, str], str] = {}
    for kind, name in names.items():
        newest: Any = await store.redis.xrevrange(name, count=1)
        tails[(book, kind)] = as_text_lenient(newest[0][0]) if newest else "0-0"
    return tails


def _end(queue: asyncio.Queue[Chunk]) -> None:
    """Make `queue`'s next item the end of its stream, whatever it held."""
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(None)


async def sse_messages(queue: asyncio.Queue[Chunk], hub: Hub) -> AsyncGenerator[bytes, None]:
    """The bytes of one page's event stream (`queue` from `hub.subscribe()`): a
    hello, then every chunk (heartbeats included) until the stream ends."""
    try:
        yield b"retry: 2000\nevent: hello\ndata: {}\n\n"
        while True:
            chunk = await queue.get()
            if chunk is None:
                return  # shutting down, or dropped: the page reconnects
            yield chunk
    finally:
        hub.unsubscribe(queue)
