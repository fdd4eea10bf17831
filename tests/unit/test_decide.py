"""The pure core, driven through an in-memory book: contract §3a and §6 case by case."""

import json

import pytest

from rotation_fsm.core import reasons as R
from rotation_fsm.core.decide import BadIn, Market, PlanIn, ResultIn, Tick
from rotation_fsm.core.memory import MemoryBook
from rotation_fsm.core.settings import Rules
from tests.stubs import (
    NOW_MS,
    UNIVERSE,
    book_of,
    exchange_down,
    market,
    plan,
    position,
    result,
    rules,
)

POLICY = json.dumps(UNIVERSE)


@pytest.fixture
def book() -> MemoryBook:
    b = MemoryBook()
    b.view.policy_raw = POLICY
    return b


def send(book, p, mkt, now_ms=NOW_MS, rl: Rules | None = None, entry_id=None):
    entry_id = entry_id or f"{now_ms}-{len(book.decisions)}"
    book.feed([PlanIn(entry_id, p)], mkt, rl or rules(), now_ms)
    return book.last_decision(p.plan_id)


def start_rotation(book, plan_id="a1b2c3d4e5f67890", symbol="NEWUSDT", n=3, **rl):
    mkt = market(*book_of(n))
    d = send(book, plan(plan_id, symbol), mkt, rl=rules(**rl))
    assert d.reason == R.WAITING_ROTATION_CLOSE
    return mkt, book.view.rotations[d.rotation_id]


def test_free_slot_is_allowed_with_a_permit_and_a_reservation(book):
    d = send(book, plan(), market(*book_of(2)))  # UNKNOWN regime → CHOP → 3 slots
    assert (d.decision, d.reason) == (R.ALLOW, R.SLOTS_AVAILABLE)
    assert (d.regime, d.desired_slots, d.open_slots) == ("UNKNOWN", 3, 1)
    assert book.permits == {d.plan_id: 1}
    assert book.view.reservations["NEWUSDT"].plan_id == d.plan_id


def test_full_book_emits_one_close_for_the_weakest_and_blocks(book):
    _mkt, rot = start_rotation(book)
    weakest = book_of(3)[-1].symbol
    assert rot.state == "CLOSE_EMITTED" and rot.close_symbol == weakest
    (close,) = book.close_plans
    assert close == {
        "plan_id": f"rot_a1b2c3d4_{weakest}",
        "symbol": weakest,
        "action": "FULL_CLOSE_PROPOSED",
        "side": "CLOSE",
        "qty": "0",
        "reduceOnly": "true",
        "decision": "EXECUTE",
        "source": "rotation-fsm",
        "kill_score": "0",
        "rotation_trigger": "true",
        "new_symbol": "NEWUSDT",
        "new_plan_id": "a1b2c3d4e5f67890",
        "timestamp": close["timestamp"],
        "rotation_id": rot.rotation_id,
    }
    (event,) = book.events
    assert event["event"] == R.EV_LOCK_CREATED and event["state"] == "CLOSE_EMITTED"
    assert event["close_plan_id"] == close["plan_id"]
    assert book.blocks["a1b2c3d4e5f67890"] == R.WAITING_ROTATION_CLOSE
    assert book.permits == {}


def test_confirmed_close_allows_the_waiting_plan_without_a_resend(book):
    _, rot = start_rotation(book)
    book.feed([ResultIn("9-0", result(rot.close_plan_id))], market(), rules(), NOW_MS + 5000)
    assert book.view.rotations[rot.rotation_id].state == "CONFIRMED"
    assert book.events[-1]["event"] == R.EV_COMPLETE
    d = book.last_decision("a1b2c3d4e5f67890")
    assert (d.decision, d.reason) == (R.ALLOW, R.ROTATION_COMPLETE)
    assert book.permits == {"a1b2c3d4e5f67890": 1}
    assert "a1b2c3d4e5f67890" not in book.blocks
    assert book.view.reservations["NEWUSDT"].plan_id == "a1b2c3d4e5f67890"
    assert not book.view.inflight


def test_timeout_fires_only_after_the_deadline(book):
    _, rot = start_rotation(book, lock_ttl_s=120)
    book.feed([Tick(rot.rotation_id)], market(), rules(), rot.deadline_ms - 1)
    assert book.view.rotations[rot.rotation_id].state == "CLOSE_EMITTED"
    book.feed([Tick(rot.rotation_id)], market(), rules(), rot.deadline_ms + 250)
    assert book.view.rotations[rot.rotation_id].state == "TIMED_OUT"
    ev = book.events[-1]
    assert ev["event"] == R.EV_TIMEOUT and ev["lock_age"] == "120.250"
    d = book.last_decision("a1b2c3d4e5f67890")
    assert (d.decision, d.reason) == (R.BLOCK, R.ROTATION_TIMEOUT)


def test_a_resend_while_waiting_is_told_to_wait_and_starts_nothing(book):
    mkt, rot = start_rotation(book)
    d = send(book, plan(), mkt, NOW_MS + 1000)
    assert (d.decision, d.reason, d.rotation_id) == (
        R.BLOCK,
        R.WAITING_ROTATION_CLOSE,
        rot.rotation_id,
    )
    assert len(book.close_plans) == 1 and len(book.view.rotations) == 1


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        ("timeout", R.ROTATION_TIMEOUT),
        ("reject", R.ROTATION_CLOSE_REJECTED),
        ("confirm", R.ROTATION_COMPLETE),
    ],
)
def test_a_final_decision_is_answered_again_unchanged(book, outcome, reason):
    mkt, rot = start_rotation(book)
    later = rot.deadline_ms + 1
    if outcome == "timeout":
        book.feed([Tick(rot.rotation_id)], mkt, rules(), later)
    else:
        res = result(rot.close_plan_id, executed=outcome == "confirm")
        book.feed([ResultIn("9-0", res)], mkt, rules(), NOW_MS + 10)
    first = book.last_decision("a1b2c3d4e5f67890")
    again = send(book, plan(), mkt, later + 5)
    assert (again.decision, again.reason) == (first.decision, reason)
    assert len(book.close_plans) == 1 and len(book.view.rotations) == 1
    assert sum(book.permits.values()) == (1 if outcome == "confirm" else 0)


def test_a_redelivered_entry_writes_nothing(book):
    mkt = market(*book_of(1))
    send(book, plan(), mkt, entry_id="5-0")
    before = len(book.decisions)
    effects = book.feed([PlanIn("5-0", plan())], mkt, rules(), NOW_MS + 1)
    assert len(book.decisions) == before
    assert [type(e).__name__ for e in effects] == ["Ack"]


def test_rejected_close_blocks_the_plan(book):
    _, rot = start_rotation(book)
    book.feed(
        [ResultIn("9-0", result(rot.close_plan_id, executed=False))], market(), rules(), NOW_MS + 10
    )
    assert book.view.rotations[rot.rotation_id].state == "CLOSE_REJECTED"
    assert book.events[-1]["event"] == R.EV_CLOSE_REJECTED
    assert book.blocks["a1b2c3d4e5f67890"] == R.ROTATION_CLOSE_REJECTED


def test_confirmation_after_timeout_is_recorded_once_and_admits_nothing(book):
    _, rot = start_rotation(book)
    book.feed([Tick(rot.rotation_id)], market(), rules(), rot.deadline_ms)
    late = ResultIn("9-0", result(rot.close_plan_id))
    book.feed(
        [late, ResultIn("9-1", result(rot.close_plan_id))], market(), rules(), rot.deadline_ms + 10
    )
    assert [e["event"] for e in book.events].count(R.EV_LATE_CONFIRM) == 1
    assert book.view.rotations[rot.rotation_id].state == "TIMED_OUT"
    assert book.permits == {}


def test_executed_without_reduce_only_is_not_a_confirmation(book):
    _, rot = start_rotation(book)
    book.feed(
        [ResultIn("9-0", result(rot.close_plan_id, reduce_only=False))],
        market(),
        rules(),
        NOW_MS + 10,
    )
    assert book.view.rotations[rot.rotation_id].state == "CLOSE_EMITTED"


def test_two_plans_on_a_full_book_close_two_different_positions(book):
    mkt = market(*book_of(3))
    rl = rules(max_concurrent_rotations=2)
    book.feed(
        [
            PlanIn("1-0", plan("planAAAA-1", "NEWUSDT")),
            PlanIn("1-1", plan("planBBBB-2", "BNBUSDT")),
        ],
        mkt,
        rl,
        NOW_MS,
    )
    targets = [c["symbol"] for c in book.close_plans]
    assert len(targets) == 2 and len(set(targets)) == 2


def test_concurrency_cap_blocks_a_second_rotation_and_a_resend_is_decided_afresh(book):
    mkt = market(*book_of(3))
    book.feed(
        [
            PlanIn("1-0", plan("planAAAA-1", "NEWUSDT")),
            PlanIn("1-1", plan("planBBBB-2", "BNBUSDT")),
        ],
        mkt,
        rules(),
        NOW_MS,
    )
    assert book.last_decision("planBBBB-2").reason == R.ROTATION_IN_PROGRESS
    rot = next(iter(book.view.rotations.values()))
    book.feed([ResultIn("2-0", result(rot.close_plan_id))], mkt, rules(), NOW_MS + 10)
    d = send(book, plan("planBBBB-2", "BNBUSDT"), mkt, NOW_MS + 20)
    assert d.reason == R.WAITING_ROTATION_CLOSE  # a new rotation for B, not the old answer


def test_last_free_slot_raced_in_one_batch_goes_to_one_plan(book):
    mkt = market(*book_of(2))
    book.feed(
        [
            PlanIn("1-0", plan("planAAAA-1", "NEWUSDT")),
            PlanIn("1-1", plan("planBBBB-2", "BNBUSDT")),
        ],
        mkt,
        rules(),
        NOW_MS,
    )
    reasons = sorted(book.last_decision(p).reason for p in ("planAAAA-1", "planBBBB-2"))
    assert reasons == sorted([R.SLOTS_AVAILABLE, R.WAITING_ROTATION_CLOSE])
    assert sum(book.permits.values()) == 1


def test_a_freed_rotation_target_is_kept_for_the_waiting_plan(book):
    _, rot = start_rotation(book)
    # The close executed on the exchange, but its result has not arrived yet.
    shrunk = market(*[p for p in book_of(3) if p.symbol != rot.close_symbol])
    d = send(book, plan("planCCCC-3", "BNBUSDT"), shrunk, NOW_MS + 10)
    assert d.decision == R.BLOCK and d.open_slots == 0


def test_close_plans_pass_untouched_and_get_a_permit(book):
    d = send(book, plan("close-1", "BTCUSDT", action="FULL_CLOSE_PROPOSED"), market())
    assert (d.decision, d.reason) == (R.ALLOW, R.CLOSE_EXEMPT)
    assert book.permits == {"close-1": 1}
    d = send(book, plan("close-2", "BTCUSDT", reduce_only=True), exchange_down())
    assert d.reason == R.CLOSE_EXEMPT


def test_non_execute_plans_are_left_alone(book):
    effects = book.feed([PlanIn("1-0", plan(decision="BLOCKED"))], market(), rules(), NOW_MS)
    assert book.decisions == [] and [type(e).__name__ for e in effects] == ["Ack"]


@pytest.mark.parametrize("raw", [None, "", "not json", '{"a": 1}', "[1, 2]"])
def test_no_usable_policy_blocks_fail_closed_and_finally(book, raw):
    book.view.policy_raw = raw
    d = send(book, plan(), market())
    assert (d.decision, d.reason) == (R.BLOCK, R.NO_POLICY)
    assert book.view.plans[d.plan_id].final


def test_symbol_outside_the_universe_is_blocked(book):
    d = send(book, plan(symbol="FOOUSDT"), market())
    assert (d.decision, d.reason) == (R.BLOCK, R.NOT_IN_UNIVERSE)


@pytest.mark.parametrize("qty", [0.0, -5.0, 1e308, float(2**53) * 2])
def test_an_open_plan_with_no_orderable_qty_is_blocked_and_holds_no_slot(book, qty):
    d = send(book, plan(qty=qty), market(*book_of(1)))
    assert (d.decision, d.reason) == (R.BLOCK, R.INVALID_QTY)
    assert book.permits == {} and book.view.reservations == {}


def test_a_resend_with_a_corrected_qty_is_decided_afresh(book):
    assert send(book, plan(qty=-5.0), market()).reason == R.INVALID_QTY
    assert send(book, plan(qty=0.5), market(), NOW_MS + 1).reason == R.SLOTS_AVAILABLE


def test_a_close_plan_is_exempt_whatever_its_qty(book):
    d = send(book, plan(qty=0.0, reduce_only=True, action="FULL_CLOSE_PROPOSED"), market())
    assert (d.decision, d.reason) == (R.ALLOW, R.CLOSE_EXEMPT)


def test_exchange_failure_blocks_and_a_resend_is_decided_afresh(book):
    assert send(book, plan(), exchange_down()).reason == R.POSITIONS_UNAVAILABLE
    assert send(book, plan(), market(), NOW_MS + 1).reason == R.SLOTS_AVAILABLE


def test_a_stale_exchange_view_blocks_exchange_stale_and_a_resend_is_decided_afresh(book):
    stale = Market(positions=None, positions_error="exchange view stale", stale=True)
    d = send(book, plan(), stale)
    assert (d.decision, d.reason) == (R.BLOCK, R.EXCHANGE_STALE)
    assert not book.view.plans[d.plan_id].final
    assert send(book, plan(), market(), NOW_MS + 1).reason == R.SLOTS_AVAILABLE


def test_margin_gate_needs_an_account_and_blocks_above_the_cap(book):
    no_account = market()
    no_account.account = None
    assert send(book, plan("p-1"), no_account).reason == R.POSITIONS_UNAVAILABLE
    assert send(book, plan("p-2"), market(usage=0.9)).reason == R.MARGIN_CAP
    off = rules(max_margin_usage=1.0)
    assert send(book, plan("p-3"), no_account, rl=off).reason == R.SLOTS_AVAILABLE


def test_an_entry_for_an_open_symbol_takes_no_new_slot_but_holds_it(book):
    held = book_of(3)[0].symbol
    d = send(book, plan("p-1", held), market(*book_of(3)))
    assert (d.decision, d.reason) == (R.ALLOW, R.SLOT_ALREADY_HELD)
    assert book.close_plans == [] and book.view.reservations[held].holders == 1
    # Closed before p-1 executes: p-1 will open it again, so its slot is not free.
    d = send(book, plan("p-2", "NEWUSDT"), market(*book_of(3)[1:]))
    assert d.reason != R.SLOTS_AVAILABLE and d.open_slots == 0


def test_an_entry_for_a_reserved_symbol_joins_the_reservation(book):
    send(book, plan("p-1", "NEWUSDT"), market())
    d = send(book, plan("p-2", "NEWUSDT"), market())
    assert (d.decision, d.reason) == (R.ALLOW, R.SLOT_ALREADY_HELD)
    res = book.view.reservations["NEWUSDT"]
    assert (res.plan_id, res.holders) == ("p-1", 2)


def test_a_rejected_entrys_result_frees_its_share_at_once(book):
    send(book, plan("p-1"), market())
    send(book, plan("p-2"), market())
    done = [ResultIn("2-0", result("p-1", executed=False, reduce_only=False))]
    book.feed(done, market(), rules(), NOW_MS + 1)
    assert book.view.reservations["NEWUSDT"].holders == 1
    done = [ResultIn("2-1", result("p-2", executed=False, reduce_only=False))]
    book.feed(done, market(), rules(), NOW_MS + 2)
    assert book.view.reservations == {}


def test_an_executed_entry_holds_its_slot_against_a_view_older_than_its_fill(book):
    # CHOP 3 slots (no klines): two open, NEWUSDT allowed into the third.
    send(book, plan("p-1", "NEWUSDT"), market(*book_of(2), as_of_ms=NOW_MS))
    filled = [ResultIn("2-0", result("p-1", executed=True, reduce_only=False))]
    book.feed(filled, market(), rules(), NOW_MS + 100)
    res = book.view.reservations["NEWUSDT"]
    assert (res.holders, res.filled_ms, res.settling) == (0, NOW_MS + 100, True)
    # A second replica decides on a snapshot taken before the fill: NEWUSDT is not in
    # it, yet its slot is taken (the race of two replicas and a slow exchange).
    stale = market(*book_of(2), as_of_ms=NOW_MS + 50)
    d = send(book, plan("p-2", "BNBUSDT"), stale, NOW_MS + 200)
    assert d.reason != R.SLOTS_AVAILABLE and d.open_slots == 0


def test_a_settling_reservation_ends_on_a_view_as_of_after_its_fill(book):
    send(book, plan("p-1", "NEWUSDT"), market(as_of_ms=NOW_MS))
    filled = [ResultIn("2-0", result("p-1", executed=True, reduce_only=False))]
    book.feed(filled, market(), rules(), NOW_MS + 100)
    skew = rules().clock_skew_ms
    book.feed([], market(as_of_ms=NOW_MS + 99 + skew), rules(), NOW_MS + 1_000)
    assert "NEWUSDT" in book.view.reservations  # within the clock skew: not yet proof
    newer = market(position("NEWUSDT"), as_of_ms=NOW_MS + 100 + skew)
    book.feed([], newer, rules(), NOW_MS + 1_000)
    assert book.view.reservations == {}


def test_a_pushed_open_position_settles_its_reservation(book):
    send(book, plan("p-1", "NEWUSDT"), market(as_of_ms=NOW_MS))
    filled = [ResultIn("2-0", result("p-1", executed=True, reduce_only=False))]
    book.feed(filled, market(), rules(), NOW_MS + 100)
    pushed = NOW_MS + 100 + rules().clock_skew_ms
    other = market(as_of_ms=NOW_MS, seen_ms={"BTCUSDT": pushed})
    book.feed([], other, rules(), NOW_MS + 1_000)
    assert "NEWUSDT" in book.view.reservations  # news of another symbol proves nothing
    own = market(position("NEWUSDT"), as_of_ms=NOW_MS, seen_ms={"NEWUSDT": pushed})
    book.feed([], own, rules(), NOW_MS + 1_000)
    assert book.view.reservations == {}


def test_no_answer_from_the_exchange_settles_nothing(book):
    send(book, plan("p-1", "NEWUSDT"), market(as_of_ms=NOW_MS))
    filled = [ResultIn("2-0", result("p-1", executed=True, reduce_only=False))]
    book.feed(filled, market(), rules(), NOW_MS + 100)
    down = exchange_down()
    down.as_of_ms = NOW_MS + 10_000
    book.feed([], down, rules(), NOW_MS + 10_000)
    assert book.view.reservations["NEWUSDT"].settling


def test_an_entry_joining_a_settling_reservation_holds_it_again(book):
    send(book, plan("p-1", "NEWUSDT"), market(as_of_ms=NOW_MS))
    filled = [ResultIn("2-0", result("p-1", executed=True, reduce_only=False))]
    book.feed(filled, market(), rules(), NOW_MS + 100)
    d = send(book, plan("p-2", "NEWUSDT"), market(as_of_ms=NOW_MS + 50), NOW_MS + 200)
    assert (d.decision, d.reason) == (R.ALLOW, R.SLOT_ALREADY_HELD)
    res = book.view.reservations["NEWUSDT"]
    assert (res.holders, res.filled_ms) == (1, NOW_MS + 100)
    # Its own rejection leaves the earlier fill still to be seen.
    rejected = [ResultIn("2-1", result("p-2", executed=False, reduce_only=False))]
    book.feed(rejected, market(), rules(), NOW_MS + 300)
    assert book.view.reservations["NEWUSDT"].settling


def test_reservation_ends_after_its_ttl_not_when_the_position_shows(book):
    send(book, plan("p-1", "NEWUSDT"), market(), rl=rules(reservation_ttl_s=60))
    send(book, plan("p-2", "BNBUSDT"), market(), rl=rules(reservation_ttl_s=60))
    book.feed([], market(position("BNBUSDT"), as_of_ms=NOW_MS + 1), rules(), NOW_MS + 1)
    assert set(book.view.reservations) == {"BNBUSDT", "NEWUSDT"}
    after_ttl = NOW_MS + 60_000 + rules().clock_skew_ms
    book.feed([], market(as_of_ms=after_ttl), rules(), after_ttl)
    assert book.view.reservations == {}


def test_a_reservation_past_its_ttl_counts_against_a_view_from_before_it_ran_out(book):
    # Its entry may have filled up to the moment its permit expired with it (the
    # result late or lost): a view from before then need not show the position.
    send(book, plan("p-1", "NEWUSDT"), market(*book_of(2)), rl=rules(reservation_ttl_s=60))
    old_view = market(*book_of(2), as_of_ms=NOW_MS + 59_000)
    d = send(book, plan("p-2", "BNBUSDT"), old_view, NOW_MS + 61_000)
    assert d.reason != R.SLOTS_AVAILABLE and "NEWUSDT" in book.view.reservations


def test_the_plans_own_symbol_and_held_symbols_are_never_targets():
    from rotation_fsm.core.slots import weakest

    positions = [position("AAA", -0.5), position("BBB", -0.4), position("CCC", 0.1)]
    assert weakest(positions, NOW_MS, excluded=frozenset({"AAA"})).symbol == "BBB"
    assert weakest(positions, NOW_MS, excluded=frozenset({"AAA", "BBB"})).symbol == "CCC"
    assert weakest(positions, NOW_MS, excluded=frozenset({"AAA", "BBB", "CCC"})) is None


def test_a_day_old_position_is_weaker_by_the_penalty():
    young, old = position("AAA", -0.02), position("BBB", 0.02, age_h=25)
    assert old.weakness(NOW_MS) == pytest.approx(-0.02 + 0.05)
    from rotation_fsm.core.slots import weakest

    assert weakest([young, old], NOW_MS, excluded=frozenset()).symbol == "BBB"


def test_threshold_keeps_a_stronger_entry(book):
    send(book, plan("p-0", "SOLUSDT", confidence=0.8), market(*book_of(2)))
    # SOL is filled and now the weakest, in a view as of after its fill
    full = market(*book_of(2), position("SOLUSDT", -0.9), as_of_ms=NOW_MS + 1_000)
    book.feed([ResultIn("1-1", result("p-0", reduce_only=False))], full, rules(), NOW_MS)
    weak = send(book, plan("p-1", "NEWUSDT", confidence=0.9), full, NOW_MS + 1)
    assert weak.reason == R.NO_ROTATION_CANDIDATE  # 0.9 < 1.15 × 0.8
    strong = send(book, plan("p-2", "NEWUSDT", confidence=0.93), full, NOW_MS + 2)
    assert strong.reason == R.WAITING_ROTATION_CLOSE


def test_a_taken_short_close_id_falls_back_to_the_full_plan_id(book):
    _, first = start_rotation(book, plan_id="samepfx-AAAA")
    book.feed([ResultIn("9-0", result(first.close_plan_id))], market(), rules(), NOW_MS + 5)
    positions = [p for p in book_of(3) if p.symbol != first.close_symbol]
    positions.append(position(first.close_symbol, -0.9))  # the same symbol is weakest again
    d = send(book, plan("samepfx-BBBB", "BNBUSDT"), market(*positions), NOW_MS + 10)
    second = book.view.rotations[d.rotation_id]
    assert second.close_plan_id == f"rot_samepfx-BBBB_{first.close_symbol}"


def test_slots_disabled_allows_everything_untouched(book):
    d = send(book, plan(), exchange_down(), rl=rules(slots_enabled=False))
    assert (d.decision, d.reason) == (R.ALLOW, R.SLOTS_DISABLED)


def test_permits_off_means_decisions_only(book):
    send(book, plan(), market(), rl=rules(issue_permits=False))
    assert book.permits == {} and book.decisions[-1].decision == R.ALLOW


def test_a_bad_entry_is_dead_lettered_with_its_bytes(book):
    bad = BadIn("plans", "7-0", [(b"symbol", b"\xff"), (b"error", b"x")], "invalid UTF-8")
    book.feed([bad], market(), rules(), NOW_MS)
    (dl,) = book.dead_letters
    entry = dl.entry()
    assert entry[b"symbol"] == b"\xff" and entry[b"orig_error"] == b"x"
    assert entry[b"error"] == b"invalid UTF-8" and entry[b"entry_id"] == b"7-0"


def test_no_candidate_when_every_position_is_held(book):
    mkt = market(*book_of(3))
    rl = rules(max_concurrent_rotations=5)
    ids = [f"plan{i}xxxx" for i in range(4)]
    syms = ["NEWUSDT", "BNBUSDT", "AVAXUSDT", "LINKUSDT"]
    book.feed([PlanIn(f"1-{i}", plan(ids[i], syms[i])) for i in range(4)], mkt, rl, NOW_MS)
    assert book.last_decision(ids[3]).reason == R.NO_ROTATION_CANDIDATE
    assert len({c["symbol"] for c in book.close_plans}) == 3


def test_a_plan_for_the_symbol_being_rotated_out_waits(book):
    mkt, rot = start_rotation(book)
    d = send(book, plan("planCCCC-3", rot.close_symbol), mkt, NOW_MS + 10)
    assert (d.decision, d.reason) == (R.BLOCK, R.ROTATION_IN_PROGRESS)
    assert not book.view.plans["planCCCC-3"].final


def test_a_late_result_of_an_expired_reservation_leaves_the_next_one_alone(book):
    send(book, plan("p-1", "NEWUSDT"), market(), rl=rules(reservation_ttl_s=60))
    later = NOW_MS + 60_000 + rules().clock_skew_ms
    book.feed([], market(as_of_ms=later), rules(), later)  # p-1's reservation ran out
    assert book.view.reservations == {}
    send(book, plan("p-2", "NEWUSDT"), market(as_of_ms=later), later + 1)
    late = [ResultIn("3-0", result("p-1", executed=False, reduce_only=False))]
    book.feed(late, market(as_of_ms=later), rules(), later + 2)
    res = book.view.reservations["NEWUSDT"]
    assert (res.plan_id, res.holders) == ("p-2", 1)


def test_a_redelivered_result_gives_its_share_back_once(book):
    send(book, plan("p-1"), market())
    send(book, plan("p-2"), market())
    done = [ResultIn("2-0", result("p-1", executed=False, reduce_only=False))]
    book.feed(done, market(), rules(), NOW_MS + 1)
    book.feed(done, market(), rules(), NOW_MS + 2)  # the same entry again
    assert book.view.reservations["NEWUSDT"].holders == 1


def test_a_view_older_than_one_already_decided_on_is_refused(book):
    # One replica decided on a view where ETHUSDT had closed, and gave its slot away;
    # another still holds a view from before that close. Its add "into" ETHUSDT would
    # reopen a slot that is no longer there, so it must not decide on that view.
    btc, eth = book_of(2)
    newer = market(btc, as_of_ms=NOW_MS + 500)
    assert send(book, plan("p-1", "NEWUSDT"), newer).reason == R.SLOTS_AVAILABLE
    assert book.view.view_as_of_ms == NOW_MS + 500
    older = market(btc, eth, as_of_ms=NOW_MS + 100)
    d = send(book, plan("p-2", eth.symbol), older, NOW_MS + 600)
    assert (d.decision, d.reason) == (R.BLOCK, R.POSITIONS_UNAVAILABLE)


def test_a_view_as_new_as_the_books_mark_is_used(book):
    (btc,) = book_of(1)
    send(book, plan("p-1", "NEWUSDT"), market(btc, as_of_ms=NOW_MS + 500))
    d = send(book, plan("p-2", btc.symbol), market(btc, as_of_ms=NOW_MS + 500), NOW_MS + 600)
    assert (d.decision, d.reason) == (R.ALLOW, R.SLOT_ALREADY_HELD)
