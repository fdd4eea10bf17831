"""What the web console shows, read from one book's Redis state (JSON-ready dicts).

Built on `explain.status` and `explain.explain` — the same numbers and sentences
the CLI prints — plus what only a screen needs: slot cells, finished rotations of
the last hour and recent decisions with their latency.
"""

from __future__ import annotations

from typing import Any, cast

from ..core.messages import RotationRecord, as_text_lenient, fields_text, rotation_from_hash
from ..store.gateway import AnyRedis
from ..store.keys import Keys
from ..tools.diagram import render_path
from ..tools.explain import book_now, explain, rotation_hashes

HOUR_S = 3600.0
RECENT_DECISIONS = 200
RECENT_FINISHED = 50
#: rows of one page of the history tables
PAGE_ROWS = 50
#: entries a filtered page reads through at most before it hands back a cursor
SCAN_CAP = 5000
_READ = 500


def entry_ms(entry_id: str) -> int:
    """The milliseconds part of a stream entry id (Redis's clock); 0 if not one."""
    head = entry_id.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def slot_cells(slots: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One cell per desired slot (more if over): open positions, weakest first, then
    entries in flight (reserved, not open), then symbols being closed, then free."""
    if slots is None or slots.get("desired") is None:
        return []
    positions = {p["symbol"]: p for p in slots.get("positions", [])}
    opened = sorted(slots["open"], key=lambda s: -positions.get(s, {}).get("weakness", 0.0))
    cells: list[dict[str, Any]] = []
    targets = set(slots["rotation_targets"])
    for symbol in opened:
        p = positions.get(symbol, {})
        kind = "closing" if symbol in targets else "open"
        pnl, weakness = p.get("pnl_pct"), p.get("weakness")
        cells.append({"kind": kind, "symbol": symbol, "pnl_pct": pnl, "weakness": weakness})
    for symbol in sorted(set(slots["reserved"]) - set(opened)):
        cells.append({"kind": "inflight", "symbol": symbol})
    for symbol in sorted(targets - set(opened) - set(slots["reserved"])):
        cells.append({"kind": "closing", "symbol": symbol})
    cells += [{"kind": "free"} for _ in range(max(0, slots["desired"] - len(cells)))]
    for i, cell in enumerate(cells):
        cell["over"] = i >= slots["desired"]
    return cells


def _decision_row(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    plan_entry = fields.get("entry_id", "")
    latency = entry_ms(entry_id) - entry_ms(plan_entry) if plan_entry else None
    return {
        "id": entry_id,
        "time_ms": entry_ms(entry_id),
        "plan_id": fields.get("plan_id", ""),
        "symbol": fields.get("symbol", ""),
        "decision": fields.get("decision", ""),
        "reason": fields.get("reason", ""),
        "rotation_id": fields.get("rotation_id", ""),
        "latency_ms": latency if latency is not None and latency >= 0 else None,
    }


async def recent_decisions(redis: AnyRedis, keys: Keys, count: int) -> list[dict[str, Any]]:
    """The newest `count` decisions, newest first."""
    rows = cast("list[Any]", await redis.xrevrange(keys.decisions, count=count))
    return [
        _decision_row(
            as_text_lenient(eid),
            fields_text(fields, "replace"),
        )
        for eid, fields in rows
    ]


def mark_resends(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows (newest first) whose plan id an older row of the same page already has are
    the apply layer sending the plan again: marked `resend`, not unexplained twins."""
    seen: set[str] = set()
    for row in reversed(rows):
        row["resend"] = row["plan_id"] in seen
        seen.add(row["plan_id"])
    return rows


async def decision_page(
    redis: AnyRedis,
    keys: Keys,
    *,
    from_ms: int | None = None,
    to_ms: int | None = None,
    reason: str = "",
    before: str = "",
    limit: int = PAGE_ROWS,
) -> dict[str, Any]:
    """One page of decisions, newest first, within [from_ms, to_ms], of one `reason`
    (empty: any), older than the entry id `before`. `next` is the cursor of the
    following page (None: no more); a rare reason reads at most `SCAN_CAP` entries
    per page, so a page may come back short with a cursor to go on from."""
    high = f"({before}" if before else (str(to_ms) if to_ms is not None else "+")
    low = str(from_ms) if from_ms is not None else "-"
    rows: list[dict[str, Any]] = []
    scanned, cursor = 0, ""
    while len(rows) < limit and scanned < SCAN_CAP:
        page = cast(
            "list[Any]", await redis.xrevrange(keys.decisions, max=high, min=low, count=_READ)
        )
        exhausted = len(page) < _READ  # nothing older in the range after this page
        for i, (eid, fields) in enumerate(page):
            scanned += 1
            row = _decision_row(as_text_lenient(eid), fields_text(fields, "replace"))
            cursor = row["id"]
            if reason and row["reason"] != reason:
                continue
            rows.append(row)
            if len(rows) == limit:
                exhausted = exhausted and i == len(page) - 1
                break
        if exhausted:
            return {"rows": mark_resends(rows), "next": None}
        high = f"({cursor}"
    return {"rows": mark_resends(rows), "next": cursor}


async def rotation_page(
    redis: AnyRedis,
    keys: Keys,
    *,
    from_ms: int | None = None,
    to_ms: int | None = None,
    state: str = "",
    offset: int = 0,
    limit: int = PAGE_ROWS,
) -> dict[str, Any]:
    """One page of finished rotations, newest end first, ended within [from_ms, to_ms],
    in final `state` (empty: any), from `offset` in that range. `next` is the offset
    of the following page (None: no more); `total` how many ended in the range."""
    high = to_ms if to_ms is not None else "+inf"
    low = from_ms if from_ms is not None else "-inf"
    total = int(await redis.zcount(keys.finished, low, high))
    rows: list[dict[str, Any]] = []
    position = offset
    while len(rows) < limit and position < total and position - offset < SCAN_CAP:
        ids = await redis.zrevrangebyscore(keys.finished, high, low, start=position, num=_READ)
        if not ids:
            break
        hashes = await rotation_hashes(redis, keys, [as_text_lenient(r) for r in ids])
        for raw in hashes:
            position += 1
            if not raw:
                continue  # expired since it ended
            row = _finished_row(rotation_from_hash(raw))
            if not state or row["state"] == state:
                rows.append(row)
                if len(rows) == limit:
                    break
    return {"rows": rows, "next": position if position < total else None, "total": total}


def _finished_row(rec: RotationRecord) -> dict[str, Any]:
    return {
        "rotation_id": rec.rotation_id,
        "state": rec.state,
        "close_symbol": rec.close_symbol,
        "new_symbol": rec.new_symbol,
        "new_plan_id": rec.new_plan_id,
        "created_ms": rec.created_ms,
        "ended_ms": rec.ended_ms,
    }


async def finished_rotations(
    redis: AnyRedis, keys: Keys, now_ms: int, window_s: float
) -> tuple[list[dict[str, Any]], int]:
    """The newest `RECENT_FINISHED` rotations that ended within `window_s`, and how
    many ended in it (a busy book ends hundreds a second: never load them all)."""
    low = now_ms - int(window_s * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrevrangebyscore(keys.finished, now_ms, low, start=0, num=RECENT_FINISHED)
        pipe.zcount(keys.finished, low, now_ms)
        ids, total = await pipe.execute()
    hashes = await rotation_hashes(redis, keys, [as_text_lenient(rid) for rid in ids])
    return [_finished_row(rotation_from_hash(raw)) for raw in hashes if raw], int(total)


async def paused(redis: AnyRedis, keys: Keys) -> bool:
    raw = await redis.hget(keys.settings, "GOV_ENTRIES_PAUSED")
    return raw is not None and as_text_lenient(raw).strip().lower() in ("1", "true", "yes", "on")


async def console_state(
    redis: AnyRedis, keys: Keys, now_ms: int, *, window_s: float = HOUR_S
) -> dict[str, Any]:
    """Everything the console's main page draws, for one book."""
    book = await book_now(redis, keys, now_ms)
    slots = book["slots"]
    finished, finished_total = await finished_rotations(redis, keys, now_ms, window_s)
    return {
        "now_ms": now_ms,
        "book": keys.book,
        "paused": await paused(redis, keys),
        "slots": slots,
        "cells": slot_cells(slots),
        "in_flight": book["rotations_in_flight"],
        "reservations": book["reservations"],
        "finished": finished,
        "finished_total": finished_total,
        "decisions": await recent_decisions(redis, keys, RECENT_DECISIONS),
    }


def story_diagram(data: dict[str, Any]) -> str | None:
    """The SVG of the machine with the story's rotation path highlighted (a plan's:
    its newest rotation), or the plain machine when there is no rotation."""
    rotation = data.get("rotation")
    if rotation is None and data.get("rotations"):
        rotation = data["rotations"][-1]
    if rotation is None and data.get("close_of"):
        rotation = data["close_of"].get("rotation")
    if rotation is None:
        return None
    path = ["IDLE", *(str(step[2]) for step in rotation.get("history", []))]
    try:
        return render_path("svg", path, rotation["state"])
    except ValueError:
        return None


async def console_story(redis: AnyRedis, keys: Keys, some_id: str) -> dict[str, Any] | None:
    """`explain`'s story of a plan or rotation, with its diagram; None when unknown."""
    story = await explain(redis, keys, some_id)
    if story is None:
        return None
    data = dict(story.data)
    for rotation in [data.get("rotation"), *data.get("rotations", [])]:
        if isinstance(rotation, dict):
            rotation.pop("diagram_mermaid", None)  # the page draws the SVG below
    return {"id": some_id, "lines": story.lines, "svg": story_diagram(data), **data}
