"""Operator controls on a running book: live settings, pause/resume, extend, abort.

One implementation serves the CLI (`rotation-fsm set|settings|pause|resume|
extend|abort`) and the HTTP API. Settings go to the settings hash, which every
replica reads in the same pipeline as each batch's state — so a change governs
the next decision on every replica, with no extra round trip on the hot path.
Extend and abort are inputs to the core like any plan, committed through the
same version-guarded commit, so they race safely with the engines.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from ..core.audit import SettingChange
from ..core.decide import Abort, Extend, UnknownRotation
from ..core.errors import RotationFsmError
from ..core.logs import clean, mask_credentials
from ..core.machine import IllegalTransition
from ..core.market import Account, Kline, Position
from ..core.messages import RotationRecord
from ..core.settings import (
    RULE_SPECS,
    SettingError,
    Settings,
    duration,
    load_settings,
    rule_value_text,
    validate_rule,
)
from ..core.timeline import iso_ms, to_json
from ..store.connections import connect
from ..store.gateway import AnyRedis, Store
from ..store.keys import Keys
from ..store.live_settings import live_value, read_live, write_change
from ..store.shortid import AmbiguousId, resolve_rotation_id
from .engine import BookEngine, wall_ms
from .settings_view import replica_settings, settings_text

# An extension counts from now; the same ceiling as every TTL setting.
DEADLINE_FROM_NOW = duration(low=0.0)


class Refused(RotationFsmError):
    """A control that cannot be applied; the message says why."""


class _NoExchange:
    """Controls never need the exchange (no OPEN plan is decided through them)."""

    async def positions(self) -> list[Position]:
        raise RuntimeError("controls do not call the exchange")

    async def account(self) -> Account:
        raise RuntimeError("controls do not call the exchange")

    async def klines(self, symbol: str) -> list[Kline]:
        raise RuntimeError("controls do not call the exchange")


@dataclass
class Controls:
    """The controls of one book."""

    redis: AnyRedis
    keys: Keys
    settings: Settings

    def _engine(self) -> BookEngine:
        store = Store(
            self.redis,
            self.keys,
            group=self.settings.consumer_group,
            retention_s=self.settings.retention_s,
            audit_maxlen=self.settings.audit_maxlen,
        )
        return BookEngine(store, _NoExchange(), self.settings.rules)

    async def set(self, name: str, value: str, by: str) -> tuple[str | None, str]:
        """Store a live setting (validated like the environment); returns (old, new)."""
        try:
            new = validate_rule(name, value)
        except SettingError as exc:
            raise Refused(str(exc)) from None
        return await self._change(name, new, by), new

    async def unset(self, name: str, by: str) -> str | None:
        """Drop a live setting: every replica goes back to its environment's value.

        Returns the live value removed (None: there was none, nothing is written).
        """
        if name not in RULE_SPECS:
            raise Refused(f"{name}: expected one of " + ", ".join(sorted(RULE_SPECS)))
        if await live_value(self.redis, self.keys, name) is None:
            return None
        return await self._change(name, None, by)

    async def _change(self, name: str, new: str | None, by: str) -> str | None:
        """Write (or, `new` None, delete) one live setting with its audit entry."""
        old = await live_value(self.redis, self.keys, name)
        change = SettingChange(now_ms=wall_ms(), key=name, old=old, new=new, by=by)
        await write_change(self.redis, self.keys, change, self.settings.audit_maxlen)
        return old

    async def show(self) -> dict[str, dict[str, str]]:
        """Each rule: the value in force for this environment, and where it comes from."""
        live = await read_live(self.redis, self.keys)
        out: dict[str, dict[str, str]] = {}
        for name in RULE_SPECS:
            env_value = rule_value_text(self.settings.rules, name)
            if name in live:
                try:
                    validate_rule(name, live[name])
                    out[name] = {"value": live[name], "source": "live", "env": env_value}
                except SettingError as exc:
                    out[name] = {
                        "value": env_value,
                        "source": "env (live value refused)",
                        "env": env_value,
                        "refused": str(exc),
                    }
            else:
                out[name] = {"value": env_value, "source": "env", "env": env_value}
        return out

    async def extend(self, rotation_id: str, seconds: float, by: str) -> RotationRecord:
        """Give a rotation `seconds` from now (shorter or longer than before)."""
        if not DEADLINE_FROM_NOW.holds(seconds):
            raise Refused(f"seconds={seconds!r}: expected {DEADLINE_FROM_NOW.expected}")
        rotation_id = await self._rotation_id(rotation_id)
        deadline = wall_ms() + int(seconds * 1000)
        return await self._apply(Extend(rotation_id, deadline, by), rotation_id)

    async def abort(self, rotation_id: str, by: str) -> RotationRecord:
        """Abort a rotation in flight; its waiting plan is blocked."""
        rotation_id = await self._rotation_id(rotation_id)
        return await self._apply(Abort(rotation_id, by), rotation_id)

    async def _rotation_id(self, given: str) -> str:
        """The full id of the rotation `given` (an id or a unique prefix) names."""
        try:
            return await resolve_rotation_id(self.redis, self.keys, given)
        except AmbiguousId as exc:
            raise Refused(str(exc)) from None

    async def _apply(self, item: Abort | Extend, rotation_id: str) -> RotationRecord:
        engine = self._engine()
        try:
            await engine.handle([item])
        except UnknownRotation:
            raise Refused(f"no rotation {rotation_id!r} in this book") from None
        except IllegalTransition as exc:
            raise Refused(f"rotation {rotation_id} is {exc.state}: {exc.trigger} refused") from None
        rec = await engine.store.rotation(rotation_id)
        assert rec is not None
        return rec


# ---------------------------------------------------------------- CLI


def _settings_for(args: Any) -> Settings:
    env: dict[str, str] = {}
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    if args.book:
        env["GOV_BOOK"] = args.book
    import os

    return load_settings({**os.environ, **env})


def target(settings: Settings) -> str:
    """Which Redis (credentials masked) and which book a command acts on."""

    return f"redis {mask_credentials(settings.redis_url)}, book {settings.book or '(default)'}"


async def _act(controls: Controls, args: Any) -> str:
    """Apply one mutating command; the line saying what it did."""
    match args.command:
        case "set":
            old, new = await controls.set(args.key, args.value, args.by)
            return f"{args.key}: {old if old is not None else '(env)'} -> {new}"
        case "unset":
            old = await controls.unset(args.key, args.by)
            if old is None:
                return f"{args.key}: no live value; every replica already uses its environment's"
            return f"{args.key}: {old} -> (env): each replica uses its environment's value"
        case "pause":
            await controls.set("GOV_ENTRIES_PAUSED", "true", args.by)
            return "entries paused: every OPEN plan is blocked active_slots_paused"
        case "resume":
            await controls.set("GOV_ENTRIES_PAUSED", "false", args.by)
            return "entries resumed"
        case "extend":
            rec = await controls.extend(args.rotation_id, args.seconds, args.by)
            return f"rotation {rec.rotation_id}: deadline now {iso_ms(rec.deadline_ms)}"
        case "abort":
            rec = await controls.abort(args.rotation_id, args.by)
            return f"rotation {rec.rotation_id}: {rec.state}"
    raise Refused(f"unknown control {args.command}")


async def _run(args: Any) -> str:
    settings = _settings_for(args)
    redis = connect(settings)
    keys = Keys(book=settings.book, streams=settings.streams)
    try:
        if args.command == "settings":
            data = await replica_settings(redis, keys, settings, wall_ms())
            if args.json:
                return to_json(data).rstrip("\n")
            return f"{target(settings)}\n{settings_text(data)}"
        done = await _act(Controls(redis, keys, settings), args)
        return f"{done}\n  acted on {target(settings)}"
    finally:
        await redis.aclose()


def command(args: Any) -> int:
    """`rotation-fsm set|unset|settings|pause|resume|extend|abort`: 0 done, 1 refused."""
    try:
        print(asyncio.run(_run(args)))
    except (Refused, SettingError) as exc:
        print(f"rotation-fsm {args.command}: refused: {exc}", file=sys.stderr)
        return 1
    except (RedisError, OSError) as exc:  # nothing was changed: say where it failed
        print(f"rotation-fsm {args.command}: Redis unavailable: {clean(str(exc))}", file=sys.stderr)
        return 1
    return 0
