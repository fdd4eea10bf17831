"""The one paged reader of a Redis stream: a long history never arrives as one reply.

`dump`, `replay`, `explain`, `status`, the console's charts and the chaos checker read
streams through it, oldest or newest first, bounded or not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ..core.messages import as_text
from .gateway import AnyRedis

#: entries per XRANGE/XREVRANGE call
PAGE = 1000


async def scan_stream(
    redis: AnyRedis,
    key: str,
    *,
    low: str = "-",
    high: str = "+",
    newest_first: bool = False,
    limit: int | None = None,
    page: int | None = None,
) -> AsyncIterator[tuple[str, dict[Any, Any]]]:
    """Entries of `key` in [low, high] as (entry id, raw fields), page by page, at most
    `limit` of them (None: all), `page` (default `PAGE`) per call."""
    page = page or PAGE
    seen = 0
    while limit is None or seen < limit:
        want = page if limit is None else min(page, limit - seen)
        if newest_first:
            got: list[Any] = await redis.xrevrange(key, max=high, min=low, count=want) or []
        else:
            got = await redis.xrange(key, min=low, max=high, count=want) or []
        for entry_id, raw in got:
            seen += 1
            yield as_text(entry_id), raw
        if len(got) < want:
            return
        after = "(" + as_text(got[-1][0])  # exclusive bounds: Redis >= 6.2
        high, low = (after, low) if newest_first else (high, after)
