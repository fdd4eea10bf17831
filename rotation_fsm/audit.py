"""The audit record: what each commit was based on, so history can be replayed.

One `AuditBatch` per commit goes on the audit stream inside the same atomic
commit as the effects it explains. It is self-contained — the parsed inputs,
the part of the book the batch was loaded with, the market snapshot, the rules
in force and what was decided — so `replay` needs nothing but this stream,
even after the trading stack trimmed its plan and result streams.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    seed = ViewSeed(
        version=view.version,
        policy_raw=text,
        reservations=view.reservations,
        rotations=view.rotations,
        inflight=sorted(view.inflight),
        plans=view.plans,
        close_index=view.close_index,
        entry_confidence=view.entry_confidence,
        holds=view.holds,
    )
    # Deep copy through the encoder: records are mutable structs the batch may replace.
    return msgspec.json.decode(_encode(seed), type=ViewSeed)


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
    return Emit("audit", {"kind": "batch", "body": _encode(record).decode()})


def setting_entry(change: SettingChange) -> dict[str, str]:
    """Stream fields of a setting change."""
    return {"kind": "setting", "body": _encode(change).decode()}


def parse_entry(fields: dict[str, str]) -> AuditEntry:
    """An audit entry from its stream fields; raises msgspec.DecodeError/ValidationError."""
    return _decoder.decode(fields["body"])
