"""Message schemas: stream entries in, decisions/events/close plans out, records kept.

Stream fields are all strings; `parse_plan` / `parse_result` turn one raw entry
(bytes, as read) into a struct or raise `BadEntry` with a message naming the
field and value. Output structs turn into flat string fields for XADD with
`to_fields` (None omitted, bools spelled `true`/`false`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

from .errors import RotationFsmError
from .settings import parse_bool

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]

CLOSE_ACTIONS = frozenset({"FULL_CLOSE_PROPOSED", "PARTIAL_75", "PARTIAL_50", "PARTIAL_25"})
# Which fields must be finite numbers / contract booleans when present, per kind.
PLAN_NUMBERS = ("qty", "kill_score", "confidence", "timestamp")
PLAN_BOOLS = ("reduceOnly", "rotation_trigger")
RESULT_NUMBERS = ("filled_qty", "timestamp")
RESULT_BOOLS = ("executed", "reduceOnly")


# The largest quantity an OPEN plan may ask for: beyond 2^53 a float has no whole lot
# steps, and no market trades that much, so such a plan is a producer's error.
MAX_QTY = float(2**53)


class BadEntry(RotationFsmError, ValueError):
    """A stream entry that cannot be used; goes to the dead-letter stream."""


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """An entry of the plan stream (contract §2)."""

    plan_id: NonEmpty
    symbol: NonEmpty
    decision: NonEmpty
    action: str = ""
    side: str = ""
    qty: float | None = None
    reduce_only: bool = msgspec.field(default=False, name="reduceOnly")
    kill_score: float | None = None
    timestamp: float | None = None
    confidence: float | None = None
    rotation_trigger: bool = False
    new_symbol: str = ""
    new_plan_id: str = ""
    source: str = ""

    @property
    def is_execute(self) -> bool:
        return self.decision == "EXECUTE"

    @property
    def is_close(self) -> bool:
        return self.reduce_only or self.action in CLOSE_ACTIONS

    @property
    def qty_orderable(self) -> bool:
        """No quantity, or one above 0 and at most `MAX_QTY` (parsing has already
        dead-lettered a quantity that is not a finite number)."""
        return self.qty is None or 0 < self.qty <= MAX_QTY


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """An entry of the result stream (contract §2)."""

    plan_id: NonEmpty
    symbol: NonEmpty
    executed: bool
    reduce_only: bool = msgspec.field(default=False, name="reduceOnly")
    error: str = ""
    order_status: str = ""
    filled_qty: float | None = None
    timestamp: float | None = None


class EntryFields(dict[bytes, bytes]):
    """A stream entry's fields as read. Redis keeps every field an XADD wrote, also a
    name written twice; a dict keeps only the last value, so the names written more
    than once are kept in `repeated`, and every pair as written in `pairs`."""

    repeated: tuple[bytes, ...] = ()
    pairs: tuple[tuple[bytes, bytes], ...] = ()


def entry_fields(flat: list[bytes] | None) -> EntryFields:
    """`[name, value, name, value, …]` (one entry as Redis sends it) as EntryFields."""
    fields = EntryFields(zip(flat[::2], flat[1::2], strict=True)) if flat else EntryFields()
    if flat and len(fields) * 2 != len(flat):
        names = flat[::2]
        fields.repeated = tuple(sorted({n for n in names if names.count(n) > 1}))
        fields.pairs = tuple(zip(flat[::2], flat[1::2], strict=True))
    return fields


def stream_reply(response: Any, **options: Any) -> list[list[Any]]:
    """An XREAD/XREADGROUP reply (RESP2 list or RESP3 map) as redis-py gives it,
    `[[stream, [(id, fields), …]], …]`, with each entry's fields as `EntryFields`
    (redis-py's own parser drops a repeated field name without a trace)."""
    if not response:
        return []
    items = response.items() if isinstance(response, dict) else response
    return [[stream, _stream_entries(entries)] for stream, entries in items]


def autoclaim_reply(response: Any, **options: Any) -> list[Any]:
    """An XAUTOCLAIM reply, its entries' fields as `EntryFields`."""
    return [response[0], _stream_entries(response[1]), *response[2:]]


def _stream_entries(entries: list[Any] | None) -> list[tuple[Any, EntryFields | None]]:
    return [
        (e[0], entry_fields(e[1]) if e[1] is not None else None) if e is not None else (None, None)
        for e in entries or []
    ]


def repeated_names_error(fields: Mapping[Any, Any]) -> str | None:
    """Why an entry that wrote a field name twice cannot be decided (it is not clear
    which value its producer meant), or None."""
    repeated = getattr(fields, "repeated", ())
    if not repeated:
        return None
    return "field names written more than once: " + ", ".join(
        repr(as_text(n, "replace")) for n in repeated
    )


#: a stream entry's or a hash's fields as redis-py returns them (bytes, or text when
#: the client decodes responses)
RawFields = Mapping[bytes, bytes] | Mapping[str, str] | Mapping[bytes | str, bytes | str]


def decode_fields(raw: RawFields) -> dict[str, str]:
    """Decode one entry's fields strictly as UTF-8; raise BadEntry naming the field."""
    out: dict[str, str] = {}
    for key, value in raw.items():
        try:
            name = key.decode() if isinstance(key, bytes) else key
        except UnicodeDecodeError:
            raise BadEntry(f"invalid UTF-8 in a field name: {key!r}") from None
        try:
            out[name] = value.decode() if isinstance(value, bytes) else value
        except UnicodeDecodeError:
            raise BadEntry(f"invalid UTF-8 in field {name!r}: {value!r}") from None
    return out


def _check_scalars(
    fields: dict[str, str], numbers: tuple[str, ...], bools: tuple[str, ...]
) -> dict[str, Any]:
    """Numbers must be finite and booleans one of the contract's spellings."""
    checked: dict[str, Any] = dict(fields)
    for name in numbers:
        if name in fields:
            try:
                number = float(fields[name])
            except ValueError:
                raise BadEntry(f"field {name!r} is not a number: {fields[name]!r}") from None
            if not math.isfinite(number):
                raise BadEntry(f"field {name!r} is not a finite number: {fields[name]!r}")
            checked[name] = number
    for name in bools:
        if name in fields:
            try:
                checked[name] = parse_bool(fields[name], strip=False)
            except ValueError:
                raise BadEntry(f"field {name!r} is not a boolean: {fields[name]!r}") from None
    return checked


def _convert(
    fields: dict[str, str], kind: type[Any], numbers: tuple[str, ...], bools: tuple[str, ...]
) -> Any:
    try:
        return msgspec.convert(_check_scalars(fields, numbers, bools), kind, strict=False)
    except msgspec.ValidationError as exc:
        raise BadEntry(_friendly(str(exc), fields)) from None


def _friendly(message: str, fields: dict[str, str]) -> str:
    # msgspec says "Object missing required field `plan_id`" or "... - at `$.symbol`";
    # add the offending value so the dead letter explains itself.
    if "- at `$." in message:
        name = message.rsplit("`$.", 1)[1].rstrip("`")
        return f"{message} (value {fields.get(name)!r})"
    return message


def parse_plan(raw: dict[bytes, bytes] | dict[str, str]) -> Plan:
    """A plan from one raw stream entry, or BadEntry."""
    plan: Plan = _convert(decode_fields(raw), Plan, PLAN_NUMBERS, PLAN_BOOLS)
    return plan


def parse_result(raw: dict[bytes, bytes] | dict[str, str]) -> Result:
    """A result from one raw stream entry, or BadEntry."""
    result: Result = _convert(decode_fields(raw), Result, RESULT_NUMBERS, RESULT_BOOLS)
    return result


# ---------------------------------------------------------------- outputs


def to_fields(struct: msgspec.Struct) -> dict[str, str]:
    """Flat string fields for XADD: None dropped, bools as true/false, floats repr'd."""
    out: dict[str, str] = {}
    for name, value in msgspec.structs.asdict(struct).items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        else:
            out[name] = str(value)
    return out


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of the decision stream (contract §3)."""

    plan_id: str
    symbol: str
    action: str
    decision: str  # ALLOW | BLOCK
    reason: str
    regime: str
    desired_slots: int
    open_slots: int
    timestamp: str
    rotation_id: str | None = None
    entry_id: str | None = None


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of the governor event stream (contract §3)."""

    event: str
    new_symbol: str
    new_plan_id: str
    close_symbol: str
    close_plan_id: str
    timestamp: str
    rotation_id: str
    state: str
    lock_age: str | None = None
    old_deadline: str | None = None
    new_deadline: str | None = None
    by: str | None = None


class ClosePlan(msgspec.Struct, frozen=True, kw_only=True):
    """The close plan a rotation appends to the plan stream (contract §3)."""

    plan_id: str
    symbol: str
    action: str
    side: str
    qty: str
    reduceOnly: str
    decision: str
    source: str
    kill_score: str
    rotation_trigger: str
    new_symbol: str
    new_plan_id: str
    timestamp: str
    rotation_id: str


# ---------------------------------------------------------------- records


class Reservation(msgspec.Struct, frozen=True, kw_only=True):
    """A symbol's slot held for allowed entries on their way (contract §3a, amended).

    `plan_id` is the entry that made it; `holders` counts every allowed entry holding
    it (each has a `Hold` record naming this reservation). It ends at `until_ms` (the
    latest holder's TTL), or once nobody holds it and no fill is left to be seen.
    A count, not a list: a burst of entries into one symbol must not make each commit
    rewrite and each audit entry copy a list as long as the burst.

    `filled_ms` is when the latest *executed* result of a holder was read. A fill is
    on the exchange before its result is written, but an exchange view taken before
    that moment does not show it: until the engine decides on a view as of a later
    time, the reservation keeps counting ("settling", `holders` 0), so no decision
    made on an older view can hand the filled position's slot to someone else.
    """

    plan_id: str
    until_ms: int
    holders: int = 1
    filled_ms: int = 0

    @property
    def settling(self) -> bool:
        """Nobody holds it any more; it waits for a view that shows the fill."""
        return self.holders <= 0

    def joined(self, until_ms: int) -> Reservation:
        """Held by one more entry, until the later of the two ends."""
        return msgspec.structs.replace(
            self, until_ms=max(self.until_ms, until_ms), holders=max(self.holders, 0) + 1
        )

    def without_one(self, filled_ms: int = 0) -> Reservation | None:
        """Once one holder's result came (`filled_ms` > 0: it was executed, then).

        None when nobody holds it any more and no fill waits to be seen: the slot
        is free at once (a rejected entry opened nothing)."""
        holders = max(self.holders - 1, 0)
        filled = max(self.filled_ms, filled_ms)
        if holders == 0 and filled == 0:
            return None
        return msgspec.structs.replace(self, holders=holders, filled_ms=filled)


class Hold(msgspec.Struct, frozen=True, kw_only=True):
    """One allowed entry's hold on a reservation: `symbol`'s, the one `made_by` made.

    Kept under the entry's plan id until its TTL, so its result can release exactly
    its own share — and never a later reservation of the same symbol."""

    symbol: str
    made_by: str


class PlanRecord(msgspec.Struct, kw_only=True):
    """What the engine decided for one plan id (the idempotency record).

    `final` decisions are answered again unchanged; `rotation_id` with
    `final=False` means the plan waits on that rotation. `entries` remembers
    which stream entries were answered, so a redelivery writes nothing twice.
    """

    plan_id: str
    symbol: str
    action: str = ""
    decision: str = ""
    reason: str = ""
    final: bool = False
    rotation_id: str = ""
    confidence: float | None = None
    regime: str = ""
    desired_slots: int = 0
    entries: list[str] = msgspec.field(default_factory=list)
    decided_ms: int = 0


class RotationRecord(msgspec.Struct, kw_only=True):
    """One rotation, persisted as a Redis hash (one field per attribute)."""

    rotation_id: str
    state: str
    version: int
    new_plan_id: str
    new_symbol: str
    new_action: str
    new_confidence: float | None
    close_symbol: str
    close_plan_id: str
    close_weakness: float
    created_ms: int
    deadline_ms: int
    updated_ms: int
    regime: str
    desired_slots: int
    trigger_entry_id: str = ""
    ended_ms: int = 0
    late_confirmed_ms: int = 0
    history: list[list[Any]] = msgspec.field(default_factory=list)
    # [symbol, pnl, weakness] when it began: only in records of older versions, which
    # copied it; the audit entry that began the rotation holds the snapshot.
    snapshot: list[list[Any]] = msgspec.field(default_factory=list)


_JSON_FIELDS = frozenset({"history", "snapshot"})
_encoder = msgspec.json.Encoder()
#: one hash field per history step, `history.0`, `history.1`…: each stays under Redis's
#: `hash-max-listpack-value` (64 bytes), so the hash keeps the compact listpack
#: encoding; one `history` field of the whole list outgrows it at the third step and
#: makes the hash a hashtable four times the size.
HISTORY_STEP = "history."


def rotation_to_hash(record: RotationRecord) -> dict[str, str]:
    """Hash fields of a rotation record (the history one field per step; lists as
    compact JSON)."""
    out: dict[str, str] = {}
    for name, value in msgspec.structs.asdict(record).items():
        if name == "history":
            for index, step in enumerate(value):
                out[f"{HISTORY_STEP}{index}"] = _encoder.encode(step).decode()
        elif name == "snapshot":
            if value:  # not kept any more (see RotationRecord.snapshot)
                out[name] = _encoder.encode(value).decode()
        elif value is None:
            out[name] = ""
        else:
            out[name] = str(value)
    return out


def rotation_from_hash(raw: RawFields) -> RotationRecord:
    """A rotation record from its hash; raises BadEntry if it is not one.

    Reads the history from its step fields, or from the one `history` field that
    hashes written by earlier versions hold.
    """
    fields = decode_fields(raw)
    data: dict[str, Any] = {}
    steps: dict[int, Any] = {}
    try:
        for name, value in fields.items():
            if name.startswith(HISTORY_STEP):
                steps[int(name[len(HISTORY_STEP) :])] = msgspec.json.decode(value)
            elif name in _JSON_FIELDS:
                data[name] = msgspec.json.decode(value)
            elif name == "new_confidence":
                data[name] = float(value) if value else None
            else:
                data[name] = value
        if steps:
            data["history"] = [steps[i] for i in sorted(steps)]
        record: RotationRecord = msgspec.convert(data, RotationRecord, strict=False)
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
        raise BadEntry(f"rotation record unreadable: {exc}") from None
    return record


plan_record_decoder = msgspec.json.Decoder(PlanRecord)
reservation_decoder = msgspec.json.Decoder(Reservation)
hold_decoder = msgspec.json.Decoder(Hold)


def as_text(value: object, errors: str = "strict") -> str:
    """A Redis reply (or anything) as text: bytes decoded as UTF-8, the rest `str()`."""
    return value.decode(errors=errors) if isinstance(value, bytes) else str(value)


def fields_text(raw: Mapping[Any, Any], errors: str = "strict") -> dict[str, str]:
    """A stream entry's or hash's fields as text (see `as_text`)."""
    return {as_text(k, errors): as_text(v, errors) for k, v in raw.items()}


def as_text_lenient(value: object) -> str:
    """`as_text` for showing and checking: invalid UTF-8 replaced, never raised."""
    return as_text(value, errors="replace")


def lock_body(rec: RotationRecord) -> dict[str, Any]:
    """The seed-compatible lock key's JSON (contract §3) for a rotation in flight."""
    return {
        "new_symbol": rec.new_symbol,
        "new_plan_id": rec.new_plan_id,
        "close_symbol": rec.close_symbol,
        "close_plan_id": rec.close_plan_id,
        "created_at": rec.created_ms / 1000,
        "rotation_id": rec.rotation_id,
        "deadline": rec.deadline_ms / 1000,
    }


def encode_json(value: Any) -> str:
    """Compact JSON text (msgspec), for keys and hash fields."""
    return _encoder.encode(value).decode()
