"""The pure core against a simple model of a trading book (issue #5, reliability).

A hypothesis state machine drives `MemoryBook` (the core, no Redis) with what the
world does to a governor — OPEN plans and resends, close plans, results, timer ticks,
exchange snapshots that change under it, operator aborts and extends, redeliveries,
garbage — and keeps a model next to it: the *truth* of the exchange (open positions),
the allowed entries in flight, and what the outputs said about every rotation and plan.

The invariants are checked from the outputs (decisions, events, close plans, permits,
dead letters), never from the engine's own state:

1. occupancy (open positions ∪ allowed entries holding a reservation ∪ in-flight
   rotation close targets) only grows through an ALLOW `slots_available`, and never
   beyond that decision's desired slots;
2. no position is the close target of two rotations in flight; one close plan per
   rotation, and no close plan id is used by two rotations;
3. a final verdict never changes; an allowed plan gets exactly one permit;
4. a tick at or after a rotation's deadline ends it;
5. every entry is acked once and reflected: a decision, a transition, or a dead letter.

The model follows the contract's reservation bookkeeping (§3a: one reservation per
symbol, held by every allowed entry for it — a new slot's, and each `slot_already_held`
one — until that entry's result comes, or the TTL ends it; an entry whose reservation
ended by TTL is taken as never filling, as its permit has expired too). An executed
entry's reservation outlives its result until a snapshot as of a later time is decided
on: the exchange's answers may lag (`exchange_view_lags`), the snapshot the core is
given shows the book as it was then, and the invariants are checked on the truth. Bugs this
model found are pinned by the strict `xfail` tests at the bottom of this file, and the
model steps around them so that it keeps looking for new ones: it redelivers only the
latest entry of a plan id, and never redelivers a bad entry. When a bug is fixed, its
xfail test turns XPASS (a failure, being strict): delete the marker, and the matching
exclusion here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from rotation_fsm.core import reasons as R
from rotation_fsm.core.decide import (
    Abort,
    Ack,
    BadIn,
    DeadLetter,
    Decided,
    Effect,
    Emit,
    Extend,
    Input,
    PlanIn,
    Release,
    ResultIn,
    Tick,
    UnknownRotation,
    ViewAsOf,
)
from rotation_fsm.core.machine import IllegalTransition
from rotation_fsm.core.market import Account, Position
from rotation_fsm.core.memory import MemoryBook
from rotation_fsm.core.messages import Decision, Plan, Result
from rotation_fsm.core.regime import Regime, RegimeReading
from rotation_fsm.core.settings import Rules
from rotation_fsm.core.snapshot import Market
from rotation_fsm.runtime.engine import needs_market
from rotation_fsm.runtime.listener import to_input
from tests.stubs import NOW_MS, book_of, market, plan, position, result, rules
from tests.stubs import UNIVERSE as STUB_UNIVERSE

HOUR_MS = 3_600_000
UNIVERSE = ["AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT", "EEEUSDT", "FFFUSDT"]
OUTSIDE = "ZZZUSDT"
# Two pairs share their first 8 characters, so the close-id fallback is exercised;
# "planAAAA" is exactly 8 long (its short and full close ids are the same).
OPEN_IDS = [
    "planAAAA",
    "planAAAA-01",
    "planAAAA-02",
    "planBBBB-01",
    "samepfx-A1",
    "samepfx-B2",
    "p-1",
    "p-2",
    "p-3",
]
CLOSE_IDS = ["close-1", "close-2", "close-3"]
PNLS = [-0.3, -0.1, -0.02, 0.0, 0.05, 0.2]
CONFIDENCES = [None, 0.5, 0.6, 0.9]
REGIMES = list(Regime)
LOCK_TTL_MS = 30_000
RESERVATION_TTL_MS = 20_000

IN_FLIGHT = "CLOSE_EMITTED"
END_EVENTS = {
    R.EV_COMPLETE: ("CONFIRMED", R.ALLOW, R.ROTATION_COMPLETE),
    R.EV_TIMEOUT: ("TIMED_OUT", R.BLOCK, R.ROTATION_TIMEOUT),
    R.EV_CLOSE_REJECTED: ("CLOSE_REJECTED", R.BLOCK, R.ROTATION_CLOSE_REJECTED),
    R.EV_ABORTED: ("ABORTED", R.BLOCK, R.ROTATION_ABORTED),
}


def is_final(d: Decision) -> bool:
    return R.is_final(d.decision, d.reason)


def reading(regime: Regime) -> RegimeReading:
    return RegimeReading(
        regime=regime, ema20=None, ema50=None, trend=None, atr_pct=None, klines=100
    )


def ms_of(seconds_text: str) -> int:
    return round(float(seconds_text) * 1000)


def bad_plan_fields() -> st.SearchStrategy[dict[bytes, bytes]]:
    """A plan entry broken in one of the ways contract §2 dead-letters."""
    good = {
        b"plan_id": b"bad-1",
        b"symbol": b"AAAUSDT",
        b"decision": b"EXECUTE",
        b"action": b"OPEN_LONG",
    }

    def broken(how: tuple[str, bytes]) -> dict[bytes, bytes]:
        kind, name = how
        fields = dict(good)
        if kind == "missing":
            fields.pop(name, None)
        elif kind == "empty":
            fields[name] = b""
        elif kind == "nan":
            fields[name] = b"nan"
        elif kind == "word":
            fields[name] = b"yes"
        else:
            fields[name] = b"\xff\xfe"
        return fields

    return st.sampled_from(
        [
            ("missing", b"plan_id"),
            ("missing", b"symbol"),
            ("missing", b"decision"),
            ("empty", b"plan_id"),
            ("empty", b"symbol"),
            ("nan", b"qty"),
            ("nan", b"confidence"),
            ("word", b"reduceOnly"),
            ("word", b"kill_score"),
            ("utf8", b"symbol"),
            ("utf8", b"side"),
        ]
    ).map(broken)


@dataclass
class Rot:
    """A rotation as the outputs described it."""

    rotation_id: str
    new_plan_id: str
    new_symbol: str
    close_symbol: str
    close_plan_id: str
    deadline_ms: int
    state: str = IN_FLIGHT
    late: bool = False

    @property
    def in_flight(self) -> bool:
        return self.state == IN_FLIGHT


@dataclass
class Entry:
    """An allowed OPEN entry that may still fill on the exchange."""

    plan_id: str
    symbol: str
    until_ms: int


@dataclass
class Outputs:
    """What one batch emitted, split by kind (effects in order)."""

    effects: list[Effect]
    decisions: list[tuple[Decision, bool]] = field(default_factory=list)
    events: list[dict[str, str]] = field(default_factory=list)
    close_plans: list[dict[str, str]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    granted: list[int] = field(default_factory=list)  # desired slots of each new slot given

    def for_plan(self, plan_id: str) -> list[Decision]:
        return [d for d, _ in self.decisions if d.plan_id == plan_id]

    def permits(self) -> list[str]:
        return [d.plan_id for d, p in self.decisions if p]


class BookModel(RuleBasedStateMachine):
    """The core (`MemoryBook`) and a model of the world around it."""

    def __init__(self) -> None:
        super().__init__()
        self.now = NOW_MS
        self.book = MemoryBook()
        self.book.view.policy_raw = json.dumps(UNIVERSE)
        self.rules = Rules()
        self.serial = 0
        # the exchange, as it really is
        self.exchange_up = True
        self.margin = "ok"  # ok | over | missing
        self.positions: dict[str, float] = {}  # symbol → pnl fraction
        self.history: list[tuple[int, dict[str, float]]] = []  # (since ms, positions)
        self.lag_ms = 0  # how old the exchange's answers are when the core decides
        self.visible: dict[str, float] = {}  # the positions of the batch's snapshot
        self.mark = 0  # the newest snapshot the core decided on: older ones are refused
        self.refused_view = False  # the batch's snapshot is older than `mark`
        self.raised_mark = False  # the batch's snapshot is newer than `mark`
        self.regimes: dict[str, Regime] = {}
        # what the contract's bookkeeping says (§3a), kept from the outputs
        self.reservations: dict[str, tuple[str, int]] = {}  # symbol → (owner plan id, until)
        self.holders: dict[str, list[str]] = {}  # symbol → every plan id holding it
        self.filled: dict[str, int] = {}  # symbol → when its latest executed result came
        self.entries: dict[str, Entry] = {}  # plan id → entry that may still fill
        self.confidence: dict[str, float] = {}  # symbol → entry confidence (§5)
        # plans and rotations, as the outputs described them
        self.plan_symbol: dict[str, str] = {}
        self.plan_conf: dict[str, float | None] = {}
        self.finals: dict[str, tuple[str, str]] = {}
        self.allowed: set[str] = set()
        self.permits: dict[str, int] = {}
        self.rotations: dict[str, Rot] = {}
        self.by_close_id: dict[str, str] = {}  # close plan id → rotation id
        self.user_closes: dict[str, str] = {}  # user close plan id → symbol
        self.echoed: set[str] = set()
        # what was fed, for redeliveries and for invariant 5
        self.latest_plan_entry: dict[str, PlanIn] = {}
        self.results_fed: list[ResultIn] = []
        self.fresh_plan_entries: dict[str, str] = {}  # entry id → plan id (EXECUTE only)
        self.bad_entries: set[str] = set()

    # ------------------------------------------------------------ world → core

    @initialize(
        cap=st.sampled_from([1, 2]),
        permits=st.sampled_from([True, True, False]),
        chop=st.sampled_from([1, 2]),
        positions=st.dictionaries(st.sampled_from(UNIVERSE), st.sampled_from(PNLS), max_size=4),
    )
    def setup(self, cap: int, permits: bool, chop: int, positions: dict[str, float]) -> None:
        """Rules in force, and the positions the book already holds when the engine starts."""
        self.positions = dict(positions)
        self.history.append((0, dict(positions)))  # held since before the engine started
        self.rules = Rules(
            slots_chop=chop,
            slots_base=3,
            slots_trend_strong=4,
            lock_ttl_s=LOCK_TTL_MS / 1000,
            reservation_ttl_s=RESERVATION_TTL_MS / 1000,
            max_correlation=1.0,
            max_margin_usage=0.65,
            max_concurrent_rotations=cap,
            issue_permits=permits,
        )

    def entry_id(self) -> str:
        self.serial += 1
        return f"{self.serial}-0"

    def desired(self, symbol: str) -> int:
        regime = self.regimes.get(symbol, Regime.UNKNOWN)
        if regime is Regime.TREND_STRONG:
            return self.rules.slots_trend_strong
        if regime is Regime.BASE:
            return self.rules.slots_base
        return self.rules.slots_chop

    def _moved(self) -> None:
        """The exchange's positions changed now: remember them for lagging snapshots."""
        self.history.append((self.now, dict(self.positions)))

    def _positions_at(self, as_of_ms: int) -> dict[str, float]:
        """The positions as the exchange held them at `as_of_ms`."""
        held: dict[str, float] = {}
        for since, positions in self.history:
            if since > as_of_ms:
                break
            held = positions
        return held

    def market(self) -> Market:
        if not self.exchange_up:
            return Market(positions=None, positions_error="exchange down")
        as_of = self.now - self.lag_ms
        self.visible = self._positions_at(as_of)
        positions = [
            Position(
                symbol=s,
                position_amt=1.0,
                mark_price=100.0,
                unrealized_profit=pnl * 100.0,
                update_time_ms=self.now - HOUR_MS,
            )
            for s, pnl in sorted(self.visible.items())
        ]
        account = None
        if self.margin != "missing":
            used = 900.0 if self.margin == "over" else 100.0
            account = Account(total_initial_margin=used, total_margin_balance=1000.0)
        readings = {s: reading(r) for s, r in self.regimes.items()}
        return Market(positions=positions, account=account, readings=readings, as_of_ms=as_of)

    def in_flight(self) -> list[Rot]:
        return [r for r in self.rotations.values() if r.in_flight]

    def targets(self) -> set[str]:
        return {r.close_symbol for r in self.in_flight()}

    def charged(self) -> set[str]:
        """Occupied slots, in symbols (contract §3a)."""
        return set(self.positions) | set(self.reservations) | self.targets()

    def seen_by_core(self) -> set[str]:
        """Occupied slots as the core can count them: the snapshot's positions."""
        return set(self.visible) | set(self.reservations) | self.targets()

    def _expire(self, mkt: Market) -> list[str]:
        """Reservations the batch ends before anything else, once its snapshot is as of
        after what they wait for (clock skew allowed for): held by nobody, their last
        fill; past their TTL, the TTL (a holder may have filled until then)."""
        skew = self.rules.clock_skew_ms
        gone: list[str] = []
        for s, (_, until) in sorted(self.reservations.items()):
            if not self.holders.get(s):
                proof = self.filled.get(s, 0)
            elif until <= self.now:
                proof = until
            else:
                continue
            if mkt.positions is not None and mkt.as_of_ms >= proof + skew:
                gone.append(s)
        for symbol in gone:
            self._release(symbol)
        return gone

    def _release(self, symbol: str) -> None:
        self.reservations.pop(symbol)
        self.filled.pop(symbol, None)
        # Ended by TTL or by the last holder's result: whatever has not filled by now
        # will not (its permit expired with it).
        for holder in self.holders.pop(symbol, []):
            self.entries.pop(holder, None)

    def _reserve(self, plan_id: str, symbol: str) -> None:
        """A reservation for `symbol`, joined by `plan_id` if one is already held."""
        until = self.now + RESERVATION_TTL_MS
        previous = self.reservations.get(symbol)
        holders = self.holders.setdefault(symbol, [])
        if plan_id not in holders:
            holders.append(plan_id)
        owner = previous[0] if previous is not None else plan_id
        self.reservations[symbol] = (owner, max(until, previous[1] if previous else 0))
        self.entries[plan_id] = Entry(plan_id, symbol, until)

    def prepare(self, inputs: list[Input]) -> tuple[Market, list[str], set[str]]:
        """The batch's market (fetched only for OPEN plans, like the engine), and the
        reservations it ends before anything else — so a rule can predict its decision."""
        mkt = self.market() if needs_market(inputs, self.rules) else Market()
        # Occupancy as the world or the core's snapshot counts it: an add into a
        # position the snapshot still shows open reopens a slot nobody gave away.
        before = self.charged() | (set(self.visible) if mkt.positions is not None else set())
        self.refused_view = mkt.positions is not None and mkt.as_of_ms < self.mark
        self.raised_mark = mkt.positions is not None and mkt.as_of_ms > self.mark
        if self.refused_view:
            return mkt, self._expire(Market()), before
        if self.raised_mark:
            self.mark = mkt.as_of_ms
        return mkt, self._expire(mkt), before

    def feed(
        self,
        inputs: list[Input],
        prepared: tuple[Market, list[str], set[str]] | None = None,
        *,
        redelivery: bool = False,
    ) -> Outputs:
        """Feed one batch to the core, check what every batch must satisfy, update the model."""
        mkt, gone, before = prepared or self.prepare(inputs)
        effects = self.book.feed(inputs, mkt, self.rules, self.now)
        out = Outputs(effects)
        # A newer snapshot raises the book's mark first, once.
        raised = [e for e in effects if isinstance(e, ViewAsOf)]
        newer = self.raised_mark
        assert raised == ([ViewAsOf(mkt.as_of_ms)] if newer else []), (raised, mkt.as_of_ms)
        effects = effects[len(raised) :]
        # The batch starts with the reservations that ended, in symbol order.
        assert effects[: len(gone)] == [Release(s) for s in gone], (effects, gone)
        for effect in effects[len(gone) :]:
            self._absorb(effect, out)
        self._check_acks(inputs, out)
        self._check_rotation_ends(out)
        if not redelivery:
            self._check_reflected(inputs, out)
        self._check_occupancy(before, out)
        return out

    def _absorb(self, effect: Effect, out: Outputs) -> None:
        match effect:
            case Decided(decision=d, permit=permit):
                out.decisions.append((d, permit))
                if self._on_decision(d, permit) and d.reason == R.SLOTS_AVAILABLE:
                    out.granted.append(d.desired_slots)
            case Emit(stream="plans", fields=f):
                out.close_plans.append(f)
            case Emit(stream="events", fields=f):
                out.events.append(f)
                self._on_event(f, out)
            case DeadLetter():
                out.dead_letters.append(effect)
            case Ack():
                out.acks.append(effect)
            case Release(symbol=symbol):
                # Only the result of its last holder releases mid-batch.
                assert symbol in self.reservations, effect
                self._release(symbol)
            case _:
                pass

    def _on_decision(self, d: Decision, permit: bool) -> bool:
        """Record a decision; True when it is a plan's first final answer."""
        pid = d.plan_id
        if permit:
            assert d.decision == R.ALLOW, d
            self.permits[pid] = self.permits.get(pid, 0) + 1
        if pid in self.finals:
            # Invariant 3: a final verdict never changes, and it is never permitted twice.
            assert (d.decision, d.reason) == self.finals[pid], (d, self.finals[pid])
            assert not permit, d
            return False
        if not is_final(d):
            return False
        self.finals[pid] = (d.decision, d.reason)
        if d.decision != R.ALLOW:
            return True
        self.allowed.add(pid)
        assert permit == self.rules.issue_permits, d
        conf = self.plan_conf.get(pid)
        if d.reason in (R.SLOTS_AVAILABLE, R.ROTATION_COMPLETE, R.SLOT_ALREADY_HELD):
            self._reserve(pid, d.symbol)  # held until its result (joined when already held)
        opened = (R.SLOTS_AVAILABLE, R.SLOT_ALREADY_HELD, R.ROTATION_COMPLETE)
        if d.reason in opened and conf is not None:
            self.confidence[d.symbol] = conf
        return True

    def _on_event(self, f: dict[str, str], out: Outputs) -> None:
        name, rid = f["event"], f["rotation_id"]
        if name == R.EV_LOCK_CREATED:
            assert rid not in self.rotations, f
            assert f["state"] == IN_FLIGHT, f
            (close,) = [c for c in out.close_plans if c["rotation_id"] == rid]
            assert close["plan_id"] == f["close_plan_id"], (close, f)
            assert close["symbol"] == f["close_symbol"], (close, f)
            # Invariant 2: a close plan id is never used by two rotations (contract §3).
            assert f["close_plan_id"] not in self.by_close_id, f
            self.by_close_id[f["close_plan_id"]] = rid
            self.rotations[rid] = Rot(
                rotation_id=rid,
                new_plan_id=f["new_plan_id"],
                new_symbol=f["new_symbol"],
                close_symbol=f["close_symbol"],
                close_plan_id=f["close_plan_id"],
                deadline_ms=self.now + LOCK_TTL_MS,
            )
            return
        rot = self.rotations[rid]
        if name in END_EVENTS:
            assert rot.in_flight, (f, rot)
            rot.state = END_EVENTS[name][0]
        elif name == R.EV_LATE_CONFIRM:
            assert rot.state in ("TIMED_OUT", "ABORTED") and not rot.late, (f, rot)
            rot.late = True
        elif name == R.EV_DEADLINE_CHANGED:
            assert rot.in_flight, (f, rot)
            assert ms_of(f["old_deadline"]) == rot.deadline_ms, (f, rot)
            rot.deadline_ms = ms_of(f["new_deadline"])
        else:
            raise AssertionError(f"unknown event {f}")
        assert f["state"] == rot.state, (f, rot)

    # ------------------------------------------------------------ checks of every batch

    def _check_acks(self, inputs: list[Input], out: Outputs) -> None:
        wanted = [
            Ack("plans" if isinstance(i, PlanIn) else "results", i.entry_id)
            if isinstance(i, PlanIn | ResultIn)
            else Ack(i.stream, i.entry_id)
            for i in inputs
            if isinstance(i, PlanIn | ResultIn | BadIn)
        ]
        assert out.acks == wanted, (out.acks, wanted)

    def _check_rotation_ends(self, out: Outputs) -> None:
        """Each rotation that ended in this batch answered its waiting plan, once."""
        for f in out.events:
            if f["event"] not in END_EVENTS:
                continue
            _, verdict, reason = END_EVENTS[f["event"]]
            (d,) = out.for_plan(f["new_plan_id"])
            assert (d.decision, d.reason, d.rotation_id) == (verdict, reason, f["rotation_id"])

    def _check_reflected(self, inputs: list[Input], out: Outputs) -> None:
        """Invariant 5: a fresh EXECUTE plan gets one decision naming its entry; a bad
        entry is dead-lettered with a reason and decides nothing."""
        for item in inputs:
            if isinstance(item, PlanIn) and item.plan.is_execute:
                mine = [d for d, _ in out.decisions if d.entry_id == item.entry_id]
                assert len(mine) == 1 and mine[0].plan_id == item.plan.plan_id, (item, mine)
                self.fresh_plan_entries[item.entry_id] = item.plan.plan_id
            elif isinstance(item, PlanIn):
                assert not [d for d, _ in out.decisions if d.entry_id == item.entry_id]
            elif isinstance(item, BadIn):
                (dl,) = [x for x in out.dead_letters if x.entry_id == item.entry_id]
                assert dl.error and dl.stream == item.stream, dl
                assert not [d for d, _ in out.decisions if d.entry_id == item.entry_id]
                self.bad_entries.add(item.entry_id)

    def _check_occupancy(self, before: set[str], out: Outputs) -> None:
        """Invariant 1, at the moment it could break: right after the batch."""
        after = self.charged()
        if out.granted:
            assert len(after) <= max(out.granted), (sorted(after), out.decisions)
        elif len(after) > len(before):
            raise AssertionError(
                f"occupancy grew without a free slot: {sorted(before)} → {sorted(after)}"
            )

    # ------------------------------------------------------------ plans

    def _plan(self, plan_id: str, symbol: str, **extra: Any) -> Plan:
        symbol = self.plan_symbol.setdefault(plan_id, symbol)
        conf = self.plan_conf.setdefault(plan_id, extra.pop("confidence", None))
        fields: dict[str, Any] = {"action": "OPEN_LONG", "side": "BUY", "qty": 1.0, **extra}
        return Plan(plan_id=plan_id, symbol=symbol, decision="EXECUTE", confidence=conf, **fields)

    def _send(self, p: Plan) -> PlanIn:
        item = PlanIn(self.entry_id(), p)
        self.latest_plan_entry[p.plan_id] = item
        return item

    def _expect_open(self, p: Plan) -> tuple[str, set[str]] | None:
        """The reason the contract's order of checks (§3a) gives, or None where it depends
        on the rotation gates (then the set of reasons it may be)."""
        pid, sym = p.plan_id, p.symbol
        if pid in self.finals:
            return self.finals[pid][1], set()
        if any(r.new_plan_id == pid for r in self.in_flight()):
            return R.WAITING_ROTATION_CLOSE, set()
        if sym not in UNIVERSE:
            return R.NOT_IN_UNIVERSE, set()
        if not self.exchange_up or self.refused_view or self.margin == "missing":
            return R.POSITIONS_UNAVAILABLE, set()
        if self.margin == "over":
            return R.MARGIN_CAP, set()
        entries = {r.new_symbol for r in self.in_flight()}
        if sym in self.targets() | entries:  # being rotated out, or in: wait
            return R.ROTATION_IN_PROGRESS, set()
        if sym in self.visible or sym in self.reservations:
            return R.SLOT_ALREADY_HELD, set()
        if self.desired(sym) - len(self.seen_by_core()) > 0:
            return R.SLOTS_AVAILABLE, set()
        excluded = {sym} | self.targets() | entries | set(self.reservations)
        pool = sorted((pnl, s) for s, pnl in self.visible.items() if s not in excluded)
        if not pool:
            return R.NO_ROTATION_CANDIDATE, set()
        if len(self.in_flight()) >= self.rules.max_concurrent_rotations:
            return R.ROTATION_IN_PROGRESS, set()
        old = self.confidence.get(pool[0][1])
        conf = self.plan_conf.get(pid)
        if (
            conf is not None
            and old is not None
            and conf < (1 + self.rules.rotation_threshold) * old
        ):
            return R.NO_ROTATION_CANDIDATE, set()
        return None, {pool[0][1]}

    @rule(
        plan_id=st.sampled_from(OPEN_IDS),
        symbol=st.sampled_from([*UNIVERSE, OUTSIDE]),
        confidence=st.sampled_from(CONFIDENCES),
    )
    def open_plan(self, plan_id: str, symbol: str, confidence: float | None) -> None:
        """An OPEN plan: a new plan id, or a resend of one seen before."""
        p = self._plan(plan_id, symbol, confidence=confidence)
        fresh = plan_id not in self.finals and not any(
            r.new_plan_id == plan_id for r in self.in_flight()
        )
        item = self._send(p)
        prepared = self.prepare([item])
        expected, target = self._expect_open(p)
        out = self.feed([item], prepared)
        (d,) = out.for_plan(plan_id)
        if expected is None:
            # A new rotation: one close plan for the weakest position that is free to go.
            assert (d.decision, d.reason) == (R.BLOCK, R.WAITING_ROTATION_CLOSE), d
            (close,) = out.close_plans
            assert {close["symbol"]} == target, (close, target)
            assert d.rotation_id == close["rotation_id"] and d.open_slots == 0, d
        else:
            assert d.reason == expected, (d, expected)
            assert out.close_plans == [], out.close_plans
        if fresh and d.regime:  # decided on slot numbers: the regime in force is the symbol's
            assert d.regime == self.regimes.get(p.symbol, Regime.UNKNOWN).value, d
            assert d.desired_slots == self.desired(p.symbol), d
        if fresh and not self.exchange_up:
            assert d.decision == R.BLOCK, d  # never allowed on no data

    @rule(
        plans=st.lists(
            st.tuples(st.sampled_from(OPEN_IDS), st.sampled_from(UNIVERSE)),
            min_size=2,
            max_size=3,
        )
    )
    def open_plans_in_one_batch(self, plans: list[tuple[str, str]]) -> None:
        """Several OPEN plans in one batch: each is decided after the ones before it."""
        self.feed([self._send(self._plan(pid, sym)) for pid, sym in plans])

    @rule(
        plan_id=st.sampled_from(CLOSE_IDS),
        symbol=st.sampled_from(UNIVERSE),
        reduce_only=st.booleans(),
    )
    def close_plan(self, plan_id: str, symbol: str, reduce_only: bool) -> None:
        """A close plan from the trading stack: never gated (contract §2)."""
        symbol = self.user_closes.setdefault(plan_id, symbol)
        extra = {"reduce_only": True} if reduce_only else {"action": "FULL_CLOSE_PROPOSED"}
        p = Plan(plan_id=plan_id, symbol=symbol, decision="EXECUTE", side="SELL", **extra)
        first = plan_id not in self.finals
        out = self.feed([self._send(p)])
        (d,) = out.for_plan(plan_id)
        assert (d.decision, d.reason) == (R.ALLOW, R.CLOSE_EXEMPT), d
        assert out.permits() == ([plan_id] if first and self.rules.issue_permits else [])

    @precondition(
        lambda self: any(r.close_plan_id not in self.echoed for r in self.rotations.values())
    )
    @rule(data=st.data())
    def echo_rotation_close_plan(self, data: st.DataObject) -> None:
        """The engine's own close plan comes back on the plan stream, as the listener reads it."""
        fresh = sorted(r.close_plan_id for r in self.rotations.values())
        close_id = data.draw(st.sampled_from([c for c in fresh if c not in self.echoed]))
        self.echoed.add(close_id)
        (fields,) = [c for c in self.book.close_plans if c["plan_id"] == close_id]
        item = to_input(
            "plans", self.entry_id(), {k.encode(): v.encode() for k, v in fields.items()}
        )
        assert isinstance(item, PlanIn), item
        self.latest_plan_entry[close_id] = item
        out = self.feed([item])
        (d,) = out.for_plan(close_id)
        assert (d.decision, d.reason) == (R.ALLOW, R.CLOSE_EXEMPT), d

    @rule(plan_id=st.sampled_from(OPEN_IDS), symbol=st.sampled_from(UNIVERSE))
    def plan_that_is_not_execute(self, plan_id: str, symbol: str) -> None:
        """decision != EXECUTE: acknowledged and left alone."""
        p = Plan(plan_id=plan_id, symbol=symbol, decision="HOLD", action="OPEN_LONG")
        out = self.feed([PlanIn(self.entry_id(), p)])
        assert out.decisions == [] and out.effects[-1] == out.acks[0]

    @rule(fields=bad_plan_fields(), stream=st.sampled_from(["plans", "results"]))
    def bad_entry(self, fields: dict[bytes, bytes], stream: str) -> None:
        """An entry that cannot be parsed: dead-lettered, decides nothing."""
        item = to_input(stream, self.entry_id(), fields)
        assert isinstance(item, BadIn), item
        out = self.feed([item])
        assert out.decisions == [] and out.close_plans == [] and out.events == []

    # ------------------------------------------------------------ results

    @precondition(lambda self: self.by_close_id or self.user_closes)
    @rule(data=st.data(), executed=st.booleans(), reduce_only=st.booleans())
    def result_for_a_close_plan(
        self, data: st.DataObject, executed: bool, reduce_only: bool
    ) -> None:
        """A result for any close plan seen so far: a rotation's (maybe long over) or a user's."""
        close_id = data.draw(st.sampled_from(sorted([*self.by_close_id, *self.user_closes])))
        self._close_result(close_id, executed, reduce_only)

    @precondition(lambda self: self.in_flight())
    @rule(data=st.data(), outcome=st.sampled_from(["done", "done", "refused", "not_reduce"]))
    def result_for_a_rotation_in_flight(self, data: st.DataObject, outcome: str) -> None:
        """The apply layer answers a rotation's close plan."""
        close_id = data.draw(st.sampled_from(sorted(r.close_plan_id for r in self.in_flight())))
        self._close_result(close_id, outcome != "refused", outcome != "not_reduce")

    def _close_result(self, close_id: str, executed: bool, reduce_only: bool) -> None:
        rot = self.rotations.get(self.by_close_id.get(close_id, ""))
        symbol = rot.close_symbol if rot else self.user_closes[close_id]
        if executed and reduce_only:
            self.positions.pop(symbol, None)  # the close really happened
            self._moved()
        state = rot.state if rot else None
        late = rot.late if rot else False
        res = Result(plan_id=close_id, symbol=symbol, executed=executed, reduce_only=reduce_only)
        item = ResultIn(self.entry_id(), res)
        self.results_fed.append(item)
        out = self.feed([item])
        events = [f["event"] for f in out.events]
        if state == IN_FLIGHT and executed and reduce_only:
            assert events == [R.EV_COMPLETE], events
        elif state == IN_FLIGHT and not executed:
            assert events == [R.EV_CLOSE_REJECTED], events
        elif state in ("TIMED_OUT", "ABORTED") and executed and reduce_only and not late:
            assert events == [R.EV_LATE_CONFIRM], events
            assert out.decisions == []
        else:
            assert events == [] and out.decisions == [], out.effects

    @precondition(lambda self: any(self.holders.values()))
    @rule(data=st.data(), executed=st.booleans())
    def result_for_an_allowed_entry(self, data: st.DataObject, executed: bool) -> None:
        """The apply layer's result for an allowed OPEN plan holding a slot: executed or
        not, it ends that plan's hold (an entry that already filled says executed)."""
        held = sorted((pid, sym) for sym, pids in self.holders.items() for pid in pids)
        plan_id, symbol = data.draw(st.sampled_from(held))
        entry = self.entries.pop(plan_id, None)
        if entry is None:
            executed = True  # it filled before its result came
        elif self.reservations[symbol][1] <= self.now:
            executed = False  # its permit expired with the reservation: refused
        elif executed:
            self.positions.setdefault(symbol, 0.0)
            self._moved()
        res = Result(plan_id=plan_id, symbol=symbol, executed=executed)
        item = ResultIn(self.entry_id(), res)
        self.results_fed.append(item)
        prepared = self.prepare([item])
        holders = self.holders.get(symbol, [])
        out = self.feed([item], prepared)
        assert out.decisions == [] and out.events == []
        if symbol in prepared[1]:
            return  # the TTL ended it first
        holders.remove(plan_id)
        if executed:
            self.filled[symbol] = self.now
        if holders:  # another entry still holds the slot
            assert symbol in self.reservations
            self.reservations[symbol] = (holders[0], self.reservations[symbol][1])
        elif symbol in self.filled:
            # Executed: counted until a snapshot as of after the result is decided on.
            assert symbol in self.reservations
        else:
            assert symbol not in self.reservations  # nothing filled: released at once
            self.holders.pop(symbol, None)

    @rule(symbol=st.sampled_from(UNIVERSE), executed=st.booleans())
    def stray_result(self, symbol: str, executed: bool) -> None:
        """A result for a plan id nobody knows: acknowledged, nothing else."""
        res = Result(plan_id=f"stray-{self.serial}", symbol=symbol, executed=executed)
        out = self.feed([ResultIn(self.entry_id(), res)])
        assert out.decisions == [] and out.events == [] and out.close_plans == []

    # ------------------------------------------------------------ time and operators

    @rule(dt_ms=st.sampled_from([0, 1, 1_000, 10_000, 20_000, 31_000, 31_000]))
    def tick(self, dt_ms: int) -> None:
        """Time passes; the timer hands every rotation in flight to the core."""
        self.now += dt_ms
        due = sorted(r.rotation_id for r in self.in_flight() if r.deadline_ms <= self.now)
        ticks: list[Input] = [Tick(r.rotation_id) for r in self.in_flight()]
        if not ticks:
            return
        out = self.feed(ticks)
        timed_out = sorted(f["rotation_id"] for f in out.events if f["event"] == R.EV_TIMEOUT)
        assert timed_out == due, (timed_out, due)
        # Invariant 4: nothing in flight is past its deadline once the timer has run.
        assert all(r.deadline_ms > self.now for r in self.in_flight())

    @precondition(lambda self: self.rotations)
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        """An operator aborts a rotation; refused (IllegalTransition) once it is final."""
        rot = self.rotations[data.draw(st.sampled_from(sorted(self.rotations)))]
        item = Abort(rot.rotation_id, by="model")
        if rot.in_flight:
            out = self.feed([item])
            assert [f["event"] for f in out.events] == [R.EV_ABORTED]
        else:
            self._refused(item)

    @precondition(lambda self: self.rotations)
    @rule(data=st.data(), seconds=st.sampled_from([0, 1, 10, 60]))
    def extend(self, data: st.DataObject, seconds: int) -> None:
        """An operator moves a rotation's deadline; refused once it is final."""
        rot = self.rotations[data.draw(st.sampled_from(sorted(self.rotations)))]
        item = Extend(rot.rotation_id, self.now + seconds * 1000, by="model")
        if rot.in_flight:
            out = self.feed([item])
            assert [f["event"] for f in out.events] == [R.EV_DEADLINE_CHANGED]
            assert rot.deadline_ms == self.now + seconds * 1000
        else:
            self._refused(item)

    @rule()
    def abort_an_unknown_rotation(self) -> None:
        self._refused(Abort("no-such-rotation", by="model"), UnknownRotation)

    def _refused(self, item: Input, error: type[Exception] = IllegalTransition) -> None:
        """The core refuses an operator's input: it raises and emits nothing."""
        outputs = (len(self.book.decisions), len(self.book.events), len(self.book.close_plans))
        self._expire(Market())  # the batch ended expired reservations before refusing
        with pytest.raises(error):
            self.book.feed([item], Market(), self.rules, self.now)
        assert outputs == (
            len(self.book.decisions),
            len(self.book.events),
            len(self.book.close_plans),
        )

    # ------------------------------------------------------------ redelivery

    @precondition(lambda self: self.latest_plan_entry or self.results_fed)
    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        """An entry delivered again (a claim after a crash): it must write nothing.

        Plans: the latest entry of a plan id (an older one after a later re-decision is
        test_a_redelivered_older_entry_writes_nothing).
        """
        pool: list[Input] = [*self.latest_plan_entry.values(), *self.results_fed]
        item = data.draw(st.sampled_from(pool))
        out = self.feed([item], redelivery=True)
        assert out.effects[-1:] == out.acks and len(out.acks) == 1
        assert out.decisions == [] and out.events == [] and out.close_plans == []
        assert out.dead_letters == []

    # ------------------------------------------------------------ the exchange moves

    @precondition(lambda self: self.entries)
    @rule(data=st.data(), pnl=st.sampled_from(PNLS))
    def allowed_entry_fills(self, data: st.DataObject, pnl: float) -> None:
        """An allowed entry shows up as a position (its result may come later or never;
        until then, or the TTL, it keeps holding the slot)."""
        entry = self.entries.pop(data.draw(st.sampled_from(sorted(self.entries))))
        self.positions.setdefault(entry.symbol, pnl)
        self._moved()

    @precondition(lambda self: self.positions)
    @rule(data=st.data())
    def position_closes_on_the_exchange(self, data: st.DataObject) -> None:
        """A stop-loss, a liquidation, a manual close: a position disappears."""
        self.positions.pop(data.draw(st.sampled_from(sorted(self.positions))))
        self._moved()

    @precondition(lambda self: self.positions)
    @rule(data=st.data(), pnl=st.sampled_from(PNLS))
    def mark_moves(self, data: st.DataObject, pnl: float) -> None:
        self.positions[data.draw(st.sampled_from(sorted(self.positions)))] = pnl
        self._moved()

    @rule(symbol=st.sampled_from(UNIVERSE), regime=st.sampled_from(REGIMES))
    def regime_changes(self, symbol: str, regime: Regime) -> None:
        self.regimes[symbol] = regime

    @rule(margin=st.sampled_from(["ok", "ok", "over", "missing"]))
    def account_changes(self, margin: str) -> None:
        self.margin = margin

    @rule(lag_ms=st.sampled_from([0, 0, 300, 5_000]))
    def exchange_view_lags(self, lag_ms: int) -> None:
        """From now on the core decides on snapshots this old (a slow exchange)."""
        self.lag_ms = lag_ms

    @rule()
    def exchange_goes_down_or_up(self) -> None:
        self.exchange_up = not self.exchange_up

    # ------------------------------------------------------------ invariants

    @invariant()
    def one_close_plan_per_rotation_and_distinct_targets(self) -> None:
        per_rotation: dict[str, int] = {}
        for close in self.book.close_plans:
            per_rotation[close["rotation_id"]] = per_rotation.get(close["rotation_id"], 0) + 1
        assert all(n == 1 for n in per_rotation.values()), per_rotation
        assert set(per_rotation) == set(self.rotations)
        ids = [c["plan_id"] for c in self.book.close_plans]
        assert len(ids) == len(set(ids)), ids
        targets = [r.close_symbol for r in self.in_flight()]
        assert len(targets) == len(set(targets)), targets

    @invariant()
    def every_allowed_plan_has_exactly_one_permit(self) -> None:
        assert self.book.permits == self.permits
        if self.rules.issue_permits:
            assert self.permits == dict.fromkeys(self.allowed, 1), (self.permits, self.allowed)
        else:
            assert self.permits == {}

    @invariant()
    def every_entry_is_reflected(self) -> None:
        decided = {d.entry_id for d in self.book.decisions}
        assert set(self.fresh_plan_entries) <= decided
        assert self.bad_entries == {dl.entry_id for dl in self.book.dead_letters}


def test_the_core_keeps_the_invariants_against_the_model() -> None:
    run_state_machine_as_test(
        BookModel,
        settings=settings(max_examples=200, stateful_step_count=40, deadline=None),
    )


# ---------------------------------------------------------------- bugs found


@pytest.fixture
def book() -> MemoryBook:
    b = MemoryBook()
    b.view.policy_raw = json.dumps(STUB_UNIVERSE)
    return b


def test_an_8_character_plan_id_reuses_a_close_plan_id(book: MemoryBook) -> None:
    mkt = market(*book_of(3))
    book.feed([PlanIn("1-0", plan("abcdefgh1", "NEWUSDT"))], mkt, rules(), NOW_MS)
    (old,) = book.view.rotations.values()
    book.feed([Tick(old.rotation_id)], mkt, rules(), old.deadline_ms)  # times out
    later = old.deadline_ms + 10
    book.feed([PlanIn("2-0", plan("abcdefgh", "BNBUSDT"))], mkt, rules(), later)
    new = book.view.rotations[book.last_decision("abcdefgh").rotation_id]
    assert new.close_symbol == old.close_symbol  # the same weakest position again
    # Contract §3: a close plan id is never reused.
    assert new.close_plan_id != old.close_plan_id
    # The old rotation's close executes late: it must not confirm the new rotation.
    book.feed([ResultIn("3-0", result(old.close_plan_id))], mkt, rules(), later + 10)
    assert book.view.rotations[new.rotation_id].state == "CLOSE_EMITTED"


def test_a_redelivered_older_entry_writes_nothing(book: MemoryBook) -> None:
    down = Market(positions=None, positions_error="HTTP 500")
    book.feed([PlanIn("1-0", plan("p1"))], down, rules(), NOW_MS)  # BLOCK, decided afresh later
    book.feed([PlanIn("2-0", plan("p1"))], down, rules(), NOW_MS + 1)  # the stack resends
    decided = len(book.decisions)
    # A consumer that stalled past the claim timeout commits entry 1-0 again.
    effects = book.feed([PlanIn("1-0", plan("p1"))], market(), rules(), NOW_MS + 2)
    assert [type(e).__name__ for e in effects] == ["Ack"]
    assert len(book.decisions) == decided and book.permits == {}


def test_a_redelivered_bad_entry_writes_nothing(book: MemoryBook) -> None:
    bad = to_input("plans", "7-0", {b"plan_id": b"x", b"decision": b"EXECUTE"})
    book.feed([bad], market(), rules(), NOW_MS)
    effects = book.feed([bad], market(), rules(), NOW_MS + 1)
    assert [type(e).__name__ for e in effects] == ["Ack"]
    assert len(book.dead_letters) == 1


def test_a_second_entry_on_a_reserved_symbol_keeps_its_slot(book: MemoryBook) -> None:
    mkt = market(*book_of(2))  # UNKNOWN regime: 3 slots, 2 taken
    book.feed([PlanIn("1-0", plan("P1", "NEWUSDT"))], mkt, rules(), NOW_MS)
    book.feed([PlanIn("1-1", plan("P2", "NEWUSDT"))], mkt, rules(), NOW_MS + 1)
    assert book.last_decision("P2").reason == R.SLOT_ALREADY_HELD
    failed = result("P1", executed=False, reduce_only=False, symbol="NEWUSDT")
    book.feed([ResultIn("2-0", failed)], mkt, rules(), NOW_MS + 2)
    # P2 is allowed and in flight for NEWUSDT: 2 positions + NEWUSDT = 3 = desired.
    book.feed([PlanIn("1-2", plan("P3", "BNBUSDT"))], mkt, rules(), NOW_MS + 3)
    assert book.last_decision("P3").decision == R.BLOCK


# Found by the chaos run (the paper book held 5 positions with 4 slots), fixed by
# making every allowed entry hold its symbol's slot until its result or the TTL.
def test_an_add_to_a_position_closed_before_it_executes_keeps_its_slot(book: MemoryBook) -> None:
    btc, eth = book_of(2)  # UNKNOWN regime: 3 slots
    book.feed([PlanIn("1-0", plan("P1", btc.symbol))], market(btc, eth), rules(), NOW_MS)
    assert book.last_decision("P1").reason == R.SLOT_ALREADY_HELD
    # BTC is closed (or netted flat by an opposite order) before P1 executes; P1 will
    # open BTC again, so it still takes a slot.
    book.feed([PlanIn("1-1", plan("P2", "NEWUSDT"))], market(eth), rules(), NOW_MS + 1)
    book.feed([PlanIn("1-2", plan("P3", "BNBUSDT"))], market(eth), rules(), NOW_MS + 2)
    assert book.last_decision("P2").reason == R.SLOTS_AVAILABLE
    assert book.last_decision("P3").decision == R.BLOCK  # ETH, BTC (P1), NEW: 3 of 3


def test_a_second_entry_keeps_the_slot_after_the_first_one_filled(book: MemoryBook) -> None:
    (btc,) = book_of(1)
    book.feed([PlanIn("1-0", plan("P1", "NEWUSDT"))], market(btc), rules(), NOW_MS)
    book.feed([PlanIn("1-1", plan("P2", "NEWUSDT"))], market(btc), rules(), NOW_MS + 1)
    filled = market(btc, position("NEWUSDT", 0.0))
    book.feed([ResultIn("2-0", result("P1", reduce_only=False))], filled, rules(), NOW_MS + 2)
    # NEW is closed again before P2 executes: P2's hold still counts it.
    book.feed([PlanIn("1-2", plan("P3", "BNBUSDT"))], market(btc), rules(), NOW_MS + 3)
    book.feed([PlanIn("1-3", plan("P4", "XRPUSDT"))], market(btc), rules(), NOW_MS + 4)
    assert book.last_decision("P3").reason == R.SLOTS_AVAILABLE
    assert book.last_decision("P4").decision == R.BLOCK  # BTC, NEW (P2), BNB: 3 of 3


# Found by this model, fixed in b8f3442 (decide_plan blocks a rotation's close target).
def test_an_entry_into_a_position_being_rotated_out_is_not_allowed(book: MemoryBook) -> None:
    mkt = market(*book_of(3))  # UNKNOWN regime: 3 slots, all taken
    book.feed([PlanIn("1-0", plan("P1", "NEWUSDT"))], mkt, rules(), NOW_MS)
    (rot,) = book.view.rotations.values()
    book.feed([PlanIn("1-1", plan("P2", rot.close_symbol))], mkt, rules(), NOW_MS + 1)
    # P2 would add to the position the engine itself is closing: after the close
    # executes, P2's fill would be a fourth symbol beside BTC, ETH and NEWUSDT.
    assert book.last_decision("P2").decision == R.BLOCK


# Found by this model, fixed in b8f3442 (same cause: the target's slot was shared).
def test_an_entry_into_a_rotated_out_symbol_takes_a_slot_of_its_own(book: MemoryBook) -> None:
    held = book_of(3)  # BTC, ETH, SOL (the weakest); 3 slots
    book.feed([PlanIn("1-0", plan("P1", "NEWUSDT"))], market(*held), rules(), NOW_MS)
    (rot,) = book.view.rotations.values()
    # SOL (the target) and ETH are stopped out before the rotation's result arrives.
    left = market(*[p for p in held if p.symbol not in (rot.close_symbol, "ETHUSDT")])
    book.feed([PlanIn("1-1", plan("P2", rot.close_symbol))], left, rules(), NOW_MS + 1)
    book.feed([PlanIn("1-2", plan("P3", "BNBUSDT"))], left, rules(), NOW_MS + 2)
    book.feed([ResultIn("2-0", result(rot.close_plan_id))], left, rules(), NOW_MS + 3)
    occupied = {p.symbol for p in left.positions or []} | set(book.view.reservations)
    # Before the fix: BTC open, and SOL, BNB and NEW reserved — 4 of 3 slots.
    assert len(occupied) <= 3, sorted(occupied)


def test_a_rotation_completing_into_a_symbol_being_rotated_out_keeps_its_slot(
    book: MemoryBook,
) -> None:
    """Found by the model (then a bug): with 2+ concurrent rotations a second plan could
    take NEW while R1 waited to open it, R2 could pick NEW as its close target, and R1's
    completion then handed the slot out twice. Now a symbol a rotation is waiting to
    open is neither given to another plan nor chosen as a close target."""
    rl = rules(max_concurrent_rotations=2)  # UNKNOWN regime: 3 slots
    btc, eth, sol = position("BTCUSDT", 0.0), position("ETHUSDT", -0.01), position("SOLUSDT", -0.02)
    new = position("NEWUSDT", -0.5)
    clock = iter(range(NOW_MS, NOW_MS + 100))

    def send(plan_id: str, symbol: str, *held: Position) -> Decision:
        now = next(clock)
        book.feed([PlanIn(f"{now}-0", plan(plan_id, symbol))], market(*held), rl, now)
        return book.last_decision(plan_id)

    r1 = send("P1", "NEWUSDT", btc, eth, sol).rotation_id  # R1 closes SOL for NEW
    assert r1 is not None
    assert send("P3", "NEWUSDT", btc, sol).reason == R.ROTATION_IN_PROGRESS  # not a slot
    # Even if NEW showed up open (filled from elsewhere), it is no close target:
    d = send("P2", "BNBUSDT", btc, eth, sol, new)
    if d.rotation_id is not None:
        assert book.view.rotations[d.rotation_id].close_symbol != "NEWUSDT"
