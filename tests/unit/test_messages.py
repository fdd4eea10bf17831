"""Parsing stream entries: every bad entry gets a reason naming the field."""

import json

import pytest

from rotation_fsm.core.messages import (
    BadEntry,
    RotationRecord,
    parse_plan,
    parse_result,
    rotation_from_hash,
    rotation_to_hash,
)

GOOD = {b"plan_id": b"p-1", b"symbol": b"BTCUSDT", b"decision": b"EXECUTE"}


def test_plan_with_strings_for_everything_parses():
    plan = parse_plan(
        {
            **GOOD,
            b"qty": b"0.5",
            b"reduceOnly": b"TRUE",
            b"confidence": b"1e-1",
            b"unknown": b"kept-and-ignored",
        }
    )
    assert plan.qty == 0.5 and plan.reduce_only is True and plan.confidence == 0.1


@pytest.mark.parametrize("word", ["true", "True", "TRUE", "1"])
def test_true_spellings(word):
    assert parse_plan({**GOOD, b"reduceOnly": word.encode()}).is_close


@pytest.mark.parametrize("word", ["false", "False", "0"])
def test_false_spellings(word):
    assert not parse_plan({**GOOD, b"reduceOnly": word.encode()}).reduce_only


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({b"plan_id": None}, "plan_id"),
        ({b"symbol": b""}, "symbol"),
        ({b"decision": None}, "decision"),
        ({b"qty": b"abc"}, "qty"),
        ({b"qty": b"nan"}, "qty"),
        ({b"kill_score": b"inf"}, "kill_score"),
        ({b"timestamp": b""}, "timestamp"),
        ({b"confidence": b"-Infinity"}, "confidence"),
        ({b"reduceOnly": b"yes"}, "reduceOnly"),
        ({b"symbol": b"\xff\xfe"}, "symbol"),
    ],
)
def test_bad_plan_names_the_field(change, named):
    fields = {**GOOD, **{k: v for k, v in change.items() if v is not None}}
    for k, v in change.items():
        if v is None:
            fields.pop(k)
    with pytest.raises(BadEntry) as err:
        parse_plan(fields)
    assert named in str(err.value)


def test_close_actions_are_closes():
    for action in ("FULL_CLOSE_PROPOSED", "PARTIAL_75", "PARTIAL_50", "PARTIAL_25"):
        assert parse_plan({**GOOD, b"action": action.encode()}).is_close
    assert not parse_plan({**GOOD, b"action": b"OPEN_LONG"}).is_close


def test_result_requires_executed():
    with pytest.raises(BadEntry, match="executed"):
        parse_result({b"plan_id": b"r", b"symbol": b"S"})
    result = parse_result(
        {b"plan_id": b"r", b"symbol": b"S", b"executed": b"false", b"error": b"insufficient margin"}
    )
    assert result.executed is False and result.error == "insufficient margin"


def _rotation(steps: int) -> RotationRecord:
    return RotationRecord(
        rotation_id="a1b2c3d4e5f67890@1700000000000",
        state="CLOSE_EMITTED",
        version=steps,
        new_plan_id="a1b2c3d4e5f67890",
        new_symbol="NEWUSDT",
        new_action="OPEN_LONG",
        new_confidence=0.9,
        close_symbol="OLDUSDT",
        close_plan_id="rot_a1b2c3d4_OLDUSDT",
        close_weakness=0.05,
        created_ms=1_700_000_000_000,
        deadline_ms=1_700_000_120_000,
        updated_ms=1_700_000_000_000,
        regime="CHOP",
        desired_slots=3,
        history=[[1_700_000_000_000 + i, "extend", "CLOSE_EMITTED"] for i in range(steps)],
    )


def test_every_rotation_hash_field_fits_a_compact_redis_hash() -> None:
    # Redis keeps a hash as a listpack only while each value is ≤ 64 bytes
    # (hash-max-listpack-value): a long history must not turn it into a hashtable.
    fields = rotation_to_hash(_rotation(steps=6))
    assert max(len(v.encode()) for v in fields.values()) <= 64
    assert rotation_from_hash(fields) == _rotation(steps=6)


def test_a_rotation_hash_with_the_history_in_one_field_is_still_read() -> None:
    fields = rotation_to_hash(_rotation(steps=3))
    steps = [json.loads(fields.pop(f"history.{i}")) for i in range(3)]
    fields["history"] = json.dumps(steps)
    assert rotation_from_hash(fields) == _rotation(steps=3)
