"""Factories for hand-made histories: audited commits, rotations and stream entries.

Times are small numbers of milliseconds; symbols follow `tests.stubs`. Every factory
gives a consistent default, so a test states only what it is about.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rotation_fsm.core.audit import AuditBatch, ViewSeed
from rotation_fsm.core.decide import Input, PlanIn, ResultIn, Tick
from rotation_fsm.core.messages import Hold, PlanRecord, Reservation, RotationRecord
from rotation_fsm.core.regime import Regime, RegimeReading
from rotation_fsm.core.settings import Rules
from rotation_fsm.core.snapshot import Market
from rotation_fsm.devkit.chaos import Entry, History
from tests.stubs import plan, position, result

_ids = itertools.count(1)
#: slots per regime in these histories: TREND_STRONG 3, BASE 2, CHOP 1
RULES = Rules(slots_trend_strong=3, slots_base=2, slots_chop=1, max_correlation=1.0)


def reading(regime: str) -> RegimeReading:
    return RegimeReading(
        regime=Regime(regime), ema20=None, ema50=None, trend=None, atr_pct=None, klines=100
    )


def plan_in(entry_id: str, plan_id: str, symbol: str) -> PlanIn:
    return PlanIn(entry_id, plan(plan_id, symbol))


def result_in(entry_id: str, plan_id: str, *, executed: bool = True) -> ResultIn:
    return ResultIn(entry_id, result(plan_id, executed=executed))


def rotation(
    rotation_id: str = "p9@1000",
    *,
    close_symbol: str = "XRPUSDT",
    new_symbol: str = "NEWUSDT",
    state: str = "CONFIRMED",
    created_ms: int = 1000,
    deadline_ms: int = 4000,
    ended_ms: int = 1500,
) -> RotationRecord:
    """A rotation of plan `rotation_id`'s prefix (before `@`), closing `close_symbol`."""
    new_plan_id = rotation_id.split("@", 1)[0]
    return RotationRecord(
        rotation_id=rotation_id,
        state=state,
        version=3,
        new_plan_id=new_plan_id,
        new_symbol=new_symbol,
        new_action="OPEN_LONG",
        new_confidence=None,
        close_symbol=close_symbol,
        close_plan_id=f"rot_{new_plan_id[:8]}_{close_symbol}",
        close_weakness=0.01,
        created_ms=created_ms,
        deadline_ms=deadline_ms,
        updated_ms=ended_ms or created_ms,
        regime="BASE",
        desired_slots=2,
        ended_ms=ended_ms,
    )


def batch(
    now_ms: int,
    inputs: Sequence[Input],
    decided: Sequence[Sequence[str]],
    *,
    positions: Iterable[str] | None = (),
    regimes: Mapping[str, str] | None = None,
    reservations: Mapping[str, tuple[str | Sequence[str], int]] | None = None,
    rotations: Sequence[RotationRecord] = (),
    final_plans: Iterable[str] = (),
    version: int = 1,
) -> AuditBatch:
    """An audited commit. `regimes` defaults to BASE (2 slots) for every plan symbol;
    `reservations` maps symbol → (holder plan id or ids, until ms: each gets its hold, the
    first made it); `rotations` are in the seed (the
    ones in flight count as in flight); `final_plans` have a final ALLOW record."""
    symbols = {i.plan.symbol for i in inputs if isinstance(i, PlanIn)}
    regimes = regimes or dict.fromkeys(symbols, "BASE")
    market = Market(
        positions=None if positions is None else [position(s) for s in positions],
        readings={s: reading(r) for s, r in regimes.items()},
    )
    seed = ViewSeed(
        version=version,
        policy_raw=None,
        reservations={
            s: Reservation(plan_id=_holder_ids(h)[0], until_ms=until, holders=len(_holder_ids(h)))
            for s, (h, until) in (reservations or {}).items()
        },
        holds={
            pid: Hold(symbol=s, made_by=_holder_ids(h)[0])
            for s, (h, _) in (reservations or {}).items()
            for pid in _holder_ids(h)
        },
        rotations={r.rotation_id: r for r in rotations},
        inflight=[r.rotation_id for r in rotations if r.state in ("LOCKED", "CLOSE_EMITTED")],
        plans={
            pid: PlanRecord(plan_id=pid, symbol="X", decision="ALLOW", final=True)
            for pid in final_plans
        },
        close_index={r.close_plan_id: r.rotation_id for r in rotations},
        entry_confidence={},
    )
    return AuditBatch(
        now_ms=now_ms,
        inputs=list(inputs),
        seed=seed,
        market=market,
        rules=RULES,
        decided=[list(row) for row in decided],
    )


def _holder_ids(holders: str | Sequence[str]) -> list[str]:
    return [holders] if isinstance(holders, str) else list(holders)


def decision(plan_id: str, verdict: str, reason: str, entry_id: str = "", **extra: str) -> Entry:
    """A decision stream entry, with the next stream id."""
    fields = {"plan_id": plan_id, "decision": verdict, "reason": reason, **extra}
    if entry_id:
        fields["entry_id"] = entry_id
    return (f"{next(_ids)}-0", fields)


def plan_entry(entry_id: str, plan_id: str, **extra: str) -> Entry:
    return (entry_id, {"plan_id": plan_id, "symbol": "NEWUSDT", "decision": "EXECUTE", **extra})


def tick(rotation_id: str) -> Tick:
    return Tick(rotation_id)


def history(**kw: Any) -> History:
    """A history with only what the test gives (an empty one violates nothing)."""
    return History(**kw)


def close_plan_entry(entry_id: str, rec: RotationRecord) -> Entry:
    """The close plan `rec` appended to the plan stream."""
    return (
        entry_id,
        {
            "plan_id": rec.close_plan_id,
            "symbol": rec.close_symbol,
            "decision": "EXECUTE",
            "action": "FULL_CLOSE_PROPOSED",
            "reduceOnly": "true",
            "source": "rotation-fsm",
            "rotation_id": rec.rotation_id,
        },
    )
