"""Each engine replica's heartbeat: what it is running with, published with an expiry.

An operator's CLI runs in its own environment, so it cannot know what the engines
read from theirs. Every replica therefore writes, every `GOV_HEARTBEAT_S`, one
small record per book — its effective rules (value and where each comes from),
its version, consumer name, start time and the time of this beat — under a key
that expires after three beats, and scores itself in the book's replica index.
`rotation-fsm settings` reads them back: a replica whose record expired while its
index entry stays is one that went silent (killed, frozen, cut off); a replica
that stops cleanly removes both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import msgspec

from ..core.settings import RULE_SPECS, Rules, overlay, rule_value_text
from ..store.gateway import AnyRedis
from ..store.keys import Keys
from ..store.live_settings import read_live

#: a record outlives this many missed beats before the replica counts as silent
BEATS_TO_SILENT = 3
#: replicas silent for longer than this leave the index (a day of history is enough)
FORGET_AFTER_MS = 24 * 3600 * 1000

SOURCE_DEFAULT = "default"
SOURCE_ENV = "env"
SOURCE_LIVE = "live"
SOURCE_LIVE_REFUSED = "live refused, last good kept"


class Effective(msgspec.Struct, frozen=True):
    """One rule as a replica applies it: its value and where the value comes from."""

    value: str
    source: str


class Heartbeat(msgspec.Struct, kw_only=True):
    """What one replica publishes about itself for one book."""

    consumer: str
    book: str
    version: str
    started_ms: int
    last_seen_ms: int
    interval_s: float
    settings: dict[str, Effective]


_encode = msgspec.json.Encoder().encode
_decoder = msgspec.json.Decoder(Heartbeat)


def effective_rules(
    env_rules: Rules, env_names: frozenset[str], live: Mapping[str, str], last: Rules
) -> dict[str, Effective]:
    """The rule values the next decision will use, each with its source.

    Mirrors the engine's own overlay: a valid live value wins, a refused one leaves
    the last good value in force, otherwise the environment (or the default).
    """
    rules, errors = overlay(env_rules, live, last)
    refused = {err.name for err in errors}
    out: dict[str, Effective] = {}
    for name in RULE_SPECS:
        if name in refused:
            source = SOURCE_LIVE_REFUSED
        elif name in live:
            source = SOURCE_LIVE
        else:
            source = SOURCE_ENV if name in env_names else SOURCE_DEFAULT
        out[name] = Effective(rule_value_text(rules, name), source)
    return out


@dataclass
class Publisher:
    """Publishes one replica's heartbeat for one book."""

    redis: AnyRedis
    keys: Keys
    consumer: str
    version: str
    started_ms: int
    interval_s: float
    env_rules: Rules
    env_names: frozenset[str]

    async def beat(self, in_force: Rules, now_ms: int) -> Heartbeat:
        """Read the live settings, write this replica's record and index entry."""
        live = await read_live(self.redis, self.keys)
        record = Heartbeat(
            consumer=self.consumer,
            book=self.keys.book,
            version=self.version,
            started_ms=self.started_ms,
            last_seen_ms=now_ms,
            interval_s=self.interval_s,
            settings=effective_rules(self.env_rules, self.env_names, live, in_force),
        )
        ttl_ms = max(1, int(self.interval_s * 1000 * BEATS_TO_SILENT))
        # No MULTI: the engine's ACL has none, and a half-written beat heals at the next.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.replica(self.consumer), _encode(record), px=ttl_ms)
            pipe.zadd(self.keys.replicas, {self.consumer: now_ms})
            pipe.zremrangebyscore(self.keys.replicas, "-inf", now_ms - FORGET_AFTER_MS)
            await pipe.execute()
        return record

    async def withdraw(self) -> None:
        """A clean stop: the replica leaves the index instead of going silent."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.replica(self.consumer))
            pipe.zrem(self.keys.replicas, self.consumer)
            await pipe.execute()


@dataclass(frozen=True)
class Replica:
    """A replica as the index and its record show it; `record` None: it went silent."""

    consumer: str
    last_seen_ms: int
    record: Heartbeat | None

    @property
    def silent(self) -> bool:
        return self.record is None


async def read_replicas(redis: AnyRedis, keys: Keys) -> list[Replica]:
    """Every replica of the book's index, newest beat first, with its record if alive."""
    scored = cast(
        "list[tuple[bytes, float]]", await redis.zrevrange(keys.replicas, 0, -1, withscores=True)
    )
    names = [m.decode() if isinstance(m, bytes) else str(m) for m, _ in scored]
    if not names:
        return []
    raws = await redis.execute_command("MGET", *[keys.replica(n) for n in names])
    replicas = []
    for name, (_, score), raw in zip(names, scored, raws, strict=True):
        record = None
        if raw is not None:
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                record = _decoder.decode(raw)
        replicas.append(Replica(name, int(score), record))
    return replicas


def disagreements(replicas: Sequence[Replica]) -> list[str]:
    """Rule names whose value differs between the replicas that are alive."""
    alive = [r.record for r in replicas if r.record is not None]
    return [
        name
        for name in RULE_SPECS
        if len({rec.settings[name].value for rec in alive if name in rec.settings}) > 1
    ]
