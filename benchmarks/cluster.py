"""Books on Redis Cluster: total decisions/s with 1, 3 and 6 books (issue #7).

`measure_books()` runs a free-slot burst on every book at once and reports the total
decision rate, next to the same burst for one book on one plain redis-server:

- **1 node**: one redis-server, one engine process, one book;
- **cluster**: three masters (and a replica each, unless `replicas=0`) started by
  `RedisClusterProcess`; books named so that they spread evenly over the masters; one
  engine process per `books_per_engine` books (`GOV_BOOKS`, `REDIS_CLUSTER=1`), each
  with a paper exchange child of its own.

The clock is run as in `burst.py`: each book's burst is written first and its consumer
group created at `$` after it; once every engine is blocked reading every book, each
group is moved back to `0` and one releasing plan is XADDed per book. Rate = plans
decided / (last decision entry − first releasing entry), stream ids, i.e. Redis's own
clock (all nodes share this machine's clock). CPU time of the engines and of every
redis-server over the burst, and the growth of `used_memory` on the masters, are
reported per plan: they are what the README's extrapolation to many books rests on.
So is the idle part: one engine process serving 1 and then 30 books with no traffic at
all, whose difference is what one more book costs in CPU, memory and connections.

Run alone: `python -m benchmarks.cluster [--plans N] [--books 1,3,6] [--repeat N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from rotation_fsm.devkit.redis_cluster import RedisClusterProcess, split_slots
from rotation_fsm.devkit.redis_process import RedisProcess
from rotation_fsm.store.keys import Keys

from .procs import Child, cpu_seconds, rss_bytes
from .rig import API_KEY, API_SECRET, ENGINE_READY, EXCHANGE_READY, plan_fields

GROUP = "rotation-fsm"
SYMBOLS = [f"F{i:02d}USDT" for i in range(8)]  # all in the universe: every plan is ALLOWed
PRELOAD_CHUNK = 2000
MASTERS = 3


@dataclass(frozen=True)
class BooksRow:
    """One configuration's burst: total rate and what each decided plan cost."""

    setup: str  # "1 node" or "cluster 3+3"
    books: int
    engines: int
    plans: int
    decided: int
    seconds: float
    rate: float  # decisions/s, all books together
    engine_cpu_us: float  # per plan, all engine processes
    redis_cpu_us: float  # per plan, every redis-server (replicas included)
    busiest_master_cpu_us: float  # per plan of the books on that master
    bytes_per_plan: float  # growth of used_memory on the masters / plans
    engine_rss_mb: float  # the largest engine process after the burst

    @property
    def complete(self) -> bool:
        return self.decided == self.plans


@dataclass(frozen=True)
class IdleRow:
    """What books cost while nothing happens: each book's timer scans its deadlines every
    100 ms, its listener blocks in XREADGROUP for 1 s at a time and claims every 5 s."""

    books: int
    seconds: float
    engine_cpu_pct: float  # of one core, the engine process
    redis_cpu_pct: float  # of one core, every redis-server together
    engine_rss_mb: float
    clients: int  # connections the masters see

    def per_book(self, base: IdleRow) -> dict[str, float]:
        """The marginal cost of one more book over `base` (fewer books)."""
        extra = self.books - base.books
        return {
            "engine_cpu_pct": (self.engine_cpu_pct - base.engine_cpu_pct) / extra,
            "redis_cpu_pct": (self.redis_cpu_pct - base.redis_cpu_pct) / extra,
            "engine_rss_mb": (self.engine_rss_mb - base.engine_rss_mb) / extra,
            "clients": (self.clients - base.clients) / extra,
        }


@dataclass(frozen=True)
class ClusterReport:
    """`measure_books`' answer: the burst rows (1 node first) and the idle rows."""

    rows: list[BooksRow]
    idle: list[IdleRow]

    def render(self) -> str:
        """Both tables in Markdown."""
        return render_rows(self.rows) + "\n\n" + render_idle(self.idle)


# ------------------------------------------------------------ the measurement


async def measure_books(
    book_counts: Sequence[int] = (1, 3, 6),
    *,
    plans_per_book: int = 20_000,
    books_per_engine: int = 3,
    replicas: int = 1,
    repeat: int = 1,
    idle_books: Sequence[int] = (1, 30),
    idle_seconds: float = 10.0,
    workdir: Path | None = None,
    binary: str | None = None,
) -> ClusterReport:
    """The single-node baseline (one book), then one row per count in `book_counts` on a
    three-master cluster. Every book gets a burst of `plans_per_book` plans; each row is
    the run with the median rate of `repeat` runs. Then one engine process serving each
    count of `idle_books` books with no traffic at all, for `idle_seconds`."""
    with _workdir(workdir) as root:
        server = RedisProcess(binary=binary)
        server.start()
        try:
            async with _bench(root, server.url, [server], [server], cluster=False) as bench:
                runs = [await bench.run("1 node", ["solo"], plans_per_book, 1)]
                runs += [
                    await bench.run("1 node", ["solo"], plans_per_book, 1)
                    for _ in range(repeat - 1)
                ]
                rows = [_median(runs)]
        finally:
            server.stop()
        # No AOF, like the single node above: a cluster's copy of the data is its replicas.
        cluster = RedisClusterProcess(
            masters=MASTERS, replicas=replicas, binary=binary, appendonly=False
        )
        with cluster:
            setup = f"cluster {MASTERS}+{MASTERS * replicas}"
            nodes, masters = cluster.nodes, cluster.masters
            async with _bench(root, cluster.url, nodes, masters, cluster=True) as bench:
                for count in book_counts:
                    books = spread_books(count)
                    runs = [
                        await bench.run(setup, books, plans_per_book, books_per_engine)
                        for _ in range(repeat)
                    ]
                    rows.append(_median(runs))
                idle = [await bench.idle(spread_books(n), idle_seconds) for n in idle_books]
        return ClusterReport(rows, idle)


@contextlib.asynccontextmanager
async def _bench(
    root: Path, url: str, nodes: list[RedisProcess], masters: list[RedisProcess], *, cluster: bool
) -> AsyncIterator[_Bench]:
    redis: Redis | RedisCluster = (
        RedisCluster.from_url(url, socket_timeout=None)
        if cluster
        else Redis.from_url(url, socket_timeout=None)
    )
    try:
        yield _Bench(root, redis, url, cluster=cluster, nodes=nodes, masters=masters)
    finally:
        await redis.aclose()


def _median(runs: list[BooksRow]) -> BooksRow:
    return sorted(runs, key=lambda r: r.rate)[len(runs) // 2]


def spread_books(count: int, masters: int = MASTERS) -> list[str]:
    """`count` book names whose hash tags spread evenly over `masters` masters (slots split
    as `redis-cli --cluster create` does), in master order: any run of `masters`
    consecutive names has one book on each master."""
    ranges = split_slots(masters)
    per_master: list[list[str]] = [[] for _ in ranges]
    wanted = -(-count // masters)  # ceil
    serial = 0
    while sum(len(names) for names in per_master) < wanted * masters:
        name = f"book{serial}"
        serial += 1
        slot = RedisClusterProcess.slot_of(Keys(book=name).plans)
        index = next(i for i, (first, last) in enumerate(ranges) if first <= slot <= last)
        if len(per_master[index]) < wanted:
            per_master[index].append(name)
    ordered = [per_master[m][i] for i in range(wanted) for m in range(masters)]
    return ordered[:count]


# ------------------------------------------------------------ one burst


@dataclass
class _Bench:
    """One configuration: its Redis (plain or cluster) and the processes it starts."""

    root: Path
    redis: Any  # Redis | RedisCluster: the calls used are common to both
    url: str
    cluster: bool
    nodes: list[RedisProcess]
    masters: list[RedisProcess]

    async def run(
        self, setup: str, books: list[str], plans: int, books_per_engine: int
    ) -> BooksRow:
        """Empty Redis, preload, start engines, release every book at once, wait, measure."""
        if self.cluster:
            await self.redis.flushall(target_nodes=RedisCluster.PRIMARIES)
        else:
            await self.redis.flushall()
        keys = [Keys(book=b) for b in books]
        for book_keys in keys:
            await self._preload(book_keys, plans - 1)
        groups = [books[i : i + books_per_engine] for i in range(0, len(books), books_per_engine)]
        async with self._engines(groups) as engines:
            await self._until_reading(keys, [f"engine-{i}" for i in range(len(groups))])
            cpu_before = self._cpu(engines)
            memory_before = await self._used_memory()
            released = [await self._release(k, plans) for k in keys]
            decided = await self._wait_decided(keys, plans * len(keys), engines)
            cpu_after = self._cpu(engines)
            memory_after = await self._used_memory()
            last = [await self._last_decision_ms(k) for k in keys]
            rss = max(rss_bytes(e.pid) for e in engines)
        seconds = (max(last) - min(released)) / 1000
        spent = {pid: cpu_after[pid] - cpu_before.get(pid, 0.0) for pid in cpu_after}
        engine_pids = {e.pid for e in engines}
        per_master = [spent.get(m.pid, 0.0) for m in self.masters]
        books_per_master = max(1, -(-len(books) // len(self.masters)))
        total = plans * len(books)
        return BooksRow(
            setup=setup,
            books=len(books),
            engines=len(groups),
            plans=total,
            decided=decided,
            seconds=seconds,
            rate=decided / seconds if seconds > 0 else float("nan"),
            engine_cpu_us=_us(sum(spent[p] for p in engine_pids), decided),
            redis_cpu_us=_us(sum(v for p, v in spent.items() if p not in engine_pids), decided),
            busiest_master_cpu_us=_us(max(per_master), plans * books_per_master),
            bytes_per_plan=(memory_after - memory_before) / max(1, decided),
            engine_rss_mb=rss / 2**20,
        )

    async def idle(self, books: list[str], seconds: float) -> IdleRow:
        """One engine process serving `books`, no traffic: its CPU, memory, connections."""
        await self.redis.flushall(target_nodes=RedisCluster.PRIMARIES)
        keys = [Keys(book=b) for b in books]
        for book_keys in keys:
            await self._preload(book_keys, 0)
        async with self._engines([books]) as engines:
            await self._until_reading(keys, ["engine-0"])
            await asyncio.sleep(1.0)  # past start-up's claims and first scans
            before = self._cpu(engines)
            await asyncio.sleep(seconds)
            after = self._cpu(engines)
            rss = rss_bytes(engines[0].pid)
            clients = await self._clients()
        spent = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
        engine = spent.pop(engines[0].pid)
        return IdleRow(
            books=len(books),
            seconds=seconds,
            engine_cpu_pct=100 * engine / seconds,
            redis_cpu_pct=100 * sum(spent.values()) / seconds,
            engine_rss_mb=rss / 2**20,
            clients=clients,
        )

    async def _clients(self) -> int:
        total = 0
        for node in self.masters:
            plain = Redis(host="127.0.0.1", port=node.port)
            try:
                total += int((await plain.info("clients"))["connected_clients"])
            finally:
                await plain.aclose()
        return total

    async def _preload(self, keys: Keys, plans: int) -> None:
        """A policy, then `plans` OPEN plans XADDed in pipelined chunks (not measured)."""
        await self.redis.hset(keys.policy, "universe_symbols", json.dumps(SYMBOLS))
        for start in range(0, plans, PRELOAD_CHUNK):
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in range(start, min(plans, start + PRELOAD_CHUNK)):
                    pipe.xadd(keys.plans, plan_fields(f"{keys.book}-{i:07d}", _symbol(i)))
                await pipe.execute()
        for stream in (keys.plans, keys.results):  # at `$`: the engines find nothing new
            await self.redis.xgroup_create(stream, GROUP, id="$", mkstream=True)

    @contextlib.asynccontextmanager
    async def _engines(self, groups: list[list[str]]) -> AsyncIterator[list[Child]]:
        """One paper exchange and one engine process per group of books."""
        children: list[Child] = []
        try:
            engines = []
            for index, books in enumerate(groups):
                exchange = self._child("benchmarks.exchange", [], {}, f"exchange-{index}")
                children.append(exchange)
                url = exchange.wait_for_line(EXCHANGE_READY).group(1)
                env = self._env(index, books, url)
                engine = self._child("rotation_fsm.tools.cli", ["run"], env)
                children.append(engine)
                engines.append(engine)
            for engine in engines:
                engine.wait_for_line(ENGINE_READY)
            yield engines
        finally:
            for child in reversed(children):
                child.stop()

    def _child(self, module: str, args: list[str], env: dict[str, str], name: str = "") -> Child:
        base = {"REDIS_URL": self.url, "BINANCE_API_KEY": API_KEY, "BINANCE_API_SECRET": API_SECRET}
        log = self.root / f"{time.monotonic_ns()}-{name or module}.log"
        return Child(module, args, {**base, **env}, log)

    def _env(self, index: int, books: list[str], exchange_url: str) -> dict[str, str]:
        env = {
            "BINANCE_BASE_URL": exchange_url,
            "METRICS_PORT": "0",
            "GOV_MAX_CORRELATION": "1",
            "GOV_MAX_MARGIN_USAGE_PCT": "1",
            "GOV_ACTIVE_SLOTS_CHOP": "1000000",
            "GOV_CONSUMER_GROUP": GROUP,
            "GOV_CONSUMER_NAME": f"engine-{index}",
        }
        if self.cluster:
            return {**env, "REDIS_CLUSTER": "1", "GOV_BOOKS": ",".join(books)}
        return {**env, "GOV_BOOK": books[0]}

    async def _until_reading(self, keys: list[Keys], consumers: list[str]) -> None:
        """Until every book's group knows its engine: each is blocked in XREADGROUP."""
        deadline = time.monotonic() + 30
        for book_keys in keys:
            while True:
                known = {
                    _text(c["name"])
                    for c in await self.redis.xinfo_consumers(book_keys.plans, GROUP)
                }
                if known & set(consumers):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no engine ever read {book_keys.plans}")
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # from the first read into the blocking one

    async def _release(self, keys: Keys, plans: int) -> int:
        """Point the book's group back at its burst and wake its engine; the ms of it."""
        await self.redis.xgroup_setid(keys.plans, GROUP, "0")
        plan = plan_fields(f"{keys.book}-{plans - 1:07d}", SYMBOLS[0])
        return _ms(await self.redis.xadd(keys.plans, plan))

    async def _wait_decided(self, keys: list[Keys], total: int, engines: list[Child]) -> int:
        deadline = time.monotonic() + 60 + total / 1000
        decided = 0
        while time.monotonic() < deadline and all(e.alive() for e in engines):
            decided = sum([int(await self.redis.xlen(k.decisions)) for k in keys])
            if decided >= total:
                break
            await asyncio.sleep(0.02)
        return decided

    async def _last_decision_ms(self, keys: Keys) -> int:
        last = await self.redis.xrevrange(keys.decisions, count=1)
        return _ms(last[0][0]) if last else 0

    def _cpu(self, engines: list[Child]) -> dict[int, float]:
        pids = [e.pid for e in engines] + [n.pid for n in self.nodes if n.running]
        return {pid: cpu_seconds(pid) for pid in pids}

    async def _used_memory(self) -> int:
        total = 0
        for node in self.masters:
            plain = Redis(host="127.0.0.1", port=node.port)
            try:
                total += int((await plain.info("memory"))["used_memory"])
            finally:
                await plain.aclose()
        return total


def _symbol(i: int) -> str:
    return SYMBOLS[i % len(SYMBOLS)]


def _us(seconds: float, plans: int) -> float:
    return seconds * 1e6 / plans if plans else float("nan")


def _ms(entry_id: Any) -> int:
    return int(_text(entry_id).split("-", 1)[0])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@contextlib.contextmanager
def _workdir(workdir: Path | None) -> Iterator[Path]:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix="rotation-fsm-cluster-bench-") as temp:
        yield Path(temp)


# ------------------------------------------------------------ report


def render_rows(rows: Sequence[BooksRow]) -> str:
    """A Markdown table of `rows`, the 1-node row first; `×` is the rate over that row's."""
    base = rows[0].rate if rows else float("nan")
    lines = [
        "| setup | books | engines | decisions/s | × 1 node | engine µs/plan "
        "| redis µs/plan | busiest master µs/plan | bytes/plan | engine RSS MB |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        flag = "" if r.complete else f" (only {r.decided}/{r.plans})"
        lines.append(
            f"| {r.setup} | {r.books} | {r.engines} | {r.rate:,.0f}{flag} | {r.rate / base:.2f} "
            f"| {r.engine_cpu_us:.0f} | {r.redis_cpu_us:.0f} | {r.busiest_master_cpu_us:.0f} "
            f"| {r.bytes_per_plan:,.0f} | {r.engine_rss_mb:.0f} |"
        )
    return "\n".join(lines)


def render_idle(idle: Sequence[IdleRow]) -> str:
    """A Markdown table of the idle rows, with the marginal cost per book in the last row."""
    lines = [
        "| idle books | engine CPU % of a core | redis CPU % (all nodes) | engine RSS MB "
        "| connections on the masters |",
        "|--:|--:|--:|--:|--:|",
    ]
    for r in idle:
        lines.append(
            f"| {r.books} | {r.engine_cpu_pct:.1f} | {r.redis_cpu_pct:.1f} "
            f"| {r.engine_rss_mb:.0f} | {r.clients} |"
        )
    if len(idle) >= 2:
        d = idle[-1].per_book(idle[0])
        lines.append(
            f"| per extra book | {d['engine_cpu_pct']:.2f} | {d['redis_cpu_pct']:.2f} "
            f"| {d['engine_rss_mb']:.2f} | {d['clients']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.cluster`: print the table (and JSON with `--json`)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__)
    parser.add_argument("--plans", type=int, default=20_000, help="plans per book's burst")
    parser.add_argument("--books", default="1,3,6", help="book counts on the cluster")
    parser.add_argument("--books-per-engine", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=1, help="replicas per master")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row (median kept)")
    parser.add_argument("--idle-books", default="1,30", help="book counts served idle")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--workdir", type=Path, help="keep child logs here")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.books.split(",") if c.strip()]
    idle = [int(c) for c in args.idle_books.split(",") if c.strip()]
    report = asyncio.run(
        measure_books(
            counts,
            plans_per_book=args.plans,
            books_per_engine=args.books_per_engine,
            replicas=args.replicas,
            repeat=args.repeat,
            idle_books=idle,
            idle_seconds=args.idle_seconds,
            workdir=args.workdir,
        )
    )
    print(report.render())
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    return 0 if all(r.complete for r in report.rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
