"""A bare RESP connection: a blocking socket, commands packed and replies parsed by hiredis.

For the two places where a client library's own cost would distort the figure:
the raw Redis yardstick (one round trip after another) and writing 100,000
rotations before the timer run (pipelined in large chunks). Call it from a
thread (`asyncio.to_thread`) when an event loop is running.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import hiredis

HOST = "127.0.0.1"
RECV_BYTES = 1 << 16


class RedisReplyError(RuntimeError):
    """Redis answered a command with an error."""


class RawConnection:
    """One TCP connection to the rig's redis-server."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send_packed(self, packed: bytes) -> Any:
        """Send one already packed command and return its reply."""
        self.sock.sendall(packed)
        return self._reply()

    def call(self, *args: str | bytes | int | float) -> Any:
        """One command, one round trip."""
        return self.send_packed(hiredis.pack_command(args))

    def pipeline(self, commands: Sequence[tuple[str | bytes | int | float, ...]]) -> list[Any]:
        """Send `commands` in one write and read every reply; raises on the first error."""
        self.sock.sendall(b"".join(hiredis.pack_command(c) for c in commands))
        return [self._reply() for _ in commands]

    def _reply(self) -> Any:
        reply = self.reader.gets()
        while reply is False:
            self.reader.feed(self.sock.recv(RECV_BYTES))
            reply = self.reader.gets()
        if isinstance(reply, Exception):
            raise RedisReplyError(str(reply))
        return reply
