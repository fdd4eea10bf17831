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

from .audit import SettingChange, setting_entry
from .decide import Abort, Extend, UnknownRotation
from .engine import BookEngine, wall_ms
from .keys import Keys
from .machine import IllegalTransition
from .market import Account, Kline, Position
from .messages import RotationRecord
from .settings import (
    RULE_SPECS,
    SettingError,
    Settings,
    load_settings,
    rule_value_text,
    validate_rule,
)
from .store import AnyRedis, Store


class Refused(Exception):
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
        raw = await self.redis.hget(self.keys.settings, name)
        old = raw.decode() if raw is not None else None
        change = SettingChange(now_ms=wall_ms(), key=name, old=old, new=new, by=by)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.settings, name, new)
            pipe.xadd(
                self.keys.audit,
                setting_entry(change),
                maxlen=self.settings.audit_maxlen,
                approximate=True,
            )
            await pipe.execute()
        return old, new

    async def show(self) -> dict[str, dict[str, str]]:
        """Each rule: the value in force for this environment, and where it comes from."""
        live = {
            k.decode(): v.decode()
            for k, v in (await self.redis.hgetall(self.keys.settings)).items()
        }
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
        if not seconds >= 0:
            raise Refused(f"seconds must be >= 0, got {seconds}")
        deadline = wall_ms() + int(seconds * 1000)
        return await self._apply(Extend(rotation_id, deadline, by), rotation_id)

    async def abort(self, rotation_id: str, by: str) -> RotationRecord:
        """Abort a rotation in flight; its waiting plan is blocked."""
        return await self._apply(Abort(rotation_id, by), rotation_id)

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


async def _run(args: Any) -> str:
    from .service import connect

    settings = _settings_for(args)
    redis = connect(settings)
    controls = Controls(redis, Keys(book=settings.book, streams=settings.streams), settings)
    try:
        match args.command:
            case "set":
                old, new = await controls.set(args.key, args.value, args.by)
                return f"{args.key}: {old if old is not None else '(env)'} -> {new}"
            case "pause":
                await controls.set("GOV_ENTRIES_PAUSED", "true", args.by)
                return "entries paused: every OPEN plan is blocked active_slots_paused"
            case "resume":
                await controls.set("GOV_ENTRIES_PAUSED", "false", args.by)
                return "entries resumed"
            case "extend":
                rec = await controls.extend(args.rotation_id, args.seconds, args.by)
                return f"rotation {rec.rotation_id}: deadline now {rec.deadline_ms / 1000:.3f}"
            case "abort":
                rec = await controls.abort(args.rotation_id, args.by)
                return f"rotation {rec.rotation_id}: {rec.state}"
            case "settings":
                table = await controls.show()
                if args.json:
                    import json

                    return json.dumps(table, indent=2, sort_keys=True)
                width = max(len(n) for n in table)
                return "\n".join(
                    f"{name:<{width}}  {row['value']:<8}  {row['source']}"
                    for name, row in table.items()
                )
        raise Refused(f"unknown control {args.command}")
    finally:
        await redis.aclose()


def command(args: Any) -> int:
    """`rotation-fsm set|settings|pause|resume|extend|abort`: 0 done, 1 refused."""
    try:
        print(asyncio.run(_run(args)))
    except (Refused, SettingError) as exc:
        print(f"rotation-fsm {args.command}: refused: {exc}", file=sys.stderr)
        return 1
    return 0
