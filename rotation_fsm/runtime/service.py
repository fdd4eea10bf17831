"""`rotation-fsm run`: listener + timer + HTTP for one book, supervised.

Redis outages are waited out with backoff (readiness says so meanwhile) and
the loops go on where they left off: nothing is acknowledged before its
commit, so nothing is lost. SIGTERM lets the batch in progress commit and
exits 0 well within 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from redis.exceptions import (
    AuthenticationError,
    OutOfMemoryError,
    ResponseError,
)

from .. import __version__
from ..core.logs import SECRETS, mask_credentials, setup_logging
from ..core.settings import Book, SettingError, Settings
from ..store.connections import (
    REDIS_DOWN,
    connect,
    is_redis_down,
    is_redis_out_of_memory,
)
from ..store.gateway import AnyRedis, Store
from ..store.keys import Keys
from ..store.retry import Backoff, wait_or_stop
from ..store.view_share import SnapshotShare
from ..web.http import Health, make_app
from .account_view import AccountView, ViewConfig, ws_url_for
from .controls import Controls
from .engine import BookEngine, wall_ms
from .exchange import ExchangeClient
from .heartbeat import Publisher
from .listener import Listener
from .metrics import Metrics
from .timer import Timer
from .view_metrics import ViewCollector
from .weights import WeightBudget

log = logging.getLogger("rotation_fsm.runtime.service")


@dataclass
class BookRun:
    """One book's parts inside a running engine process."""

    name: str
    engine: BookEngine
    listener: Listener
    timer: Timer
    exchange: ExchangeClient
    heartbeat: Publisher
    view: AccountView


@dataclass
class Running:
    """Handles of a running engine (tests and the demo drive it through these).

    `engine`, `listener` and `timer` are the first book's (usually the only one).
    """

    books: dict[str, BookRun]
    health: Health
    metrics: Metrics
    stop: asyncio.Event
    http_port: int = 0

    @property
    def _first(self) -> BookRun:
        return next(iter(self.books.values()))

    @property
    def engine(self) -> BookEngine:
        return self._first.engine

    @property
    def listener(self) -> Listener:
        return self._first.listener

    @property
    def timer(self) -> Timer:
        return self._first.timer


async def supervise(
    name: str,
    step: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    health: Health,
    metrics: Metrics,
) -> None:
    """Run `step` until stop; on a Redis outage mark not ready and retry with backoff."""
    backoff = Backoff(first_s=0.2, cap_s=5.0)
    while not stop.is_set():
        try:
            await step()
            backoff.reset()
        except Exception as exc:
            out_of_memory = is_redis_out_of_memory(exc)
            if not out_of_memory and not is_redis_down(exc):
                raise
            health.redis_ok = False
            health.down[name] = str(exc)
            health.redis_out_of_memory = out_of_memory
            health.last_error = f"{name}: {type(exc).__name__}: {exc}"
            metrics.redis_up.set(0)
            metrics.redis_out_of_memory.set(1 if out_of_memory else 0)
            delay_s = backoff.next_s()
            log.warning("redis unavailable in %s, retrying in %.1fs: %s", name, delay_s, exc)
            await wait_or_stop(stop, delay_s)


def _view_config(settings: Settings, book: Book) -> ViewConfig:
    v = settings.exchange_view
    ws_url = ws_url_for(book.binance_base_url, book.binance_ws_url)
    return ViewConfig(
        ws_url="" if v.mode == "polling" else ws_url,
        stale_ms=v.stale_ms,
        reconcile_s=v.reconcile_s,
        poll_s=v.poll_s,
        keepalive_s=v.keepalive_s,
        reconnect_s=v.reconnect_s,
        refresh_gap_s=v.refresh_gap_s,
    )


def _book_run(
    settings: Settings, book: Book, redis: AnyRedis, reader: AnyRedis, budget: WeightBudget
) -> BookRun:
    keys = Keys(book=book.name, streams=settings.streams)
    store = Store(
        redis,
        keys,
        group=settings.consumer_group,
        retention_s=settings.retention_s,
        audit_maxlen=settings.audit_maxlen,
    )
    exchange = ExchangeClient(book.binance_base_url, book.api_key, book.api_secret, budget=budget)
    engine = BookEngine(store, exchange, settings.rules)
    view = AccountView(
        exchange,
        _view_config(settings, book),
        needs_account=lambda: engine.rules.margin_gate_on,
        share=SnapshotShare(redis, keys.view_snapshot),
    )
    engine.view = view
    listener = Listener(
        reader,
        engine,
        keys,
        group=settings.consumer_group,
        consumer=settings.consumer_name,
        claim_idle_ms=settings.claim_idle_ms,
    )
    heartbeat = Publisher(
        redis,
        keys,
        consumer=settings.consumer_name,
        version=__version__,
        started_ms=wall_ms(),
        interval_s=settings.heartbeat_s,
        env_rules=settings.rules,
        env_names=settings.env_rule_names,
    )
    timer = Timer(redis, engine, keys)
    return BookRun(book.name, engine, listener, timer, exchange, heartbeat, view)


def _loops(run: BookRun, running: Running, ready: set[str], total: int) -> list[Awaitable[None]]:
    """The supervised listener and timer of one book."""
    health, metrics, stop = running.health, running.metrics, running.stop
    tag = f"[{run.name}]" if run.name else ""
    listener, timer, heartbeat = f"listener{tag}", f"timer{tag}", f"heartbeat{tag}"

    async def listen_step() -> None:
        if run.name not in ready:
            await run.listener.ensure_groups()
            await run.listener.run_once(pending=True)
            ready.add(run.name)
            health.groups_ok = len(ready) == total
        await run.listener.run_once(block_ms=run.listener.block_ms)
        _mark_up(health, metrics, listener)

    async def timer_step() -> None:
        fired = await run.timer.run_once()
        _mark_up(health, metrics, timer)
        if fired < run.timer.batch:
            await wait_or_stop(stop, await run.timer.pause_s())

    async def heartbeat_step() -> None:
        await run.heartbeat.beat(run.engine.rules, run.engine.clock())
        _mark_up(health, metrics, heartbeat)
        await wait_or_stop(stop, run.heartbeat.interval_s)

    return [
        supervise(listener, listen_step, stop, health, metrics),
        supervise(timer, timer_step, stop, health, metrics),
        supervise(heartbeat, heartbeat_step, stop, health, metrics),
        keep_view(run.view, stop, tag),
    ]


async def keep_view(view: AccountView, stop: asyncio.Event, tag: str) -> None:
    """Run the book's exchange view until stop; a bug in it is logged and it starts
    again (decisions meanwhile fail closed on a stale view), never the engine's end."""
    while not stop.is_set():
        try:
            await view.run(stop)
        except Exception:
            log.exception("exchange view%s failed; starting it again", tag)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)


async def run_engine(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    started: Callable[[Running], None] | None = None,
) -> int:
    """Run the engine for every configured book until `stop` (or SIGTERM/SIGINT)."""
    stop = stop or asyncio.Event()
    redis, reader = connect(settings), connect(settings, blocking=True)
    # One request-weight budget for every REST call of this process (all books share
    # the IP's limit).
    v = settings.exchange_view
    budget = WeightBudget(v.weight_limit, v.weight_share)
    books = {b.name: _book_run(settings, b, redis, reader, budget) for b in settings.books}
    metrics = Metrics()
    metrics.registry.register(ViewCollector({name: run.view for name, run in books.items()}))
    health = Health(
        stores={name: run.engine.store for name, run in books.items()},
        views={name: run.view for name, run in books.items()},
    )
    runner: web.AppRunner | None = None
    try:  # whatever fails from here on, nothing opened is left open
        await refuse_unusable_redis(redis, settings.redis_url)
        controls = {}
        for name, run in books.items():
            await run.exchange.start()
            run.engine.tally_observers.append(metrics.observe)
            run.engine.conflict_hooks.append(metrics.conflicts.inc)
            controls[name] = Controls(redis, run.engine.store.keys, settings)
        app = make_app(
            health,
            metrics,
            controls=controls,
            token=settings.http_token,
            hosts=(settings.http_host, *settings.http_allowed_hosts),
            max_live_pages=settings.sse_max_clients,
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = await _listen(runner, settings.http_host, settings.metrics_port)
        running = Running(books, health, metrics, stop, port)
        _install_signals(stop)
        log.info(
            "rotation-fsm running: books=%s redis=%s%s http=%s:%d consumer=%s/%s",
            ",".join(repr(b) for b in books),
            mask_credentials(settings.redis_url),
            " (cluster)" if settings.redis_cluster else "",
            settings.http_host,
            port,
            settings.consumer_group,
            settings.consumer_name,
        )
        if started:
            started(running)
        ready: set[str] = set()
        await asyncio.gather(
            *(loop for run in books.values() for loop in _loops(run, running, ready, len(books)))
        )
    finally:
        for run in books.values():
            with contextlib.suppress(*REDIS_DOWN, OutOfMemoryError):  # left pending: redelivered
                await run.engine.flush()  # the last pipelined commit
            if runner is not None:  # it started: its record is taken back
                with contextlib.suppress(*REDIS_DOWN):  # unreachable: the record expires
                    await run.heartbeat.withdraw()
        if runner is not None:
            await runner.cleanup()
        for run in books.values():
            await run.exchange.close()
        await redis.aclose()
        await reader.aclose()
    log.info("rotation-fsm stopped")
    return 0


async def refuse_unusable_redis(redis: AnyRedis, url: str) -> None:
    """SettingError naming REDIS_URL when Redis answers but refuses us (a database
    index out of range, a wrong password): waiting would never help. A Redis that
    does not answer yet is waited for like any outage."""
    try:
        await redis.ping()
    except (AuthenticationError, ResponseError) as exc:
        raise SettingError(
            "REDIS_URL", mask_credentials(url), f"a Redis that accepts it (it said: {exc})"
        ) from None
    except Exception as exc:
        if not is_redis_down(exc):
            raise


async def _listen(runner: web.AppRunner, host: str, port: int) -> int:
    """Bind the HTTP server; returns its port. SettingError naming GOV_HTTP_HOST (no
    such address here) or METRICS_PORT (taken, or not ours to take) if it cannot."""
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        cause = exc.strerror or str(exc)
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            raise SettingError(
                "GOV_HTTP_HOST", host, f"an address of this host ({cause})"
            ) from None
        raise SettingError(
            "METRICS_PORT", str(port), f"a free TCP port on {host} ({cause})"
        ) from None
    return int(runner.addresses[0][1]) if runner.addresses else port


def _mark_up(health: Health, metrics: Metrics, loop: str) -> None:
    """`loop` reached Redis; ready again once no loop is failing (a Redis out of
    memory still serves reads, so the timer succeeds while every commit fails)."""
    health.down.pop(loop, None)
    if not health.redis_ok and not health.down:
        health.redis_ok = True
        health.redis_out_of_memory = False
        health.last_error = ""
        metrics.redis_up.set(1)
        metrics.redis_out_of_memory.set(0)


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)


def command(args: Any) -> int:
    """`rotation-fsm run`: settings from the environment; a bad one exits 2 in one line."""
    import sys

    from ..core.settings import load_settings

    try:
        settings = load_settings()
    except SettingError as exc:
        print(f"rotation-fsm: bad setting: {exc}", file=sys.stderr)
        return 2
    SECRETS.add(settings.secrets())
    setup_logging(
        getattr(args, "verbose", False), getattr(args, "log_format", None) or settings.log_format
    )
    try:
        return asyncio.run(run_engine(settings))
    except KeyboardInterrupt:
        return 0
    except SettingError as exc:  # found only when Redis or the network was asked
        print(f"rotation-fsm: bad setting: {exc}", file=sys.stderr)
        return 2
