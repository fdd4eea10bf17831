"""Every Redis key and stream name the engine touches, and nothing else spells one.

With a book (`GOV_BOOK`, contract §7) every name gets the prefix `{BOOK}:` — a
Redis Cluster hash tag — so one book's atomic commit always lands on one slot.
Without a book the names are exactly the seed's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.settings import Streams

POLICY = "quantum:policy:current"
SETTINGS = "quantum:rotation:settings"
PERMIT_TTL_S = 60
BLOCK_TTL_S = 3600


@dataclass(frozen=True)
class Keys:
    """Names for one book."""

    book: str = ""
    streams: Streams = field(default_factory=Streams)

    def name(self, bare: str) -> str:
        """`bare` as this book spells it: the one place the book prefix is applied."""
        return f"{{{self.book}}}:{bare}" if self.book else bare

    # -- streams ----------------------------------------------------------
    @property
    def plans(self) -> str:
        return self.name(self.streams.plans)

    @property
    def results(self) -> str:
        return self.name(self.streams.results)

    @property
    def events(self) -> str:
        return self.name(self.streams.events)

    @property
    def decisions(self) -> str:
        return self.name(self.streams.decisions)

    @property
    def dlq(self) -> str:
        return self.name(self.streams.dlq)

    @property
    def audit(self) -> str:
        return self.name(self.streams.audit)

    # -- seed-compatible keys ----------------------------------------------
    @property
    def policy(self) -> str:
        return self.name(POLICY)

    @property
    def settings(self) -> str:
        return self.name(SETTINGS)

    def permit(self, plan_id: str) -> str:
        return self.name(f"quantum:permit:{plan_id}")

    def block(self, plan_id: str) -> str:
        return self.name(f"quantum:governor:block:{plan_id}")

    def lock(self, plan_id: str) -> str:
        return self.name(f"quantum:rotation:lock:{plan_id}")

    # -- the engine's own state (extension) ---------------------------------
    @property
    def version(self) -> str:
        """Bumped by every commit: the optimistic-concurrency guard of the book."""
        return self.name("quantum:rotation:version")

    @property
    def view_as_of(self) -> str:
        """The newest exchange view a committed decision was made on (ms): no later
        decision may rest on an older one."""
        return self.name("quantum:rotation:view_as_of")

    @property
    def reservations(self) -> str:
        """Hash symbol → reservation JSON: allowed entries not yet positions."""
        return self.name("quantum:rotation:reservations")

    @property
    def inflight(self) -> str:
        """Set of rotation ids in flight."""
        return self.name("quantum:rotation:inflight")

    @property
    def deadlines(self) -> str:
        """Sorted set rotation id → deadline (ms): what the timer scans."""
        return self.name("quantum:rotation:deadlines")

    @property
    def entry_confidence(self) -> str:
        """Hash symbol → confidence of the OPEN plan allowed for it (contract §5)."""
        return self.name("quantum:rotation:entry_confidence")

    @property
    def finished(self) -> str:
        """Sorted set rotation id → end time (ms): recent final rotations, for status."""
        return self.name("quantum:rotation:finished")

    def rotation(self, rotation_id: str) -> str:
        """Hash: one rotation's record."""
        return self.name(f"quantum:rotation:rot:{rotation_id}")

    def plan(self, plan_id: str) -> str:
        """String: JSON record of what was decided for a plan id."""
        return self.name(f"quantum:rotation:plan:{plan_id}")

    def hold(self, plan_id: str) -> str:
        """String: an allowed entry's `Hold` on its symbol's reservation, until its
        result or its reservation TTL."""
        return self.name(f"quantum:rotation:hold:{plan_id}")

    @property
    def replicas(self) -> str:
        """Sorted set consumer name → last heartbeat (ms): the replicas serving the book."""
        return self.name("quantum:rotation:replicas")

    def replica(self, consumer: str) -> str:
        """String, expiring: one replica's heartbeat record (`heartbeat.Heartbeat`)."""
        return self.name(f"quantum:rotation:replica:{consumer}")

    def dead(self, stream: str, entry_id: str) -> str:
        """String: marks an entry already dead-lettered (a redelivery writes nothing)."""
        return self.name(f"quantum:rotation:dead:{stream}:{entry_id}")

    @property
    def view_snapshot(self) -> str:
        """The newest REST snapshot of the book's exchange account (its replicas share it)."""
        return self.name("quantum:rotation:view_snapshot")

    def close_index(self, close_plan_id: str) -> str:
        """String: the rotation id a close plan id belongs to (results find it directly)."""
        return self.name(f"quantum:rotation:close:{close_plan_id}")
