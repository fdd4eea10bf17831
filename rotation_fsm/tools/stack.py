"""`rotation-fsm stack`: the docker-compose services as local processes, no Docker needed.

Starts its own `redis-server` (AOF on) unless `--redis-url` is given, then the
paper exchange (`python -m rotation_fsm.devkit.paper_exchange`), two engine replicas in one
consumer group (`python -m rotation_fsm.tools.cli run`, distinct `GOV_CONSUMER_NAME`
and `METRICS_PORT`), the intent simulator and, when `prometheus` is on PATH, a
Prometheus scraping them with the alert rules of deploy/ — each a child process, started in
dependency order like compose's `depends_on: service_healthy`. Their output is
relayed line by line, prefixed with the service name. Ctrl-C or SIGTERM (or the
end of `--seconds`) stops them all, newest first; exit 0, or 1 if a service died.

Settings come from the environment like in compose; the stack only fixes what
wiring needs (URLs, ports, consumer names) and gives a few defaults that make a
short run interesting (a 15 s rotation lock, 5 % rejected orders, 5 % lost results,
regimes per symbol) unless the environment already says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ..core.errors import RotationFsmError
from ..devkit.launch import die_with_parent
from ..devkit.prometheus_config import RULES, config_text, find_prometheus, prometheus_argv
from ..devkit.redis_process import RedisProcess, find_redis_server, free_port
from ..store.keys import Keys

#: defaults for a local run, overridden by the environment (docker-compose.yml has the same)
DEFAULTS: dict[str, str] = {
    "GOV_ROTATION_LOCK_TTL": "15",
    "PAPER_REJECT_RATE": "0.05",
    "PAPER_LOST_RATE": "0.05",
    "PAPER_REGIMES": (
        "BTCUSDT=TREND_STRONG,ETHUSDT=TREND_STRONG,SOLUSDT=BASE,BNBUSDT=BASE,"
        "XRPUSDT=CHOP,ADAUSDT=CHOP,DOGEUSDT=CHOP,AVAXUSDT=BASE,LINKUSDT=BASE,DOTUSDT=BASE"
    ),
    "BINANCE_API_KEY": "paper-key",
    "BINANCE_API_SECRET": "paper-secret",
}
REPLICAS = ("engine-1", "engine-2")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 8.0


class StackError(RotationFsmError, RuntimeError):
    """A service did not come up."""


@dataclass
class Service:
    """One child process and the relay of its output."""

    name: str
    argv: list[str]
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    relay: asyncio.Task[None] | None = None
    #: text → future set when a line containing it is printed
    watches: dict[str, asyncio.Future[str]] = field(default_factory=dict)
    stopping: bool = False

    def watch(self, text: str) -> asyncio.Future[str]:
        future = self.watches.get(text)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self.watches[text] = future
        return future

    async def start(self, write: Callable[[str], None]) -> None:
        """Spawn the process in its own session (a terminal's Ctrl-C reaches only us, so
        we stop the services in order); Linux kills it if we die."""
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self.relay = asyncio.create_task(self._relay(write))

    async def _relay(self, write: Callable[[str], None]) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            write(f"{self.name:<16}| {line}")
            for text, future in self.watches.items():
                if text in line and not future.done():
                    future.set_result(line)
        code = await self.proc.wait()
        for future in self.watches.values():
            if not future.done():
                future.set_exception(StackError(f"{self.name} exited with code {code}"))

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; the exit code."""
        self.stopping = True
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self.relay is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.relay, 2.0)
        return self.proc.returncode


def service_env(base: Mapping[str, str], wiring: Mapping[str, str]) -> dict[str, str]:
    """`base` (the environment) over `DEFAULTS`, with `wiring` on top: the stack decides
    URLs, ports and names; everything else is the operator's."""
    return {**DEFAULTS, **base, "PYTHONUNBUFFERED": "1", **wiring}


def _write(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _until_ready(url: str, service: Service, timeout_s: float) -> None:
    """Poll the engine's /readyz (Redis reachable, consumer groups created)."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
        while time.monotonic() < deadline:
            if not service.alive:
                raise StackError(
                    f"{service.name} exited with code {service.proc and service.proc.returncode}"
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as answer:
                    if answer.status == 200:
                        return
            await asyncio.sleep(0.1)  # a readiness probe of another process
    raise StackError(f"{service.name} not ready at {url} after {timeout_s:g} s")


@dataclass
class Stack:
    """The services of docker-compose.yml, as children of this process."""

    redis_url: str
    env: Mapping[str, str]
    services: list[Service] = field(default_factory=list)
    _workdir: tempfile.TemporaryDirectory[str] | None = None

    async def up(self) -> None:
        """Start every service in dependency order; raise StackError if one fails."""
        exe = sys.executable
        paper_port = free_port()
        paper = self._add(
            "paper-exchange",
            [exe, "-m", "rotation_fsm.devkit.paper_exchange"],
            PAPER_HOST="127.0.0.1",
            PAPER_PORT=str(paper_port),
        )
        await paper.start(_write)
        await asyncio.wait_for(paper.watch("listening on"), START_TIMEOUT_S)
        ready: list[tuple[str, Service]] = []
        for name in REPLICAS:
            port = free_port()
            engine = self._add(
                name,
                [exe, "-m", "rotation_fsm.tools.cli", "run"],
                BINANCE_BASE_URL=f"http://127.0.0.1:{paper_port}",
                GOV_CONSUMER_NAME=name,
                GOV_HTTP_HOST="127.0.0.1",
                METRICS_PORT=str(port),
            )
            await engine.start(_write)
            ready.append((f"http://127.0.0.1:{port}/readyz", engine))
        for url, engine in ready:
            await _until_ready(url, engine, START_TIMEOUT_S)
        simulator = self._add(
            "intent-simulator", [exe, "-m", "rotation_fsm.devkit.intent_simulator"]
        )
        await simulator.start(_write)
        engines = [url.rsplit("/", 1)[0] for url, _ in ready]
        prometheus = await self._prometheus(paper_port, engines)
        self._announce(paper_port, engines, prometheus)

    async def _prometheus(self, paper_port: int, engines: list[str]) -> str | None:
        """Start `prometheus` scraping the engines and the exchange when it is on PATH
        (its data in a temporary directory); its address, or None."""
        binary = find_prometheus()
        if binary is None:
            return None
        self._workdir = tempfile.TemporaryDirectory(prefix="rotation-fsm-prometheus-")
        work = Path(self._workdir.name)
        config = work / "prometheus.yml"
        targets = [url.removeprefix("http://") for url in engines]
        rules = [RULES] if RULES.exists() else []
        config.write_text(config_text(targets, f"127.0.0.1:{paper_port}", rules=rules))
        listen = f"127.0.0.1:{free_port()}"
        service = Service(
            "prometheus",
            prometheus_argv(binary, config, work / "data", listen),
            {"PATH": os.environ.get("PATH", "")},
        )
        self.services.append(service)
        await service.start(_write)
        await _until_ready(f"http://{listen}/-/ready", service, START_TIMEOUT_S)
        return f"http://{listen}"

    def _add(self, name: str, argv: list[str], **wiring: str) -> Service:
        env = service_env(self.env, {"REDIS_URL": self.redis_url, **wiring})
        service = Service(name, argv, env)
        self.services.append(service)
        return service

    def _announce(self, paper_port: int, engines: list[str], prometheus: str | None) -> None:
        keys = Keys()
        if prometheus is None:
            scraper = "  prometheus        not started (no `prometheus` on PATH)"
        else:
            rules = "alert rules loaded" if RULES.exists() else "no alert rules"
            scraper = f"  prometheus        {prometheus}  (engines and exchange; {rules})"
        lines = [
            f"  paper-exchange    http://127.0.0.1:{paper_port}  (Binance USD-M futures REST)",
            *(
                f"  {name:<17} {url}/healthz  /readyz  /metrics  /rotations"
                for name, url in zip(REPLICAS, engines, strict=True)
            ),
            f"  intent-simulator  -> {keys.plans}",
            scraper,
        ]
        _write("\n".join(lines))

    def dead(self) -> Service | None:
        """A service that exited without being asked to."""
        for service in self.services:
            if not service.alive and not service.stopping:
                return service
        return None

    async def down(self) -> None:
        """Stop every service, newest first (the simulator before the engines)."""
        for service in reversed(self.services):
            code = await service.stop()
            if code is not None:
                _write(f"{service.name:<16}| stopped (exit code {code})")
        if self._workdir is not None:
            self._workdir.cleanup()


async def _watch(stack: Stack, stop: asyncio.Event, seconds: float) -> int:
    """Wait for `stop`, the end of `seconds` (0: none) or a dead service."""
    deadline = time.monotonic() + seconds if seconds > 0 else None
    while not stop.is_set():
        dead = stack.dead()
        if dead is not None:
            code = dead.proc.returncode if dead.proc else None
            _write(f"rotation-fsm stack: {dead.name} exited with code {code}; stopping all")
            return 1
        if deadline is not None and time.monotonic() >= deadline:
            _write(f"rotation-fsm stack: {seconds:g} s are up; stopping all")
            return 0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.25)
    _write("rotation-fsm stack: stopping all")
    return 0


async def run_stack(redis_url: str, seconds: float, env: Mapping[str, str]) -> int:
    """Bring the services up on `redis_url`, keep them up, take them down; exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    stack = Stack(redis_url, env)
    try:
        up = asyncio.create_task(stack.up())
        interrupted = asyncio.create_task(stop.wait())
        await asyncio.wait({up, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        interrupted.cancel()
        if not up.done():
            up.cancel()
            with contextlib.suppress(asyncio.CancelledError, StackError):
                await up
            return 0
        try:
            up.result()
        except (StackError, TimeoutError) as exc:
            _write(f"rotation-fsm stack: {exc or 'a service did not start in time'}")
            return 1
        _write("Ctrl-C stops them all." if seconds <= 0 else f"Running for {seconds:g} s.")
        return await _watch(stack, stop, seconds)
    finally:
        await stack.down()


def command(args: Any) -> int:
    """`rotation-fsm stack [--redis-url URL] [--seconds N]`; returns the exit code."""
    _write("rotation-fsm stack: the docker-compose services as local processes")
    server: RedisProcess | None = None
    if args.redis_url:
        redis_url = args.redis_url
        _write(f"  redis             {redis_url}  (given)")
    else:
        path, description = find_redis_server()
        server = RedisProcess(binary=path, appendonly=True)
        server.start()
        redis_url = server.url
        _write(f"  redis             {redis_url}  ({description}, AOF on, dir {server.data_dir})")
    _write(f"  for the other commands, paste:  export REDIS_URL={redis_url}")
    try:
        return asyncio.run(run_stack(redis_url, float(args.seconds), dict(os.environ)))
    except KeyboardInterrupt:
        return 0
    finally:
        if server is not None:
            server.stop()
            _write("redis             stopped")
