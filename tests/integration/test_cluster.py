"""Books on a real Redis Cluster (issue #7): three masters and three replicas started here.

One engine serves three books (`GOV_BOOKS=a,b,c`, `REDIS_CLUSTER=1`), each book with its
own paper exchange account. The books' hash tags put them on three different masters;
each decides and rotates on its own, and the invariants hold per book. Then one master
is killed with -9 mid-run: its replica takes over, the engine carries on, nothing is
lost or doubled, and the rotations in flight on that book finish or time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, TryAgainError

from rotation_fsm.core import reasons as R
from rotation_fsm.core.settings import Streams, load_settings
from rotation_fsm.devkit.redis_cluster import RedisClusterProcess
from rotation_fsm.runtime.service import Running, is_redis_down, run_engine
from rotation_fsm.store.keys import Keys
from tests.integration.harness import API_KEY, API_SECRET, Stack, fields_of, paper_exchange

pytestmark = pytest.mark.timeout(90)

T = TypeVar("T")
BOOKS = ("a", "b", "c")  # CLUSTER KEYSLOT: a 15495, b 3300, c 7365 — one per master
FULL = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]  # the last is the weakest (Stack.fill_book)
DESIRED = 3  # no klines on the paper books: regime UNKNOWN → the CHOP slot count
FINAL_EVENTS = frozenset({R.EV_COMPLETE, R.EV_TIMEOUT, R.EV_CLOSE_REJECTED, R.EV_ABORTED})
ENGINE_ENV = {
    "REDIS_CLUSTER": "1",
    "GOV_BOOKS": ",".join(BOOKS),
    "GOV_ACTIVE_SLOTS_CHOP": str(DESIRED),
    "GOV_MAX_CORRELATION": "1",
    "GOV_CLAIM_IDLE_MS": "1000",
    "METRICS_PORT": "0",
    "BINANCE_API_KEY": API_KEY,
    "BINANCE_API_SECRET": API_SECRET,
}


# ------------------------------------------------------------ the cluster and the books


@pytest.fixture
def cluster() -> Iterator[RedisClusterProcess]:
    """Three masters, one replica each, on the preferred redis-server."""
    with RedisClusterProcess(masters=3, replicas=1) as started:
        yield started


@dataclass
class Books:
    """The test's view of one engine serving several books on the cluster."""

    cluster: RedisClusterProcess
    redis: RedisCluster
    stacks: dict[str, Stack]
    running: Running


@contextlib.asynccontextmanager
async def open_books(cluster: RedisClusterProcess, **engine_env: str) -> AsyncIterator[Books]:
    """A policy and a paper exchange per book, then one in-process engine for all books
    (returns once every book's consumer groups exist); the engine is stopped after."""
    client = RedisCluster.from_url(cluster.url)
    async with contextlib.AsyncExitStack() as exits:
        exits.push_async_callback(client.aclose)
        stacks: dict[str, Stack] = {}
        for name in BOOKS:
            paper, url, user_stream = await exits.enter_async_context(paper_exchange())
            stacks[name] = Stack(
                redis_url=cluster.url,
                redis=client,  # type: ignore[arg-type]  # the harness only calls stream commands
                exchange=paper,
                exchange_url=url,
                stream=user_stream,
                keys=Keys(book=name),
            )
            await stacks[name].set_policy()
        env = {"REDIS_URL": cluster.url, **ENGINE_ENV, **engine_env}
        env |= {f"BINANCE_BASE_URL__{n.upper()}": s.exchange_url for n, s in stacks.items()}
        started: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(run_engine(load_settings(env), started=started.set_result))
        done, _ = await asyncio.wait({task, started}, timeout=15, return_when="FIRST_COMPLETED")
        if started not in done:
            task.cancel()
            why = task.exception() if task.done() and not task.cancelled() else "no start in 15 s"
            raise RuntimeError(f"engine did not start: {why}")
        running = started.result()

        async def stop() -> None:
            running.stop.set()
            await asyncio.wait_for(task, 10)

        exits.push_async_callback(stop)
        for s in stacks.values():
            await s.until_groups()
        yield Books(cluster, client, stacks, running)


# ------------------------------------------------------------ riding out a failover


async def retrying(call: Callable[[], Awaitable[T]], timeout_s: float = 20.0) -> T:
    """`call()` again until the cluster answers (a failover in progress raises meanwhile).
    Only for reads: a write retried blindly could land twice."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except Exception as exc:
            if not is_redis_down(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def send_once(client: RedisCluster, stream: str, fields: dict[str, str]) -> None:
    """XADD `fields` exactly once while the cluster may be failing over: after an error of
    unknown outcome (the reply may be what was lost) look for the plan id in the stream's
    tail before sending again, as an idempotent producer must."""
    unsure = False
    deadline = time.monotonic() + 20.0
    while True:
        try:
            if not unsure or not await _in_tail(client, stream, fields["plan_id"]):
                await client.xadd(stream, fields)  # type: ignore[arg-type]
            return
        except Exception as exc:
            unsure = True
            if not is_redis_down(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _in_tail(client: RedisCluster, stream: str, plan_id: str) -> bool:
    tail = await client.xrevrange(stream, count=200)
    return any(fields.get(b"plan_id") == plan_id.encode() for _, fields in tail)


async def read_stream(client: RedisCluster, stream: str) -> list[tuple[str, dict[str, str]]]:
    """(entry id, fields) of the whole stream, oldest first."""
    entries = await retrying(lambda: client.xrange(stream))
    return [(entry_id.decode(), fields_of(raw)) for entry_id, raw in entries]


# ------------------------------------------------------------ the invariants of one book


@dataclass
class BookStreams:
    """What one book's engine wrote, read back after the run."""

    plans: list[dict[str, str]]
    decisions: list[dict[str, str]]
    events: list[dict[str, str]]
    ids: dict[str, set[str]]  # stream → entry ids present

    def decisions_for(self, plan_id: str) -> list[tuple[str, str]]:
        return [(d["decision"], d["reason"]) for d in self.decisions if d["plan_id"] == plan_id]


async def book_streams(client: RedisCluster, keys: Keys) -> BookStreams:
    read = {s: await read_stream(client, s) for s in (keys.plans, keys.decisions, keys.events)}
    return BookStreams(
        plans=[f for _, f in read[keys.plans]],
        decisions=[f for _, f in read[keys.decisions]],
        events=[f for _, f in read[keys.events]],
        ids={stream: {entry_id for entry_id, _ in entries} for stream, entries in read.items()},
    )


def _is_final(decision: dict[str, str]) -> bool:
    return R.is_final(decision["decision"], decision["reason"])


def assert_book_invariants(book: BookStreams, held_at_start: list[str]) -> None:
    """No double close, one final event per rotation, one final decision per plan id,
    and never more symbols held than desired slots (replayed in commit order)."""
    closes = [p for p in book.plans if p.get("rotation_trigger") == "true"]
    locks = [e for e in book.events if e["event"] == R.EV_LOCK_CREATED]
    assert sorted(c["rotation_id"] for c in closes) == sorted(e["rotation_id"] for e in locks)
    assert len({c["plan_id"] for c in closes}) == len(closes), "a close plan id emitted twice"
    in_flight: dict[str, str] = {}
    for event in book.events:
        rotation_id = event["rotation_id"]
        if event["event"] == R.EV_LOCK_CREATED:
            assert event["close_symbol"] not in in_flight.values(), f"double close: {event}"
            in_flight[rotation_id] = event["close_symbol"]
        elif event["event"] in FINAL_EVENTS:
            assert in_flight.pop(rotation_id, None) is not None, f"ended twice: {event}"
    finals = Counter(d["plan_id"] for d in book.decisions if _is_final(d))
    assert max(finals.values(), default=1) == 1, f"several final decisions: {finals}"
    close_of = {e["rotation_id"]: e["close_symbol"] for e in locks}
    held = set(held_at_start)
    for d in book.decisions:
        if (d["decision"], d["reason"]) == (R.ALLOW, R.SLOTS_AVAILABLE):
            held.add(d["symbol"])
        elif (d["decision"], d["reason"]) == (R.ALLOW, R.ROTATION_COMPLETE):
            held.discard(close_of[d["rotation_id"]])
            held.add(d["symbol"])
        else:
            continue
        assert len(held) <= int(d["desired_slots"]), f"occupancy {sorted(held)} after {d}"


# ------------------------------------------------------------ tests


def test_no_book_keeps_the_seeds_exact_names():
    settings = load_settings({"REDIS_URL": "redis://127.0.0.1:1/0"})
    keys = Keys(book=settings.book, streams=settings.streams)
    assert [b.name for b in settings.books] == [""] and not settings.redis_cluster
    assert (keys.plans, keys.results, keys.events) == (
        "quantum:stream:apply.plan",
        "quantum:stream:apply.result",
        "quantum:stream:governor.events",
    )
    assert (keys.policy, keys.permit("p1"), keys.block("p1"), keys.lock("p1")) == (
        "quantum:policy:current",
        "quantum:permit:p1",
        "quantum:governor:block:p1",
        "quantum:rotation:lock:p1",
    )
    assert Keys(book="a", streams=Streams()).plans == "{a}:quantum:stream:apply.plan"


def test_only_cluster_errors_and_redis_connection_races_count_as_an_outage():
    # redis-py 8.1 leaks AttributeError from a connection another task closed: compile a
    # writer under redis-py's module path to raise one "from there".
    path = os.path.join("site-packages", "redis", "asyncio", "connection.py")
    scope: dict[str, Any] = {}
    exec(compile("def send(writer):\n    writer.writelines([b''])\n", path, "exec"), scope)
    with pytest.raises(AttributeError) as race:
        scope["send"](None)
    with pytest.raises(AttributeError) as our_bug:
        _write_to(None)
    assert is_redis_down(race.value) and not is_redis_down(our_bug.value)
    assert is_redis_down(ClusterDownError("CLUSTERDOWN The cluster is down"))
    assert is_redis_down(TryAgainError("TRYAGAIN")) and not is_redis_down(ValueError())


def _write_to(writer: Any) -> None:
    writer.writelines([b""])


async def test_each_book_decides_and_rotates_on_its_own_master(cluster: RedisClusterProcess):
    async with open_books(cluster, GOV_ROTATION_LOCK_TTL="1.0") as books:
        a, b, c = (books.stacks[n] for n in BOOKS)
        a.fill_book(*FULL[:2])  # a: a free slot
        b.fill_book(*FULL)  # b: full, its close gets confirmed
        c.fill_book(*FULL)  # c: full, its close never comes back
        for name, stack in books.stacks.items():
            await stack.resync_views(books.running)
            await stack.send_plan(f"{name}-plan-0001", "NEWUSDT")

        assert (await a.decision("a-plan-0001"))["reason"] == R.SLOTS_AVAILABLE
        lock_b = await b.event(R.EV_LOCK_CREATED)
        lock_c = await c.event(R.EV_LOCK_CREATED)
        assert (lock_b["close_symbol"], lock_c["close_symbol"]) == ("SOLUSDT", "SOLUSDT")
        b.exchange.close("SOLUSDT")
        await b.send_result(lock_b["close_plan_id"], symbol="SOLUSDT")
        assert (await b.event(R.EV_COMPLETE))["rotation_id"] == lock_b["rotation_id"]
        assert (await c.event(R.EV_TIMEOUT))["rotation_id"] == lock_c["rotation_id"]
        allowed = await b.next_entry(
            b.keys.decisions, {"plan_id": "b-plan-0001", "decision": "ALLOW"}
        )
        assert allowed["reason"] == R.ROTATION_COMPLETE
        blocked = await c.next_entry(
            c.keys.decisions,
            {"plan_id": "c-plan-0001", "decision": "BLOCK", "reason": R.ROTATION_TIMEOUT},
        )
        assert blocked["rotation_id"] == lock_c["rotation_id"]

        # Each book's keys live on its own master: asked directly, without the cluster
        # client, that node holds the book's streams (another node would answer MOVED).
        owners = {n: cluster.node_for_key(s.keys.plans) for n, s in books.stacks.items()}
        assert len({node.port for node in owners.values()}) == 3
        for name, stack in books.stacks.items():
            key = stack.keys.decisions
            assert await books.redis.cluster_keyslot(key) == cluster.slot_of(key)
            with redis.Redis(host="127.0.0.1", port=owners[name].port) as node:
                assert node.xlen(key) >= 1 and node.exists(stack.keys.version)
        for name, stack in books.stacks.items():
            streams = await book_streams(books.redis, stack.keys)
            assert_book_invariants(streams, FULL[:2] if name == "a" else FULL)


class Load:
    """Plans sent to every book at a steady pace, each exactly once, while the cluster
    may fail over underneath; `expected` holds what each one must be answered."""

    def __init__(self, books: Books, interval_s: float = 0.02) -> None:
        self.books = books
        self.interval_s = interval_s
        self.expected: dict[str, dict[str, tuple[str, str]]] = {n: {} for n in books.stacks}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._produce(n)) for n in self.books.stacks]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _produce(self, name: str) -> None:
        stack, sent = self.books.stacks[name], self.expected[name]
        while not self._stop.is_set():
            plan_id = f"{name}-load-{len(sent):05d}"
            fields, verdict = _load_plan(plan_id, len(sent))
            await send_once(self.books.redis, stack.keys.plans, fields)
            sent[plan_id] = verdict
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval_s)


def _load_plan(plan_id: str, n: int) -> tuple[dict[str, str], tuple[str, str]]:
    """Plans whose answer is final and leaves the slots alone: an entry outside the
    universe (BLOCK) and a reduce-only close (ALLOW, exempt), alternately."""
    base = {"plan_id": plan_id, "decision": "EXECUTE", "timestamp": f"{time.time():.3f}"}
    if n % 2:
        close = {"symbol": "BTCUSDT", "action": "FULL_CLOSE_PROPOSED", "reduceOnly": "true"}
        return {**base, **close}, (R.ALLOW, R.CLOSE_EXEMPT)
    return {**base, "symbol": "ZZZUSDT", "action": "OPEN_LONG"}, (R.BLOCK, R.NOT_IN_UNIVERSE)


@pytest.fixture
def cluster_on_each_redis(any_redis_binary: str) -> Iterator[RedisClusterProcess]:
    """Three masters and three replicas on each redis-server here (7.0 and 6.2)."""
    with RedisClusterProcess(masters=3, replicas=1, binary=any_redis_binary) as started:
        yield started


LOCK_TTL_S = 8.0  # well past a failover (~2.5 s) and the engine's reconnect backoff


async def test_a_master_killed_mid_run_fails_over_and_nothing_is_lost_or_doubled(
    cluster_on_each_redis: RedisClusterProcess,
):
    cluster = cluster_on_each_redis
    env = {"GOV_ROTATION_LOCK_TTL": str(LOCK_TTL_S), "GOV_MAX_CONCURRENT_ROTATIONS": "2"}
    async with open_books(cluster, **env) as books:
        # Two rotations in flight on every book: the first close will be confirmed after
        # the kill, the second never comes back and must time out.
        rotations: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
        for name, stack in books.stacks.items():
            stack.fill_book(*FULL)
            await stack.resync_views(books.running)
            await stack.send_plan(f"{name}-first", "NEWUSDT")
            first = await stack.event(R.EV_LOCK_CREATED)
            await stack.send_plan(f"{name}-second", "BNBUSDT")
            rotations[name] = (first, await stack.event(R.EV_LOCK_CREATED))
        assert {(f["close_symbol"], s["close_symbol"]) for f, s in rotations.values()} == {
            ("SOLUSDT", "ETHUSDT")
        }
        load = Load(books)
        load.start()
        await asyncio.sleep(0.5)  # mid-run: plans are flowing on every book

        victim = books.stacks["a"].keys.plans
        replicas_before = {node.port for node in cluster.replicas}
        killed = cluster.kill_master_of(victim)
        # The apply layer executes the first closes meanwhile; book a's result waits for
        # the failover inside send_once.
        for name, stack in books.stacks.items():
            stack.exchange.close("SOLUSDT")
            fields = _result_fields(rotations[name][0]["close_plan_id"], "SOLUSDT")
            await send_once(books.redis, stack.keys.results, fields)
        promoted = await asyncio.to_thread(cluster.wait_for_failover, victim)
        promoted_at = time.time()
        assert promoted.port in replicas_before and promoted.port != killed.port
        await asyncio.sleep(1.0)  # the load goes on against the promoted replica
        await load.stop()

        for name, stack in books.stacks.items():
            first, second = rotations[name]
            done = await retrying(lambda s=stack: s.event(R.EV_COMPLETE, timeout_s=15))
            assert done["rotation_id"] == first["rotation_id"]
            timed_out = await retrying(lambda s=stack: s.event(R.EV_TIMEOUT, timeout_s=15))
            assert timed_out["rotation_id"] == second["rotation_id"]
            # "as they should": within a second of the deadline, failover or not
            assert LOCK_TTL_S <= float(timed_out["lock_age"]) < LOCK_TTL_S + 1.0
        for name, stack in books.stacks.items():
            last = max(load.expected[name])
            await retrying(lambda s=stack, p=last: s.decision(p, timeout_s=15))
            streams = await book_streams(books.redis, stack.keys)
            # The engine went on deciding for every book, the failed-over one included.
            assert any(float(d["timestamp"]) > promoted_at for d in streams.decisions), name
            _assert_nothing_lost(stack, streams)
            _assert_each_answered_once(streams, load.expected[name], rotations[name])
            assert_book_invariants(streams, FULL)
        assert books.running.health.redis_ok


def _result_fields(close_plan_id: str, symbol: str) -> dict[str, str]:
    return {
        "plan_id": close_plan_id,
        "symbol": symbol,
        "executed": "true",
        "reduceOnly": "true",
        "timestamp": f"{time.time():.3f}",
    }


def _assert_nothing_lost(stack: Stack, streams: BookStreams) -> None:
    """Every entry the test saw while the run went on is still there after the failover."""
    for stream, seen in stack.seen.items():
        missing = {entry_id for entry_id, _ in seen} - streams.ids[stream]
        assert not missing, f"{stream}: entries seen during the run are gone: {missing}"


def _assert_each_answered_once(
    streams: BookStreams,
    load: dict[str, tuple[str, str]],
    rotations: tuple[dict[str, str], dict[str, str]],
) -> None:
    """Every plan entry answered exactly once, with the right answer.

    Once per *entry*: the producer sends each plan once and checks the stream before
    sending again after an unknown outcome, but redis-py's cluster client retries an
    XADD by itself across a failover, so a plan can land twice — and the contract
    answers a resend again (a final answer, unchanged)."""
    for plan_id, verdict in load.items():
        entries = sum(1 for p in streams.plans if p.get("plan_id") == plan_id)
        assert entries >= 1, plan_id
        assert streams.decisions_for(plan_id) == [verdict] * entries, plan_id
    first, second = rotations
    waiting = (R.BLOCK, R.WAITING_ROTATION_CLOSE)
    assert streams.decisions_for(first["new_plan_id"]) == [waiting, (R.ALLOW, R.ROTATION_COMPLETE)]
    assert streams.decisions_for(second["new_plan_id"]) == [waiting, (R.BLOCK, R.ROTATION_TIMEOUT)]
    for rotation in rotations:  # the engine's own close plans come back: exempt, once
        assert streams.decisions_for(rotation["close_plan_id"]) == [(R.ALLOW, R.CLOSE_EXEMPT)]
