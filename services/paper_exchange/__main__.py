"""`python -m services.paper_exchange`: the Binance-shaped HTTP API and the apply loop.

Configured by the environment. The engine's own variables are read the engine's
way (`rotation_fsm.settings.load_settings`): `REDIS_URL`, `GOV_BOOK`, `STREAM_*`,
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

from rotation_fsm.keys import Keys
from rotation_fsm.regime import Regime
from rotation_fsm.retry import Backoff, wait_or_stop
from rotation_fsm.settings import load_settings
from services.entry import run_main, setting

from .apply import REDIS_DOWN, ApplyConfig, ApplyLoop, seed_regimes, walk_marks
from .book import PaperBook
from .protocol import make_app

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
    seed_regimes(book, config.regimes, now_ms=int(time.time() * 1000))
    redis = Redis.from_url(config.redis_url, socket_connect_timeout=2.0)
    loop = ApplyLoop(redis, book, config.keys, config.apply)
    runner = web.AppRunner(
        make_app(book, api_key=config.api_key, api_secret=config.api_secret), access_log=None
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.port).start()
        port = runner.addresses[0][1] if runner.addresses else config.port
        await _until_group(loop, stop)
        if ready is not None:
            ready(port)
        await asyncio.gather(
            loop.run(stop),
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
            f"lost {a.lost_rate:.0%}",
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
