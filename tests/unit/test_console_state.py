"""The console's pure helpers: slot cells, entry-id clocks, the story's diagram."""

from rotation_fsm.web.state import (
    _decision_row,
    entry_ms,
    mark_resends,
    slot_cells,
    story_diagram,
)


def slots(**kw):
    base = {
        "desired": 4,
        "open": ["BTCUSDT", "ETHUSDT", "SOLUSDT"],
        "reserved": ["ETHUSDT", "NEWUSDT"],
        "rotation_targets": ["SOLUSDT"],
        "positions": [
            {"symbol": "BTCUSDT", "pnl_pct": 0.01, "weakness": -0.01},
            {"symbol": "ETHUSDT", "pnl_pct": -0.02, "weakness": 0.02},
            {"symbol": "SOLUSDT", "pnl_pct": -0.05, "weakness": 0.05},
        ],
    }
    return {**base, **kw}


def test_cells_show_open_weakest_first_then_entries_then_free():
    cells = slot_cells(slots(desired=6))
    assert [(c["kind"], c.get("symbol")) for c in cells] == [
        ("closing", "SOLUSDT"),  # open, and the target of a rotation in flight
        ("open", "ETHUSDT"),  # reserved too: counted once
        ("open", "BTCUSDT"),
        ("inflight", "NEWUSDT"),
        ("free", None),
        ("free", None),
    ]
    assert cells[0]["weakness"] == 0.05 and not any(c["over"] for c in cells)


def test_cells_beyond_the_desired_slots_are_marked_over():
    cells = slot_cells(slots(desired=2))
    assert [c["over"] for c in cells] == [False, False, True, True]


def test_no_snapshot_no_cells():
    assert slot_cells(None) == [] and slot_cells(slots(desired=None)) == []


def test_latency_is_decision_entry_minus_plan_entry():
    row = _decision_row("1700000000250-0", {"plan_id": "p", "entry_id": "1700000000100-3"})
    assert (row["latency_ms"], row["time_ms"]) == (150, 1700000000250)
    assert _decision_row("5-0", {"plan_id": "p"})["latency_ms"] is None
    assert entry_ms("not-an-id") == 0


def test_a_plans_story_draws_its_newest_rotation():
    rotation = {
        "state": "TIMED_OUT",
        "history": [
            [1, "lock", "LOCKED"],
            [1, "emit_close", "CLOSE_EMITTED"],
            [9, "timeout", "TIMED_OUT"],
        ],
    }
    svg = story_diagram({"kind": "plan", "rotations": [rotation]})
    assert 'class="state final current" data-state="TIMED_OUT"' in svg
    assert story_diagram({"kind": "plan", "rotations": []}) is None
    assert story_diagram({"kind": "plan", "rotations": [{"state": "NOPE", "history": []}]}) is None


def test_a_plan_decided_again_on_the_page_is_marked_a_resend():
    rows = [{"plan_id": p} for p in ("b", "a", "c", "a")]  # newest first
    assert [r["resend"] for r in mark_resends(rows)] == [False, True, False, False]
