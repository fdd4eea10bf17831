"""Short ids: any unique prefix of a plan or rotation id names it, as in git.

The demo and the console print the first 8 characters of a plan id, so the
commands that take an id accept a prefix: an id that exists as given is used
as is; otherwise the book's plan and rotation records are searched for ids
starting with it. A rotation id is `{plan_id}@{created_ms}`, so the plan that
began a rotation and the rotation share a prefix: those count as one match
(the plan, whose story tells its rotation) unless only rotations are wanted.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import RotationFsmError
from ..core.messages import as_text
from .gateway import AnyRedis
from .keys import Keys

#: the candidates an ambiguous prefix lists at most
SHOWN = 10
_GLOB_SPECIAL = "\\*?[]"


class AmbiguousId(RotationFsmError, LookupError):
    """A prefix that names more than one plan or rotation."""

    def __init__(self, given: str, candidates: list[str]) -> None:
        shown = candidates[:SHOWN]
        more = len(candidates) - len(shown)
        lines = [f"{given!r} is ambiguous, it starts {len(candidates)} ids:"]
        lines += [f"  {c}" for c in shown]
        if more:
            lines.append(f"  … and {more} more: give more characters")
        super().__init__("\n".join(lines))
        self.candidates = candidates


@dataclass(frozen=True)
class Match:
    """What a prefix found: plan ids and rotation ids starting with it."""

    plans: list[str]
    rotations: list[str]


def glob_escape(text: str) -> str:
    """`text` as a literal inside a Redis MATCH pattern."""
    return "".join("\\" + ch if ch in _GLOB_SPECIAL else ch for ch in text)


async def _ids_under(redis: AnyRedis, key_prefix: str, given: str) -> list[str]:
    found = {
        as_text(key)[len(key_prefix) :]
        async for key in redis.scan_iter(match=key_prefix + glob_escape(given) + "*", count=1000)
    }
    return sorted(found)


async def find(redis: AnyRedis, keys: Keys, given: str) -> Match:
    """Plan and rotation ids of the book that start with `given`."""
    return Match(
        plans=await _ids_under(redis, keys.plan(""), given),
        rotations=await _ids_under(redis, keys.rotation(""), given),
    )


def _one(given: str, candidates: list[str]) -> str:
    if len(candidates) > 1:
        raise AmbiguousId(given, candidates)
    return candidates[0] if candidates else given


async def resolve_id(redis: AnyRedis, keys: Keys, given: str) -> str:
    """The plan or rotation id `given` abbreviates; `given` itself when it exists as
    given or nothing starts with it (the caller then says it is unknown)."""
    if await redis.exists(keys.rotation(given), keys.plan(given)):
        return given
    match = await find(redis, keys, given)
    # A rotation begun by a matching plan is that plan's story: one match, not two.
    own = {r for r in match.rotations if r.rpartition("@")[0] in match.plans}
    return _one(given, match.plans + [r for r in match.rotations if r not in own])


async def resolve_rotation_id(redis: AnyRedis, keys: Keys, given: str) -> str:
    """The rotation id `given` abbreviates (a prefix of it or of its plan id)."""
    if await redis.exists(keys.rotation(given)):
        return given
    return _one(given, await _ids_under(redis, keys.rotation(""), given))
