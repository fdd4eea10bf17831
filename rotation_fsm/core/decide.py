"""The core: (input, book view, market, rules, now) → effects. Pure, no I/O.

The shell loads a `BookView` from Redis, fetches a `Market` snapshot, calls
`decide_batch`, and commits the returned effects in one atomic step. Replay
feeds recorded inputs to the same function with an in-memory view. The view
is updated from the effects themselves (`BookView.apply`), so a batch decides
each entry against what the entries before it already did.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import msgspec

from . import reasons as R
from .errors import RotationFsmError
from .machine import FINAL, IN_FLIGHT, State, Trigger, fire
from .market import Position
from .messages import (
    ClosePlan,
    Decision,
    Event,
    Hold,
    Plan,
    PlanRecord,
    Reservation,
    Result,
    RotationRecord,
    to_fields,
)
from .regime import Regime, RegimeReading
from .settings import Rules
from .slots import (
    PolicyError,
    beats_threshold,
    close_plan_id,
    desired_slots,
    occupied,
    over_margin,
    parse_universe,
    too_correlated,
    weakest,
)
from .snapshot import Market

# ---------------------------------------------------------------- inputs


class PlanIn(msgspec.Struct, frozen=True, tag="plan"):
    entry_id: str
    plan: Plan


class ResultIn(msgspec.Struct, frozen=True, tag="result"):
    entry_id: str
    result: Result


class Tick(msgspec.Struct, frozen=True, tag="tick"):
    """The timer saw this rotation's deadline pass."""

    rotation_id: str


class BadIn(msgspec.Struct, frozen=True, tag="bad"):
    """An entry that could not be parsed: dead-lettered with `error`, bytes kept as read."""

    stream: str  # "plans" | "results"
    entry_id: str
    fields: list[tuple[bytes, bytes]]  # pairs, not a dict: JSON keys cannot be bytes
    error: str


class Abort(msgspec.Struct, frozen=True, tag="abort"):
    """An operator aborts a rotation in flight."""

    rotation_id: str
    by: str


class Extend(msgspec.Struct, frozen=True, tag="extend"):
    """An operator moves a rotation's deadline."""

    rotation_id: str
    deadline_ms: int
    by: str


Input = PlanIn | ResultIn | Tick | BadIn | Abort | Extend

# ---------------------------------------------------------------- effects


class Emit(msgspec.Struct, frozen=True, tag="emit"):
    """Append to a stream; `stream` is a logical name: plans, events, dlq, audit."""

    stream: str
    fields: dict[str, str]


class Decided(msgspec.Struct, frozen=True, tag="decided"):
    """A decision entry, plus its keys: permit (first ALLOW only) or block.

    `unblock`: an ALLOW for a plan that was blocked before, whose block key goes.
    """

    decision: Decision
    permit: bool = False
    unblock: bool = False


class SaveRotation(msgspec.Struct, frozen=True, tag="rotation"):
    """Persist a rotation; in-flight set, deadline, lock key and close index follow
    from its state, so they are derived by the store rather than stated twice."""

    record: RotationRecord


class DeadLetter(msgspec.Struct, frozen=True, tag="dead_letter"):
    """Original fields (bytes, as read) plus `error`, `entry_id`, `stream` on the DLQ."""

    stream: str
    entry_id: str
    fields: list[tuple[bytes, bytes]]
    error: str

    def entry(self) -> dict[bytes, bytes]:
        """The DLQ entry: the original fields, plus `error`, `entry_id`, `stream`.

        An original named like one of ours is kept as `orig_<name>` (more `orig_`
        until the name is free). An entry with very many fields is kept whole in one
        field, `orig_fields_b64` (JSON pairs of base64 name/value): one XADD cannot
        carry thousands of arguments through the commit script, and a dead letter
        that can never be written would block its batch forever.
        """
        meta = {
            b"error": self.error.encode(),
            b"entry_id": self.entry_id.encode(),
            b"stream": self.stream.encode(),
        }
        if len(self.fields) > DEAD_LETTER_MAX_FIELDS:
            pairs = [
                [base64.b64encode(k).decode(), base64.b64encode(v).decode()] for k, v in self.fields
            ]
            return {**meta, b"orig_fields_b64": msgspec.json.encode(pairs)}
        out: dict[bytes, bytes] = {}
        for name, value in self.fields:
            while name in meta or name in out:
                name = b"orig_" + name
            out[name] = value
        out.update(meta)
        return out


#: past this many fields a dead letter keeps the original entry in one field
DEAD_LETTER_MAX_FIELDS = 256


class ForgetDeadline(msgspec.Struct, frozen=True, tag="forget_deadline"):
    rotation_id: str


class SavePlan(msgspec.Struct, frozen=True, tag="plan_record"):
    record: PlanRecord


class Reserve(msgspec.Struct, frozen=True, tag="reserve"):
    """Set `symbol`'s reservation; with a `holder`, that plan id joins it (its `Hold`
    is kept until `hold_until_ms`)."""

    symbol: str
    reservation: Reservation
    holder: str = ""
    hold_until_ms: int = 0


class Release(msgspec.Struct, frozen=True, tag="release"):
    symbol: str


class Unhold(msgspec.Struct, frozen=True, tag="unhold"):
    """`plan_id`'s result came: its hold is spent."""

    plan_id: str


class ViewAsOf(msgspec.Struct, frozen=True, tag="view_as_of"):
    """The book's decisions now rest on an exchange view as of `as_of_ms`."""

    as_of_ms: int


class SetConfidence(msgspec.Struct, frozen=True, tag="confidence"):
    symbol: str
    confidence: float


class Ack(msgspec.Struct, frozen=True, tag="ack"):
    stream: str  # "plans" | "results"
    entry_id: str


Effect = (
    Emit
    | Decided
    | SaveRotation
    | DeadLetter
    | ForgetDeadline
    | SavePlan
    | Reserve
    | Release
    | Unhold
    | SetConfidence
    | ViewAsOf
    | Ack
)

# ---------------------------------------------------------------- state


@dataclass
class BookView:
    """The part of a book's Redis state one batch needs, and the outputs so far."""

    version: int = 0
    policy_raw: bytes | str | None = None
    settings_raw: dict[str, str] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)  # plan id → its hold (results')
    inflight: set[str] = field(default_factory=set)
    rotations: dict[str, RotationRecord] = field(default_factory=dict)
    plans: dict[str, PlanRecord] = field(default_factory=dict)
    close_index: dict[str, str] = field(default_factory=dict)
    entry_confidence: dict[str, float] = field(default_factory=dict)
    dead_lettered: set[str] = field(default_factory=set)  # "stream:entry_id"
    # Symbols of the rotations in flight, computed once per change of them: asked for
    # by every OPEN plan of a batch. Dropped by `apply` and at each batch's start.
    _in_flight_symbols: tuple[frozenset[str], frozenset[str]] | None = field(
        default=None, repr=False, compare=False
    )
    view_as_of_ms: int = 0  # the newest exchange view a committed decision rested on

    def rotation_targets(self) -> frozenset[str]:
        """Symbols being closed by a rotation in flight."""
        return self._rotation_symbols()[0]

    def rotation_entries(self) -> frozenset[str]:
        """Symbols a rotation in flight is waiting to open."""
        return self._rotation_symbols()[1]

    def _rotation_symbols(self) -> tuple[frozenset[str], frozenset[str]]:
        if self._in_flight_symbols is None:
            recs = [self.rotations[r] for r in self.inflight if r in self.rotations]
            self._in_flight_symbols = (
                frozenset(r.close_symbol for r in recs),
                frozenset(r.new_symbol for r in recs),
            )
        return self._in_flight_symbols

    def forget_derived(self) -> None:
        """Drop what was computed from the rotations (they were changed from outside)."""
        self._in_flight_symbols = None

    def apply(self, effect: Effect) -> None:
        """Update the view as committing `effect` would update Redis."""
        if isinstance(effect, Decided | Ack | Emit):
            return  # most effects of a batch: nothing the view keeps
        match effect:
            case SaveRotation(record=rec):
                self._in_flight_symbols = None
                self.rotations[rec.rotation_id] = rec
                self.close_index[rec.close_plan_id] = rec.rotation_id
                if rec.state in IN_FLIGHT:
                    self.inflight.add(rec.rotation_id)
                else:
                    self.inflight.discard(rec.rotation_id)
            case SavePlan(record=rec):
                self.plans[rec.plan_id] = rec
            case Reserve(symbol=sym, reservation=res, holder=holder):
                self.reservations[sym] = res
                if holder:
                    self.holds[holder] = Hold(symbol=sym, made_by=res.plan_id)
            case Release(symbol=sym):
                self.reservations.pop(sym, None)
            case Unhold(plan_id=plan_id):
                self.holds.pop(plan_id, None)
            case SetConfidence(symbol=sym, confidence=value):
                self.entry_confidence[sym] = value
            case DeadLetter(stream=stream, entry_id=entry_id):
                self.dead_lettered.add(f"{stream}:{entry_id}")
            case ViewAsOf(as_of_ms=as_of_ms):
                self.view_as_of_ms = max(self.view_as_of_ms, as_of_ms)
            case _:
                pass


# ---------------------------------------------------------------- helpers


def _ts(now_ms: int) -> str:
    return f"{now_ms / 1000:.3f}"


@dataclass
class _Ctx:
    """One decision's inputs, with the derived numbers computed at most once."""

    view: BookView
    market: Market
    rules: Rules
    now_ms: int
    plan: Plan
    entry_id: str

    @cached_property
    def reading(self) -> RegimeReading:
        return self.market.reading(self.plan.symbol)

    @cached_property
    def desired(self) -> int:
        return desired_slots(self.reading.regime, self.rules)

    @cached_property
    def taken(self) -> frozenset[str]:
        return occupied(
            self.market.open_symbols, self.view.reservations, self.view.rotation_targets()
        )

    @property
    def free(self) -> int:
        return max(0, self.desired - len(self.taken))


def _decision(
    plan_id: str,
    symbol: str,
    action: str,
    verdict: str,
    reason: str,
    now_ms: int,
    *,
    regime: str = "",
    desired: int = 0,
    free: int = 0,
    rotation_id: str = "",
    entry_id: str = "",
) -> Decision:
    return Decision(
        plan_id=plan_id,
        symbol=symbol,
        action=action,
        decision=verdict,
        reason=reason,
        regime=regime,
        desired_slots=desired,
        open_slots=free,
        timestamp=_ts(now_ms),
        rotation_id=rotation_id or None,
        entry_id=entry_id or None,
    )


def _answer(
    ctx: _Ctx,
    verdict: str,
    reason: str,
    *,
    with_slots: bool = True,
    rotation_id: str = "",
) -> list[Effect]:
    """Decide `ctx.plan`: decision entry, permit on a first ALLOW, plan record, ack."""
    plan, rules = ctx.plan, ctx.rules
    regime = ctx.reading.regime.value if with_slots else ""
    desired = ctx.desired if with_slots else 0
    free = ctx.free if with_slots else 0
    decision = _decision(
        plan.plan_id,
        plan.symbol,
        plan.action,
        verdict,
        reason,
        ctx.now_ms,
        regime=regime,
        desired=desired,
        free=free,
        rotation_id=rotation_id,
        entry_id=ctx.entry_id,
    )
    record = PlanRecord(
        plan_id=plan.plan_id,
        symbol=plan.symbol,
        action=plan.action,
        decision=verdict,
        reason=reason,
        final=R.is_final(verdict, reason),
        rotation_id=rotation_id,
        confidence=plan.confidence,
        regime=regime,
        desired_slots=desired,
        entries=_remember(ctx.view.plans.get(plan.plan_id), ctx.entry_id),
        decided_ms=ctx.now_ms,
    )
    before = ctx.view.plans.get(plan.plan_id)
    effects: list[Effect] = [
        Decided(
            decision,
            permit=verdict == R.ALLOW and rules.issue_permits,
            unblock=verdict == R.ALLOW and before is not None and before.decision == R.BLOCK,
        ),
        SavePlan(record),
    ]
    if verdict == R.ALLOW and plan.confidence is not None and not plan.is_close:
        effects.append(SetConfidence(plan.symbol, plan.confidence))
    return effects


#: how many answered stream entries a plan record remembers (resends are rare; a
#: redelivery of one older than that would be answered once more, never re-decided
#: into a second permit: permits are written on a first ALLOW only)
REMEMBERED_ENTRIES = 32


def _remember(record: PlanRecord | None, entry_id: str) -> list[str]:
    """The entries answered for a plan, with `entry_id` added (bounded, oldest dropped)."""
    earlier = record.entries[-(REMEMBERED_ENTRIES - 1) :] if record is not None else []
    return [*earlier, entry_id]


def _answer_again(ctx: _Ctx, record: PlanRecord, reason: str) -> list[Effect]:
    """A resend: the recorded answer again; no second permit, no second rotation."""
    decision = _decision(
        record.plan_id,
        ctx.plan.symbol,
        ctx.plan.action,
        record.decision or R.BLOCK,
        reason,
        ctx.now_ms,
        regime=record.regime,
        desired=record.desired_slots,
        rotation_id=record.rotation_id,
        entry_id=ctx.entry_id,
    )
    updated = msgspec.structs.replace(record, entries=_remember(record, ctx.entry_id))
    return [Decided(decision, permit=False), SavePlan(updated)]


# ---------------------------------------------------------------- plans


def decide_plan(ctx: _Ctx) -> list[Effect]:
    """Contract §3a, in its order of checks. Returns effects without the ack."""
    plan, view, rules, market = ctx.plan, ctx.view, ctx.rules, ctx.market
    record = view.plans.get(plan.plan_id)
    if record is not None and record.final:
        return _answer_again(ctx, record, record.reason)
    if record is not None and record.rotation_id in view.inflight:
        return _answer_again(
            ctx, msgspec.structs.replace(record, decision=R.BLOCK), R.WAITING_ROTATION_CLOSE
        )
    if plan.is_close:
        return _answer(ctx, R.ALLOW, R.CLOSE_EXEMPT, with_slots=False)
    if not plan.qty_orderable:  # 0, negative or absurd: no order to let through
        return _answer(ctx, R.BLOCK, R.INVALID_QTY, with_slots=False)
    if not rules.slots_enabled:
        return _answer(ctx, R.ALLOW, R.SLOTS_DISABLED, with_slots=False)
    if rules.entries_paused:
        return _answer(ctx, R.BLOCK, R.PAUSED, with_slots=False)
    try:
        universe = parse_universe(view.policy_raw)
    except PolicyError:
        return _answer(ctx, R.BLOCK, R.NO_POLICY, with_slots=False)
    if plan.symbol not in universe:
        return _answer(ctx, R.BLOCK, R.NOT_IN_UNIVERSE, with_slots=False)
    if market.positions is None or (rules.margin_gate_on and market.account is None):
        # A view that was good but is too old says so: never decided on, fail closed.
        reason = R.EXCHANGE_STALE if market.stale else R.POSITIONS_UNAVAILABLE
        return _answer(ctx, R.BLOCK, reason, with_slots=False)
    if (
        market.account is not None
        and rules.margin_gate_on
        and over_margin(market.account, rules.max_margin_usage)
    ):
        return _answer(ctx, R.BLOCK, R.MARGIN_CAP)
    if plan.symbol in view.rotation_targets() | view.rotation_entries():
        # A rotation is closing this symbol, or waiting to open it: "held" would let
        # this entry execute on a slot nobody counts. Decided afresh on a resend.
        return _answer(ctx, R.BLOCK, R.ROTATION_IN_PROGRESS)
    if plan.symbol in market.open_symbols or plan.symbol in view.reservations:
        # No new slot, but this entry holds the symbol's slot until its result: if the
        # position is closed or netted flat before it executes, it opens the symbol
        # again, and that slot must still be counted (found by the chaos run).
        effects = _answer(ctx, R.ALLOW, R.SLOT_ALREADY_HELD)
        effects.append(_hold(view, plan.symbol, plan.plan_id, rules, ctx.now_ms))
        return effects
    blocked = _correlation_block(ctx)
    if blocked is not None:
        return blocked
    if ctx.free > 0:
        effects = _answer(ctx, R.ALLOW, R.SLOTS_AVAILABLE)
        effects.append(_hold(view, plan.symbol, plan.plan_id, rules, ctx.now_ms))
        return effects
    return _rotate_or_block(ctx)


def _hold(view: BookView, symbol: str, plan_id: str, rules: Rules, now_ms: int) -> Reserve:
    """`plan_id` holds `symbol`'s slot until its result or its TTL: joining the
    reservation already there, or making one."""
    until = now_ms + int(rules.reservation_ttl_s * 1000)
    held = view.reservations.get(symbol)
    res = held.joined(until) if held else Reservation(plan_id=plan_id, until_ms=until)
    return Reserve(symbol, res, holder=plan_id, hold_until_ms=until)


def _correlation_block(ctx: _Ctx) -> list[Effect] | None:
    if not ctx.rules.correlation_gate_on:
        return None
    others = ctx.market.open_symbols - {ctx.plan.symbol}
    if not others:
        return None
    if ({ctx.plan.symbol} | others) & set(ctx.market.klines_missing):
        # Klines we could not fetch are not "no correlation": fail closed.
        return _answer(ctx, R.BLOCK, R.POSITIONS_UNAVAILABLE)
    row = ctx.market.correlations.get(ctx.plan.symbol, {})
    if too_correlated(row, ctx.rules.max_correlation) is None:
        return None
    return _answer(ctx, R.BLOCK, R.CORRELATION_TOO_HIGH)


def rotation_exclusions(symbol: str, view: BookView) -> frozenset[str]:
    """The positions a rotation for an entry into `symbol` may never close: the plan's
    own symbol, one a rotation is already closing, one a rotation waits to open, and
    one reserved for an entry on its way."""
    return (
        frozenset({symbol})
        | view.rotation_targets()
        | view.rotation_entries()
        | frozenset(view.reservations)
    )


def _rotate_or_block(ctx: _Ctx) -> list[Effect]:
    plan, view, rules, market, now_ms = ctx.plan, ctx.view, ctx.rules, ctx.market, ctx.now_ms
    excluded = rotation_exclusions(plan.symbol, view)
    target = weakest(market.positions or [], now_ms, excluded=excluded)
    if target is None:
        return _answer(ctx, R.BLOCK, R.NO_ROTATION_CANDIDATE)
    if len(view.inflight) >= rules.max_concurrent_rotations:
        return _answer(ctx, R.BLOCK, R.ROTATION_IN_PROGRESS)
    if not beats_threshold(
        plan.confidence, view.entry_confidence.get(target.symbol), rules.rotation_threshold
    ):
        return _answer(ctx, R.BLOCK, R.NO_ROTATION_CANDIDATE)
    return _start_rotation(ctx, target)


def _start_rotation(ctx: _Ctx, target: Position) -> list[Effect]:
    plan, now_ms = ctx.plan, ctx.now_ms
    rotation_id = f"{plan.plan_id}@{now_ms}"
    close_id = close_plan_id(plan.plan_id, target.symbol, ctx.view.close_index, rotation_id, now_ms)
    locked = fire(State.IDLE, Trigger.LOCK)
    emitted = fire(str(locked), Trigger.EMIT_CLOSE)
    record = RotationRecord(
        rotation_id=rotation_id,
        state=str(emitted),
        version=1,
        new_plan_id=plan.plan_id,
        new_symbol=plan.symbol,
        new_action=plan.action,
        new_confidence=plan.confidence,
        close_symbol=target.symbol,
        close_plan_id=close_id,
        close_weakness=round(target.weakness(now_ms), 8),
        created_ms=now_ms,
        deadline_ms=now_ms + int(ctx.rules.lock_ttl_s * 1000),
        updated_ms=now_ms,
        regime=ctx.reading.regime.value,
        desired_slots=ctx.desired,
        trigger_entry_id=ctx.entry_id,
        history=[[now_ms, Trigger.LOCK.value, locked], [now_ms, Trigger.EMIT_CLOSE.value, emitted]],
        # No copy of the positions: the audit entry of this batch holds the snapshot.
    )
    close = ClosePlan(
        plan_id=close_id,
        symbol=target.symbol,
        action="FULL_CLOSE_PROPOSED",
        side="CLOSE",
        qty="0",
        reduceOnly="true",
        decision="EXECUTE",
        source="rotation-fsm",
        kill_score="0",
        rotation_trigger="true",
        new_symbol=plan.symbol,
        new_plan_id=plan.plan_id,
        timestamp=_ts(now_ms),
        rotation_id=rotation_id,
    )
    return [
        Emit("plans", to_fields(close)),
        SaveRotation(record),
        Emit("events", to_fields(_event(R.EV_LOCK_CREATED, record, now_ms))),
        *_answer(ctx, R.BLOCK, R.WAITING_ROTATION_CLOSE, rotation_id=rotation_id),
    ]


def _event(name: str, rec: RotationRecord, now_ms: int, **extra: str) -> Event:
    return Event(
        event=name,
        new_symbol=rec.new_symbol,
        new_plan_id=rec.new_plan_id,
        close_symbol=rec.close_symbol,
        close_plan_id=rec.close_plan_id,
        timestamp=_ts(now_ms),
        rotation_id=rec.rotation_id,
        state=rec.state,
        **extra,
    )


# ---------------------------------------------------------------- rotation ends


def _moved(rec: RotationRecord, trigger: Trigger, state: str, now_ms: int) -> RotationRecord:
    """The record after `trigger` took it to `state` (history appended, version bumped)."""
    ended = now_ms if state in FINAL and rec.state not in FINAL else rec.ended_ms
    return msgspec.structs.replace(
        rec,
        state=state,
        version=rec.version + 1,
        updated_ms=now_ms,
        ended_ms=ended,
        history=[*rec.history, [now_ms, trigger.value, state]],
    )


def _end_decision(
    rec: RotationRecord, view: BookView, rules: Rules, verdict: str, reason: str, now_ms: int
) -> list[Effect]:
    """The waiting plan's final answer when its rotation ends (it is not sent again)."""
    waiting = view.plans.get(rec.new_plan_id)
    decision = _decision(
        rec.new_plan_id,
        rec.new_symbol,
        rec.new_action,
        verdict,
        reason,
        now_ms,
        regime=rec.regime,
        desired=rec.desired_slots,
        rotation_id=rec.rotation_id,
    )
    record = PlanRecord(
        plan_id=rec.new_plan_id,
        symbol=rec.new_symbol,
        action=rec.new_action,
        decision=verdict,
        reason=reason,
        final=R.is_final(verdict, reason),  # rotation_complete, or a final BLOCK
        rotation_id=rec.rotation_id,
        confidence=rec.new_confidence,
        regime=rec.regime,
        desired_slots=rec.desired_slots,
        entries=waiting.entries if waiting else [],
        decided_ms=now_ms,
    )
    allowed = verdict == R.ALLOW
    # The waiting plan was blocked (waiting_rotation_close): its block key goes.
    return [
        Decided(decision, permit=allowed and rules.issue_permits, unblock=allowed),
        SavePlan(record),
    ]


def _confirm(rec: RotationRecord, view: BookView, rules: Rules, now_ms: int) -> list[Effect]:
    done = _moved(rec, Trigger.CONFIRM, State.CONFIRMED, now_ms)
    effects: list[Effect] = [
        SaveRotation(done),
        Emit("events", to_fields(_event(R.EV_COMPLETE, done, now_ms))),
        *_end_decision(done, view, rules, R.ALLOW, R.ROTATION_COMPLETE, now_ms),
        # The slot the rotation freed, now held for its entry.
        _hold(view, done.new_symbol, done.new_plan_id, rules, now_ms),
    ]
    if done.new_confidence is not None:
        effects.append(SetConfidence(done.new_symbol, done.new_confidence))
    return effects


def _end_blocked(
    rec: RotationRecord,
    trigger: Trigger,
    state: State,
    event: str,
    reason: str,
    view: BookView,
    rules: Rules,
    now_ms: int,
    **extra: str,
) -> list[Effect]:
    done = _moved(rec, trigger, state, now_ms)
    return [
        SaveRotation(done),
        Emit("events", to_fields(_event(event, done, now_ms, **extra))),
        *_end_decision(done, view, rules, R.BLOCK, reason, now_ms),
    ]


def _unhold(view: BookView, plan_id: str, filled_ms: int) -> list[Effect]:
    """`plan_id`'s share of its symbol's reservation, given back (once: the hold goes).

    `filled_ms` > 0: the entry was executed, read at that time; its share then turns
    into a fill the exchange view must show before the slot stops being counted."""
    hold = view.holds.get(plan_id)
    if hold is None:
        return []
    res = view.reservations.get(hold.symbol)
    if res is None or res.plan_id != hold.made_by:
        return [Unhold(plan_id)]  # that reservation already ended (TTL); not this one's
    rest = res.without_one(filled_ms)
    return [Unhold(plan_id), Release(hold.symbol) if rest is None else Reserve(hold.symbol, rest)]


def decide_result(result: Result, view: BookView, rules: Rules, now_ms: int) -> list[Effect]:
    """A result: confirm/reject/late-confirm a rotation, or end a reservation."""
    rotation_id = view.close_index.get(result.plan_id)
    rec = view.rotations.get(rotation_id) if rotation_id else None
    if rec is None:
        # An entry's result ends its hold. Not executed, nothing opened: the slot is
        # free. Executed, the position exists on the exchange but a view taken before
        # now may not show it, so the reservation keeps counting until the engine
        # decides on a view as of a later time (`tidy_reservations`).
        return _unhold(view, result.plan_id, now_ms if result.executed else 0)
    facts = {
        "executed": result.executed,
        "reduce_only": result.reduce_only,
        "late_confirmed": rec.late_confirmed_ms > 0,
    }
    if rec.state == State.CLOSE_EMITTED:
        if fire(rec.state, Trigger.CONFIRM, **facts):
            return _confirm(rec, view, rules, now_ms)
        if fire(rec.state, Trigger.REJECT, **facts):
            return _end_blocked(
                rec,
                Trigger.REJECT,
                State.CLOSE_REJECTED,
                R.EV_CLOSE_REJECTED,
                R.ROTATION_CLOSE_REJECTED,
                view,
                rules,
                now_ms,
            )
        return []  # executed but not reduce-only: not a confirmation (contract §2)
    if rec.state in (State.TIMED_OUT, State.ABORTED) and fire(
        rec.state, Trigger.LATE_CONFIRM, **facts
    ):
        late = msgspec.structs.replace(
            _moved(rec, Trigger.LATE_CONFIRM, rec.state, now_ms), late_confirmed_ms=now_ms
        )
        return [
            SaveRotation(late),
            Emit("events", to_fields(_event(R.EV_LATE_CONFIRM, late, now_ms))),
        ]
    return []  # a redelivery after the rotation already moved on


def decide_tick(rotation_id: str, view: BookView, rules: Rules, now_ms: int) -> list[Effect]:
    """The timer's tick: time the rotation out if it is still in flight and overdue."""
    rec = view.rotations.get(rotation_id)
    if rec is None:
        return [ForgetDeadline(rotation_id)]
    if rec.state not in IN_FLIGHT:
        return [ForgetDeadline(rotation_id)]
    if not fire(rec.state, Trigger.TIMEOUT, now_ms=now_ms, deadline_ms=rec.deadline_ms):
        return []
    lock_age = f"{(now_ms - rec.created_ms) / 1000:.3f}"
    return _end_blocked(
        rec,
        Trigger.TIMEOUT,
        State.TIMED_OUT,
        R.EV_TIMEOUT,
        R.ROTATION_TIMEOUT,
        view,
        rules,
        now_ms,
        lock_age=lock_age,
    )


def decide_abort(
    rec: RotationRecord, view: BookView, rules: Rules, now_ms: int, by: str
) -> list[Effect]:
    """Abort a rotation in flight; the machine refuses (IllegalTransition) once final."""
    fire(rec.state, Trigger.ABORT)
    return _end_blocked(
        rec,
        Trigger.ABORT,
        State.ABORTED,
        R.EV_ABORTED,
        R.ROTATION_ABORTED,
        view,
        rules,
        now_ms,
        by=by,
    )


def decide_extend(rec: RotationRecord, deadline_ms: int, now_ms: int, by: str) -> list[Effect]:
    """Move the deadline of a rotation waiting for its close (the timer honours it)."""
    state = fire(rec.state, Trigger.EXTEND)
    moved = msgspec.structs.replace(
        _moved(rec, Trigger.EXTEND, str(state), now_ms), deadline_ms=deadline_ms
    )
    event = _event(
        R.EV_DEADLINE_CHANGED,
        moved,
        now_ms,
        old_deadline=_ts(rec.deadline_ms),
        new_deadline=_ts(deadline_ms),
        by=by,
    )
    return [SaveRotation(moved), Emit("events", to_fields(event))]


# ---------------------------------------------------------------- batches


def tidy_reservations(view: BookView, market: Market, rules: Rules, now_ms: int) -> list[Effect]:
    """Reservations that end before a batch is decided, on the view it decides on.

    A reservation ends once `market` is known to show whatever its holders did
    (plus `rules.clock_skew_ms`, for replicas whose clocks differ), so the view itself
    counts the position from then on: settled, when nobody holds it any more and the
    view is as of after its last fill was read; or run out, past its TTL (a lost
    result must not hold a slot for ever) and the view as of after that TTL, since a
    holder may have filled up to the moment its permit expired with it. A view from
    before that moment, or none, keeps the slot counted. Never ended merely by the
    symbol showing open: another entry for it may still be on its way and would open
    it again after a close (the symbol is counted once anyway).
    """
    margin = rules.clock_skew_ms
    ended: list[Effect] = []
    for sym, res in sorted(view.reservations.items()):
        if res.settling:
            proof_ms = res.filled_ms
        elif res.until_ms <= now_ms:
            proof_ms = res.until_ms
        else:
            continue
        if market.shows_after(sym, proof_ms + margin):
            ended.append(Release(sym))
    return ended


def decide_one(
    item: Input, view: BookView, market: Market, rules: Rules, now_ms: int
) -> list[Effect]:
    """Effects of one input, ack included."""
    match item:
        case PlanIn(entry_id=entry_id, plan=plan):
            record = view.plans.get(plan.plan_id)
            if not plan.is_execute or (record is not None and entry_id in record.entries):
                return [Ack("plans", entry_id)]  # not ours to gate, or a redelivery
            ctx = _Ctx(view, market, rules, now_ms, plan, entry_id)
            return [*decide_plan(ctx), Ack("plans", entry_id)]
        case ResultIn(entry_id=entry_id, result=result):
            return [*decide_result(result, view, rules, now_ms), Ack("results", entry_id)]
        case Tick(rotation_id=rotation_id):
            return decide_tick(rotation_id, view, rules, now_ms)
        case BadIn(stream=stream, entry_id=entry_id, fields=raw, error=error):
            if f"{stream}:{entry_id}" in view.dead_lettered:
                return [Ack(stream, entry_id)]  # a redelivery: already in the DLQ
            return [DeadLetter(stream, entry_id, raw, error), Ack(stream, entry_id)]
        case Abort(rotation_id=rotation_id, by=by):
            return decide_abort(_known(view, rotation_id), view, rules, now_ms, by)
        case Extend(rotation_id=rotation_id, deadline_ms=deadline_ms, by=by):
            return decide_extend(_known(view, rotation_id), deadline_ms, now_ms, by)
    raise TypeError(f"unknown input {item!r}")


class Gate(msgspec.Struct, frozen=True, kw_only=True):
    """The slots gate as the core applies it to one OPEN plan: the numbers it looked
    at and the check that decided. `explain` and the console render this record
    instead of working the gate out again, so they cannot drift from the core."""

    verdict: str
    reason: str
    reading: RegimeReading
    desired_slots: int
    occupied: frozenset[str]
    free: int
    #: positions a rotation for this plan may never close
    excluded: frozenset[str]
    #: the weakest position outside `excluded`: the close target if the plan rotates
    candidate: Position | None


def gate(plan: Plan, view: BookView, market: Market, rules: Rules, now_ms: int) -> Gate:
    """The gate `decide_one` applies to `plan` on this view and market, as a record.

    Runs the same checks (`decide_plan`) and keeps their numbers; nothing is applied
    to `view`."""
    ctx = _Ctx(view, market, rules, now_ms, plan, entry_id="")
    decided = next(e.decision for e in decide_plan(ctx) if isinstance(e, Decided))
    excluded = rotation_exclusions(plan.symbol, view)
    return Gate(
        verdict=decided.decision,
        reason=decided.reason,
        reading=ctx.reading,
        desired_slots=ctx.desired,
        occupied=ctx.taken,
        free=ctx.free,
        excluded=excluded,
        candidate=weakest(market.positions or [], now_ms, excluded=excluded),
    )


class UnknownRotation(RotationFsmError, KeyError):
    """An operator named a rotation id the book does not have."""


def _known(view: BookView, rotation_id: str) -> RotationRecord:
    rec = view.rotations.get(rotation_id)
    if rec is None:
        raise UnknownRotation(rotation_id)
    return rec


def newest_view(view: BookView, market: Market) -> tuple[Market, list[Effect]]:
    """`market` if no committed decision rested on a newer view, else no view at all.

    Views must only move forward. A view older than one the book already decided on
    may still show a position that has closed since, and an add "into" it would
    reopen a slot that a newer decision already gave away (two replicas whose
    exchange answers crossed). The shell fetches again instead; a batch that gets
    here anyway fails closed. A newer view raises the book's mark.
    """
    if market.positions is None or market.as_of_ms == view.view_as_of_ms:
        return market, []
    if market.as_of_ms > view.view_as_of_ms:
        return market, [ViewAsOf(market.as_of_ms)]
    error = (
        f"exchange view as of {market.as_of_ms} ms is older than the one the book "
        f"already decided on ({view.view_as_of_ms} ms)"
    )
    return Market(positions=None, positions_error=error, as_of_ms=market.as_of_ms), []


def start_batch(
    view: BookView, market: Market, rules: Rules, now_ms: int
) -> tuple[Market, list[Effect]]:
    """What a batch does before its first input: the view it may rest on, and the
    reservations that end. Applied to `view`; returns (market to decide on, effects)."""
    market, effects = newest_view(view, market)
    effects.extend(tidy_reservations(view, market, rules, now_ms))
    for effect in effects:
        view.apply(effect)
    return market, effects


def decide_batch(
    inputs: Sequence[Input], view: BookView, market: Market, rules: Rules, now_ms: int
) -> list[Effect]:
    """Effects of a whole batch, each input decided after the ones before it."""
    view.forget_derived()  # the view may have been loaded or changed since
    market, effects = start_batch(view, market, rules, now_ms)
    for item in inputs:
        for effect in decide_one(item, view, market, rules, now_ms):
            view.apply(effect)
            effects.append(effect)
    return effects


__all__ = [
    "Ack",
    "BadIn",
    "BookView",
    "DeadLetter",
    "Decided",
    "Effect",
    "Emit",
    "ForgetDeadline",
    "Gate",
    "Input",
    "Market",
    "PlanIn",
    "Regime",
    "Release",
    "Reserve",
    "ResultIn",
    "SavePlan",
    "SaveRotation",
    "SetConfidence",
    "Tick",
    "ViewAsOf",
    "decide_batch",
    "decide_one",
    "gate",
    "rotation_exclusions",
]
