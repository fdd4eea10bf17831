"""The newest REST snapshot of a book's exchange account, shared by its replicas in Redis.

A decision may only rest on an exchange view at least as new as the newest one the
book already decided on (views only move forward). Each replica's view is as of its
own last REST snapshot, so without sharing, two replicas with their own reconcile
times would keep finding each other's views newer and ask REST again and again.
Instead every REST snapshot is published here (kept only when newer), and a replica
that finds itself behind adopts it, applying over it the stream events it received
since — one Redis read instead of an exchange round trip.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import msgspec

from ..core.market import Account, Position

VIEW_SNAPSHOT_LUA = (
    resources.files("rotation_fsm.store").joinpath("lua/view_snapshot.lua").read_text()
)
#: a snapshot nobody renewed for this long is dropped (the views take their own then)
TTL_MS = 3_600_000


class SharedSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """One REST snapshot: as of the start of its request (the taker's clock)."""

    as_of_ms: int
    positions: list[Position]
    account: Account | None = None


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(SharedSnapshot).decode


class SnapshotShare:
    """Publish and read a book's newest snapshot (`Keys.view_snapshot`)."""

    def __init__(self, redis: Any, key: str) -> None:
        self.redis = redis
        self.key = key
        self._publish = redis.register_script(VIEW_SNAPSHOT_LUA)

    async def publish(self, snapshot: SharedSnapshot) -> bool:
        """Store `snapshot` unless the stored one is as new; True when stored."""
        stored = await self._publish(
            keys=[self.key], args=[snapshot.as_of_ms, _encode(snapshot), TTL_MS]
        )
        return bool(stored)

    async def newest(self) -> SharedSnapshot | None:
        """The stored snapshot; None when there is none or it cannot be read."""
        body = await self.redis.hget(self.key, "body")
        if body is None:
            return None
        try:
            return _decode(body)
        except msgspec.DecodeError:
            return None
