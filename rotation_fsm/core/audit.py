"""The audit record: what each commit was based on, so history can be replayed.

One `AuditBatch` per commit goes on the audit stream inside the same atomic
commit as the effects it explains. It is self-contained — the parsed inputs,
the part of the book the batch was loaded with, the market snapshot, the rules
in force and what was decided — so `replay` needs nothing but this stream,
even after the trading stack trimmed its plan and result streams.

A body longer than `COMPRESS_BYTES` is stored compressed, in the field `body_z`
(zlib, then base64, so the stream stays text): a batch of 200 plans repeats the
same names and values 200 times and shrinks about twentyfold, which is what keeps
the stream at `GOV_AUDIT_MAXLEN` entries small. `entry_body` reads either form.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from .decide import BookView, Decided, Effect, Emit, Input
from .messages import Hold, PlanRecord, Reservation, RotationRecord
from .settings import Rules
from .snapshot import Market


class ViewSeed(msgspec.Struct, kw_only=True):
    """The book as the batch found it (only what the batch could read)."""

    version: int
    policy_raw: str | None
    reservations: dict[str, Reservation]
    rotations: dict[str, RotationRecord]
    inflight: list[str]
    plans: dict[str, PlanRecord]
    close_index: dict[str, str]
    entry_confidence: dict[str, float]
    holds: dict[str, Hold] = {}  # the holds of the plans whose results the batch read
    view_as_of_ms: int = 0

    def to_view(self) -> BookView:
        """A fresh `BookView` holding this seed (copies: the seed stays as recorded)."""
        copy = msgspec.json.decode(msgspec.json.encode(self), type=ViewSeed)
        return BookView(
            version=copy.version,
            policy_raw=copy.policy_raw,
            reservations=copy.reservations,
            inflight=set(copy.inflight),
            rotations=copy.rotations,
            plans=copy.plans,
            close_index=copy.close_index,
            entry_confidence=copy.entry_confidence,
            holds=copy.holds,
            view_as_of_ms=copy.view_as_of_ms,
        )


class AuditBatch(msgspec.Struct, kw_only=True, tag="batch"):
    """One commit: inputs, what they were decided on, and the decisions made."""

    now_ms: int
    inputs: list[Input]
    seed: ViewSeed
    market: Market
    rules: Rules
    decided: list[list[str]]  # [plan_id, ALLOW|BLOCK, reason, rotation_id]
    by: str = ""


class SettingChange(msgspec.Struct, kw_only=True, tag="setting"):
    """An operator changed a live setting (or paused/resumed entries)."""

    now_ms: int
    key: str
    old: str | None
    new: str | None
    by: str


AuditEntry = AuditBatch | SettingChange
_encode = msgspec.json.Encoder().encode
_decoder: msgspec.json.Decoder[AuditEntry] = msgspec.json.Decoder(AuditEntry)


def seed_of(view: BookView) -> ViewSeed:
    """Copy what `view` holds before a batch changes it."""
    policy = view.policy_raw
    text = policy.decode(errors="replace") if isinstance(policy, bytes) else policy
    # Copies of the maps, not of the records: the core never changes a record in
    # place (it makes a new one with `msgspec.structs.replace`), so the seed keeps
    # what the batch found while the batch puts new records into the view's maps.
    return ViewSeed(
        version=view.version,
        policy_raw=text,
        reservations=dict(view.reservations),
        rotations=dict(view.rotations),
        inflight=sorted(view.inflight),
        plans=dict(view.plans),
        close_index=dict(view.close_index),
        entry_confidence=dict(view.entry_confidence),
        holds=dict(view.holds),
        view_as_of_ms=view.view_as_of_ms,
    )


def decided_of(effects: Sequence[Effect]) -> list[list[str]]:
    """The decisions among `effects`, in order, as compact rows."""
    return [
        [e.decision.plan_id, e.decision.decision, e.decision.reason, e.decision.rotation_id or ""]
        for e in effects
        if isinstance(e, Decided)
    ]


def batch_entry(
    inputs: Sequence[Input],
    seed: ViewSeed,
    market: Market,
    rules: Rules,
    now_ms: int,
    effects: Sequence[Effect],
    by: str = "",
) -> Emit:
    """The audit stream entry of one commit."""
    record = AuditBatch(
        now_ms=now_ms,
        inputs=list(inputs),
        seed=seed,
        market=market,
        rules=rules,
        decided=decided_of(effects),
        by=by,
    )
    return Emit("audit", _fields("batch", _encode(record)))


def setting_entry(change: SettingChange) -> dict[str, str]:
    """Stream fields of a setting change."""
    return _fields("setting", _encode(change))


#: bodies longer than this are stored compressed (`body_z`)
COMPRESS_BYTES = 1024


def _fields(kind: str, body: bytes) -> dict[str, str]:
    if len(body) <= COMPRESS_BYTES:
        return {"kind": kind, "body": body.decode()}
    # Level 1: nearly all of the gain on these repetitive bodies at a fraction of the CPU.
    return {"kind": kind, "body_z": base64.b64encode(zlib.compress(body, 1)).decode()}


def entry_body(fields: Mapping[Any, Any]) -> bytes | None:
    """The JSON body of an audit entry's fields (text or bytes names), decompressed;
    None when it has neither `body` nor `body_z`. Raises msgspec.DecodeError when a
    compressed body is damaged."""
    for name in ("body", b"body"):
        if name in fields:
            value = fields[name]
            return value if isinstance(value, bytes) else str(value).encode()
    for name in ("body_z", b"body_z"):
        if name in fields:
            try:
                return zlib.decompress(base64.b64decode(fields[name], validate=True))
            except (binascii.Error, zlib.error, ValueError) as exc:
                raise msgspec.DecodeError(f"body_z does not decompress: {exc}") from None
    return None


def parse_entry(fields: Mapping[Any, Any]) -> AuditEntry:
    """An audit entry from its stream fields; raises msgspec.DecodeError/ValidationError."""
    body = entry_body(fields)
    if body is None:
        raise msgspec.DecodeError("audit entry has no body field")
    return _decoder.decode(body)
