"""Plain-text formatting shared by `replay`, `explain` and `status`: times, numbers, tables.

No colours, no terminal probing: the same data gives the same bytes, so `replay`
output can be compared byte for byte and pasted into a ticket.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

NONE = "—"  # an empty list or a missing number, visibly not a zero


def iso_ms(ms: int) -> str:
    """`ms` since the epoch as ISO 8601 UTC with milliseconds: 2026-02-03T14:02:00.123Z."""
    whole = datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{ms % 1000:03d}Z"


def seconds(ms: int | float) -> str:
    """A duration in ms as seconds with millisecond precision: `2.013 s`."""
    return f"{ms / 1000:.3f} s"


def pct(value: float | None, digits: int = 2) -> str:
    """A fraction as a percentage (`0.0513` → `5.13%`); `—` when unknown."""
    return NONE if value is None else f"{value * 100:.{digits}f}%"


def num(value: float | None, digits: int = 6) -> str:
    """A number with `digits` significant digits; `—` when unknown."""
    return NONE if value is None else f"{value:.{digits}g}"


def listing(items: Iterable[str]) -> str:
    """`a, b, c` in the given order, or `—` when there is nothing."""
    text = ", ".join(items)
    return text or NONE


def times(n: int) -> str:
    """`once`, `twice`, `3 times`."""
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def state_changes(history: Iterable[Sequence[Any]]) -> list[tuple[int, str]]:
    """A rotation record's history `[ms, trigger, state]` as `(ms, "A → B (trigger)")`."""
    out: list[tuple[int, str]] = []
    previous = "IDLE"
    for ms, trigger, state in history:
        out.append((int(ms), f"{previous} → {state} ({trigger})"))
        previous = state
    return out


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], indent: int = 2, empty: str = "none"
) -> list[str]:
    """Rows under headers, each column as wide as its widest cell, trailing spaces cut;
    just `empty` (indented) when there are no rows."""
    if not rows:
        return [" " * indent + empty]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    pad = " " * indent

    def line(cells: Sequence[str]) -> str:
        return (pad + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def to_json(data: Any) -> str:
    """Machine output: sorted keys, two-space indent, UTF-8 kept, newline at the end."""
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
