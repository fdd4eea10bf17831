"""Chaos run and invariant checker (issue #5): `python -m rotation_fsm.devkit.chaos --seconds 60`.

The run: three engine replicas (`rotation-fsm run`, child processes, one consumer
group) on a real `redis-server` (AOF on, `appendfsync always`); the paper exchange in
this process (so its fault switch can be flipped) executing whatever they allow, with
rejected orders and lost results; the intent simulator publishing plans at a steady
rate with duplicates and resends, plus a few malformed plan and result entries.
Meanwhile this module kills -9 a random replica every few seconds and restarts it,
kills -9 Redis once and restarts it at once (the AOF reloads), *freezes* Redis for
10 s (SIGSTOP, then SIGCONT: a cut in which connections hang rather than fail, and
commands sent before it run after it) and makes the exchange answer 5xx, 429 with
Retry-After, timeouts and garbage for a while each. Then the producer stops, every
fault is healed, the system is left to settle and the engines get SIGTERM.

The checker (`check`, pure) replays what is outside the engines — the streams, the
rotation hashes, the audit stream, the paper book and Redis's own append-only file —
and counts the violations of each invariant; `main` exits 0 only when all are 0.
The observable of each invariant:

1. **Slots.** For every audited commit (`AuditBatch`): the occupied symbols the
   engine saw (positions in `market`, unexpired reservations and in-flight close
   targets in `seed`) plus each slot an ALLOW `slots_available` adds, row by row,
   never exceed the desired slots of that plan's regime (`market.readings` → `rules`);
   an ALLOW `slot_already_held` must really hold its symbol. `rotation_complete`
   swaps one slot for another and is exempt. Independently, the paper book's open
   positions after every fill never exceed the largest desired slot count.
2. **Close targets.** No two rotation hashes with the same close symbol overlap in
   time [created, ended), no audited view holds two in-flight rotations with one close
   symbol, and every rotation has exactly one close plan on the plan stream (lock
   and emit commit together, so none would mean a rotation that can never confirm).
3. **One final decision, one permit.** Per plan id, once a final verdict appears on
   the decision stream every later entry repeats it (resends are answered again, by
   contract); no plan entry is answered twice; and per plan id at most one permit
   key was written — counted as the `SET quantum:permit:*` commands in Redis's AOF,
   which records every write durably (`appendfsync always`) — and exactly one for
   every plan that was allowed.
4. **Deadlines.** Every rotation is final at the end; none timed out before its
   deadline; each ended by `deadline + 1 s` — *adjusted*: when Redis was down or frozen
   during [deadline, deadline + 1 s], by the time an engine was back + 1 s. The raw
   count (no adjustment) is reported beside it.
5. **Nothing acknowledged is lost.** Every entry id the producer's XADD returned is
   on its stream; nothing is pending or undelivered in the engine group at the end;
   every plan and result entry is an input of some audited commit or in the
   dead-letter stream (with an error); every EXECUTE plan entry got a decision.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from bisect import bisect_left
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import redis as redis_sync
from aiohttp import ClientError, ClientSession, ClientTimeout, web
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..core import reasons as R
from ..core.audit import AuditBatch, parse_entry
from ..core.decide import Abort, BadIn, PlanIn, ResultIn, Tick
from ..core.machine import FINAL, State
from ..core.market import OPEN_QTY_EPSILON
from ..core.messages import (
    BadEntry,
    RotationRecord,
    as_text_lenient,
    fields_text,
    rotation_from_hash,
)
from ..core.settings import Rules
from ..store.keys import Keys
from ..store.stream_pages import scan_stream
from ..tools.stack import DEFAULTS, Service, _until_ready
from .intent_simulator.__main__ import until_consumed
from .intent_simulator.simulator import IntentSimulator, SimConfig
from .paper_exchange.__main__ import parse_regimes
from .paper_exchange.apply import (
    DEFAULT_GROUP,
    ApplyConfig,
    ApplyLoop,
    Outcome,
    seed_regimes,
    walk_marks,
)
from .paper_exchange.book import FAULTS, PaperBook
from .paper_exchange.protocol import make_app
from .paper_exchange.user_stream import UserStream
from .redis_process import RedisProcess, free_port

log = logging.getLogger("rotation_fsm.devkit.chaos")

Entry = tuple[str, dict[str, str]]

#: how far past its deadline the issue lets a rotation end
DEADLINE_GRACE_MS = 1000
#: the exchange faults, as `PaperBook.fault` spells them
EXCHANGE_FAULTS = tuple(sorted(FAULTS))
#: request weight per minute the paper exchange allows its replicas together
CHAOS_WEIGHT_LIMIT = 12_000
#: the user-data stream's faults (`UserStream`'s switches)
STREAM_FAULTS = ("drop", "expire", "lose", "silent")
#: the engines' consumer group (GOV_CONSUMER_GROUP's default: the run does not set it)
ENGINE_GROUP = "rotation-fsm"
#: BLOCK reasons the engine never changes once given (contract §3a)
INVARIANTS: dict[int, str] = {
    1: "occupied slots never exceed the desired slots",
    2: "no position is the close target of two rotations; one close plan each",
    3: "one final decision per plan; one permit per allowed plan",
    4: "every rotation is final by its deadline + 1 s",
    5: "nothing acknowledged is lost",
}
#: how many examples of each violation a report keeps
EXAMPLES = 5

# ============================================================================ the checker


@dataclass
class History:
    """Everything the checker reads: taken from Redis after a run, or made by hand."""

    plans: list[Entry] = field(default_factory=list)
    results: list[Entry] = field(default_factory=list)
    decisions: list[Entry] = field(default_factory=list)
    dlq: list[Entry] = field(default_factory=list)
    audit: list[AuditBatch] = field(default_factory=list)
    rotations: list[RotationRecord] = field(default_factory=list)
    #: plan id of every permit key written, in order (from the AOF)
    permits: list[str] = field(default_factory=list)
    #: False when the AOF was rewritten or cut short: permit counts are then a floor
    permit_log_complete: bool = True
    #: "plans ID" / "results ID" of every XADD the producer saw acknowledged
    produced: list[str] = field(default_factory=list)
    #: "plans ID" / "results ID" still pending or never delivered in the engine group
    unacked: list[str] = field(default_factory=list)
    #: (from_ms, back_ms): Redis down or frozen, until an engine was back
    outages: list[tuple[int, int]] = field(default_factory=list)
    #: (ms, open positions on the paper book) after every fill of an open
    book_counts: list[tuple[int, int]] = field(default_factory=list)
    #: the largest desired slot count of any regime (0: no exchange-side check)
    max_desired: int = 0


@dataclass
class Verdict:
    """The violations of one invariant (the first `EXAMPLES` spelled out)."""

    number: int
    title: str
    violations: int
    examples: list[str]
    figures: dict[str, int] = field(default_factory=dict)


def _verdict(number: int, found: Sequence[str], **figures: int) -> Verdict:
    return Verdict(number, INVARIANTS[number], len(found), list(found[:EXAMPLES]), figures)


def check(history: History) -> list[Verdict]:
    """The five invariants, in order."""
    slots, targets = _audit_findings(history)
    slots += _book_findings(history)
    targets += _close_target_overlaps(history.rotations) + _close_plan_counts(history)
    late, raw_late = _deadline_findings(history)
    return [
        _verdict(1, slots),
        _verdict(2, targets),
        _verdict(3, _decision_findings(history) + _permit_findings(history)),
        _verdict(4, late, raw_late=raw_late),
        _verdict(5, _loss_findings(history)),
    ]


def also_checked(history: History) -> dict[str, list[str]]:
    """Findings beyond the five invariants, reported without failing the run: each
    commit moves the book from one version to the next, and — the contract's "a
    redelivery can never emit anything twice" — no plan entry is answered twice and no
    entry dead-lettered twice (both did happen, under claim races: tests/chaos/test_bugs.py)."""
    versions = Counter(batch.seed.version for batch in history.audit)
    answered = Counter(f["entry_id"] for _, f in history.decisions if f.get("entry_id"))
    letters = Counter((f.get("stream", ""), f.get("entry_id", "")) for _, f in history.dlq)
    return {
        "commits from one book version": [
            f"book version {v} committed {n} times" for v, n in sorted(versions.items()) if n > 1
        ],
        "plan entries answered more than once": [
            f"plan entry {eid} was answered {n} times"
            for eid, n in sorted(answered.items())
            if n > 1
        ],
        "entries dead-lettered more than once": [
            f"{stream} {entry_id} is on the dead-letter stream {n} times"
            for (stream, entry_id), n in sorted(letters.items())
            if n > 1
        ],
    }


# ---------------------------------------------------------------- 1 and 2: audited views


def desired_for(regime: str, rules: Rules) -> int:
    """Desired slots of a regime name; UNKNOWN (or anything else) gets CHOP's count.

    Spelled out here rather than imported, so the checker does not share the
    engine's own mapping."""
    if regime == "TREND_STRONG":
        return rules.slots_trend_strong
    if regime == "BASE":
        return rules.slots_base
    return rules.slots_chop


@dataclass
class _Occupancy:
    """The occupied symbols of one audited commit, kept up to date row by row."""

    opened: frozenset[str] | None  # None: no positions snapshot in this batch
    reserved: dict[str, int]  # symbol → how many allowed entries hold it
    holds: dict[str, str]  # plan id → the symbol it holds (those the batch can answer)
    targets: dict[str, str]  # rotation id → close symbol

    @classmethod
    def of(cls, batch: AuditBatch) -> _Occupancy:
        """What the batch started from: reservations past their TTL end first, as they
        do in the engine."""
        positions = batch.market.positions
        opened = None if positions is None else frozenset(p.symbol for p in positions)
        live = {s: r for s, r in batch.seed.reservations.items() if r.until_ms > batch.now_ms}
        reserved = {symbol: res.holders for symbol, res in live.items()}
        holds = {
            pid: h.symbol
            for pid, h in batch.seed.holds.items()
            if h.symbol in live and live[h.symbol].plan_id == h.made_by
        }
        targets = {
            rid: batch.seed.rotations[rid].close_symbol
            for rid in batch.seed.inflight
            if rid in batch.seed.rotations
        }
        return cls(opened, reserved, holds, targets)

    def symbols(self) -> set[str]:
        return set(self.opened or ()) | set(self.reserved) | set(self.targets.values())

    def hold(self, symbol: str, plan_id: str) -> None:
        """An allowed entry is on its way to `symbol`: the slot is held until its result
        comes or the TTL ends — whichever plans already hold it."""
        self.reserved[symbol] = self.reserved.get(symbol, 0) + 1
        self.holds[plan_id] = symbol

    def answered(self, plan_id: str) -> None:
        """`plan_id`'s result came (executed: it is a position now; refused: nothing
        opens): its symbol is no longer held once no other plan holds it."""
        symbol = self.holds.pop(plan_id, None)
        if symbol in self.reserved:
            self.reserved[symbol] -= 1
            if self.reserved[symbol] <= 0:
                del self.reserved[symbol]


def _audit_findings(history: History) -> tuple[list[str], list[str]]:
    """Invariant 1 (slots) and 2 (close targets) in every audited commit."""
    rotations = {r.rotation_id: r for r in history.rotations}
    slots: list[str] = []
    targets: list[str] = []
    for batch in history.audit:
        walk = _Walk(batch, rotations)
        walk.run()
        slots += walk.slots
        targets += walk.targets
    return slots, targets


class _Walk:
    """One audited commit, input by input, each paired with the decision row it caused:
    `decide_batch` decides inputs in order, with at most one row each."""

    def __init__(self, batch: AuditBatch, rotations: dict[str, RotationRecord]) -> None:
        self.batch = batch
        self.rotations = rotations
        self.occ = _Occupancy.of(batch)
        self.rows = deque(batch.decided)
        # A plan id with a final record is answered again: that answer takes no slot.
        self.finals = {pid for pid, rec in batch.seed.plans.items() if rec.final}
        self.slots: list[str] = []
        self.targets = _duplicate_targets(self.occ.targets, f"view at {batch.now_ms}")

    def run(self) -> None:
        seed = self.batch.seed
        for item in self.batch.inputs:
            if isinstance(item, PlanIn):
                self._plan(item)
            elif isinstance(item, ResultIn):
                self.occ.answered(item.result.plan_id)
                rec = seed.rotations.get(seed.close_index.get(item.result.plan_id, ""))
                if rec is not None and self._take_end(rec):
                    _ended(rec, self.occ, allowed=item.result.executed)
            elif isinstance(item, Tick | Abort):
                rec = seed.rotations.get(item.rotation_id)
                if rec is not None and self._take_end(rec):
                    _ended(rec, self.occ, allowed=False)
        self.slots += [
            f"decision {row} at {self.batch.now_ms} answers no input of its commit"
            for row in self.rows
        ]

    def _plan(self, item: PlanIn) -> None:
        plan_id = item.plan.plan_id
        if not self.rows or self.rows[0][0] != plan_id:
            return  # a redelivery or not EXECUTE: acknowledged without a decision
        row = self.rows.popleft()
        if plan_id not in self.finals:
            self.slots += _judge_plan(row, item.plan.symbol, self.occ, self.batch)
            self.targets += _started(row, self.occ, self.batch.seed.rotations, self.rotations)
        if R.is_final(row[1], row[2]):
            self.finals.add(plan_id)

    def _take_end(self, rec: RotationRecord) -> bool:
        """The next row ends `rec` (a result or the timer decided its waiting plan)."""
        if self.rows and self.rows[0][3] == rec.rotation_id:
            self.finals.add(self.rows.popleft()[0])
            return True
        return False


def _judge_plan(row: list[str], symbol: str, occ: _Occupancy, batch: AuditBatch) -> list[str]:
    """Invariant 1 for a plan's first answer; records the slot it took."""
    plan_id, verdict, reason = row[0], row[1], row[2]
    if verdict != R.ALLOW or not batch.rules.slots_enabled:
        return []
    if reason == R.SLOT_ALREADY_HELD:
        held = symbol in (occ.opened or ()) or symbol in occ.reserved
        occ.hold(symbol, plan_id)
        if held:
            return []
        return [
            f"{plan_id} ({symbol}) allowed slot_already_held at {batch.now_ms} "
            "but its symbol was neither open nor reserved"
        ]
    if reason != R.SLOTS_AVAILABLE:
        return []
    found: list[str] = []
    if occ.opened is None:
        found.append(f"{plan_id} ({symbol}) took a slot at {batch.now_ms} without positions")
    reading = batch.market.readings.get(symbol)
    regime = reading.regime.value if reading is not None else "UNKNOWN"
    desired = desired_for(regime, batch.rules)
    taken = occ.symbols() | {symbol}
    if len(taken) > desired:
        found.append(
            f"{plan_id} ({symbol}) allowed slots_available at {batch.now_ms}: "
            f"{len(taken)} occupied {sorted(taken)} > {desired} desired ({regime})"
        )
    occ.hold(symbol, plan_id)
    return found


def _started(
    row: list[str],
    occ: _Occupancy,
    known: dict[str, RotationRecord],
    rotations: dict[str, RotationRecord],
) -> list[str]:
    """A plan row that started a rotation: its close target must not be taken already."""
    rotation_id = row[3]
    if row[2] != R.WAITING_ROTATION_CLOSE or not rotation_id or rotation_id in known:
        return []
    rec = rotations.get(rotation_id)
    if rec is None or rotation_id in occ.targets:
        return []
    found = []
    if rec.close_symbol in occ.targets.values():
        found.append(
            f"rotation {rotation_id} targets {rec.close_symbol}, already the close target "
            "of a rotation in flight"
        )
    occ.targets[rotation_id] = rec.close_symbol
    return found


def _ended(rec: RotationRecord, occ: _Occupancy, *, allowed: bool) -> None:
    occ.targets.pop(rec.rotation_id, None)
    if allowed:  # rotation_complete: the waiting plan's symbol takes the freed slot
        occ.hold(rec.new_symbol, rec.new_plan_id)


def _duplicate_targets(targets: dict[str, str], where: str) -> list[str]:
    counts = Counter(targets.values())
    return [
        f"{symbol} is the close target of {n} rotations in flight ({where})"
        for symbol, n in sorted(counts.items())
        if n > 1
    ]


def _book_findings(history: History) -> list[str]:
    """Invariant 1 from the exchange side: the paper book itself."""
    if history.max_desired <= 0:
        return []
    return [
        f"the paper book held {count} positions at {at_ms} (most desired: {history.max_desired})"
        for at_ms, count in history.book_counts
        if count > history.max_desired
    ]


# ---------------------------------------------------------------- 2: rotation hashes


def _close_target_overlaps(rotations: Iterable[RotationRecord]) -> list[str]:
    """Rotations with one close symbol whose [created, ended) intervals overlap."""
    by_symbol: dict[str, list[RotationRecord]] = defaultdict(list)
    for rec in rotations:
        by_symbol[rec.close_symbol].append(rec)
    found = []
    for symbol, recs in sorted(by_symbol.items()):
        recs.sort(key=lambda r: (r.created_ms, r.rotation_id))
        last: RotationRecord | None = None
        for rec in recs:
            if last is not None and rec.created_ms < _end_ms(last):
                found.append(
                    f"{symbol} is the close target of {last.rotation_id} and "
                    f"{rec.rotation_id} at once (from {rec.created_ms})"
                )
            if last is None or _end_ms(rec) > _end_ms(last):
                last = rec
    return found


def _end_ms(rec: RotationRecord) -> float:
    return rec.ended_ms if rec.state in FINAL and rec.ended_ms else math.inf


def _close_plan_counts(history: History) -> list[str]:
    """Exactly one close plan per rotation; no close plan id shared by two rotations."""
    emitted = Counter(f["rotation_id"] for _, f in history.plans if f.get("rotation_id"))
    found = [
        f"rotation {rid} emitted {n} close plans" for rid, n in sorted(emitted.items()) if n > 1
    ]
    found += [
        f"rotation {rec.rotation_id} has no close plan on the plan stream"
        for rec in history.rotations
        if emitted[rec.rotation_id] == 0
    ]
    owners = Counter(rec.close_plan_id for rec in history.rotations)
    found += [
        f"close plan id {cid} belongs to {n} rotations"
        for cid, n in sorted(owners.items())
        if n > 1
    ]
    return found


# ---------------------------------------------------------------- 3: decisions and permits


def _decision_findings(history: History) -> list[str]:
    """A final verdict is never followed by a different one (resends get it again)."""
    found = []
    first_final: dict[str, tuple[str, str]] = {}
    for entry_id, f in history.decisions:
        plan_id, answer = f.get("plan_id", ""), (f.get("decision", ""), f.get("reason", ""))
        final = first_final.get(plan_id)
        if final is not None and answer != final:
            found.append(
                f"{plan_id} was decided {final[0]} {final[1]} (final), then {answer[0]} "
                f"{answer[1]} (decision {entry_id})"
            )
        elif final is None and R.is_final(*answer):
            first_final[plan_id] = answer
    return found


def _permit_findings(history: History) -> list[str]:
    """At most one permit per plan id; exactly one for every allowed plan."""
    written = Counter(history.permits)
    allowed = {f.get("plan_id", "") for _, f in history.decisions if f.get("decision") == R.ALLOW}
    found = [f"{pid} got {n} permits" for pid, n in sorted(written.items()) if n > 1]
    found += [f"{pid} got a permit but was never allowed" for pid in sorted(set(written) - allowed)]
    if history.permit_log_complete:
        found += [f"{pid} was allowed without a permit" for pid in sorted(allowed - set(written))]
    return found


# ---------------------------------------------------------------- 4: deadlines


def allowance_ms(deadline_ms: int, outages: Sequence[tuple[int, int]]) -> int:
    """When a rotation with this deadline must have ended: deadline + 1 s, moved to
    (back + 1 s) by every outage that overlaps the time it had (nobody could act)."""
    allowed = deadline_ms + DEADLINE_GRACE_MS
    for start_ms, back_ms in sorted(outages):
        if start_ms <= allowed and back_ms >= deadline_ms:
            allowed = max(allowed, back_ms + DEADLINE_GRACE_MS)
    return allowed


def _deadline_findings(history: History) -> tuple[list[str], int]:
    """Violations of invariant 4 (adjusted for outages), and the raw count of rotations
    that ended after deadline + 1 s."""
    found: list[str] = []
    raw_late = 0
    for rec in history.rotations:
        if rec.state not in FINAL:
            found.append(f"rotation {rec.rotation_id} is still {rec.state} at the end")
            continue
        if rec.state == State.TIMED_OUT and rec.ended_ms < rec.deadline_ms:
            found.append(
                f"rotation {rec.rotation_id} timed out {rec.deadline_ms - rec.ended_ms}"
                " ms before its deadline"
            )
        raw_late += rec.ended_ms > rec.deadline_ms + DEADLINE_GRACE_MS
        allowed = allowance_ms(rec.deadline_ms, history.outages)
        if rec.ended_ms > allowed:
            found.append(
                f"rotation {rec.rotation_id} ended {rec.state} "
                f"{rec.ended_ms - rec.deadline_ms} ms after its deadline "
                f"(allowed {allowed - rec.deadline_ms} ms)"
            )
    return found, raw_late


# ---------------------------------------------------------------- 5: nothing lost


def _handled(history: History) -> set[str]:
    """Every entry ("stream ID") an audited commit took as input, or dead-lettered."""
    seen = {f"{f.get('stream', '')} {f.get('entry_id', '')}" for _, f in history.dlq}
    for batch in history.audit:
        for item in batch.inputs:
            if isinstance(item, PlanIn):
                seen.add(f"plans {item.entry_id}")
            elif isinstance(item, ResultIn):
                seen.add(f"results {item.entry_id}")
            elif isinstance(item, BadIn):
                seen.add(f"{item.stream} {item.entry_id}")
    return seen


def _loss_findings(history: History) -> list[str]:
    on_streams = {f"plans {eid}" for eid, _ in history.plans}
    on_streams |= {f"results {eid}" for eid, _ in history.results}
    found = [
        f"{key}: acknowledged to the producer, missing from its stream"
        for key in history.produced
        if key not in on_streams
    ]
    found += [f"{key}: still pending or undelivered at the end" for key in history.unacked]
    handled = _handled(history)
    found += [
        f"{key}: in no audited commit and not dead-lettered"
        for key in sorted(on_streams - handled, key=_entry_order)
    ]
    answered = {f["entry_id"] for _, f in history.decisions if f.get("entry_id")}
    dead = {f.get("entry_id", "") for _, f in history.dlq if f.get("stream") == "plans"}
    found += [
        f"plans {eid}: an EXECUTE plan that never got a decision"
        for eid, f in history.plans
        if f.get("decision") == "EXECUTE" and eid not in answered and eid not in dead
    ]
    found += [
        f"dead letter {eid} gives no error" for eid, f in history.dlq if not f.get("error", "")
    ]
    return found


def _entry_order(key: str) -> tuple[str, int, int]:
    stream, _, entry_id = key.partition(" ")
    ms, _, seq = entry_id.partition("-")
    return stream, int(ms or 0), int(seq or 0)


# ---------------------------------------------------------------- figures


def figures(history: History) -> dict[str, Any]:
    """What happened, in numbers: entries, decisions by reason, rotations by state."""
    decisions = Counter(f"{f.get('decision')} {f.get('reason')}" for _, f in history.decisions)
    states = Counter(rec.state for rec in history.rotations)
    close_plans = sum(1 for _, f in history.plans if f.get("rotation_id"))
    return {
        "plan_entries": len(history.plans),
        "close_plans": close_plans,
        "result_entries": len(history.results),
        "dead_letters": len(history.dlq),
        "audited_commits": len(history.audit),
        "decisions": len(history.decisions),
        "decisions_by_reason": dict(decisions.most_common()),
        "plans_decided": len({f.get("plan_id") for _, f in history.decisions}),
        "rotations": len(history.rotations),
        "rotations_by_state": dict(states.most_common()),
        "permits_written": len(history.permits),
        "permit_log_complete": history.permit_log_complete,
        "most_positions_on_book": max((n for _, n in history.book_counts), default=0),
        "most_desired_slots": history.max_desired,
        "outages_s": [round((back - start) / 1000, 2) for start, back in history.outages],
    }


# ============================================================================ observing


def read_permits(data_dir: Path, keys: Keys) -> tuple[list[str], bool]:
    """Plan ids of every `SET` of a permit key in the server's append-only file, in
    order, and whether the file holds the whole history (never rewritten, intact)."""
    files, complete = _aof_files(data_dir)
    prefix = keys.permit("").encode()
    plan_ids: list[str] = []
    for path in files:
        written, intact = _set_keys(path.read_bytes())
        complete = complete and intact
        plan_ids += [k[len(prefix) :].decode() for k in written if k.startswith(prefix)]
    return plan_ids, complete and bool(files)


def _aof_files(data_dir: Path) -> tuple[list[Path], bool]:
    """The AOF files in order: Redis ≥ 7 keeps a manifest of a base and increments (a
    base of sequence 1 means never rewritten); 6.2 keeps one file (an RDB preamble at
    its head means it was rewritten)."""
    manifest = data_dir / "appendonlydir" / "appendonly.aof.manifest"
    if manifest.exists():
        rows = [line.split() for line in manifest.read_text().splitlines() if line.strip()]
        parts = [dict(zip(row[0::2], row[1::2], strict=False)) for row in rows]
        bases = [int(p["seq"]) for p in parts if p.get("type") == "b"]
        incr = sorted((p for p in parts if p.get("type") == "i"), key=lambda p: int(p["seq"]))
        complete = bases in ([], [1]) and not any(p.get("type") == "h" for p in parts)
        return [manifest.parent / p["file"] for p in incr], complete
    single = data_dir / "appendonly.aof"
    if single.exists():
        with single.open("rb") as fh:
            return [single], not fh.read(5).startswith(b"REDIS")
    return [], False


def _set_keys(data: bytes) -> tuple[list[bytes], bool]:
    """Keys of the SET commands in RESP-encoded `data`, and False if it ends mid-command
    (a kill -9 can cut the last write) or holds something else."""
    keys: list[bytes] = []
    pos, end = 0, len(data)
    try:
        while pos < end:
            if data[pos] != 0x2A:  # '*': each command is an array of bulk strings
                return keys, False
            eol = data.index(b"\r\n", pos)
            argc, pos = int(data[pos + 1 : eol]), eol + 2
            head: list[bytes] = []
            for i in range(argc):
                eol = data.index(b"\r\n", pos)
                size, start = int(data[pos + 1 : eol]), eol + 2
                pos = start + size + 2
                if i < 2:  # only the command name and key matter: skip the rest unread
                    head.append(data[start : start + size])
            if pos > end:
                return keys, False
            if len(head) == 2 and head[0].upper() == b"SET":
                keys.append(head[1])
    except ValueError:
        return keys, False
    return keys, True


async def read_stream(redis: Redis, stream: str, chunk: int = 5000) -> list[Entry]:
    """Every entry of `stream`, fields decoded leniently (a malformed entry stays visible)."""
    return [
        (entry_id, fields_text(raw, "replace"))
        async for entry_id, raw in scan_stream(redis, stream, page=chunk)
    ]


async def read_audit(redis: Redis, keys: Keys) -> list[AuditBatch]:
    """The audited commits, in stream order (setting changes left out)."""
    batches = []
    for _, fields in await read_stream(redis, keys.audit):
        entry = parse_entry(fields)
        if isinstance(entry, AuditBatch):
            batches.append(entry)
    return batches


async def read_rotations(redis: Redis, keys: Keys) -> list[RotationRecord]:
    """Every rotation hash of the book."""
    names = [name async for name in redis.scan_iter(match=keys.rotation("*"), count=1000)]
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(name)
        replies = await pipe.execute()
    records = []
    for name, raw in zip(names, replies, strict=True):
        try:
            records.append(rotation_from_hash(raw))
        except BadEntry:
            log.error("unreadable rotation hash %s", as_text_lenient(name))
    return sorted(records, key=lambda r: (r.created_ms, r.rotation_id))


async def unacked(redis: Redis, stream: str, logical: str, group: str) -> list[str]:
    """Entries ("logical ID") of `stream` still pending in `group` or never delivered."""
    if not await redis.exists(stream):
        return []
    pending = await redis.xpending_range(stream, group, min="-", max="+", count=1_000_000)
    ids = [as_text_lenient(p["message_id"]) for p in pending]
    info = {as_text_lenient(g["name"]): g for g in await redis.xinfo_groups(stream)}
    last = as_text_lenient(info[group]["last-delivered-id"]) if group in info else "0-0"
    after: list[Any] = await redis.xrange(stream, min=f"({last}", max="+") or []
    ids += [as_text_lenient(eid) for eid, _ in after]
    return [f"{logical} {eid}" for eid in ids]


# ============================================================================ the run


@dataclass(frozen=True)
class ChaosConfig:
    """One chaos run. Engine timings are small so that rotations start, time out and
    get claimed often; slot counts are small so that the book is usually full."""

    seconds: float = 60.0
    replicas: int = 3
    rate: float = 15.0  # plans per second
    duplicate_rate: float = 0.05
    resend_rate: float = 0.05
    malformed_rate: float = 0.02  # per tick: a malformed plan or result entry instead
    reject_rate: float = 0.05
    lost_rate: float = 0.05
    kill_every_s: float = 4.0  # mean pause between two replica kills
    cut_s: float = 10.0
    lock_ttl_s: float = 3.0
    reservation_ttl_s: float = 10.0
    claim_idle_ms: int = 1000
    max_concurrent_rotations: int = 2
    slots: tuple[int, int, int] = (4, 3, 2)  # TREND_STRONG, BASE, CHOP
    regimes: str = DEFAULTS["PAPER_REGIMES"]
    seed: int | None = None

    @property
    def max_desired(self) -> int:
        return max(self.slots)


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: what, when (s from the start) and for how long."""

    kind: str  # exchange:<fault>, stream:<fault>, redis:restart, redis:cut
    at_s: float
    for_s: float = 0.0


def schedule(seconds: float, cut_s: float) -> list[Fault]:
    """The faults of a run of `seconds`, spread so that none hides another: the exchange
    faults need plans flowing, so none falls into the Redis cut."""
    window = min(10.0, max(2.0, 0.06 * seconds))
    cut = min(cut_s, 0.25 * seconds)
    cut_at = 0.4 * seconds
    faults = [
        Fault("exchange:500", 0.10 * seconds, window),
        Fault("redis:restart", 0.22 * seconds),
        Fault("exchange:429", 0.28 * seconds, window),
        Fault("redis:cut", cut_at, cut),
        Fault("exchange:timeout", max(0.68 * seconds, cut_at + cut + 1.0), window),
        Fault("exchange:garbage", 0.85 * seconds, window),
        # The user-data stream's own faults: the view must reconnect, take a new key,
        # and repair what it missed from REST, with the slot cap holding meanwhile.
        Fault("stream:drop", 0.16 * seconds),
        Fault("stream:lose", 0.34 * seconds),
        Fault("stream:expire", 0.55 * seconds),
        Fault("stream:silent", 0.75 * seconds, window),
    ]
    return sorted(faults, key=lambda f: f.at_s)


#: environment a replica must not inherit: the run decides its wiring and rules
_FOREIGN_ENV = ("GOV_", "STREAM_", "REDIS_", "BINANCE_", "METRICS_", "PAPER_", "SIM_")
API_KEY = "chaos-key"
API_SECRET = "chaos-secret"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def engine_env(cfg: ChaosConfig, redis_url: str, exchange_url: str) -> dict[str, str]:
    """The environment of every replica (each adds its name and HTTP port)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV)}
    path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), base.get("PYTHONPATH", "")]))
    trend, base_slots, chop = cfg.slots
    return {
        **base,
        "PYTHONPATH": path,
        "PYTHONUNBUFFERED": "1",
        "REDIS_URL": redis_url,
        "BINANCE_BASE_URL": exchange_url,
        "BINANCE_API_KEY": API_KEY,
        "BINANCE_API_SECRET": API_SECRET,
        "GOV_HTTP_HOST": "127.0.0.1",
        "GOV_ACTIVE_SLOTS_TREND_STRONG": str(trend),
        "GOV_ACTIVE_SLOTS_BASE": str(base_slots),
        "GOV_ACTIVE_SLOTS_CHOP": str(chop),
        "GOV_ROTATION_LOCK_TTL": str(cfg.lock_ttl_s),
        "GOV_RESERVATION_TTL": str(cfg.reservation_ttl_s),
        "GOV_CLAIM_IDLE_MS": str(cfg.claim_idle_ms),
        "GOV_MAX_CONCURRENT_ROTATIONS": str(cfg.max_concurrent_rotations),
        # any entry at least as confident as the weakest position's may rotate it out
        "GOV_ROTATION_THRESHOLD": "0",
        # the checker needs every audited commit: never trimmed during a run
        "GOV_AUDIT_MAXLEN": "10000000",
        # REST is off the decision path now: reconcile often, so that every REST fault
        # window is met (and lost or unsaid stream events are repaired within the run);
        # the replicas share the paper exchange's per-IP weight limit (raised: weight
        # limits have tests of their own, here they would only hide the REST faults)
        "GOV_EXCHANGE_RECONCILE_S": "1",
        "GOV_EXCHANGE_WEIGHT_LIMIT": str(CHAOS_WEIGHT_LIMIT),
        "GOV_EXCHANGE_WEIGHT_SHARE": f"{1 / max(1, cfg.replicas):.3f}",
    }


class ChaosBook(PaperBook):
    """The paper book, counting the faulty answers it really served and the number of
    open positions after every fill."""

    def __init__(self) -> None:
        super().__init__()
        self.faults_served: Counter[str] = Counter()
        self.counts: list[tuple[int, int]] = []

    def open_symbols(self) -> list[str]:
        """Symbols open as the exchange reports them: a short netted against a long of the
        same size leaves a flat row in `positions`, which is no position (contract §2)."""
        return sorted(s for s, p in self.positions.items() if abs(p.qty) > OPEN_QTY_EPSILON)

    def take_fault(self) -> str | None:
        fault = super().take_fault()
        if fault is not None:
            self.faults_served[fault] += 1
        return fault

    def open(self, symbol: str, qty: float, price: float, *, at_ms: int | None = None) -> None:
        super().open(symbol, qty, price, at_ms=at_ms)
        held = self.open_symbols()
        self.counts.append((self.clock_ms(), len(held)))
        log.info("book: open %s %+g -> %s", symbol, qty, held)

    def close(self, symbol: str) -> bool:
        closed = super().close(symbol)
        log.info("book: close %s -> %s", symbol, self.open_symbols())
        return closed


@dataclass
class Replica:
    """One engine process; kill -9 and start again under the same consumer name."""

    name: str
    env: dict[str, str]
    log: TextIO
    service: Service | None = None
    port: int = 0

    def _write(self, line: str) -> None:
        self.log.write(line + "\n")

    async def start(self, timeout_s: float = 30.0) -> None:
        """Spawn `rotation-fsm run`; return once it says it is running (which needs no
        Redis: a replica restarted during an outage still comes up)."""
        self.port = free_port()
        env = {**self.env, "GOV_CONSUMER_NAME": self.name, "METRICS_PORT": str(self.port)}
        argv = [sys.executable, "-m", "rotation_fsm.tools.cli", "run"]
        self.service = Service(self.name, argv, env)
        running = self.service.watch("rotation-fsm running")
        await self.service.start(self._write)
        await asyncio.wait_for(running, timeout_s)

    async def until_ready(self, timeout_s: float = 30.0) -> None:
        assert self.service is not None
        await _until_ready(f"{self.url}/readyz", self.service, timeout_s)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.service is not None and self.service.alive

    async def kill9(self) -> None:
        assert self.service is not None and self.service.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.service.proc.kill()
        await self.service.proc.wait()
        self.service.stopping = True

    async def stop(self) -> int | None:
        """SIGTERM; the exit code (contract §8: 0)."""
        return None if self.service is None else await self.service.stop()


@dataclass
class Produced:
    """What the producer wrote: counts, and the entry ids Redis acknowledged."""

    malformed_plans: int = 0
    malformed_results: int = 0
    unconfirmed: int = 0  # XADDs that failed or got no answer (in the stream or not)
    ids: list[str] = field(default_factory=list)


class _Recorder:
    """The simulator's Redis: records the id of every XADD it saw acknowledged."""

    def __init__(self, redis: Redis, keys: Keys, produced: Produced) -> None:
        self._redis = redis
        self._streams = {keys.plans: "plans", keys.results: "results"}
        self._produced = produced

    async def xadd(self, name: str, fields: Any, **kwargs: Any) -> Any:
        entry_id = await self._redis.xadd(name, fields, **kwargs)
        self._produced.ids.append(f"{self._streams[name]} {as_text_lenient(entry_id)}")
        return entry_id

    async def hset(self, *args: Any, **kwargs: Any) -> Any:
        return await self._redis.hset(*args, **kwargs)


def malformed(n: int) -> tuple[str, dict[Any, Any]]:
    """The n-th malformed entry: (logical stream, fields), one of six kinds in turn."""
    plan_id = f"bad{n:013d}"
    kinds: list[tuple[str, dict[Any, Any]]] = [
        ("plans", {"plan_id": plan_id, "symbol": "", "decision": "EXECUTE"}),
        ("plans", {"plan_id": plan_id, "symbol": "BTCUSDT", "decision": "EXECUTE", "qty": "abc"}),
        ("results", {"plan_id": plan_id, "symbol": "BTCUSDT", "executed": "perhaps"}),
        (
            "plans",
            {"plan_id": plan_id, "symbol": "BTCUSDT", "decision": "EXECUTE", "reduceOnly": "maybe"},
        ),
        (
            "plans",
            {b"plan_id": plan_id.encode(), b"symbol": b"BTC\xffUSDT", b"decision": b"EXECUTE"},
        ),
        ("results", {"plan_id": plan_id, "executed": "true"}),
    ]
    return kinds[n % len(kinds)]


def _say(line: str) -> None:
    print(line, flush=True)


class ChaosRun:
    """The imperative shell: starts the system, injects the faults, settles, observes."""

    def __init__(self, cfg: ChaosConfig, workdir: Path, say: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.say = say
        self.rng = random.Random(cfg.seed)
        self.keys = Keys()
        self.server = RedisProcess(data_dir=workdir / "redis", port=free_port(), appendonly=True)
        self.book = ChaosBook()
        self.book.limits.limit_per_min = CHAOS_WEIGHT_LIMIT
        self.stream = UserStream(self.book)
        self.stop = asyncio.Event()
        self.produced = Produced()
        self.faults: Counter[str] = Counter()
        self.outages: list[tuple[int, int]] = []  # (from_ms, Redis answering again)
        self.ready_ms: list[int] = []  # when some replica answered /readyz 200
        self.replicas: list[Replica] = []
        self.logs: list[TextIO] = []
        self.t0 = time.monotonic()
        self.frozen = False
        self.redis: Redis | None = None
        self.apply: ApplyLoop | None = None
        self.runner: web.AppRunner | None = None
        self.simulator: IntentSimulator | None = None
        self.producer: Redis | None = None  # the simulator's own client
        self.background: list[asyncio.Task[None]] = []

    # -- bring up ---------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def note(self, text: str) -> None:
        self.say(f"  t={self.elapsed():6.1f} s  {text}")

    async def up(self) -> None:
        """Redis, the paper exchange and its apply loop, the replicas, then the producer."""
        self.server.start()
        self._no_aof_rewrite()
        self.redis = _client(self.server.url, timeout_s=5.0)
        exchange_url = await self._start_exchange()
        env = engine_env(self.cfg, self.server.url, exchange_url)
        for i in range(self.cfg.replicas):
            handle = (self.workdir / f"engine-{i + 1}.log").open("a")
            self.logs.append(handle)
            self.replicas.append(Replica(f"engine-{i + 1}", env, handle))
        await asyncio.gather(*(r.start() for r in self.replicas))
        await asyncio.gather(*(r.until_ready() for r in self.replicas))
        self.simulator = self._simulator()
        await until_consumed(self.redis, self.simulator.config, self.stop)
        await self.simulator.seed_policy()
        self.t0 = time.monotonic()

    def _no_aof_rewrite(self) -> None:
        # A rewrite would compact away the permit writes the checker counts in the AOF.
        with redis_sync.Redis.from_url(self.server.url) as client:
            client.config_set("auto-aof-rewrite-percentage", 0)

    async def _start_exchange(self) -> str:
        assert self.redis is not None
        seed_regimes(self.book, parse_regimes(self.cfg.regimes), now_ms=int(time.time() * 1000))
        config = ApplyConfig(
            latency_ms=200,
            reject_rate=self.cfg.reject_rate,
            lost_rate=self.cfg.lost_rate,
            seed=self.cfg.seed,
        )
        self.apply = ApplyLoop(
            _client(self.server.url, timeout_s=5.0), self.book, self.keys, config
        )
        self.apply.observers.append(_log_outcome)
        await self.apply.ensure_group()
        app = make_app(self.book, api_key=API_KEY, api_secret=API_SECRET, stream=self.stream)
        # The timeout fault keeps answers hanging for 30 s: do not wait for them at the end.
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        port = self.runner.addresses[0][1]
        self.background += [
            asyncio.create_task(self.apply.run(self.stop)),
            asyncio.create_task(walk_marks(self.book, self.stop, rng=random.Random(self.cfg.seed))),
            asyncio.create_task(self._watch_readiness()),
        ]
        return f"http://127.0.0.1:{port}"

    def _simulator(self) -> IntentSimulator:
        # The producer's own client gives up fast and never retries: a retried XADD whose
        # first attempt landed would write an entry nobody knows of.
        self.producer = Redis.from_url(
            self.server.url,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            retry=Retry(NoBackoff(), 0),
        )
        config = SimConfig(
            redis_url=self.server.url,
            keys=self.keys,
            rate=self.cfg.rate,
            duplicate_rate=self.cfg.duplicate_rate,
            resend_rate=self.cfg.resend_rate,
            seed=self.cfg.seed,
        )
        recorder = _Recorder(self.producer, self.keys, self.produced)
        return IntentSimulator(recorder, config)  # type: ignore[arg-type]

    # -- chaos ------------------------------------------------------------------------

    async def chaos(self) -> None:
        """Produce for `seconds` while the faults of the schedule happen."""
        until = self.t0 + self.cfg.seconds
        tasks = [self._produce(until), self._kill_replicas(until)]
        tasks += [self._inject(fault) for fault in schedule(self.cfg.seconds, self.cfg.cut_s)]
        await asyncio.gather(*tasks)

    async def _at(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, self.t0 + seconds - time.monotonic()))

    async def _produce(self, until: float) -> None:
        """Publish at a steady rate; ticks missed during an outage are skipped, not
        caught up in a burst."""
        assert self.simulator is not None
        interval = 1.0 / self.cfg.rate
        next_at = time.monotonic()
        while next_at < until:
            await self._publish_one()
            next_at = max(next_at + interval, time.monotonic())
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _publish_one(self) -> None:
        assert self.simulator is not None
        recorder = self.simulator.redis
        try:
            if self.rng.random() < self.cfg.malformed_rate:
                n = self.produced.malformed_plans + self.produced.malformed_results
                logical, fields = malformed(n)
                stream = self.keys.plans if logical == "plans" else self.keys.results
                await recorder.xadd(stream, fields)
                if logical == "plans":
                    self.produced.malformed_plans += 1
                else:
                    self.produced.malformed_results += 1
            else:
                await self.simulator.publish_next()
        except (RedisError, OSError):
            self.produced.unconfirmed += 1

    async def _kill_replicas(self, until: float) -> None:
        """kill -9 a random replica every few seconds and start it again (so one is
        down at a time and the others claim what it held)."""
        while True:
            pause = self.cfg.kill_every_s * self.rng.uniform(0.6, 1.4)
            if time.monotonic() + pause + 2.0 >= until:
                return
            await asyncio.sleep(pause)
            victim = self.rng.choice(self.replicas)
            await victim.kill9()
            self.faults["replica_kill9"] += 1
            down_s = self.rng.uniform(0.3, 1.5)
            self.note(f"kill -9 {victim.name}; restarting it in {down_s:.1f} s")
            await asyncio.sleep(down_s)
            await victim.start()
            self.faults["replica_restart"] += 1

    async def _inject(self, fault: Fault) -> None:
        await self._at(fault.at_s)
        kind, _, what = fault.kind.partition(":")
        if kind == "exchange":
            self.note(f"exchange answers {what} for {fault.for_s:.1f} s")
            self.book.fault = what
            await asyncio.sleep(fault.for_s)
            self.book.fault = None
        elif kind == "stream":
            await self._stream_fault(what, fault.for_s)
        elif what == "restart":
            self._restart_redis()
        else:
            await self._cut_redis(fault.for_s)

    async def _stream_fault(self, what: str, for_s: float) -> None:
        """A fault of the user-data stream: cut, an event lost, the key expired, or
        silent (connected, saying nothing) for `for_s` seconds."""
        self.faults[f"stream_{what}"] += 1
        if what == "drop":
            self.note("user-data stream: every connection cut")
            self.stream.drop_sockets()
        elif what == "lose":
            self.note("user-data stream: the next 3 account events are lost")
            self.stream.lose_events(3)
        elif what == "expire":
            self.note("user-data stream: listenKeys expired")
            self.stream.expire_keys()
        else:
            self.note(f"user-data stream silent for {for_s:.1f} s")
            self.stream.silent = True
            await asyncio.sleep(for_s)
            self.stream.silent = False

    def _restart_redis(self) -> None:
        """kill -9 and start again on the same port and directory: the AOF reloads.
        (Blocking on purpose: the server starts as a child of the main thread, so it
        dies with this process.)"""
        start = now_ms()
        self.server.kill()
        self.server.restart()
        self._no_aof_rewrite()
        self.outages.append((start, now_ms()))
        self.faults["redis_restart"] += 1
        self.note(f"redis kill -9, restarted in {(now_ms() - start) / 1000:.2f} s (AOF reloaded)")

    async def _cut_redis(self, seconds: float) -> None:
        """Freeze the server: connections stay open and hang, nothing is answered."""
        start = now_ms()
        self.note(f"redis frozen (SIGSTOP) for {seconds:.1f} s")
        os.kill(self.server.pid, signal.SIGSTOP)
        self.frozen = True
        try:
            await asyncio.sleep(seconds)
        finally:
            self._thaw()
        self.outages.append((start, now_ms()))
        self.faults["redis_cut_ms"] += now_ms() - start
        self.note("redis thawed (SIGCONT)")

    def _thaw(self) -> None:
        if self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.server.pid, signal.SIGCONT)
            self.frozen = False

    async def _watch_readiness(self) -> None:
        """Record when any replica says it is ready: the end of an outage for invariant 4
        is when Redis answers *and* an engine is back on it."""
        async with ClientSession(timeout=ClientTimeout(total=0.5)) as session:
            while not self.stop.is_set():
                for replica in list(self.replicas):
                    if replica.alive and await _ready(session, replica.url):
                        self.ready_ms.append(now_ms())
                        break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout=0.1)

    # -- settle and observe -------------------------------------------------------------

    async def settle(self, timeout_s: float = 30.0) -> tuple[float, bool]:
        """Heal everything, then wait until every input is delivered and acknowledged,
        every decision answered by the exchange and no rotation is in flight, for 1 s
        in a row. Returns the seconds it took, and False if it never got there (the
        checker then tells what was left)."""
        self.book.fault = None
        self._thaw()
        for replica in self.replicas:
            if not replica.alive:
                await replica.start()
        start = time.monotonic()
        quiet_since: float | None = None
        while time.monotonic() - start < timeout_s:
            if await self._quiet():
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= 1.0:
                    return time.monotonic() - start, True
            else:
                quiet_since = None
            await asyncio.sleep(0.2)  # polling Redis from outside: there is no event to await
        return time.monotonic() - start, False

    async def _quiet(self) -> bool:
        assert self.redis is not None
        k = self.keys
        try:
            for stream in (k.plans, k.results):
                if not await _drained(self.redis, stream, ENGINE_GROUP):
                    return False
            # The paper exchange never retries a result whose write failed (Redis went
            # away mid-write): that decision stays pending in its group for good.
            if not await _drained(self.redis, k.decisions, DEFAULT_GROUP, abandoned_after_ms=2000):
                return False
            return int(await self.redis.scard(k.inflight)) == 0
        except (RedisError, OSError):
            return False

    async def down(self) -> list[int | None]:
        """SIGTERM every replica (their exit codes), then stop the exchange."""
        codes = await asyncio.gather(*(r.stop() for r in self.replicas))
        self.stop.set()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self._stop_exchange()
        return list(codes)

    async def _stop_exchange(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            await runner.cleanup()

    async def history(self) -> History:
        """What the checker needs from Redis (the permits come from the AOF later)."""
        assert self.redis is not None
        r, k = self.redis, self.keys
        stuck = await unacked(r, k.decisions, "decisions", DEFAULT_GROUP)
        self.faults["results_unwritten"] = len(stuck)
        out = History(
            plans=await read_stream(r, k.plans),
            results=await read_stream(r, k.results),
            decisions=await read_stream(r, k.decisions),
            dlq=await read_stream(r, k.dlq),
            audit=await read_audit(r, k),
            rotations=await read_rotations(r, k),
            produced=list(self.produced.ids),
            unacked=await unacked(r, k.plans, "plans", ENGINE_GROUP)
            + await unacked(r, k.results, "results", ENGINE_GROUP),
            outages=[(start, self._back(end)) for start, end in self.outages],
            book_counts=list(self.book.counts),
            max_desired=self.cfg.max_desired,
        )
        return out

    def _back(self, redis_back_ms: int) -> int:
        """When an engine was first seen ready once Redis answered again."""
        i = bisect_left(self.ready_ms, redis_back_ms)
        return self.ready_ms[i] if i < len(self.ready_ms) else redis_back_ms

    async def close(self) -> None:
        """Stop whatever is still running (also after a failure)."""
        self.stop.set()
        self._thaw()
        for replica in self.replicas:
            if replica.alive:
                await replica.stop()
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        for client in (self.redis, self.producer, self.apply.redis if self.apply else None):
            if client is not None:
                await client.aclose()
        await self._stop_exchange()
        for handle in self.logs:
            handle.close()
        self.server.stop()


def _log_outcome(outcome: Outcome) -> None:
    order = outcome.order
    log.info("apply: %s %s %s %s", outcome.status, order.plan_id, order.symbol,
             "close" if order.close else "open")  # fmt: skip


def now_ms() -> int:
    return int(time.time() * 1000)


def _client(url: str, *, timeout_s: float) -> Redis:
    return Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=2.0)


async def _ready(session: ClientSession, url: str) -> bool:
    try:
        async with session.get(f"{url}/readyz") as answer:
            return answer.status == 200
    except (ClientError, TimeoutError, OSError):
        return False


async def _drained(
    redis: Redis, stream: str, group: str, *, abandoned_after_ms: int | None = None
) -> bool:
    """Every entry of `stream` delivered to `group` and acknowledged — or, with
    `abandoned_after_ms`, at least pending that long (given up on by its reader)."""
    if not await redis.exists(stream):
        return True
    last = as_text_lenient((await redis.xinfo_stream(stream))["last-generated-id"])
    info = {as_text_lenient(g["name"]): g for g in await redis.xinfo_groups(stream)}.get(group)
    if info is None or as_text_lenient(info["last-delivered-id"]) != last:
        return False
    pending = int(info["pending"])
    if pending and abandoned_after_ms is not None:
        old = await redis.xpending_range(
            stream, group, min="-", max="+", count=pending, idle=abandoned_after_ms
        )
        pending -= len(old)
    return pending == 0


# ============================================================================ the report


@dataclass
class Report:
    """A chaos run's figures and verdicts."""

    seconds: float
    replicas: int
    seed: int | None
    redis_version: str
    produced: dict[str, int]
    figures: dict[str, Any]
    faults: dict[str, int]
    verdicts: list[Verdict]
    also: dict[str, list[str]]
    settle_s: float
    settled: bool
    exit_codes: list[int | None]
    workdir: str

    @property
    def violations(self) -> int:
        return sum(v.violations for v in self.verdicts)

    @property
    def ok(self) -> bool:
        return self.violations == 0

    def to_json(self) -> dict[str, Any]:
        """Plain data for `--json`."""
        return {
            "seconds": self.seconds,
            "replicas": self.replicas,
            "seed": self.seed,
            "redis_version": self.redis_version,
            "produced": self.produced,
            "figures": self.figures,
            "faults": self.faults,
            "invariants": [asdict(v) for v in self.verdicts],
            "also_checked": {
                k: {"count": len(v), "examples": v[:EXAMPLES]} for k, v in self.also.items()
            },
            "violations": self.violations,
            "settle_s": round(self.settle_s, 2),
            "settled": self.settled,
            "exit_codes": self.exit_codes,
            "ok": self.ok,
        }

    def render(self) -> str:
        """The figures table, then the violations of each invariant."""
        head = (
            f"rotation-fsm chaos run: {self.seconds:g} s, {self.replicas} replicas, "
            f"redis {self.redis_version}, seed {self.seed}"
        )
        verdict = (
            "OK: no invariant violated"
            if self.ok
            else f"FAILED: {self.violations} violations (logs in {self.workdir})"
        )
        return "\n".join([head, *self._figure_lines(), "", *self._verdict_lines(), "", verdict])

    def _figure_lines(self) -> list[str]:
        p, f = self.produced, self.figures
        rotations = ", ".join(f"{state} {n}" for state, n in f["rotations_by_state"].items())
        permit_log = "complete" if f["permit_log_complete"] else "INCOMPLETE"
        return [
            _row("plans published", f"{p['new']} new, {p['duplicates']} duplicates, "
                 f"{p['resends']} resends, {p['malformed_plans']} malformed (and "
                 f"{p['malformed_results']} malformed results); {p['unconfirmed']} XADDs "
                 "unanswered"),
            _row("streams", f"{f['plan_entries']} plan entries ({f['close_plans']} close "
                 f"plans), {f['result_entries']} results, {f['dead_letters']} dead letters, "
                 f"{f['audited_commits']} audited commits"),
            _row("decisions", f"{f['decisions']} for {f['plans_decided']} plan ids"),
            *(_row("", f"{n:6d}  {reason}") for reason, n in f["decisions_by_reason"].items()),
            _row("rotations", f"{f['rotations']}: {rotations or 'none'}"),
            _row("permits written", f"{f['permits_written']} (counted in the AOF: {permit_log})"),
            _row("paper book", f"at most {f['most_positions_on_book']} positions (largest "
                 f"desired: {f['most_desired_slots']})"),
            _row("outages", ", ".join(f"{s:g} s" for s in f["outages_s"]) + " (Redis down or "
                 "frozen, until an engine was back)"),
            _row("faults injected", ", ".join(f"{k} {v}" for k, v in self.faults.items())),
            _row("settled", f"{'in' if self.settled else 'NOT, after'} {self.settle_s:.1f} s; "
                 f"engines exited {self.exit_codes}"),
        ]  # fmt: skip

    def _verdict_lines(self) -> list[str]:
        lines = [f"  {'invariant':<72} violations"]
        for v in self.verdicts:
            extra = "".join(f"  ({k} {n})" for k, n in v.figures.items())
            lines.append(f"  {v.number} {v.title:<70} {v.violations:>10}{extra}")
            lines += [f"      - {example}" for example in v.examples]
        for name, found in self.also.items():
            lines.append(f"  also: {name:<66} {len(found):>10}")
            lines += [f"      - {example}" for example in found[:EXAMPLES]]
        return lines


def _row(name: str, text: str) -> str:
    return f"  {name:<18} {text}"


def _fault_figures(run: ChaosRun) -> dict[str, int]:
    apply_stats = run.apply.stats if run.apply else Counter()
    out = {
        "replica_kill9": run.faults["replica_kill9"],
        "redis_restart": run.faults["redis_restart"],
        "redis_cut_ms": run.faults["redis_cut_ms"],
    }
    out |= {f"exchange_{kind}": run.book.faults_served[kind] for kind in EXCHANGE_FAULTS}
    out |= {f"stream_{kind}": run.faults[f"stream_{kind}"] for kind in STREAM_FAULTS}
    out["stream_events_lost"] = run.stream.counts["lost"]
    out["orders_rejected"] = apply_stats["rejected"]
    out["results_lost"] = apply_stats["lost"]
    # fills whose result could not be written while Redis was away: lost results too
    out["results_unwritten"] = run.faults["results_unwritten"]
    return out


async def run_chaos(
    cfg: ChaosConfig, workdir: Path, *, say: Callable[[str], None] = _say
) -> Report:
    """One chaos run, settled and checked."""
    run = ChaosRun(cfg, workdir, say)
    try:
        say(f"rotation-fsm chaos: starting redis, the paper exchange, {cfg.replicas} replicas")
        await run.up()
        say(f"running {cfg.seconds:g} s at {cfg.rate:g} plans/s (logs in {workdir})")
        await run.chaos()
        say("producer stopped; healing and settling")
        settle_s, settled = await run.settle()
        codes = await run.down()
        history = await run.history()
        version = run.server.version
    finally:
        await run.close()
    history.permits, history.permit_log_complete = read_permits(workdir / "redis", run.keys)
    stats = run.simulator.stats if run.simulator else None
    produced = {
        "new": stats.new if stats else 0,
        "duplicates": stats.duplicates if stats else 0,
        "resends": stats.resends if stats else 0,
        "malformed_plans": run.produced.malformed_plans,
        "malformed_results": run.produced.malformed_results,
        "unconfirmed": run.produced.unconfirmed,
    }
    return Report(
        seconds=cfg.seconds,
        replicas=cfg.replicas,
        seed=cfg.seed,
        redis_version=version,
        produced=produced,
        figures=figures(history),
        faults=_fault_figures(run),
        verdicts=check(history),
        also=also_checked(history),
        settle_s=settle_s,
        settled=settled,
        exit_codes=codes,
        workdir=str(workdir),
    )


# ============================================================================ command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rotation_fsm.devkit.chaos", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to produce")
    parser.add_argument("--rate", type=float, default=15.0, help="plans per second")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None, help="the dice (default: random)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--workdir", metavar="DIR", help="logs and Redis data (kept)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the figures, exit 0 only when no invariant was violated."""
    args = build_parser().parse_args(argv)
    if args.seconds < 20 or args.rate <= 0 or args.replicas < 2:
        print("chaos: need --seconds >= 20, --rate > 0, --replicas >= 2", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    cfg = ChaosConfig(seconds=args.seconds, rate=args.rate, replicas=args.replicas, seed=seed)
    keep = args.workdir is not None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="rotation-fsm-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=workdir / "chaos.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    report = asyncio.run(run_chaos(cfg, workdir))
    print(report.render(), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if report.ok and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
