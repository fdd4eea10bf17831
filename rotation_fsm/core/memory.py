"""A book kept in memory: the same core, the effects collected instead of committed.

Replay runs recorded history through it, and the unit tests use it to drive
the core without Redis. `BookView.apply` already keeps the state; this adds
the outputs (decisions, events, close plans, dead letters, permits, blocks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .decide import BookView, DeadLetter, Decided, Effect, Emit, Input, Market, decide_batch
from .messages import Decision
from .settings import Rules


@dataclass
class MemoryBook:
    """One book's state and everything it emitted, in order."""

    view: BookView = field(default_factory=BookView)
    decisions: list[Decision] = field(default_factory=list)
    events: list[dict[str, str]] = field(default_factory=list)
    close_plans: list[dict[str, str]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    permits: dict[str, int] = field(default_factory=dict)
    blocks: dict[str, str] = field(default_factory=dict)

    def feed(
        self, inputs: Sequence[Input], market: Market, rules: Rules, now_ms: int
    ) -> list[Effect]:
        """Decide `inputs` as the engine would and record what it emits."""
        effects = decide_batch(inputs, self.view, market, rules, now_ms)
        for effect in effects:
            self._record(effect)
        self.view.version += 1
        return effects

    def _record(self, effect: Effect) -> None:
        match effect:
            case Decided(decision=d, permit=permit):
                self.decisions.append(d)
                if d.decision == "ALLOW":
                    self.blocks.pop(d.plan_id, None)
                    if permit:
                        self.permits[d.plan_id] = self.permits.get(d.plan_id, 0) + 1
                else:
                    self.blocks[d.plan_id] = d.reason
            case Emit(stream="events", fields=f):
                self.events.append(f)
            case Emit(stream="plans", fields=f):
                self.close_plans.append(f)
            case DeadLetter():
                self.dead_letters.append(effect)
            case _:
                pass

    def last_decision(self, plan_id: str) -> Decision:
        """The newest decision for `plan_id` (KeyError if none)."""
        for d in reversed(self.decisions):
            if d.plan_id == plan_id:
                return d
        raise KeyError(plan_id)
