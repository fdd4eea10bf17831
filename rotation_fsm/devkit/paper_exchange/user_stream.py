"""The paper exchange's user-data stream: listenKeys and a websocket of account events.

As Binance's USDⓈ-M futures: `POST /fapi/v1/listenKey` gives a key valid for 60
minutes (the same key while one is valid), `PUT` extends it, an unknown key answers
code -1125; `/ws/<key>` and `/private/ws?listenKey=<key>` stream JSON events. A
position that opens, changes or closes on the book is pushed as `ACCOUNT_UPDATE`
(only the changed symbol, no mark price), a fill as `ORDER_TRADE_UPDATE`, and an
expired key as `listenKeyExpired`.

Faults on demand, for tests and the chaos run: `drop_sockets()` (the connection is
cut), `expire_keys()` (listenKeyExpired, then the key is gone), `lose_events(n)` (the
next n events are never sent), `silent` (connected and answering pings, saying
nothing while positions change), `enabled = False` (an exchange without a user-data
stream: the listenKey call answers 404).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import Counter
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from .book import PaperBook, Trade

#: a listenKey lives this long without a keepalive (Binance: 60 minutes)
KEY_TTL_MS = 3_600_000
ASSET = "USDT"


def _dec(value: float) -> str:
    return f"{value:.8f}".rstrip("0").rstrip(".") or "0"


class UserStream:
    """listenKeys and connected websockets of one paper account."""

    def __init__(self, book: PaperBook) -> None:
        self.book = book
        self.enabled = True
        self.silent = False
        self._lose = 0
        self._keys: dict[str, int] = {}  # key → valid until (book clock ms)
        self._queues: dict[asyncio.Queue[str | None], str] = {}  # connection → its key
        #: events by type: sent, lost, and connections opened
        self.counts: Counter[str] = Counter()
        book.position_watchers.append(self._position_changed)
        book.trade_watchers.append(self._traded)

    # ---------------------------------------------------------------- keys

    def new_key(self) -> str:
        """The valid key if there is one (its life extended), else a new one."""
        now = self.book.clock_ms()
        for key, until in self._keys.items():
            if until > now:
                self._keys[key] = now + KEY_TTL_MS
                return key
        key = secrets.token_urlsafe(48)
        self._keys[key] = now + KEY_TTL_MS
        self.counts["keys"] += 1
        return key

    def keep_alive(self, key: str) -> bool:
        """Extend `key`; False when it does not exist (any more)."""
        now = self.book.clock_ms()
        if self._keys.get(key, 0) <= now:
            self._keys.pop(key, None)
            return False
        self._keys[key] = now + KEY_TTL_MS
        return True

    def delete_key(self, key: str) -> None:
        """Close the stream of `key` (DELETE /fapi/v1/listenKey)."""
        self._keys.pop(key, None)
        self._close(key)

    def valid(self, key: str) -> bool:
        """`key` exists and has not expired."""
        return self._keys.get(key, 0) > self.book.clock_ms()

    # ---------------------------------------------------------------- faults

    def drop_sockets(self) -> None:
        """Cut every connection (the key stays valid)."""
        for queue in list(self._queues):
            queue.put_nowait(None)

    def expire_keys(self, *, say: bool = True) -> None:
        """Every key expires now: `listenKeyExpired` on its streams, then they close.
        With `say=False` the keys just vanish (streams open, silent): the next
        keepalive answers -1125."""
        now = self.book.clock_ms()
        for key in list(self._keys):
            self._keys.pop(key)
            if say:
                self._send({"e": "listenKeyExpired", "E": now, "listenKey": key}, only=key)
                self._close(key)

    def lose_events(self, count: int = 1) -> None:
        """The next `count` account events are never sent."""
        self._lose += count

    @property
    def connections(self) -> int:
        """Websockets connected now."""
        return len(self._queues)

    # ---------------------------------------------------------------- events

    def _position_changed(self, symbol: str) -> None:
        position = self.book.positions.get(symbol)
        # The change's own time, as positionRisk's updateTime reports it.
        now = position.update_time_ms if position else self.book.clock_ms()
        unrealized = sum(self.book.unrealized_profit(s) for s in self.book.positions)
        wallet = self.book.margin_balance - unrealized
        self._event(
            {
                "e": "ACCOUNT_UPDATE",
                "E": now,
                "T": now,
                "a": {
                    "m": "ORDER",
                    "B": [{"a": ASSET, "wb": _dec(wallet), "cw": _dec(wallet), "bc": "0"}],
                    "P": [
                        {
                            "s": symbol,
                            "pa": _dec(position.qty if position else 0.0),
                            "ep": _dec(position.entry_price if position else 0.0),
                            "cr": "0",
                            "up": _dec(self.book.unrealized_profit(symbol)),
                            "mt": "cross",
                            "iw": "0",
                            "ps": "BOTH",
                        }
                    ],
                },
            }
        )

    def _traded(self, trade: Trade) -> None:
        now = self.book.clock_ms()
        self._event(
            {
                "e": "ORDER_TRADE_UPDATE",
                "E": now,
                "T": now,
                "o": {
                    "s": trade.symbol,
                    "c": trade.client_order_id,
                    "S": trade.side,
                    "o": "MARKET",
                    "x": "TRADE",
                    "X": "FILLED",
                    "q": _dec(trade.qty),
                    "l": _dec(trade.qty),
                    "z": _dec(trade.qty),
                    "L": _dec(trade.price),
                    "ap": _dec(trade.price),
                    "R": trade.reduce_only,
                    "ps": "BOTH",
                    "T": now,
                },
            }
        )

    def _event(self, event: dict[str, Any]) -> None:
        if self.silent:
            self.counts["silenced"] += 1
            return
        if self._lose > 0:
            self._lose -= 1
            self.counts["lost"] += 1
            return
        self._send(event)

    def _send(self, event: dict[str, Any], *, only: str | None = None) -> None:
        body = msgspec.json.encode(event).decode()
        for queue, key in list(self._queues.items()):
            if (only is None and self.valid(key)) or key == only:
                queue.put_nowait(body)
                self.counts[str(event["e"])] += 1

    def _close(self, key: str) -> None:
        for queue, its_key in list(self._queues.items()):
            if its_key == key:
                queue.put_nowait(None)

    # ---------------------------------------------------------------- the socket

    async def serve(self, request: web.Request, key: str) -> web.StreamResponse:
        """One websocket: events of `key` until it is cut, expires or the client leaves."""
        if not self.enabled or not self.valid(key):
            return web.json_response({"code": -1125, "msg": "Invalid listenKey."}, status=400)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._queues[queue] = key
        self.counts["connections"] += 1
        reader = asyncio.create_task(_drain_client(ws))
        try:
            while True:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break  # the client left
                body = getter.result()
                if body is None:
                    break
                try:
                    await ws.send_str(body)
                except ConnectionError:  # the client went away mid-send
                    break
        finally:
            self._queues.pop(queue, None)
            reader.cancel()
            with contextlib.suppress(Exception):
                await ws.close()
        return ws


async def _drain_client(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) what the client sends; pings are answered by aiohttp."""
    async for msg in ws:
        if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break
