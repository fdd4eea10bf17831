"""The rotation state machine: the single source of states, triggers and guards.

The table below drives the engine (every state change goes through `fire`),
the check the commit makes against the persisted state, and the diagrams in
`diagrams/` (generated from `TRANSITIONS`, never drawn by hand).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from transitions import Machine

from .errors import RotationFsmError


class State(StrEnum):
    IDLE = "IDLE"
    LOCKED = "LOCKED"
    CLOSE_EMITTED = "CLOSE_EMITTED"
    CONFIRMED = "CONFIRMED"
    TIMED_OUT = "TIMED_OUT"
    CLOSE_REJECTED = "CLOSE_REJECTED"
    ABORTED = "ABORTED"


class Trigger(StrEnum):
    LOCK = "lock"
    EMIT_CLOSE = "emit_close"
    CONFIRM = "confirm"
    REJECT = "reject"
    TIMEOUT = "timeout"
    ABORT = "abort"
    LATE_CONFIRM = "late_confirm"
    EXTEND = "extend"


IN_FLIGHT = frozenset({State.LOCKED, State.CLOSE_EMITTED})
FINAL = frozenset({State.CONFIRMED, State.TIMED_OUT, State.CLOSE_REJECTED, State.ABORTED})

S = State
# One edge per line: trigger, source(s), destination, guard.
# fmt: off
TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "lock", "source": S.IDLE, "dest": S.LOCKED},
    {"trigger": "emit_close", "source": S.LOCKED, "dest": S.CLOSE_EMITTED},
    {"trigger": "confirm", "source": S.CLOSE_EMITTED, "dest": S.CONFIRMED,
     "conditions": "close_executed"},
    {"trigger": "reject", "source": S.CLOSE_EMITTED, "dest": S.CLOSE_REJECTED,
     "conditions": "close_refused"},
    # LOCKED can time out too: lock and emit commit together, but a record read
    # from an older engine version (or a crash mid-migration) must still end.
    {"trigger": "timeout", "source": [S.LOCKED, S.CLOSE_EMITTED], "dest": S.TIMED_OUT,
     "conditions": "deadline_passed"},
    {"trigger": "abort", "source": [S.LOCKED, S.CLOSE_EMITTED], "dest": S.ABORTED},
    # A close that executes after the rotation ended frees a slot but admits no entry.
    {"trigger": "late_confirm", "source": [S.TIMED_OUT, S.ABORTED], "dest": None,
     "conditions": ["close_executed", "not_yet_late_confirmed"]},
    {"trigger": "extend", "source": S.CLOSE_EMITTED, "dest": None},
]
# fmt: on


class IllegalTransition(RotationFsmError):
    """A trigger that has no edge from the record's state."""

    def __init__(self, state: str, trigger: str) -> None:
        super().__init__(f"trigger {trigger!r} is not allowed in state {state!r}")
        self.state = state
        self.trigger = trigger


class Guards:
    """The facts a guard may look at, set by the caller before it fires.

    transitions calls guards as methods of the model; keeping them on one small
    cursor object lets the machine stay a shared, module-level definition.
    """

    state: str
    trigger: Callable[[str], bool]  # attached by transitions when the cursor is added
    now_ms: int = 0
    deadline_ms: int = 0
    executed: bool = False
    reduce_only: bool = False
    late_confirmed: bool = False

    def deadline_passed(self) -> bool:
        return self.now_ms >= self.deadline_ms

    def close_executed(self) -> bool:
        return self.executed and self.reduce_only

    def close_refused(self) -> bool:
        return not self.executed

    def not_yet_late_confirmed(self) -> bool:
        return not self.late_confirmed


# transitions logs every state change at INFO (4-6 lines per rotation); the engine
# writes its own line per commit, so the library speaks only of problems.
logging.getLogger("transitions").setLevel(logging.WARNING)

MACHINE = Machine(
    model=None,
    states=list(State),
    transitions=TRANSITIONS,
    initial=State.IDLE,
    auto_transitions=False,
)
_CURSOR = Guards()
MACHINE.add_model(_CURSOR, initial=State.IDLE)


def edges() -> list[tuple[str, str, str]]:
    """Every legal (trigger, source, dest) edge, sorted: the table as data."""
    out: list[tuple[str, str, str]] = []
    for name, event in MACHINE.events.items():
        for source, transitions in event.transitions.items():
            for tr in transitions:
                out.append((name, source, tr.dest if tr.dest is not None else source))
    return sorted(out)


def is_legal(state: str, trigger: str) -> bool:
    """True when `trigger` has an edge out of `state` (guards not evaluated)."""
    event = MACHINE.events.get(trigger)
    return event is not None and state in event.transitions


Edge = tuple[str | None, tuple[tuple[str, bool], ...]]  # (dest, ((guard, wanted), ...))


def _compiled() -> dict[tuple[str, str], list[Edge]]:
    """The machine's edges by (source, trigger), each with its guards by name.

    Read out of `MACHINE`, so the table above stays the one definition; `fire`
    walks this instead of the library's event dispatch, which costs ≈ 40 µs per
    call — more than the rest of a timeout's decision.
    """
    table: dict[tuple[str, str], list[Edge]] = {}
    for name, event in MACHINE.events.items():
        for source, transitions in event.transitions.items():
            table[str(source), name] = [
                (
                    None if tr.dest is None else str(tr.dest),
                    tuple((str(c.func), bool(c.target)) for c in tr.conditions),
                )
                for tr in transitions
            ]
    return table


_EDGES = _compiled()


def fire(state: str, trigger: Trigger, **facts: Any) -> str | None:
    """Apply `trigger` to a record in `state`; return the new state.

    Returns None when a guard refuses (nothing changes). Raises
    `IllegalTransition` when the table has no such edge. The first edge whose
    guards all hold is taken, in the table's order, as transitions would.
    """
    edges = _EDGES.get((str(state), str(trigger)))
    if edges is None:
        raise IllegalTransition(str(state), str(trigger))
    cursor = _CURSOR
    cursor.now_ms = int(facts.get("now_ms", 0))
    cursor.deadline_ms = int(facts.get("deadline_ms", 0))
    cursor.executed = bool(facts.get("executed", False))
    cursor.reduce_only = bool(facts.get("reduce_only", False))
    cursor.late_confirmed = bool(facts.get("late_confirmed", False))
    for dest, guards in edges:
        for name, wanted in guards:
            if getattr(cursor, name)() != wanted:
                break
        else:
            return str(state) if dest is None else dest
    return None
