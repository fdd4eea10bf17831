"""`rotation-fsm explain` and `rotation-fsm status`: the record, told for a person.

`explain ID` answers "why was my entry blocked, and why was that position
closed?" from what Redis holds — the rotation hash, the plan record and the
audit stream — never from the exchange. For each decision of a plan it re-runs
the recorded batch up to that plan through the core (from the batch's seed),
so the numbers it shows are the ones the decision actually saw: the regime
reading, desired slots, which symbols held the slots, the candidate to close.

`status` shows the book now: slots (from the newest audit batch with an
exchange snapshot), reservations, rotations in flight with time to deadline,
and how rotations ended over a window.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
from redis.exceptions import RedisError

from ..core import reasons as R
from ..core.audit import AuditBatch, entry_body
from ..core.decide import BookView, Decided, Input, PlanIn, decide_one, gate, start_batch
from ..core.messages import (
    BadEntry,
    Decision,
    Plan,
    PlanRecord,
    RotationRecord,
    as_text,
    fields_text,
    plan_record_decoder,
    rotation_from_hash,
)
from ..core.regime import (
    CHOP_MAX_TREND,
    CHOP_MIN_ATR_PCT,
    MIN_KLINES,
    TREND_STRONG_MAX_ATR_PCT,
    TREND_STRONG_MIN_TREND,
    Regime,
)
from ..core.settings import Rules, SettingError
from ..core.slots import PolicyError, desired_slots, occupied, parse_universe
from ..core.snapshot import Market
from ..core.timeline import (
    NONE,
    iso_ms,
    listing,
    num,
    pct,
    seconds,
    state_changes,
    table,
    times,
    to_json,
)
from ..store.gateway import AnyRedis
from ..store.keys import Keys
from ..store.shortid import AmbiguousId, resolve_id
from ..store.stream_pages import scan_stream
from .diagram import render_path
from .replay import Recorded, Unreadable, id_key, open_book, parse_audit, settings_for

EXIT_OK, EXIT_UNKNOWN, EXIT_UNREADABLE = 0, 1, 2
#: stream entries one search reads at most (a plan whose record expired is looked
#: for newest first; `status` looks this far back for an exchange snapshot)
SCAN_LIMIT = 20_000
#: audit entries looked back through for each symbol's newest regime reading
READINGS_SCAN = 500
#: how far after a plan's or rotation's last known moment its entries are looked for
AFTER_MS = 60_000
#: entry ids are Redis's clock, `now_ms` the engine host's: allow them to disagree
SKEW_MS = 5_000

_SLOTS_VAR = {
    Regime.TREND_STRONG: "GOV_ACTIVE_SLOTS_TREND_STRONG",
    Regime.BASE: "GOV_ACTIVE_SLOTS_BASE",
    Regime.CHOP: "GOV_ACTIVE_SLOTS_CHOP",
    Regime.UNKNOWN: "GOV_ACTIVE_SLOTS_CHOP",
}


# ================================================================ the numbers of one decision


def plan_facts(
    plan: Plan, view: BookView, market: Market, rules: Rules, now_ms: int
) -> dict[str, Any]:
    """Every number the slots gate looked at for `plan`, from the core's own record of
    it (`decide.gate`), made JSON-ready."""
    applied = gate(plan, view, market, rules, now_ms)
    reading, desired, candidate = applied.reading, applied.desired_slots, applied.candidate
    targets = sorted(view.rotation_targets())
    taken = sorted(applied.occupied)
    facts: dict[str, Any] = {
        "symbol": plan.symbol,
        "action": plan.action,
        "confidence": plan.confidence,
        "regime": reading.regime.value,
        "ema20": reading.ema20,
        "ema50": reading.ema50,
        "trend": reading.trend,
        "atr_pct": reading.atr_pct,
        "klines": reading.klines,
        "desired_slots": desired,
        "slots_setting": _SLOTS_VAR[reading.regime],
        "open": sorted(market.open_symbols) if market.positions is not None else None,
        "positions_error": market.positions_error,
        "account_error": market.account_error,
        "exchange_view": market.view,
        "reserved": sorted(view.reservations),
        "rotation_targets": targets,
        "occupied": taken,
        "free": applied.free,
        "excluded": sorted(applied.excluded),
        "verdict": applied.verdict,
        "check": applied.reason,
        "in_flight": len(view.inflight),
        "max_concurrent_rotations": rules.max_concurrent_rotations,
        "candidate": None,
        "rotation_threshold": rules.rotation_threshold,
        "margin_usage": market.account.margin_usage if market.account else None,
        "max_margin_usage": rules.max_margin_usage,
        "correlations": market.correlations.get(plan.symbol, {}),
        "max_correlation": rules.max_correlation,
        "klines_missing": list(market.klines_missing),
        "reservation_ttl_s": rules.reservation_ttl_s,
        "lock_ttl_s": rules.lock_ttl_s,
    }
    if candidate is not None:
        facts["candidate"] = {
            "symbol": candidate.symbol,
            "weakness": round(candidate.weakness(now_ms), 8),
            "pnl_pct": round(candidate.pnl_pct, 8),
            "entry_confidence": view.entry_confidence.get(candidate.symbol),
        }
    try:
        universe = parse_universe(view.policy_raw)
        facts["universe_size"] = len(universe)
    except PolicyError as exc:
        facts["policy_error"] = str(exc)
    return facts


@dataclass
class Moment:
    """One decision of a plan inside a recorded batch, with what it was based on."""

    audit_id: str
    now_ms: int
    recorded: list[str]  # [plan_id, verdict, reason, rotation_id] as the audit says
    today: Decision | None  # what today's core decides on the same seed
    item: Input
    facts: dict[str, Any]
    earlier: PlanRecord | None  # the plan's record before this input (a resend has one)


def moments(audit_id: str, batch: AuditBatch, plan_id: str) -> list[Moment]:
    """The decisions of `plan_id` in `batch`, each with the facts just before it.

    Re-runs the batch from its seed through the core, input by input, so a plan
    later in a batch sees what earlier entries reserved or rotated.
    """
    view = batch.seed.to_view()
    market, rules, now_ms = batch.market, batch.rules, batch.now_ms
    market, _ = start_batch(view, market, rules, now_ms)
    recorded = iter([row for row in batch.decided if row[0] == plan_id])
    out: list[Moment] = []
    for item in batch.inputs:
        facts: dict[str, Any] = {}
        if isinstance(item, PlanIn) and item.plan.plan_id == plan_id:
            facts = plan_facts(item.plan, view, market, rules, now_ms)
        earlier = view.plans.get(plan_id)
        effects = decide_one(item, view, market, rules, now_ms)
        for effect in effects:
            view.apply(effect)
        for effect in effects:
            if isinstance(effect, Decided) and effect.decision.plan_id == plan_id:
                row = next(recorded, None)
                if row is not None:
                    out.append(Moment(audit_id, now_ms, row, effect.decision, item, facts, earlier))
    return out


# ================================================================ sentences


def regime_sentence(f: dict[str, Any]) -> str:
    """How the symbol's regime was read, and the slots it gives."""
    regime, trend, atr = f["regime"], f["trend"], f["atr_pct"]
    slots = f"{f['desired_slots']} desired slots ({f['slots_setting']})"
    if regime == Regime.UNKNOWN or trend is None or atr is None:
        return (
            f"{f['symbol']} has {f['klines']} klines (fewer than {MIN_KLINES}): regime UNKNOWN, "
            f"counted as CHOP → {slots}."
        )
    if regime == Regime.TREND_STRONG:
        why = (
            f"trend > {pct(TREND_STRONG_MIN_TREND, 0)} and ATR% < "
            f"{pct(TREND_STRONG_MAX_ATR_PCT, 0)}"
        )
    elif regime == Regime.CHOP:
        why = (
            f"ATR% > {pct(CHOP_MIN_ATR_PCT, 0)}"
            if atr > CHOP_MIN_ATR_PCT
            else f"trend < {pct(CHOP_MAX_TREND, 0)}"
        )
    else:
        why = (
            f"not TREND_STRONG: trend > {pct(TREND_STRONG_MIN_TREND, 0)} and ATR% < "
            f"{pct(TREND_STRONG_MAX_ATR_PCT, 0)}; not CHOP: ATR% > {pct(CHOP_MIN_ATR_PCT, 0)} "
            f"or trend < {pct(CHOP_MAX_TREND, 0)}"
        )
    return (
        f"{f['symbol']} reads {regime}: EMA20 {num(f['ema20'])}, EMA50 {num(f['ema50'])}, "
        f"trend {pct(trend)}, ATR% {pct(atr)} over {f['klines']} klines ({why}) → {slots}."
    )


def occupancy_sentence(f: dict[str, Any]) -> str:
    """Which symbols held the slots, and how many were left."""
    taken = len(f["occupied"])
    return (
        f"Occupied {taken}: open {listing(f['open'] or [])}; reserved {listing(f['reserved'])}; "
        f"rotation targets {listing(f['rotation_targets'])} → {f['desired_slots']} − {taken} "
        f"= {f['free']} free."
    )


def _candidate_text(c: dict[str, Any]) -> str:
    return f"{c['symbol']} (weakness {c['weakness']:.4f}, pnl {pct(c['pnl_pct'])})"


def _slot_reasons(reason: str, f: dict[str, Any], rotation_id: str) -> list[str]:
    c = f["candidate"]
    if reason == R.SLOTS_AVAILABLE:
        return [
            f"A slot was free: allowed, and {f['symbol']} reserved until this plan's "
            f"result comes, for up to {f['reservation_ttl_s']:g} s."
        ]
    if reason == R.WAITING_ROTATION_CLOSE:
        target = f"closes {_candidate_text(c)}, the weakest position it may close" if c else ""
        return [
            f"No slot free: rotation {rotation_id} {target}; the entry waits for that close "
            f"(deadline {f['lock_ttl_s']:g} s)."
        ]
    if reason == R.ROTATION_IN_PROGRESS and f["symbol"] in f["rotation_targets"]:
        return [
            f"{f['symbol']} is still open but a rotation in flight is closing it: no entry "
            f"for it until that rotation ends (asked again, it is decided afresh)."
        ]
    if reason == R.ROTATION_IN_PROGRESS:
        return [
            f"No slot free, and {f['in_flight']} rotation(s) already in flight "
            f"(GOV_MAX_CONCURRENT_ROTATIONS={f['max_concurrent_rotations']})."
        ]
    if reason == R.NO_ROTATION_CANDIDATE:
        if c is None:
            return [
                "No slot free, and no open position may be closed (the plan's own symbol, "
                "rotation targets and reservations are never closed)."
            ]
        old, new, t = c["entry_confidence"], f["confidence"], f["rotation_threshold"]
        bar = (1 + t) * old if old is not None else None
        return [
            f"No slot free; the weakest position {_candidate_text(c)} was entered at "
            f"confidence {num(old)}, and this plan's {num(new)} is below (1 + {t:g}) × "
            f"{num(old)} = {num(bar)} (GOV_ROTATION_THRESHOLD)."
        ]
    return []


def _gate_reasons(reason: str, f: dict[str, Any]) -> list[str]:
    if reason == R.EXCHANGE_STALE:
        why = f["positions_error"]
        return [f"The exchange view was too old to decide on ({why}): fail closed."]
    if reason == R.NOT_IN_UNIVERSE:
        return [f"{f['symbol']} is not among the {f.get('universe_size', 0)} policy symbols."]
    if reason == R.NO_POLICY:
        return [f"No usable policy universe ({f.get('policy_error', 'missing')}): fail closed."]
    if reason == R.POSITIONS_UNAVAILABLE:
        if f["open"] is None:
            return [f"The exchange gave no positions ({f['positions_error'] or '?'}): fail closed."]
        if f["klines_missing"]:
            return [
                f"No klines for {listing(f['klines_missing'])}: correlation unknown, fail closed."
            ]
        return [f"No usable account answer ({f['account_error'] or '?'}) for the margin gate."]
    if reason == R.MARGIN_CAP:
        return [
            f"Margin usage {pct(f['margin_usage'])} is above GOV_MAX_MARGIN_USAGE_PCT "
            f"{pct(f['max_margin_usage'])}."
        ]
    if reason == R.CORRELATION_TOO_HIGH:
        worst = sorted(
            ((v, s) for s, v in f["correlations"].items() if v is not None), reverse=True
        )
        top = f"{worst[0][1]} at {worst[0][0]:.3f}" if worst else NONE
        return [
            f"{f['symbol']}'s 1 h returns correlate with {top}, above GOV_MAX_CORRELATION "
            f"{f['max_correlation']:g}."
        ]
    if reason == R.SLOT_ALREADY_HELD:
        held = "open" if f["symbol"] in (f["open"] or []) else "reserved"
        return [
            f"{f['symbol']} is already {held}: it takes no new slot, and holds that one "
            "until its result comes (should the position close first, it opens it again)."
        ]
    return []


_PLAIN = {
    R.CLOSE_EXEMPT: "A close plan: exempt from the slots gate.",
    R.SLOTS_DISABLED: "GOV_ACTIVE_SLOTS_ENABLED=false: every OPEN plan passes untouched.",
    R.PAUSED: "Entries are paused (GOV_ENTRIES_PAUSED=true); close plans and rotations go on.",
}
_SLOTTED = {
    R.SLOTS_AVAILABLE,
    R.WAITING_ROTATION_CLOSE,
    R.ROTATION_IN_PROGRESS,
    R.NO_ROTATION_CANDIDATE,
    R.MARGIN_CAP,
    R.CORRELATION_TOO_HIGH,
    R.SLOT_ALREADY_HELD,
}


def because(m: Moment, rotation: RotationRecord | None) -> list[str]:
    """The plain sentences behind one decision, numbers included."""
    _, verdict, reason, rotation_id = m.recorded
    lines: list[str] = []
    if m.earlier is not None and m.earlier.final and isinstance(m.item, PlanIn):
        return [
            f"A resend: the final answer of {iso_ms(m.earlier.decided_ms)} "
            f"({m.earlier.decision} {m.earlier.reason}) is given again, unchanged."
        ]
    if reason == R.WAITING_ROTATION_CLOSE and m.earlier is not None and m.earlier.rotation_id:
        return [f"A resend while rotation {rotation_id} is in flight: no second rotation."]
    if reason in _PLAIN:
        lines.append(_PLAIN[reason])
    elif m.facts:
        if reason in _SLOTTED:
            lines += [regime_sentence(m.facts), occupancy_sentence(m.facts)]
        lines += _slot_reasons(reason, m.facts, rotation_id) + _gate_reasons(reason, m.facts)
        if m.facts.get("exchange_view"):
            lines.append(f"Decided on the exchange view {m.facts['exchange_view']}.")
    elif rotation is not None:
        lines.append(ending_sentence(rotation, verdict, reason))
    if m.today is not None and (m.today.decision, m.today.reason) != (verdict, reason):
        lines.append(
            f"Today's code decides {m.today.decision} {m.today.reason} on the same record "
            f"(see `rotation-fsm replay`)."
        )
    return lines


def ending_sentence(rec: RotationRecord, verdict: str, reason: str) -> str:
    """Why the plan waiting on `rec` got its final answer when the rotation ended."""
    when = iso_ms(rec.ended_ms) if rec.ended_ms else "?"
    took = seconds(rec.ended_ms - rec.created_ms) if rec.ended_ms else "?"
    if reason == R.ROTATION_COMPLETE:
        return (
            f"The close plan {rec.close_plan_id} ({rec.close_symbol}) was confirmed executed, "
            f"reduce-only, at {when}, {took} after the rotation began: the entry is allowed "
            f"without being sent again."
        )
    if reason == R.ROTATION_TIMEOUT:
        return (
            f"No confirmation of {rec.close_plan_id} by the deadline {iso_ms(rec.deadline_ms)}: "
            f"timed out at {when}, {took} after it began."
        )
    if reason == R.ROTATION_CLOSE_REJECTED:
        return f"The close plan {rec.close_plan_id} came back not executed at {when}."
    if reason == R.ROTATION_ABORTED:
        return f"An operator aborted the rotation at {when}."
    return f"The rotation ended {rec.state} at {when}: {verdict} {reason}."


# ================================================================ rotation story


def began_positions(rec: RotationRecord, market: Market | None) -> list[list[Any]]:
    """[symbol, pnl, weakness] of each open position when `rec` began, as the core saw
    them: from its start batch's snapshot (`market`), or the copy older records kept."""
    if rec.snapshot or market is None:
        return rec.snapshot
    return [
        [p.symbol, round(p.pnl_pct, 8), round(p.weakness(rec.created_ms), 8)]
        for p in market.positions or []
    ]


def rotation_story(
    rec: RotationRecord,
    start: Moment | None,
    events: list[dict[str, str]],
    positions: list[list[Any]] | None = None,
) -> list[str]:
    """The rotation from trigger to outcome, with the numbers behind the choice."""
    lines = [f"rotation {rec.rotation_id}: {rec.state}"]
    began = f"Plan {rec.new_plan_id} asked for {rec.new_symbol} at {iso_ms(rec.created_ms)}"
    if start is not None and start.facts:
        f = start.facts
        lines.append(f"  {began}; the book was full.")
        lines.append(f"  {regime_sentence(f)}")
        lines.append(f"  {occupancy_sentence(f)}")
    else:
        lines.append(
            f"  {began}; the book was full (regime {rec.regime}, {rec.desired_slots} "
            f"desired slots)."
        )
    lines.append(
        f"  It closes {rec.close_symbol}, the weakest position it may close: weakness "
        f"{rec.close_weakness:.4f} (weakness = −pnl, +0.05 once a position is a day old)."
    )
    if positions := positions or rec.snapshot:
        rows = [
            [str(s), pct(float(p)), f"{float(w):.4f}", "closed" if s == rec.close_symbol else ""]
            for s, p, w in sorted(positions, key=lambda r: (-float(r[2]), str(r[0])))
        ]
        lines.append("  positions when it began:")
        lines += table(["symbol", "pnl", "weakness", "chosen"], rows, indent=4)
    lines.append(
        f"  Close plan {rec.close_plan_id} emitted; deadline {iso_ms(rec.deadline_ms)} "
        f"({seconds(rec.deadline_ms - rec.created_ms)} after it began)."
    )
    lines.append("  history:")
    lines += table(
        ["time", "state change"],
        [[iso_ms(ms), text] for ms, text in state_changes(rec.history)],
        indent=4,
    )
    if events:
        lines.append("  events:")
        lines += table(["time", "event", "state"], [_event_row(e) for e in events], indent=4)
    lines.append(f"  Outcome: {outcome(rec)}")
    return lines


def _event_row(ev: dict[str, str]) -> list[str]:
    ms = round(float(ev.get("timestamp", "0") or 0) * 1000)
    extra = f" (lock age {ev['lock_age']} s)" if ev.get("lock_age") else ""
    return [iso_ms(ms), ev.get("event", "?") + extra, ev.get("state", "")]


def outcome(rec: RotationRecord) -> str:
    """One sentence: where the rotation stands and what its plan got."""
    if not rec.ended_ms:
        left = rec.deadline_ms - int(time.time() * 1000)
        return f"in flight ({rec.state}); {seconds(max(0, left))} to its deadline. The entry waits."
    took = seconds(rec.ended_ms - rec.created_ms)
    answer = {
        "CONFIRMED": f"plan {rec.new_plan_id} ALLOW {R.ROTATION_COMPLETE}",
        "TIMED_OUT": f"plan {rec.new_plan_id} BLOCK {R.ROTATION_TIMEOUT}",
        "CLOSE_REJECTED": f"plan {rec.new_plan_id} BLOCK {R.ROTATION_CLOSE_REJECTED}",
        "ABORTED": f"plan {rec.new_plan_id} BLOCK {R.ROTATION_ABORTED}",
    }.get(rec.state, rec.state)
    late = (
        f"; the close executed late at {iso_ms(rec.late_confirmed_ms)} (slot freed, no entry)"
        if rec.late_confirmed_ms
        else ""
    )
    return f"{rec.state} at {iso_ms(rec.ended_ms)}, {took} after it began: {answer}{late}."


# ================================================================ reading Redis


async def _mentions(
    redis: AnyRedis, keys: Keys, needle: str, **scan: Any
) -> AsyncIterator[Recorded]:
    """Audit entries whose body names `needle` (JSON-quoted). The raw bytes are searched
    first, so the many entries that do not mention it are never decoded."""
    quoted = json.dumps(needle).encode()
    async for entry_id, raw in scan_stream(redis, keys.audit, **{"limit": SCAN_LIMIT, **scan}):
        if quoted in (entry_body(raw) or b""):
            yield parse_audit(entry_id, fields_text(raw), keys.audit)


def _plan_window(record: PlanRecord) -> tuple[int, int]:
    """Where in time a plan's decisions can be: from its first stream entry (or the
    start of its rotation) to its last entry or decision, widened for clock skew."""
    moments_ms = [id_key(e)[0] for e in record.entries] + [record.decided_ms]
    created = record.rotation_id.rpartition("@")[2]
    if created.isdigit():
        moments_ms.append(int(created))
    return min(moments_ms) - SKEW_MS, max(moments_ms) + AFTER_MS


async def _events_of(redis: AnyRedis, keys: Keys, rec: RotationRecord) -> list[dict[str, str]]:
    """The rotation's entries of the event stream (searched around its lifetime)."""
    last = max(rec.updated_ms, rec.ended_ms, rec.late_confirmed_ms, rec.created_ms)
    wanted = rec.rotation_id.encode()
    out = []
    async for _, raw in scan_stream(
        redis,
        keys.events,
        low=str(rec.created_ms - SKEW_MS),
        high=str(last + AFTER_MS),
        limit=SCAN_LIMIT,
    ):
        if raw.get(b"rotation_id") == wanted:
            out.append(fields_text(raw))
    return out


async def _rotation(redis: AnyRedis, keys: Keys, rotation_id: str) -> RotationRecord | None:
    raw: dict[Any, Any] = await redis.hgetall(keys.rotation(rotation_id))
    return _record(rotation_id, raw) if raw else None


def _record(rotation_id: str, raw: dict[Any, Any]) -> RotationRecord:
    try:
        return rotation_from_hash(raw)
    except BadEntry as exc:
        raise Unreadable(f"rotation {rotation_id}: {exc}") from None


async def _start_moment(
    redis: AnyRedis, keys: Keys, rec: RotationRecord
) -> tuple[Moment | None, Market | None]:
    """The decision that began `rec`, re-run from its audit batch, and that batch's
    exchange snapshot ((None, None) once trimmed)."""
    window = {"low": str(rec.created_ms - SKEW_MS), "high": str(rec.created_ms + AFTER_MS)}
    async for found in _mentions(redis, keys, rec.rotation_id, **window):
        batch = found.entry
        if isinstance(batch, AuditBatch) and batch.now_ms == rec.created_ms:
            for m in moments(found.entry_id, batch, rec.new_plan_id):
                if m.recorded[3] == rec.rotation_id and m.facts:
                    return m, batch.market
    return None, None


@dataclass
class Story:
    """What `explain` prints: lines for a terminal, data for --json."""

    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


async def explain_rotation(redis: AnyRedis, keys: Keys, rec: RotationRecord) -> Story:
    """The story of one rotation, from its hash, its events and its starting batch."""
    start, market = await _start_moment(redis, keys, rec)
    events = await _events_of(redis, keys, rec)
    positions = began_positions(rec, market)
    lines = rotation_story(rec, start, events, positions)
    data = {
        "kind": "rotation",
        "rotation": {**_rotation_json(rec), "snapshot": positions},
        "start": _moment_json(start, rec) if start else None,
        "events": events,
        "outcome": outcome(rec),
    }
    return Story(lines, data)


def _rotation_json(rec: RotationRecord) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(rec)
    data["created"] = iso_ms(rec.created_ms)
    data["deadline"] = iso_ms(rec.deadline_ms)
    data["ended"] = iso_ms(rec.ended_ms) if rec.ended_ms else None
    data["diagram_mermaid"] = path_diagram(rec)
    return data


def path_diagram(rec: RotationRecord) -> str | None:
    """The machine's Mermaid diagram with this rotation's path and state highlighted
    (None if its history names a state the machine no longer has)."""
    path = ["IDLE", *(str(state) for _, _, state in rec.history)]
    try:
        return render_path("mermaid", path, rec.state)
    except ValueError:
        return None


def _moment_json(m: Moment, rotation: RotationRecord | None) -> dict[str, Any]:
    return {
        "audit_id": m.audit_id,
        "time": iso_ms(m.now_ms),
        "entry_id": getattr(m.item, "entry_id", ""),
        "decision": m.recorded[1],
        "reason": m.recorded[2],
        "rotation_id": m.recorded[3],
        "facts": m.facts,
        "today": {"decision": m.today.decision, "reason": m.today.reason} if m.today else None,
        "sentences": because(m, rotation),
    }


async def explain_plan(
    redis: AnyRedis, keys: Keys, plan_id: str, record: PlanRecord | None
) -> Story | None:
    """Every decision of `plan_id` found in the audit stream, each with its numbers,
    then the story of its rotation. None when nothing at all is known of it."""
    if record is not None:
        low, high = _plan_window(record)
        found = [r async for r in _mentions(redis, keys, plan_id, low=str(low), high=str(high))]
    else:  # the record expired: look back from the newest entry, bounded
        found = [r async for r in _mentions(redis, keys, plan_id, newest_first=True)][::-1]
    decided = [
        m
        for r in found
        if isinstance(r.entry, AuditBatch)
        for m in moments(r.entry_id, r.entry, plan_id)
    ]
    if record is None and not decided:
        return None
    rotation_ids = sorted({m.recorded[3] for m in decided if m.recorded[3]})
    if record is not None and record.rotation_id and record.rotation_id not in rotation_ids:
        rotation_ids.append(record.rotation_id)
    rotations = {r: await _rotation(redis, keys, r) for r in rotation_ids}
    lines = [_plan_title(plan_id, record, decided)]
    for m in decided:
        rot = rotations.get(m.recorded[3]) if m.recorded[3] else None
        entry = getattr(m.item, "entry_id", "") or type(m.item).__name__.lower()
        lines += ["", f"{iso_ms(m.now_ms)}  {m.recorded[1]} {m.recorded[2]}"]
        lines.append(f"  audit entry {m.audit_id}, input {entry}")
        lines += [f"  {s}" for s in because(m, rot)]
    if not decided:
        lines += ["", "  (its decisions are no longer in the audit stream)"]
    markets = {r.entry.now_ms: r.entry.market for r in found if isinstance(r.entry, AuditBatch)}
    for rec in rotations.values():
        if rec is not None:  # its numbers were told with the decision above: not again
            positions = began_positions(rec, markets.get(rec.created_ms))
            events = await _events_of(redis, keys, rec)
            lines += ["", *rotation_story(rec, None, events, positions)]
    data = {
        "kind": "plan",
        "plan_id": plan_id,
        "record": None if record is None else _plan_json(record),
        "decisions": [_moment_json(m, rotations.get(m.recorded[3])) for m in decided],
        "rotations": [_rotation_json(r) for r in rotations.values() if r is not None],
    }
    return Story(lines, data)


def _plan_json(record: PlanRecord) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(record)
    data["decided"] = iso_ms(record.decided_ms) if record.decided_ms else None
    return data


def _plan_title(plan_id: str, record: PlanRecord | None, decided: list[Moment]) -> str:
    symbol = record.symbol if record else ""
    action = record.action if record else ""
    for m in decided:
        if isinstance(m.item, PlanIn):
            symbol, action = m.item.plan.symbol, m.item.plan.action
    head = f"plan {plan_id}: {symbol} {action}".rstrip()
    if record is None:
        return f"{head}; decided {times(len(decided))} (its plan record has expired)"
    state = "final" if record.final else "not final"
    return (
        f"{head}; decided {times(len(decided))}; "
        f"record: {record.decision} {record.reason} ({state}) at {iso_ms(record.decided_ms)}"
    )


async def explain(redis: AnyRedis, keys: Keys, some_id: str) -> Story | None:
    """A rotation id's story, else a plan id's (a close plan id also tells its rotation)."""
    rec = await _rotation(redis, keys, some_id)
    if rec is not None:
        return await explain_rotation(redis, keys, rec)
    raw = await redis.get(keys.plan(some_id))
    record = plan_record_decoder.decode(raw) if raw else None
    story = await explain_plan(redis, keys, some_id, record)
    owner = await redis.get(keys.close_index(some_id))
    if owner is not None:
        owned = await _rotation(redis, keys, as_text(owner))
        if owned is not None:
            told = await explain_rotation(redis, keys, owned)
            story = story or Story([f"close plan {some_id}"], {"kind": "plan", "plan_id": some_id})
            story.lines += ["", f"{some_id} is the close plan of:", *told.lines]
            story.data["close_of"] = told.data
    return story


# ================================================================ status


async def _newest_snapshot(redis: AnyRedis, keys: Keys) -> Recorded | None:
    """The newest audit batch that holds an exchange snapshot (positions read)."""
    async for entry_id, raw in scan_stream(redis, keys.audit, newest_first=True, limit=SCAN_LIMIT):
        if b'"positions":[' not in (entry_body(raw) or b""):  # no snapshot: skip unparsed
            continue
        found = parse_audit(entry_id, fields_text(raw), keys.audit)
        if isinstance(found.entry, AuditBatch) and found.entry.market.positions is not None:
            return found
    return None


def _reading_json(symbol: str, reading: Any, batch: AuditBatch) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "regime": reading.regime.value,
        "desired_slots": desired_slots(reading.regime, batch.rules),
        "ema20": reading.ema20,
        "ema50": reading.ema50,
        "trend": reading.trend,
        "atr_pct": reading.atr_pct,
        "klines": reading.klines,
        "as_of": iso_ms(batch.now_ms),
    }


async def _recent_readings(redis: AnyRedis, keys: Keys) -> list[dict[str, Any]]:
    """The newest regime reading of every symbol decided on lately (a batch reads only
    its own plans' symbols, so one batch alone would show one symbol or two)."""
    found: dict[str, dict[str, Any]] = {}
    async for entry_id, raw in scan_stream(
        redis, keys.audit, newest_first=True, limit=READINGS_SCAN
    ):
        if b'"readings":{"' not in (entry_body(raw) or b""):  # none: skip unparsed
            continue
        batch = parse_audit(entry_id, fields_text(raw), keys.audit).entry
        if isinstance(batch, AuditBatch):
            for symbol, reading in batch.market.readings.items():
                found.setdefault(symbol, _reading_json(symbol, reading, batch))
    return [found[s] for s in sorted(found)]


def _last_plan_symbol(batch: AuditBatch) -> str | None:
    symbols = [
        i.plan.symbol
        for i in batch.inputs
        if isinstance(i, PlanIn) and i.plan.symbol in batch.market.readings
    ]
    return symbols[-1] if symbols else None


async def rotation_hashes(redis: AnyRedis, keys: Keys, rotation_ids: list[str]) -> list[Any]:
    """The rotation hashes of `rotation_ids`, in one round trip (empty where gone)."""
    if not rotation_ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for rotation_id in rotation_ids:
            pipe.hgetall(keys.rotation(rotation_id))
        replies: list[Any] = await pipe.execute()
    return replies


async def book_now(redis: AnyRedis, keys: Keys, now_ms: int) -> dict[str, Any]:
    """The book now: slots, reservations and rotations in flight."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.reservations)
        pipe.smembers(keys.inflight)
        reservations_raw, inflight_raw = await pipe.execute()
    reservations = []
    for symbol, body in sorted(reservations_raw.items()):
        res = json.loads(body)
        reservations.append(
            {
                "symbol": as_text(symbol),
                "plan_id": res.get("plan_id", ""),
                "until": iso_ms(int(res.get("until_ms", 0))),
                "left_s": round((int(res.get("until_ms", 0)) - now_ms) / 1000, 3),
            }
        )
    ids = sorted(as_text(m) for m in inflight_raw)
    in_flight = [
        _flight_json(_record(rid, raw), now_ms)
        for rid, raw in zip(ids, await rotation_hashes(redis, keys, ids), strict=True)
        if raw
    ]
    return {
        "now": iso_ms(now_ms),
        "book": keys.book,
        "slots": await _slots(redis, keys, reservations, in_flight),
        "reservations": reservations,
        "rotations_in_flight": in_flight,
    }


async def finished_counts(
    redis: AnyRedis, keys: Keys, window_s: float, now_ms: int
) -> dict[str, Any]:
    """How many rotations ended within `window_s`, by final state (one round trip for
    the states, however many there are)."""
    ended = await redis.zrangebyscore(keys.finished, now_ms - int(window_s * 1000), now_ms)
    counts: Counter[str] = Counter()
    if ended:
        async with redis.pipeline(transaction=False) as pipe:
            for rotation_id in ended:
                pipe.hget(keys.rotation(as_text(rotation_id)), "state")
            states = await pipe.execute()
        counts.update(as_text(s) if s is not None else "EXPIRED" for s in states)
    return {"window_s": window_s, "counts": dict(sorted(counts.items())), "total": len(ended)}


async def status(redis: AnyRedis, keys: Keys, window_s: float, now_ms: int) -> dict[str, Any]:
    """`rotation-fsm status`: the book now, and final states over the window."""
    return {
        **await book_now(redis, keys, now_ms),
        "finished": await finished_counts(redis, keys, window_s, now_ms),
    }


def _flight_json(rec: RotationRecord, now_ms: int) -> dict[str, Any]:
    return {
        "rotation_id": rec.rotation_id,
        "state": rec.state,
        "new_plan_id": rec.new_plan_id,
        "new_symbol": rec.new_symbol,
        "new_action": rec.new_action,
        "trigger_entry_id": rec.trigger_entry_id,  # the entry waiting for the close
        "close_symbol": rec.close_symbol,
        "close_plan_id": rec.close_plan_id,
        "created": iso_ms(rec.created_ms),
        "deadline": iso_ms(rec.deadline_ms),
        "to_deadline_s": round((rec.deadline_ms - now_ms) / 1000, 3),
        "created_ms": rec.created_ms,
        "deadline_ms": rec.deadline_ms,
    }


async def _slots(
    redis: AnyRedis, keys: Keys, reservations: list[dict[str, Any]], in_flight: list[dict[str, Any]]
) -> dict[str, Any] | None:
    snap = await _newest_snapshot(redis, keys)
    if snap is None:
        return None
    batch = snap.entry
    assert isinstance(batch, AuditBatch)
    readings = await _recent_readings(redis, keys)
    latest = _last_plan_symbol(batch)
    now_reading = batch.market.reading(latest) if latest else None
    open_symbols = sorted(batch.market.open_symbols)
    reserved = [r["symbol"] for r in reservations]
    targets = sorted({r["close_symbol"] for r in in_flight})
    taken = sorted(occupied(open_symbols, reserved, targets))
    desired = desired_slots(now_reading.regime, batch.rules) if now_reading else None
    return {
        "as_of": iso_ms(batch.now_ms),
        "audit_id": snap.entry_id,
        "symbol": latest,
        "regime": now_reading.regime.value if now_reading else None,
        "desired": desired,
        "open": open_symbols,
        "reserved": reserved,
        "rotation_targets": targets,
        "occupied": taken,
        "free": max(0, desired - len(taken)) if desired is not None else None,
        "in_flight": len(in_flight),
        "max_concurrent_rotations": batch.rules.max_concurrent_rotations,
        "readings": readings,
        "positions": [
            {
                "symbol": p.symbol,
                "pnl_pct": p.pnl_pct,
                "weakness": p.weakness(batch.now_ms),
                "amount": p.position_amt,
            }
            for p in sorted(batch.market.positions or [], key=lambda p: p.symbol)
        ],
    }


def status_text(data: dict[str, Any]) -> str:
    """`status` for a terminal: four short sections of aligned tables."""
    book = data["book"] or "(default)"
    lines = [f"book {book} at {data['now']}", ""]
    slots = data["slots"]
    if slots is None:
        lines.append("slots: no exchange snapshot in the audit stream yet")
    else:
        lines.append(
            f"slots (exchange snapshot of {slots['as_of']}, audit entry {slots['audit_id']})"
        )
        desired = NONE if slots["desired"] is None else str(slots["desired"])
        free = NONE if slots["free"] is None else str(slots["free"])
        lines.append(
            f"  regime {slots['regime'] or NONE} (read for {slots['symbol'] or NONE}) → desired "
            f"{desired}; occupied {len(slots['occupied'])}; free {free}; "
            f"in flight {slots['in_flight']} of {slots['max_concurrent_rotations']}"
        )
        lines.append(
            f"  open {listing(slots['open'])}; reserved {listing(slots['reserved'])}; "
            f"rotation targets {listing(slots['rotation_targets'])}"
        )
        lines += table(
            ["symbol", "regime", "desired", "EMA20", "EMA50", "trend", "ATR%", "klines"],
            [
                [
                    r["symbol"],
                    r["regime"],
                    str(r["desired_slots"]),
                    num(r["ema20"]),
                    num(r["ema50"]),
                    pct(r["trend"]),
                    pct(r["atr_pct"]),
                    str(r["klines"]),
                ]
                for r in slots["readings"]
            ],
        )
    lines += ["", "reservations"]
    lines += table(
        ["symbol", "plan", "until", "left"],
        [
            [r["symbol"], r["plan_id"], r["until"], f"{r['left_s']:.1f} s"]
            for r in data["reservations"]
        ],
    )
    lines += ["", "rotations in flight"]
    lines += table(
        ["rotation", "state", "close → new", "close plan", "deadline", "left"],
        [
            [
                r["rotation_id"],
                r["state"],
                f"{r['close_symbol']} → {r['new_symbol']}",
                r["close_plan_id"],
                r["deadline"],
                f"{r['to_deadline_s']:.1f} s",
            ]
            for r in data["rotations_in_flight"]
        ],
    )
    finished = data["finished"]
    lines += ["", f"rotations ended in the last {finished['window_s']:g} s: {finished['total']}"]
    lines += table(["final state", "count"], [[s, str(n)] for s, n in finished["counts"].items()])
    return "\n".join(lines) + "\n"


# ================================================================ commands


async def _explain(args: Any) -> tuple[int, str]:
    redis, keys = open_book(settings_for(args))
    try:
        some_id = await resolve_id(redis, keys, args.id)
        story = await explain(redis, keys, some_id)
    except AmbiguousId as exc:
        return EXIT_UNKNOWN, str(exc)
    finally:
        await redis.aclose()
    if story is None:
        book = keys.book or "(default)"
        return EXIT_UNKNOWN, f"no plan or rotation {args.id!r} in book {book}"
    if args.json:
        return EXIT_OK, to_json({"id": some_id, **story.data})
    return EXIT_OK, "\n".join(story.lines) + "\n"


async def _status(args: Any) -> tuple[int, str]:
    redis, keys = open_book(settings_for(args))
    try:
        data = await status(redis, keys, args.window, int(time.time() * 1000))
    finally:
        await redis.aclose()
    return EXIT_OK, to_json(data) if args.json else status_text(data)


def command(args: Any) -> int:
    """`rotation-fsm explain ID` (1: unknown id) and `rotation-fsm status`; 2: unreadable."""
    run = _explain if args.command == "explain" else _status
    try:
        code, text = asyncio.run(run(args))
    except (Unreadable, SettingError, RedisError, OSError) as exc:
        print(f"rotation-fsm {args.command}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    if code == EXIT_OK:
        sys.stdout.write(text)
    else:
        print(f"rotation-fsm {args.command}: {text}", file=sys.stderr)
    return code


__all__ = ["command", "explain", "moments", "plan_facts", "status", "status_text"]
