"""What one commit did, counted in one pass: its log line and its metrics are built from it.

Counting once per commit, not once per plan, keeps the reporting off the hot
path: a batch of 200 plans is one INFO line and a handful of counter
increments. Each decision's own line goes to DEBUG (`describe`); the decision
stream is the record.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from .decide import DeadLetter, Decided, Effect, Emit, SaveRotation


@dataclass
class Tally:
    """Counts of one commit's effects, and the entry times of the plans it decided."""

    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)  # (verdict, reason)
    events: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)  # by input stream
    transitions: Counter[str] = field(default_factory=Counter)  # rotation records by state
    entry_ms: list[int] = field(default_factory=list)  # stream entry time of each decided entry

    @property
    def decided(self) -> int:
        return sum(self.decisions.values())


def tally(effects: Sequence[Effect]) -> Tally:
    """Count `effects` (one pass; the common effects are tested first)."""
    out = Tally()
    decisions, entry_ms = out.decisions, out.entry_ms
    for effect in effects:
        if isinstance(effect, Decided):
            d = effect.decision
            decisions[d.decision, d.reason] += 1
            start = entry_time_ms(d.entry_id)
            if start is not None:
                entry_ms.append(start)
        elif isinstance(effect, Emit):
            if effect.stream == "events":
                out.events[effect.fields.get("event", "")] += 1
        elif isinstance(effect, SaveRotation):
            out.transitions[effect.record.state] += 1
        elif isinstance(effect, DeadLetter):
            out.dead_letters[effect.stream] += 1
    return out


def entry_time_ms(entry_id: str | None) -> int | None:
    """The millisecond part of a stream entry id, or None."""
    if not entry_id:
        return None
    head = entry_id.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def commit_line(t: Tally, *, inputs: int, version: int, took_ms: float) -> str:
    """The commit's INFO line: batch size, version, counts by verdict and reason, time."""
    parts = [f"commit v={version} inputs={inputs} decided={t.decided}"]
    parts += [f"{verdict}:{reason}={n}" for (verdict, reason), n in sorted(t.decisions.items())]
    parts += [f"rotation:{state}={n}" for state, n in sorted(t.transitions.items())]
    parts += [f"event:{name}={n}" for name, n in sorted(t.events.items())]
    parts += [f"dead_letter:{stream}={n}" for stream, n in sorted(t.dead_letters.items())]
    parts.append(f"took={took_ms:.1f}ms")
    return " ".join(parts)
