"""The chaos checker on small hand-made histories: each violation is caught, and a
consistent history violates nothing (a checker that never finds anything proves nothing)."""

from __future__ import annotations

import msgspec
import pytest

from rotation_fsm.core import reasons as R
from rotation_fsm.devkit.chaos import History, Verdict, allowance_ms, also_checked, check
from tests.chaos.histories import (
    batch,
    close_plan_entry,
    decision,
    plan_entry,
    plan_in,
    result_in,
    rotation,
    tick,
)

ALLOW, BLOCK = R.ALLOW, R.BLOCK


def verdict(h: History, number: int) -> Verdict:
    return check(h)[number - 1]


def consistent() -> History:
    """p1 takes the last free slot; p2 rotates BTCUSDT out and gets the freed slot."""
    rot_final = rotation("p2@20", close_symbol="BTCUSDT", created_ms=20, deadline_ms=3020,
                         ended_ms=500)  # fmt: skip
    rot_flying = msgspec.structs.replace(rot_final, state="CLOSE_EMITTED", ended_ms=0)
    close_id = rot_final.close_plan_id
    close = plan_in("3-0", close_id, "BTCUSDT")
    audit = [
        batch(10, [plan_in("1-0", "p1", "ETHUSDT")], [["p1", ALLOW, R.SLOTS_AVAILABLE, ""]],
              positions=["BTCUSDT"], version=1),
        batch(20, [plan_in("2-0", "p2", "NEWUSDT")], [["p2", BLOCK, R.WAITING_ROTATION_CLOSE,
              "p2@20"]], positions=["BTCUSDT", "ETHUSDT"], version=2),
        batch(30, [close], [[close_id, ALLOW, R.CLOSE_EXEMPT, ""]], positions=None, version=3),
        batch(500, [result_in("4-0", close_id)], [["p2", ALLOW, R.ROTATION_COMPLETE, "p2@20"]],
              positions=None, rotations=[rot_flying], version=4),
    ]  # fmt: skip
    return History(
        plans=[
            plan_entry("1-0", "p1"),
            plan_entry("2-0", "p2"),
            close_plan_entry("3-0", rot_final),
        ],
        results=[("4-0", {"plan_id": close_id, "executed": "true", "reduceOnly": "true"})],
        decisions=[
            decision("p1", ALLOW, R.SLOTS_AVAILABLE, "1-0"),
            decision("p2", BLOCK, R.WAITING_ROTATION_CLOSE, "2-0", rotation_id="p2@20"),
            decision(close_id, ALLOW, R.CLOSE_EXEMPT, "3-0"),
            decision("p2", ALLOW, R.ROTATION_COMPLETE, rotation_id="p2@20"),
        ],
        audit=audit,
        rotations=[rot_final],
        permits=["p1", close_id, "p2"],
        produced=["plans 1-0", "plans 2-0"],
        book_counts=[(100, 2), (600, 2)],
        max_desired=2,
    )


def test_a_consistent_history_violates_nothing() -> None:
    h = consistent()
    assert [v.violations for v in check(h)] == [0, 0, 0, 0, 0]
    assert all(not found for found in also_checked(h).values())


# ---------------------------------------------------------------- 1: slots


def test_an_entry_allowed_into_a_full_book_is_caught() -> None:
    full = batch(10, [plan_in("1-0", "p1", "NEWUSDT")], [["p1", ALLOW, R.SLOTS_AVAILABLE, ""]],
                 positions=["BTCUSDT", "ETHUSDT"])  # fmt: skip
    assert verdict(History(audit=[full]), 1).violations == 1


def test_entries_allowed_in_one_commit_are_counted_together() -> None:
    two = batch(
        10,
        [plan_in("1-0", "p1", "NEWUSDT"), plan_in("2-0", "p2", "SOLUSDT")],
        [["p1", ALLOW, R.SLOTS_AVAILABLE, ""], ["p2", ALLOW, R.SLOTS_AVAILABLE, ""]],
        positions=["BTCUSDT"],
    )
    found = verdict(History(audit=[two]), 1)
    assert found.violations == 1
    assert "p2 (SOLUSDT)" in found.examples[0]


@pytest.mark.parametrize(
    ("regime", "violations"), [("CHOP", 1), ("UNKNOWN", 1), ("TREND_STRONG", 0)]
)
def test_the_plans_regime_sets_the_desired_slots(regime: str, violations: int) -> None:
    one = batch(10, [plan_in("1-0", "p1", "NEWUSDT")], [["p1", ALLOW, R.SLOTS_AVAILABLE, ""]],
                positions=["BTCUSDT"], regimes={"NEWUSDT": regime})  # fmt: skip
    assert verdict(History(audit=[one]), 1).violations == violations


@pytest.mark.parametrize(("until_ms", "violations"), [(100, 1), (10, 0)])
def test_a_reservation_holds_a_slot_until_its_ttl(until_ms: int, violations: int) -> None:
    one = batch(10, [plan_in("1-0", "p1", "NEWUSDT")], [["p1", ALLOW, R.SLOTS_AVAILABLE, ""]],
                positions=["BTCUSDT"], reservations={"ETHUSDT": ("p0", until_ms)})  # fmt: skip
    assert verdict(History(audit=[one]), 1).violations == violations


def test_a_close_target_in_flight_holds_a_slot() -> None:
    flying = rotation("p9@5", close_symbol="XRPUSDT", state="CLOSE_EMITTED", ended_ms=0)
    one = batch(10, [plan_in("1-0", "p1", "NEWUSDT")], [["p1", ALLOW, R.SLOTS_AVAILABLE, ""]],
                positions=["BTCUSDT"], rotations=[flying])  # fmt: skip
    assert verdict(History(audit=[one]), 1).violations == 1


@pytest.mark.parametrize("executed", [False, True])
def test_an_entrys_result_frees_its_reservation_within_the_commit(executed: bool) -> None:
    # Executed, it is a position now (not in this snapshot: closed again since).
    one = batch(
        10,
        [result_in("1-0", "p0", executed=executed), plan_in("2-0", "p1", "NEWUSDT")],
        [["p1", ALLOW, R.SLOTS_AVAILABLE, ""]],
        positions=["BTCUSDT"],
        reservations={"ETHUSDT": ("p0", 100)},
    )
    assert verdict(History(audit=[one]), 1).violations == 0


def test_a_symbol_two_plans_hold_stays_reserved_until_both_fail() -> None:
    one = batch(
        10,
        [result_in("1-0", "p0", executed=False), plan_in("2-0", "p1", "NEWUSDT")],
        [["p1", ALLOW, R.SLOTS_AVAILABLE, ""]],
        positions=["BTCUSDT"],
        reservations={"ETHUSDT": (["p0", "p9"], 100)},
    )
    assert verdict(History(audit=[one]), 1).violations == 1


def test_a_plan_held_on_a_reserved_symbol_keeps_it_when_the_first_fails() -> None:
    one = batch(
        10,
        [plan_in("1-0", "p9", "ETHUSDT"), result_in("2-0", "p0", executed=False),
         plan_in("3-0", "p1", "NEWUSDT")],
        [["p9", ALLOW, R.SLOT_ALREADY_HELD, ""], ["p1", ALLOW, R.SLOTS_AVAILABLE, ""]],
        positions=["BTCUSDT"],
        reservations={"ETHUSDT": ("p0", 100)},
    )  # fmt: skip
    assert verdict(History(audit=[one]), 1).violations == 1


def test_a_completed_rotations_entry_holds_the_freed_slot() -> None:
    flying = rotation("p9@5", close_symbol="XRPUSDT", state="CLOSE_EMITTED", ended_ms=0)
    one = batch(
        10,
        [result_in("1-0", flying.close_plan_id), plan_in("2-0", "p1", "SOLUSDT")],
        [["p9", ALLOW, R.ROTATION_COMPLETE, "p9@5"], ["p1", ALLOW, R.SLOTS_AVAILABLE, ""]],
        positions=["BTCUSDT"],
        rotations=[flying],
    )
    found = verdict(History(audit=[one]), 1)
    assert found.violations == 1
    assert "NEWUSDT" in found.examples[0]  # the rotation's entry, reserved on completion


def test_held_without_holding_is_caught() -> None:
    one = batch(10, [plan_in("1-0", "p1", "BTCUSDT")], [["p1", ALLOW, R.SLOT_ALREADY_HELD, ""]],
                positions=["ETHUSDT"])  # fmt: skip
    assert verdict(History(audit=[one]), 1).violations == 1


def test_held_by_a_reservation_is_fine() -> None:
    one = batch(10, [plan_in("1-0", "p1", "BTCUSDT")], [["p1", ALLOW, R.SLOT_ALREADY_HELD, ""]],
                positions=[], reservations={"BTCUSDT": ("p0", 100)})  # fmt: skip
    assert verdict(History(audit=[one]), 1).violations == 0


def test_a_resend_answered_again_takes_no_new_slot() -> None:
    again = batch(10, [plan_in("1-0", "p1", "NEWUSDT")], [["p1", ALLOW, R.SLOTS_AVAILABLE, ""]],
                  positions=["BTCUSDT", "ETHUSDT"], final_plans=["p1"])  # fmt: skip
    assert verdict(History(audit=[again]), 1).violations == 0


def test_a_slot_taken_without_positions_is_caught() -> None:
    blind = batch(10, [plan_in("1-0", "p1", "NEWUSDT")], [["p1", ALLOW, R.SLOTS_AVAILABLE, ""]],
                  positions=None)  # fmt: skip
    found = verdict(History(audit=[blind]), 1)
    assert found.violations == 1
    assert "without positions" in found.examples[0]


def test_a_decision_no_input_explains_is_caught() -> None:
    stray = batch(10, [], [["p1", ALLOW, R.SLOTS_AVAILABLE, ""]])
    assert verdict(History(audit=[stray]), 1).violations == 1


def test_the_paper_book_past_the_largest_desired_count_is_caught() -> None:
    h = History(book_counts=[(1, 3), (2, 4), (3, 3)], max_desired=3)
    assert verdict(h, 1).violations == 1


# ---------------------------------------------------------------- 2: close targets


def _with_close_plans(*rotations: object) -> History:
    recs = list(rotations)
    plans = [close_plan_entry(f"{i}-0", r) for i, r in enumerate(recs, 1)]  # type: ignore[arg-type]
    return History(rotations=recs, plans=plans)  # type: ignore[arg-type]


def test_overlapping_rotations_on_one_close_symbol_are_caught() -> None:
    h = _with_close_plans(
        rotation("a@1000", created_ms=1000, ended_ms=2000),
        rotation("b@1500", created_ms=1500, ended_ms=2500),
    )
    assert verdict(h, 2).violations == 1


def test_rotations_one_after_another_on_a_symbol_are_fine() -> None:
    h = _with_close_plans(
        rotation("a@1000", created_ms=1000, ended_ms=2000),
        rotation("b@2000", created_ms=2000, ended_ms=2500),
    )
    assert verdict(h, 2).violations == 0


def test_a_rotation_never_ended_overlaps_every_later_one() -> None:
    h = _with_close_plans(
        rotation("a@1000", created_ms=1000, state="CLOSE_EMITTED", ended_ms=0),
        rotation("b@9000", created_ms=9000, ended_ms=9500),
    )
    assert verdict(h, 2).violations == 1


def test_a_view_with_two_rotations_on_one_target_is_caught() -> None:
    both = [
        rotation("a@1", close_symbol="XRPUSDT", state="CLOSE_EMITTED", ended_ms=0),
        rotation("b@2", close_symbol="XRPUSDT", state="CLOSE_EMITTED", ended_ms=0),
    ]
    view = batch(10, [tick("a@1")], [], rotations=both)
    assert verdict(History(audit=[view]), 2).violations == 1


def test_a_rotation_started_on_a_target_in_flight_is_caught() -> None:
    flying = rotation("a@1", close_symbol="XRPUSDT", state="CLOSE_EMITTED", ended_ms=0)
    second = rotation("p2@10", close_symbol="XRPUSDT", created_ms=10, ended_ms=0,
                      state="CLOSE_EMITTED")  # fmt: skip
    start = batch(10, [plan_in("1-0", "p2", "NEWUSDT")],
                  [["p2", BLOCK, R.WAITING_ROTATION_CLOSE, "p2@10"]],
                  positions=["XRPUSDT", "BTCUSDT"], rotations=[flying])  # fmt: skip
    found = verdict(History(audit=[start], rotations=[second]), 2)
    assert any("already the close target" in e for e in found.examples)


def test_a_rotation_with_two_close_plans_is_caught() -> None:
    rec = rotation("a@1")
    h = History(rotations=[rec], plans=[close_plan_entry("1-0", rec), close_plan_entry("2-0", rec)])
    assert verdict(h, 2).violations == 1


def test_a_rotation_without_a_close_plan_is_caught() -> None:
    assert verdict(History(rotations=[rotation("a@1")]), 2).violations == 1


def test_a_close_plan_id_of_two_rotations_is_caught() -> None:
    h = _with_close_plans(
        rotation("abcdefgh1@1000", created_ms=1000, ended_ms=2000),
        rotation("abcdefgh2@5000", created_ms=5000, ended_ms=6000),
    )
    assert verdict(h, 2).violations == 1


# ---------------------------------------------------------------- 3: decisions and permits


def _decided(*rows: tuple[str, str], permits: list[str] | None = None) -> History:
    return History(
        decisions=[decision("p1", verdict, reason) for verdict, reason in rows],
        permits=["p1"] if permits is None else permits,
    )


def test_a_final_verdict_that_changes_is_caught() -> None:
    h = _decided((ALLOW, R.SLOTS_AVAILABLE), (BLOCK, R.NO_ROTATION_CANDIDATE))
    assert verdict(h, 3).violations == 1


def test_a_final_block_that_turns_into_an_allow_is_caught() -> None:
    h = _decided((BLOCK, R.ROTATION_TIMEOUT), (ALLOW, R.SLOTS_AVAILABLE))
    assert verdict(h, 3).violations == 1


def test_a_final_verdict_answered_again_is_fine() -> None:
    h = _decided((ALLOW, R.ROTATION_COMPLETE), (ALLOW, R.ROTATION_COMPLETE))
    assert verdict(h, 3).violations == 0


def test_a_passing_block_may_turn_into_an_allow() -> None:
    h = _decided((BLOCK, R.POSITIONS_UNAVAILABLE), (ALLOW, R.SLOTS_AVAILABLE))
    assert verdict(h, 3).violations == 0


def test_two_permits_for_one_plan_are_caught() -> None:
    h = _decided((ALLOW, R.SLOTS_AVAILABLE), permits=["p1", "p1"])
    assert verdict(h, 3).violations == 1


def test_an_allowed_plan_without_a_permit_is_caught() -> None:
    assert verdict(_decided((ALLOW, R.SLOTS_AVAILABLE), permits=[]), 3).violations == 1


def test_a_permit_for_a_plan_never_allowed_is_caught() -> None:
    assert verdict(_decided((BLOCK, R.PAUSED), permits=["p1"]), 3).violations == 1


def test_an_incomplete_permit_log_claims_no_missing_permit() -> None:
    h = _decided((ALLOW, R.SLOTS_AVAILABLE), permits=[])
    h.permit_log_complete = False
    assert verdict(h, 3).violations == 0


# ---------------------------------------------------------------- 4: deadlines


def _ended(state: str, ended_ms: int, outages: list[tuple[int, int]] | None = None) -> History:
    rec = rotation("a@1000", state=state, created_ms=1000, deadline_ms=4000, ended_ms=ended_ms)
    return History(rotations=[rec], plans=[close_plan_entry("1-0", rec)], outages=outages or [])


def test_a_rotation_still_in_flight_at_the_end_is_caught() -> None:
    assert verdict(_ended("CLOSE_EMITTED", 0), 4).violations == 1


def test_a_timeout_within_a_second_of_the_deadline_is_fine() -> None:
    assert verdict(_ended("TIMED_OUT", 4900), 4).violations == 0


def test_a_timeout_more_than_a_second_late_is_caught() -> None:
    found = verdict(_ended("TIMED_OUT", 5200), 4)
    assert (found.violations, found.figures["raw_late"]) == (1, 1)


def test_a_confirmation_after_the_allowance_is_caught() -> None:
    assert verdict(_ended("CONFIRMED", 5500), 4).violations == 1


def test_a_timeout_before_the_deadline_is_caught() -> None:
    assert verdict(_ended("TIMED_OUT", 3900), 4).violations == 1


def test_an_outage_over_the_deadline_extends_the_allowance() -> None:
    found = verdict(_ended("TIMED_OUT", 9000, outages=[(3000, 8500)]), 4)
    assert (found.violations, found.figures["raw_late"]) == (0, 1)


def test_an_outage_before_the_deadline_extends_nothing() -> None:
    assert verdict(_ended("TIMED_OUT", 5200, outages=[(0, 2000)]), 4).violations == 1


@pytest.mark.parametrize(
    ("outages", "allowed"),
    [
        ([], 5000),
        ([(3500, 6000)], 7000),
        ([(3500, 6000), (6500, 9000)], 10000),  # the second began within the first's grace
        ([(6000, 7000)], 5000),  # began after the grace: the rotation should have ended
    ],
)
def test_the_allowance_follows_the_outages(outages: list[tuple[int, int]], allowed: int) -> None:
    assert allowance_ms(4000, outages) == allowed


# ---------------------------------------------------------------- 5: nothing lost


def test_an_acknowledged_xadd_missing_from_its_stream_is_caught() -> None:
    assert verdict(History(produced=["plans 1-0"]), 5).violations == 1


def test_an_entry_left_pending_is_caught() -> None:
    found = verdict(History(unacked=["results 7-0"]), 5)
    assert (found.violations, found.examples) == (1, ["results 7-0: still pending or "
                                                      "undelivered at the end"])  # fmt: skip


def test_an_entry_no_commit_took_is_caught() -> None:
    h = History(plans=[plan_entry("1-0", "p1")], decisions=[decision("p1", BLOCK, R.PAUSED, "1-0")])
    found = verdict(h, 5)
    assert (found.violations, found.examples) == (1, ["plans 1-0: in no audited commit and "
                                                      "not dead-lettered"])  # fmt: skip


def test_a_dead_lettered_entry_is_accounted_for() -> None:
    h = History(
        plans=[("1-0", {"plan_id": "p1", "symbol": "", "decision": "EXECUTE"})],
        dlq=[("9-0", {"stream": "plans", "entry_id": "1-0", "error": "symbol is empty"})],
    )
    assert verdict(h, 5).violations == 0


def test_an_execute_plan_never_answered_is_caught() -> None:
    taken = batch(10, [plan_in("1-0", "p1", "NEWUSDT")], [])
    found = verdict(History(plans=[plan_entry("1-0", "p1")], audit=[taken]), 5)
    assert (found.violations, found.examples) == (1, ["plans 1-0: an EXECUTE plan that never "
                                                      "got a decision"])  # fmt: skip


def test_a_dead_letter_without_an_error_is_caught() -> None:
    h = History(dlq=[("9-0", {"stream": "plans", "entry_id": "1-0", "error": ""})])
    assert verdict(h, 5).violations == 1


# ---------------------------------------------------------------- beyond the five


def test_two_commits_from_one_book_version_are_reported() -> None:
    twice = [batch(10, [], [], version=7), batch(20, [], [], version=7)]
    assert len(also_checked(History(audit=twice))["commits from one book version"]) == 1


def test_a_plan_entry_answered_twice_is_reported() -> None:
    twice = [decision("p1", BLOCK, R.PAUSED, "5-0"), decision("p1", BLOCK, R.PAUSED, "5-0")]
    h = History(decisions=twice)
    assert len(also_checked(h)["plan entries answered more than once"]) == 1
    assert verdict(h, 3).violations == 0  # non-final answers: invariant 3 holds


def test_an_entry_dead_lettered_twice_is_reported() -> None:
    letter = {"stream": "plans", "entry_id": "1-0", "error": "bad"}
    h = History(dlq=[("8-0", letter), ("9-0", letter)])
    assert len(also_checked(h)["entries dead-lettered more than once"]) == 1
