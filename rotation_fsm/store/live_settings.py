"""A book's live settings hash: read it, and change one setting together with its
audit entry in one transaction (contract §7)."""

from __future__ import annotations

from typing import Any, cast

from ..core.audit import SettingChange, setting_entry
from ..core.messages import as_text_lenient, fields_text
from .gateway import AnyRedis
from .keys import Keys


async def read_live(redis: AnyRedis, keys: Keys) -> dict[str, str]:
    """Every live setting of the book (invalid UTF-8 replaced: validation refuses it)."""
    return fields_text(await redis.hgetall(keys.settings), "replace")


async def live_value(redis: AnyRedis, keys: Keys, name: str) -> str | None:
    """The live value of setting `name`, or None when the environment's is in force."""
    raw = await redis.hget(keys.settings, name)
    return None if raw is None else as_text_lenient(raw)


async def write_change(
    redis: AnyRedis, keys: Keys, change: SettingChange, audit_maxlen: int
) -> None:
    """Set (or, `change.new` None, delete) one live setting and append its audit entry,
    both or neither."""
    async with redis.pipeline(transaction=True) as pipe:
        if change.new is None:
            pipe.hdel(keys.settings, change.key)
        else:
            pipe.hset(keys.settings, change.key, change.new)
        pipe.xadd(
            keys.audit,
            cast("dict[Any, Any]", setting_entry(change)),  # redis-py wants wider keys
            maxlen=audit_maxlen,
            approximate=True,
        )
        await pipe.execute()
