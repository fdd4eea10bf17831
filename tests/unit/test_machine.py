"""The rotation machine: every state × trigger pair checked against the table."""

import itertools

import pytest

from rotation_fsm.core.machine import (
    FINAL,
    IN_FLIGHT,
    IllegalTransition,
    State,
    Trigger,
    edges,
    fire,
    is_legal,
)

# The table as the contract (§6) and the issue describe it; the machine must match.
EXPECTED = {
    (Trigger.LOCK, State.IDLE): State.LOCKED,
    (Trigger.EMIT_CLOSE, State.LOCKED): State.CLOSE_EMITTED,
    (Trigger.CONFIRM, State.CLOSE_EMITTED): State.CONFIRMED,
    (Trigger.REJECT, State.CLOSE_EMITTED): State.CLOSE_REJECTED,
    (Trigger.TIMEOUT, State.LOCKED): State.TIMED_OUT,
    (Trigger.TIMEOUT, State.CLOSE_EMITTED): State.TIMED_OUT,
    (Trigger.ABORT, State.LOCKED): State.ABORTED,
    (Trigger.ABORT, State.CLOSE_EMITTED): State.ABORTED,
    (Trigger.LATE_CONFIRM, State.TIMED_OUT): State.TIMED_OUT,
    (Trigger.LATE_CONFIRM, State.ABORTED): State.ABORTED,
    (Trigger.EXTEND, State.CLOSE_EMITTED): State.CLOSE_EMITTED,
}

# Facts under which every guard passes.
PASSING = {"now_ms": 10, "deadline_ms": 5, "executed": True, "reduce_only": True}


def test_edges_are_exactly_the_table():
    assert edges() == sorted((t.value, s.value, d.value) for (t, s), d in EXPECTED.items())


@pytest.mark.parametrize(("state", "trigger"), list(itertools.product(State, Trigger)))
def test_every_state_trigger_pair(state, trigger):
    expected = EXPECTED.get((trigger, state))
    facts = {**PASSING, "executed": False} if trigger is Trigger.REJECT else PASSING
    if expected is None:
        assert not is_legal(state, trigger)
        with pytest.raises(IllegalTransition) as err:
            fire(state, trigger, **facts)
        assert state.value in str(err.value) and trigger.value in str(err.value)
    else:
        assert fire(state, trigger, **facts) == expected


def test_final_states_have_no_way_back_to_flight():
    for state, trigger in itertools.product(FINAL, Trigger):
        dest = EXPECTED.get((trigger, state))
        assert dest is None or dest == state


def test_in_flight_and_final_partition_the_states_after_idle():
    assert IN_FLIGHT | FINAL | {State.IDLE} == set(State)
    assert not IN_FLIGHT & FINAL


def test_timeout_guard_refuses_before_the_deadline():
    assert fire(State.CLOSE_EMITTED, Trigger.TIMEOUT, now_ms=99, deadline_ms=100) is None
    assert fire(State.CLOSE_EMITTED, Trigger.TIMEOUT, now_ms=100, deadline_ms=100) == "TIMED_OUT"


def test_confirm_needs_executed_and_reduce_only():
    assert fire(State.CLOSE_EMITTED, Trigger.CONFIRM, executed=True, reduce_only=False) is None
    assert fire(State.CLOSE_EMITTED, Trigger.CONFIRM, executed=False, reduce_only=True) is None


def test_reject_only_when_not_executed():
    assert fire(State.CLOSE_EMITTED, Trigger.REJECT, executed=True) is None


def test_late_confirm_happens_once():
    assert fire(State.TIMED_OUT, Trigger.LATE_CONFIRM, **PASSING, late_confirmed=True) is None
