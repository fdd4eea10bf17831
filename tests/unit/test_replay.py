"""Replay of hand-recorded audit batches through today's core: pure, no Redis.

A `Recorder` does what `BookEngine.handle` does around the core — copy the view
into a seed, decide, build the audit entry — so the history it records is the
shape the engine appends to the audit stream.
"""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import pytest

from rotation_fsm.core import reasons as R
from rotation_fsm.core.audit import SettingChange, batch_entry, parse_entry, seed_of, setting_entry
from rotation_fsm.core.decide import (
    Abort,
    BookView,
    Input,
    Market,
    PlanIn,
    ResultIn,
    Tick,
    decide_batch,
)
from rotation_fsm.core.settings import Rules
from rotation_fsm.tools.replay import (
    Recorded,
    Unreadable,
    command,
    dump_record,
    pair_rows,
    parse_dump,
    render_json,
    render_text,
    replay,
    stream_bound,
)
from tests.stubs import NOW_MS, UNIVERSE, book_of, market, plan, result, rules

TTL_S = 2.0


class Recorder:
    """The engine's commit step without Redis: seed, decide, audit entry."""

    def __init__(self, base: Rules) -> None:
        self.view = BookView(policy_raw=json.dumps(UNIVERSE))
        self.rules = base
        self.entries: list[Recorded] = []
        self.seq = 0

    def commit(self, inputs: list[Input], mkt: Market, now_ms: int) -> list[list[str]]:
        seed = seed_of(self.view)
        # Like `Store.load`, a batch reads only its own plans' records.
        wanted = {i.plan.plan_id for i in inputs if isinstance(i, PlanIn)}
        seed.plans = {k: v for k, v in seed.plans.items() if k in wanted}
        effects = decide_batch(inputs, self.view, mkt, self.rules, now_ms)
        emit = batch_entry(inputs, seed, mkt, self.rules, now_ms, effects)
        self.entries.append(Recorded(self._next_id(now_ms), parse_entry(emit.fields)))
        return [row for row in parse_entry(emit.fields).decided]  # type: ignore[union-attr]

    def setting(self, now_ms: int, key: str, new: str) -> None:
        change = SettingChange(now_ms=now_ms, key=key, old=None, new=new, by="ops")
        self.entries.append(Recorded(self._next_id(now_ms), parse_entry(setting_entry(change))))

    def _next_id(self, now_ms: int) -> str:
        self.seq += 1
        return f"{now_ms}-{self.seq}"


def recorded_run() -> list[Recorded]:
    """A free-slot allow, a confirmed rotation, and a rotation that times out."""
    rec = Recorder(rules(lock_ttl_s=TTL_S))
    two, t = market(*book_of(2)), NOW_MS
    rec.commit([PlanIn(f"{t}-0", plan("p-free", "NEWUSDT"))], two, t)  # 2 open + 1 = 3 (CHOP)
    full = market(*book_of(3))
    rows = rec.commit([PlanIn(f"{t + 100}-0", plan("p-rot1", "BNBUSDT"))], full, t + 100)
    assert rows[0][2] == R.WAITING_ROTATION_CLOSE
    rot1 = rows[0][3]
    close1 = rec.view.rotations[rot1].close_plan_id
    rec.commit([ResultIn(f"{t + 500}-0", result(close1))], Market(), t + 500)
    rows = rec.commit([PlanIn(f"{t + 600}-0", plan("p-rot2", "AVAXUSDT"))], full, t + 600)
    rot2 = rows[0][3]
    deadline = rec.view.rotations[rot2].deadline_ms
    rec.commit([Tick(rot2)], Market(), deadline + 50)
    return rec.entries


def test_an_unchanged_history_replays_identically():
    report = replay(recorded_run(), env={})
    assert report.identical and report.batches == 5
    assert report.recorded_decisions == report.replayed_decisions == 5
    states = sorted(t.record.state for t in report.rotations.values())
    assert states == ["CONFIRMED", "TIMED_OUT"]


def test_a_rule_from_the_environment_overrides_the_recorded_one_and_diverges():
    report = replay(recorded_run(), env={"GOV_ACTIVE_SLOTS_CHOP": "1"})
    assert not report.identical
    assert report.overrides == {"GOV_ACTIVE_SLOTS_CHOP": "1"}
    first = report.divergences[0]
    assert first.plan_id == "p-free"
    assert first.recorded is not None and first.recorded[1:3] == [R.ALLOW, R.SLOTS_AVAILABLE]
    assert first.replayed is not None and first.replayed[2] == R.WAITING_ROTATION_CLOSE
    named = {d.plan_id for d in report.divergences}
    assert {"p-free", "p-rot1", "p-rot2"} <= named


def test_environment_variables_that_are_not_rules_change_nothing():
    report = replay(recorded_run(), env={"REDIS_URL": "redis://elsewhere", "PATH": "/bin"})
    assert report.identical and report.overrides == {}


def test_a_replay_only_rotation_times_out_on_the_virtual_clock():
    report = replay(recorded_run(), env={"GOV_ACTIVE_SLOTS_CHOP": "1"})
    only = [t for t in report.rotations.values() if t.replay_only]
    assert only and only[0].record.new_plan_id == "p-free"
    assert only[0].record.state == "TIMED_OUT"
    assert report.virtual_ticks >= 1
    assert any(d.note == "virtual timer" for d in report.divergences)


def test_output_is_byte_identical_for_the_same_input():
    entries = recorded_run()
    for env in ({}, {"GOV_ACTIVE_SLOTS_CHOP": "1"}):
        assert render_text(replay(entries, env)) == render_text(replay(recorded_run(), env))
        assert render_json(replay(entries, env)) == render_json(replay(recorded_run(), env))


def test_the_timeline_lists_state_changes_events_and_decisions_in_order():
    text = render_text(replay(recorded_run(), env={}))
    lock = text.index("IDLE → LOCKED (lock)")
    emitted = text.index("LOCKED → CLOSE_EMITTED (emit_close)")
    created = text.index("event ROTATION_LOCK_CREATED")
    confirmed = text.index("CLOSE_EMITTED → CONFIRMED (confirm)")
    assert lock < emitted < created < confirmed
    assert "ALLOW p-rot1: rotation_complete" in text
    assert "event ROTATION_TIMEOUT (lock age" in text
    assert text.rstrip().endswith("identical: all 5 recorded decisions replayed the same")


def test_a_replay_may_start_mid_history():
    entries = recorded_run()
    report = replay(entries[2:], env={})  # from the confirming result on
    assert report.identical and report.batches == 3


def test_a_mid_history_replay_knows_plans_decided_before_its_window():
    rec = Recorder(rules())
    mkt = market(*book_of(1))
    rec.commit([PlanIn(f"{NOW_MS}-0", plan("p-early", "NEWUSDT"))], mkt, NOW_MS)
    rec.commit([PlanIn(f"{NOW_MS + 10}-0", plan("p-other", "BNBUSDT"))], mkt, NOW_MS + 10)
    rows = rec.commit([PlanIn(f"{NOW_MS + 20}-0", plan("p-early", "NEWUSDT"))], mkt, NOW_MS + 20)
    assert rows[0][2] == R.SLOTS_AVAILABLE  # a resend gets the final answer again
    report = replay(rec.entries[1:], env={})  # the window starts after p-early's decision
    assert report.identical, report.divergences


def test_setting_changes_are_listed_and_do_not_count_as_batches():
    rec = Recorder(rules())
    rec.setting(NOW_MS - 10, "GOV_ACTIVE_SLOTS_CHOP", "5")
    rec.commit([PlanIn(f"{NOW_MS}-0", plan("p-1"))], market(*book_of(1)), NOW_MS)
    report = replay(rec.entries, env={})
    assert report.batches == 1 and report.identical
    assert "GOV_ACTIVE_SLOTS_CHOP" in render_text(report)


def test_an_abort_of_a_rotation_replay_never_started_is_refused_not_raised():
    rec = Recorder(rules())
    rows = rec.commit([PlanIn(f"{NOW_MS}-0", plan("p-rot"))], market(*book_of(3)), NOW_MS)
    rec.commit([Abort(rows[0][3], by="ops")], Market(), NOW_MS + 10)
    report = replay(rec.entries, env={"GOV_ACTIVE_SLOTS_CHOP": "4"})  # room: no rotation
    notes = [d.note for d in report.divergences]
    assert any(n.startswith("abort refused: no rotation") for n in notes)


def test_pairing_matches_rows_by_plan_not_by_position():
    old = [["a", "ALLOW", "x", ""], ["b", "BLOCK", "y", ""]]
    new = [["extra", "ALLOW", "z", ""], ["a", "ALLOW", "x", ""], ["b", "BLOCK", "y", ""]]
    assert pair_rows(old, new) == [("extra", None, ["extra", "ALLOW", "z", ""])]


# ---------------------------------------------------------------- the file and the command


def write_dump(path: Path, entries: list[Recorded]) -> None:
    lines = []
    for r in entries:
        kind = "setting" if isinstance(r.entry, SettingChange) else "batch"
        body = json.dumps(json.loads(_body(r)))
        lines.append(dump_record("audit", r.entry_id, {"kind": kind, "body": body}))
    lines.append(dump_record("plans", f"{NOW_MS}-0", {"plan_id": "p-free"}))
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")


def _body(r: Recorded) -> str:
    import msgspec

    return msgspec.json.encode(r.entry).decode()


def args_for(file: Path, *, as_json: bool = False) -> Namespace:
    return Namespace(
        command="replay",
        file=str(file),
        redis_url=None,
        book="",
        json=as_json,
        since="-",
        until="+",
    )


def test_replay_of_a_dump_file_exits_0_when_identical(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GOV_ACTIVE_SLOTS_CHOP", raising=False)
    path = tmp_path / "run.jsonl"
    write_dump(path, recorded_run())
    assert command(args_for(path)) == 0
    assert "identical" in capsys.readouterr().out


def test_replay_of_a_dump_file_exits_1_on_divergence(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GOV_ACTIVE_SLOTS_CHOP", "1")
    path = tmp_path / "run.jsonl"
    write_dump(path, recorded_run())
    assert command(args_for(path, as_json=True)) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["identical"] is False and out["divergences"][0]["plan_id"] == "p-free"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"stream": "audit", "id": "1-0", "fields": {"kind": "batch", "body": "{"}}\n',
            "does not decode",
        ),
        ("not json at all\n", "not JSON"),
        ('{"stream": "audit", "id": "x", "fields": {}}\n', "bad entry id"),
        ('{"stream": "audit", "id": "1-0", "fields": {"kind": "batch"}}\n', "no body"),
        ("[1, 2]\n", "not a dump record"),
    ],
)
def test_an_unreadable_line_exits_2_naming_the_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"stream": "plans", "id": "1-0", "fields": {}}\n' + content)
    assert command(args_for(path)) == 2
    err = capsys.readouterr().err
    assert message in err and f"{path}:2" in err and err.count("\n") == 1


def test_a_missing_file_exits_2(tmp_path, capsys):
    assert command(args_for(tmp_path / "nope.jsonl")) == 2
    assert "cannot read" in capsys.readouterr().err


def test_a_bad_override_exits_2_naming_the_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GOV_ACTIVE_SLOTS_CHOP", "many")
    path = tmp_path / "run.jsonl"
    write_dump(path, recorded_run())
    assert command(args_for(path)) == 2
    assert "GOV_ACTIVE_SLOTS_CHOP" in capsys.readouterr().err


def test_invalid_utf8_is_kept_as_base64_in_a_dump():
    line = dump_record("plans", b"1-0", {b"plan_id": b"p", b"symbol": b"\xff\xfe"})
    assert line["encoding"] == "base64"
    assert line["fields"] == {"cGxhbl9pZA==": "cA==", "c3ltYm9s": "//4="}


def test_a_non_utf8_audit_line_is_unreadable():
    line = dump_record("audit", b"1-0", {b"kind": b"batch", b"body": b"\xff"})
    with pytest.raises(Unreadable, match="not UTF-8"):
        parse_dump([json.dumps(line)], "f")


def test_range_bounds_accept_ids_ms_and_iso_times():
    assert stream_bound("-") == "-" and stream_bound("1770135000000-3") == "1770135000000-3"
    assert stream_bound("2026-02-03T16:10:00Z") == "1770135000000"
    assert stream_bound("2026-02-03T16:10:00") == "1770135000000"  # no zone: UTC
    with pytest.raises(Unreadable):
        stream_bound("yesterday")


def test_a_dump_range_selects_audit_entries_by_id():
    entries = recorded_run()
    lines = [
        json.dumps(dump_record("audit", r.entry_id, {"kind": "batch", "body": _body(r)}))
        for r in entries
    ]
    picked = parse_dump(lines, "f", since=str(NOW_MS + 100), until=str(NOW_MS + 500))
    assert [r.entry_id for r in picked] == [e.entry_id for e in entries[1:3]]


# ---------------------------------------------------------------- explain's numbers


def test_explain_sees_what_earlier_entries_of_the_same_batch_did():
    from rotation_fsm.tools.explain import because, moments

    rec = Recorder(rules())
    two = market(*book_of(2))
    inputs: list[Input] = [
        PlanIn(f"{NOW_MS}-0", plan("p-first", "NEWUSDT")),
        PlanIn(f"{NOW_MS}-1", plan("p-second", "BNBUSDT")),
    ]
    rec.commit(inputs, two, NOW_MS)
    batch = rec.entries[0].entry
    assert not isinstance(batch, SettingChange)
    (m,) = moments(rec.entries[0].entry_id, batch, "p-second")
    assert m.facts["reserved"] == ["NEWUSDT"] and m.facts["free"] == 0
    assert m.recorded[2] == R.WAITING_ROTATION_CLOSE
    text = " ".join(because(m, None))
    assert "has 0 klines (fewer than 50): regime UNKNOWN" in text
    assert "Occupied 3: open BTCUSDT, ETHUSDT; reserved NEWUSDT" in text
    assert "closes ETHUSDT (weakness 0.0100, pnl -1.00%)" in text


def test_explain_gives_the_threshold_numbers_of_a_refused_rotation():
    from rotation_fsm.tools.explain import because, moments

    rec = Recorder(rules(rotation_threshold=0.5))
    rec.view.entry_confidence = {s.symbol: 0.8 for s in book_of(3)}
    rows = rec.commit(
        [PlanIn(f"{NOW_MS}-0", plan("p-weak", confidence=1.0))], market(*book_of(3)), NOW_MS
    )
    assert rows[0][2] == R.NO_ROTATION_CANDIDATE
    batch = rec.entries[0].entry
    assert not isinstance(batch, SettingChange)
    (m,) = moments(rec.entries[0].entry_id, batch, "p-weak")
    text = " ".join(because(m, None))
    assert "entered at confidence 0.8, and this plan's 1 is below (1 + 0.5) × 0.8 = 1.2" in text


def test_explain_tells_a_plan_for_a_symbol_being_rotated_out_why_it_waits():
    from rotation_fsm.tools.explain import because, moments

    rec = Recorder(rules())
    full = market(*book_of(3))
    rows = rec.commit([PlanIn(f"{NOW_MS}-0", plan("p-rot"))], full, NOW_MS)
    target = rec.view.rotations[rows[0][3]].close_symbol
    rec.commit([PlanIn(f"{NOW_MS + 5}-0", plan("p-same", target))], full, NOW_MS + 5)
    batch = rec.entries[1].entry
    assert not isinstance(batch, SettingChange)
    (m,) = moments(rec.entries[1].entry_id, batch, "p-same")
    assert m.recorded[2] == R.ROTATION_IN_PROGRESS
    assert f"{target} is still open but a rotation in flight is closing it" in " ".join(
        because(m, None)
    )
