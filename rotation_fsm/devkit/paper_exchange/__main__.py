"""`python -m rotation_fsm.devkit.paper_exchange`: the Binance-shaped HTTP API and the apply loop.

Configured by the environment. The engine's own variables are read the engine's
way (`rotation_fsm.core.settings.load_settings`): `REDIS_URL`, `GOV_BOOK`, `STREAM_*`,
`BINANCE_API_KEY` / `BINANCE_API_SECRET` — so the two always agree on names and
credentials. The paper exchange's own:

| variable | default | meaning |
|---|---|---|
| `PAPER_HOST` | `127.0.0.1` | address the HTTP API binds (`0.0.0.0` in a container) |
| `PAPER_PORT` | `8090` | its port (0: any free one) |
| `PAPER_LATENCY_MS` | `200` | delay between a decision and its fill and result |
| `PAPER_REJECT_RATE` | `0` | fraction of orders rejected (`executed=false`) |
| `PAPER_LOST_RATE` | `0` | fraction of results never written (rotations time out) |
| `PAPER_SEED` | — | seed of the dice and the mark walk (unset: different each run) |
| `PAPER_REGIMES` | — | `BTCUSDT=TREND_STRONG,ETHUSDT=BASE,…`: klines served per symbol |
| `PAPER_WEIGHT_LIMIT` | `2400` | request weight per minute before 429 (then 418 bans) |
| `PAPER_HTTP_LATENCY_MS` | `0` | every REST answer waits this long (a real exchange's distance) |
| `PAPER_BAN_S` | `120` | how long a 418 ban lasts |
| `PAPER_APPLY` | `true` | `false`: serve the API only, execute nothing (no fills, no results) |
| `PAPER_USER_STREAM` | `true` | `false`: no user-data stream (the listenKey call answers 404) |

A bad value exits 2 with one line naming the variable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import web
from redis.asyncio import Redis

from ...core.regime import Regime
from ...core.settings import load_settings, parse_bool
from ...store.keys import Keys
from ...store.retry import Backoff, wait_or_stop
from ..entry import run_main, setting
from .apply import REDIS_DOWN, ApplyConfig, ApplyLoop, seed_regimes, walk_marks
from .book import PaperBook
from .protocol import make_app
from .user_stream import UserStream

T = TypeVar("T")


@dataclass(frozen=True)
class PaperConfig:
    """Everything the paper exchange process needs, read once at start-up."""

    redis_url: str
    keys: Keys
    api_key: str
    api_secret: str
    host: str = "127.0.0.1"
    port: int = 8090
    apply: ApplyConfig = field(default_factory=ApplyConfig)
    regimes: dict[str, Regime] = field(default_factory=dict)
    weight_limit: int = 2400
    http_latency_ms: int = 0
    ban_s: int = 120
    user_stream: bool = True
    apply_on: bool = True

    def __repr__(self) -> str:
        return f"PaperConfig(host={self.host!r}, port={self.port}, secrets=hidden)"


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError
    return value


def _seed(text: str) -> int | None:
    return int(text) if text else None


def parse_regimes(text: str) -> dict[str, Regime]:
    """`BTCUSDT=TREND_STRONG,ETHUSDT=BASE` → {symbol: Regime}; ValueError when malformed."""
    regimes: dict[str, Regime] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        symbol, sep, name = item.partition("=")
        if not sep or not symbol.strip():
            raise ValueError(item)
        regimes[symbol.strip()] = Regime(name.strip().upper())
    return regimes


REGIMES_EXPECTED = "SYMBOL=REGIME pairs, comma-separated (TREND_STRONG, BASE, CHOP, UNKNOWN)"


def load_config(env: Mapping[str, str] | None = None) -> PaperConfig:
    """The paper exchange's configuration from `env` (default: the process environment);
    raises SettingError naming the variable."""
    env = os.environ if env is None else env
    settings = load_settings(env)
    apply = ApplyConfig(
        latency_ms=setting(env, "PAPER_LATENCY_MS", "200", _non_negative_int, "ms >= 0"),
        reject_rate=setting(env, "PAPER_REJECT_RATE", "0", _rate, "a fraction from 0 to 1"),
        lost_rate=setting(env, "PAPER_LOST_RATE", "0", _rate, "a fraction from 0 to 1"),
        seed=setting(env, "PAPER_SEED", "", _seed, "a whole number"),
    )
    return PaperConfig(
        redis_url=settings.redis_url,
        keys=Keys(book=settings.book, streams=settings.streams),
        api_key=settings.api_key,
        api_secret=settings.api_secret,
        host=env.get("PAPER_HOST") or "127.0.0.1",
        port=setting(env, "PAPER_PORT", "8090", _port, "a TCP port (0-65535)"),
        apply=apply,
        regimes=setting(env, "PAPER_REGIMES", "", parse_regimes, REGIMES_EXPECTED),
        weight_limit=setting(env, "PAPER_WEIGHT_LIMIT", "2400", _positive_int, "a count >= 1"),
        http_latency_ms=setting(env, "PAPER_HTTP_LATENCY_MS", "0", _non_negative_int, "ms >= 0"),
        ban_s=setting(env, "PAPER_BAN_S", "120", _non_negative_int, "seconds >= 0"),
        user_stream=setting(env, "PAPER_USER_STREAM", "true", parse_bool, "true or false"),
        apply_on=setting(env, "PAPER_APPLY", "true", parse_bool, "true or false"),
    )


async def serve(
    config: PaperConfig,
    stop: asyncio.Event,
    *,
    ready: Callable[[int], None] | None = None,
) -> int:
    """Serve the HTTP API and run the apply loop until `stop`; `ready(port)` is called once
    both accept work. Returns the exit code."""
    book = PaperBook()
    book.limits.limit_per_min = config.weight_limit
    book.limits.ban_s = config.ban_s
    book.answer_delay_s = config.http_latency_ms / 1000
    seed_regimes(book, config.regimes, now_ms=int(time.time() * 1000))
    redis = Redis.from_url(config.redis_url, socket_connect_timeout=2.0)
    loop = ApplyLoop(redis, book, config.keys, config.apply)
    stream = UserStream(book)
    stream.enabled = config.user_stream
    runner = web.AppRunner(
        make_app(book, api_key=config.api_key, api_secret=config.api_secret, stream=stream),
        access_log=None,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.port).start()
        port = runner.addresses[0][1] if runner.addresses else config.port
        await _until_group(loop, stop)
        if ready is not None:
            ready(port)
        await asyncio.gather(
            loop.run(stop) if config.apply_on else stop.wait(),
            walk_marks(book, stop, rng=random.Random(config.apply.seed)),
        )
    finally:
        await runner.cleanup()
        await redis.aclose()
    return 0


async def _until_group(loop: ApplyLoop, stop: asyncio.Event) -> None:
    """Create the apply group, waiting Redis out (compose may start us first)."""
    backoff = Backoff(first_s=0.2, cap_s=5.0)
    while not stop.is_set():
        try:
            await loop.ensure_group()
            return
        except REDIS_DOWN as exc:
            print(f"paper-exchange: waiting for redis: {exc}", file=sys.stderr, flush=True)
            await wait_or_stop(stop, backoff.next_s())


def _announce(config: PaperConfig) -> Callable[[int], None]:
    def ready(port: int) -> None:
        a = config.apply
        print(
            f"paper exchange listening on http://{config.host}:{port} "
            f"(Binance USD-M futures REST); applying {config.keys.decisions} -> "
            f"{config.keys.results}: latency {a.latency_ms} ms, reject {a.reject_rate:.0%}, "
            f"lost {a.lost_rate:.0%}; weight limit {config.weight_limit}/min, user-data "
            f"stream {'on' if config.user_stream else 'off'}",
            flush=True,
        )

    return ready


async def _main(config: PaperConfig) -> int:
    stop = asyncio.Event()
    running = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            running.add_signal_handler(sig, stop.set)
    return await serve(config, stop, ready=_announce(config))


def main() -> int:
    """Entry point: a bad setting exits 2 with one line; SIGTERM/SIGINT exit 0."""
    return run_main("paper-exchange", load_config, _main)


if __name__ == "__main__":
    sys.exit(main())
