"""The rig every measurement runs on: its own redis-server, the paper exchange, engines.

Engines run as separate processes (`python -m rotation_fsm.tools.cli run`), configured
by the environment exactly as in production, so the measuring client never
shares their event loop. Nothing here talks to a Redis the rig did not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from rotation_fsm.devkit.redis_process import RedisProcess
from rotation_fsm.store.keys import Keys

from .procs import Child, rss_bytes
from .resp import RawConnection

API_KEY = "bench-key-0000"
API_SECRET = "bench-secret-0000"
GROUP = "rotation-fsm"
#: Redis may not grow past this: a runaway engine fails its commits instead of the machine
MAXMEMORY = "6gb"
PRELOAD_CHUNK = 2000
POLL_S = 0.01
ENGINE_READY = r"rotation-fsm running: .* http=[^ ]+:(\d+)"
EXCHANGE_READY = r"paper exchange on (http://\S+)"


def plan_fields(plan_id: str, symbol: str) -> dict[str, str]:
    """An OPEN plan as the intent bridge writes it (contract §2)."""
    return {
        "plan_id": plan_id,
        "symbol": symbol,
        "decision": "EXECUTE",
        "action": "OPEN_LONG",
        "side": "BUY",
        "qty": "0.1",
        "timestamp": f"{time.time():.3f}",
    }


@dataclass
class Engine:
    """One engine process and the HTTP port it serves metrics on."""

    child: Child
    http_port: int

    @property
    def pid(self) -> int:
        return self.child.pid

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    async def metrics_text(self) -> str:
        """The engine's Prometheus exposition (`/metrics`)."""
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as reply:
            return await reply.text()


@dataclass
class Rig:
    """A redis-server, a client on it, and the HTTP-only paper exchange."""

    workdir: Path
    server: RedisProcess
    redis: Redis
    exchange: Child
    exchange_url: str
    keys: Keys = field(default_factory=Keys)
    engines: list[Engine] = field(default_factory=list)
    _serial: int = 0

    @property
    def redis_version(self) -> str:
        return self.server.version

    def log_path(self, name: str) -> Path:
        """A fresh log file for a child process."""
        self._serial += 1
        return self.workdir / f"{self._serial:03d}-{name}.log"

    async def reset(self, universe: Iterable[str]) -> None:
        """An empty Redis with a policy whose universe is `universe`."""
        await self.redis.flushall()
        await self.redis.hset(self.keys.policy, "universe_symbols", json.dumps(list(universe)))

    def engine_env(
        self, consumer: str, exchange_url: str | None = None, **extra: str
    ) -> dict[str, str]:
        """The environment of `rotation-fsm run` on this rig (gates that need klines of
        other symbols are off; CHOP slots are plenty unless `extra` says otherwise)."""
        return {
            "REDIS_URL": self.server.url,
            "BINANCE_BASE_URL": exchange_url or self.exchange_url,
            "BINANCE_API_KEY": API_KEY,
            "BINANCE_API_SECRET": API_SECRET,
            "METRICS_PORT": "0",
            "GOV_MAX_CORRELATION": "1",
            "GOV_MAX_MARGIN_USAGE_PCT": "1",
            "GOV_ACTIVE_SLOTS_CHOP": "1000000",
            "GOV_CONSUMER_GROUP": GROUP,
            "GOV_CONSUMER_NAME": consumer,
            **extra,
        }

    def start_engine(self, consumer: str, exchange_url: str | None = None, **extra: str) -> Engine:
        """An engine process; returns once it says it is running (its loops start next)."""
        return self.start_engines([consumer], exchange_url, **extra)[0]

    def start_engines(
        self, consumers: list[str], exchange_url: str | None = None, **extra: str
    ) -> list[Engine]:
        """One engine process per consumer name, started together; returns once each says
        it is running."""
        children = [
            Child(
                "rotation_fsm.tools.cli",
                ["run"],
                self.engine_env(name, exchange_url, **extra),
                self.log_path(f"engine-{name}"),
            )
            for name in consumers
        ]
        engines = [Engine(c, int(c.wait_for_line(ENGINE_READY).group(1))) for c in children]
        self.engines += engines
        return engines

    def stop_engines(self) -> None:
        """SIGTERM every engine and wait for it."""
        for engine in self.engines:
            engine.child.stop()
        self.engines.clear()

    def start_exchange(self, *, positions: int = 0, apply: bool = False) -> tuple[Child, str]:
        """Another paper exchange child (a book of its own), e.g. a full book that executes."""
        args = ["--positions", str(positions)] + (["--apply"] if apply else [])
        env = _exchange_env(self.server.url)
        child = Child("benchmarks.exchange", args, env, self.log_path("exchange"))
        return child, child.wait_for_line(EXCHANGE_READY).group(1)

    async def create_groups(self, start_id: str) -> None:
        """The engine's consumer group on both input streams, at `start_id`."""
        for stream in (self.keys.plans, self.keys.results):
            await self.redis.xgroup_create(stream, GROUP, id=start_id, mkstream=True)

    async def wait_groups(self, timeout_s: float = 10.0) -> None:
        """Until an engine has created its group on the plan stream (it starts at `$`, so
        a plan written before would never be read)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            exists = await self.redis.exists(self.keys.plans)
            if exists and await self.redis.xinfo_groups(self.keys.plans):
                return
            await asyncio.sleep(POLL_S)
        raise TimeoutError("no engine created its consumer group")

    async def preload(self, plans: Iterable[dict[str, str]]) -> None:
        """XADD `plans`, pipelined in chunks on a bare connection (fast, not measured)."""
        commands = [
            ("XADD", self.keys.plans, "*", *(x for pair in fields.items() for x in pair))
            for fields in plans
        ]
        await asyncio.to_thread(self._pipeline_chunks, commands)

    def _pipeline_chunks(self, commands: list[tuple[str, ...]]) -> None:
        with RawConnection(self.server.port) as conn:
            for start in range(0, len(commands), PRELOAD_CHUNK):
                conn.pipeline(commands[start : start + PRELOAD_CHUNK])

    async def commits(self) -> tuple[int, int]:
        """(EVALSHA calls since the last CONFIG RESETSTAT, the book's version): the
        engine's commits tried and applied — the difference is refused by the version guard."""
        stats: dict[str, Any] = await self.redis.info("commandstats")
        calls = sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))
        return calls, int(await self.redis.get(self.keys.version) or 0)

    async def wait_length(self, stream: str, count: int, timeout_s: float) -> int:
        """Poll XLEN of `stream` until it reaches `count` or `timeout_s` passes; the length."""
        deadline = time.monotonic() + timeout_s
        length = 0
        while time.monotonic() < deadline:
            length = await self.redis.xlen(stream)
            if length >= count or not all(e.child.alive() for e in self.engines):
                return int(length)
            await asyncio.sleep(POLL_S)
        return int(length)

    async def used_memory(self) -> int:
        """INFO used_memory of the rig's Redis, in bytes."""
        info: dict[str, Any] = await self.redis.info("memory")
        return int(info["used_memory"])


@contextlib.asynccontextmanager
async def open_rig(workdir: Path) -> AsyncIterator[Rig]:
    """Start redis-server and the paper exchange; stop everything on the way out."""
    server = RedisProcess()
    server.start()
    redis = Redis.from_url(server.url, socket_timeout=None)
    exchange: Child | None = None
    rig: Rig | None = None
    try:
        await redis.config_set("maxmemory", MAXMEMORY)
        await redis.config_set("maxmemory-policy", "noeviction")
        env = _exchange_env(server.url)
        exchange = Child("benchmarks.exchange", [], env, workdir / "000-exchange.log")
        url = exchange.wait_for_line(EXCHANGE_READY).group(1)
        rig = Rig(workdir, server, redis, exchange, url)
        yield rig
    finally:
        if rig is not None:
            rig.stop_engines()
        if exchange is not None:
            exchange.stop()
        await redis.aclose()
        server.stop()


def _exchange_env(redis_url: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "BINANCE_API_KEY": API_KEY, "BINANCE_API_SECRET": API_SECRET}
