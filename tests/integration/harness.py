"""Integration harness: a real redis-server, the paper exchange on loopback, the engine.

Waiting is event-driven: `wait_decision` and friends block on XREAD of the
output streams, so a test resumes the moment the engine commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp.test_utils import TestServer
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rotation_fsm.core.settings import load_settings
from rotation_fsm.devkit.paper_exchange.book import PaperBook
from rotation_fsm.devkit.paper_exchange.protocol import make_app
from rotation_fsm.devkit.paper_exchange.user_stream import UserStream
from rotation_fsm.runtime.account_view import AccountView
from rotation_fsm.runtime.service import Running, run_engine
from rotation_fsm.store.keys import Keys
from tests.stubs import UNIVERSE, plan_fields

API_KEY = "test-key-AAAA1111"
API_SECRET = "test-secret-BBBB2222"


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def fields_of(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


@dataclass
class Stack:
    """Everything one integration test talks to."""

    redis_url: str
    redis: Redis
    exchange: PaperBook
    exchange_url: str
    stream: UserStream
    keys: Keys = field(default_factory=Keys)
    engines: list[tuple[asyncio.Task[int], Running]] = field(default_factory=list)
    seen: dict[str, list[tuple[str, dict[str, str]]]] = field(default_factory=dict)
    taken: dict[str, set[str]] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment an engine of this stack runs with."""
        return {
            "REDIS_URL": self.redis_url,
            "BINANCE_BASE_URL": self.exchange_url,
            "BINANCE_API_KEY": API_KEY,
            "BINANCE_API_SECRET": API_SECRET,
            "METRICS_PORT": "0",
            "GOV_MAX_CORRELATION": "1",
            "GOV_CLAIM_IDLE_MS": "1000",
            **extra,
        }

    async def set_policy(self, symbols: list[str] | None = None) -> None:
        await self.redis.hset(
            self.keys.policy,
            "universe_symbols",
            json.dumps(UNIVERSE if symbols is None else symbols),
        )

    async def start_engine(self, **extra: str) -> Running:
        """An engine in this process (its own task); returns once it is consuming."""
        settings = load_settings(self.env(**extra))
        started: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(run_engine(settings, started=started.set_result))
        done, _ = await asyncio.wait(
            {task, started}, timeout=10, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:  # it ended before it started: show why
            raise RuntimeError(f"engine exited at start: {task.exception() or task.result()}")
        if not done:
            raise TimeoutError("engine did not start within 10 s")
        running = started.result()
        await self.until_groups()
        self.engines.append((task, running))
        return running

    async def until_groups(self) -> None:
        # The engine creates the groups before its first read; the plan a test
        # writes next must come after that (groups start at `$`).
        for _ in range(500):
            groups = (
                await self.redis.xinfo_groups(self.keys.plans)
                if await self.redis.exists(self.keys.plans)
                else []
            )
            if groups:
                return
            await asyncio.sleep(0.01)  # readiness probe of another task, not a sync sleep
        raise TimeoutError("engine never created its consumer groups")

    async def stop_engines(self) -> None:
        for _, running in self.engines:
            running.stop.set()
        for task, _ in self.engines:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
        self.engines.clear()

    async def send_plan(self, plan_id: str, symbol: str = "NEWUSDT", **extra: str) -> str:
        fields = plan_fields(plan_id, symbol, **{"timestamp": f"{time.time():.3f}", **extra})
        return _text(await self.redis.xadd(self.keys.plans, fields))

    async def send_raw(self, stream: str, fields: dict[bytes, bytes]) -> str:
        return _text(await self.redis.xadd(stream, fields))

    async def send_result(
        self, plan_id: str, *, executed: bool = True, reduce_only: bool = True, symbol: str = "X"
    ) -> str:
        fields = {
            "plan_id": plan_id,
            "symbol": symbol,
            "executed": str(executed).lower(),
            "reduceOnly": str(reduce_only).lower(),
            "timestamp": f"{time.time():.3f}",
        }
        return _text(await self.redis.xadd(self.keys.results, fields))

    async def next_entry(
        self, stream: str, match: dict[str, str], timeout_s: float = 10.0
    ) -> dict[str, str]:
        """The oldest entry of `stream` whose fields include `match` and that this test
        has not taken yet; blocks on XREAD for new ones, never polls. Entries read
        while looking for another match stay available (replicas decide out of order)."""
        deadline = time.monotonic() + timeout_s
        seen = self.seen.setdefault(stream, [])
        taken = self.taken.setdefault(stream, set())
        scanned = 0
        while True:
            for entry_id, fields in seen[scanned:]:
                if entry_id not in taken and all(fields.get(k) == v for k, v in match.items()):
                    taken.add(entry_id)
                    return fields
            scanned = len(seen)
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise TimeoutError(f"no entry {match} on {stream}")
            cursor = seen[-1][0] if seen else "0-0"
            # Each block stays under redis-py's 5 s socket timeout; the loop waits longer.
            reply = await self.redis.xread({stream: cursor}, count=500, block=min(left_ms, 2000))
            for _, entries in reply or []:
                seen.extend((_text(i), fields_of(raw)) for i, raw in entries)
            if scanned:  # look again from the first entry not yet taken
                scanned = 0

    async def decision(self, plan_id: str, timeout_s: float = 10.0) -> dict[str, str]:
        return await self.next_entry(self.keys.decisions, {"plan_id": plan_id}, timeout_s)

    async def event(self, name: str, timeout_s: float = 10.0) -> dict[str, str]:
        return await self.next_entry(self.keys.events, {"event": name}, timeout_s)

    async def all_entries(self, stream: str) -> list[dict[str, str]]:
        return [fields_of(raw) for _, raw in await self.redis.xrange(stream)]

    async def decisions_for(self, plan_id: str) -> list[dict[str, str]]:
        return [d for d in await self.all_entries(self.keys.decisions) if d["plan_id"] == plan_id]

    async def resync_views(self, *running: Running) -> None:
        """A REST snapshot in the exchange view of this stack's book, in every engine
        (these or the stack's own): a change made on the paper book reaches the view
        through the stream a moment later, and a mark price never does (Binance's
        user-data stream carries none), so a test that just set marks resyncs."""
        for run in running or tuple(r for _, r in self.engines):
            await run.books[self.keys.book].view.refresh_now()

    def fill_book(self, *symbols: str) -> None:
        """Open positions on the paper exchange, the last one the weakest."""
        for i, symbol in enumerate(symbols):
            self.exchange.open(symbol, 10.0, 100.0)
            self.exchange.set_mark(symbol, 100.0 - i)  # later symbols lose more


async def until_view(view: AccountView, check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait (on the view's change notifications, no polling) until `check()` holds."""
    changed = asyncio.Event()
    view.changed.append(changed.set)
    try:
        async with asyncio.timeout(timeout_s):
            while not check():
                changed.clear()
                await changed.wait()
    finally:
        view.changed.remove(changed.set)


@contextlib.asynccontextmanager
async def paper_exchange() -> AsyncIterator[tuple[PaperBook, str, UserStream]]:
    """The paper exchange on a loopback port: its book, URL and user-data stream."""
    book = PaperBook()
    stream = UserStream(book)
    server = TestServer(
        make_app(book, api_key=API_KEY, api_secret=API_SECRET, stream=stream),
        host="127.0.0.1",
        port=0,
    )
    await server.start_server()
    try:
        yield book, f"http://127.0.0.1:{server.port}", stream
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def open_stack(redis_url: str) -> AsyncIterator[Stack]:
    """A stack on `redis_url` with a policy; engines stopped when it closes."""
    # The test's own client reconnects too: some tests restart the server under it.
    redis = Redis.from_url(
        redis_url,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 10),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    async with paper_exchange() as (book, url, stream):
        s = Stack(redis_url=redis_url, redis=redis, exchange=book, exchange_url=url, stream=stream)
        await s.set_policy()
        try:
            yield s
        finally:
            await s.stop_engines()
            await redis.aclose()


class EngineProcess:
    """`rotation-fsm run` as a child process, for kill -9 and SIGTERM tests."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_lines: list[str] = []

    async def start(self, timeout_s: float = 15.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rotation_fsm.tools.cli", "run"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        await self.wait_for_line("rotation-fsm running", timeout_s)

    async def wait_for_line(self, text: str, timeout_s: float = 15.0) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        stderr = self.proc.stderr
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            raw = await asyncio.wait_for(
                loop.run_in_executor(None, stderr.readline), max(0.1, deadline - time.monotonic())
            )
            if not raw:
                break
            line = raw.decode(errors="replace").rstrip()
            self.log_lines.append(line)
            if text in line:
                return line
        raise TimeoutError(f"engine never printed {text!r}; log: {self.log_lines[-20:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout_s: float = 10.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took)."""
        assert self.proc is not None
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout_s)
        return code, time.monotonic() - start

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
