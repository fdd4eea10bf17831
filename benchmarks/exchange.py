"""`python -m benchmarks.exchange`: the paper exchange as a child process of the benchmark.

Its own process, so serving the engine's HTTP calls never shares an event loop
(or a core's time slice) with the measuring client. Options:

- `--positions N` opens N positions (`held_symbol(i)`) before serving: a full book.
- `--apply` also runs the paper exchange's apply loop (`rotation_fsm.devkit.paper_exchange.apply`)
  with no latency, so closes the engine emits are executed on the book and
  confirmed on the result stream, as in the stack.

Prints `paper exchange on http://127.0.0.1:PORT` once it serves. Configured by
`REDIS_URL`, `BINANCE_API_KEY`, `BINANCE_API_SECRET` (the engine's names).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable

from aiohttp import web
from redis.asyncio import Redis

from rotation_fsm.devkit.paper_exchange.book import PaperBook
from rotation_fsm.devkit.paper_exchange.protocol import make_app
from rotation_fsm.store.keys import Keys

HOST = "127.0.0.1"
POSITION_PRICE = 100.0
POSITION_QTY = 1.0


def held_symbol(index: int) -> str:
    """The symbol of the `index`-th position a full book starts with."""
    return f"H{index:04d}USDT"


def open_positions(book: PaperBook, count: int) -> None:
    """Open `count` equal long positions: every one an equally good rotation candidate."""
    for index in range(count):
        book.open(held_symbol(index), POSITION_QTY, POSITION_PRICE)


async def _serve(positions: int, apply: bool) -> None:
    book = PaperBook()
    open_positions(book, positions)
    app = make_app(
        book, api_key=os.environ["BINANCE_API_KEY"], api_secret=os.environ["BINANCE_API_SECRET"]
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, 0).start()
    port = runner.addresses[0][1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    redis = Redis.from_url(os.environ["REDIS_URL"], socket_timeout=None) if apply else None
    try:
        work: list[Awaitable[object]] = [stop.wait()]
        if redis is not None:
            work.append(await _apply_loop(redis, book, stop))
        print(f"paper exchange on http://{HOST}:{port}", flush=True)
        await asyncio.gather(*work)
    finally:
        await runner.cleanup()
        if redis is not None:
            await redis.aclose()


async def _apply_loop(redis: Redis, book: PaperBook, stop: asyncio.Event) -> asyncio.Future[None]:
    """The paper exchange's own apply loop, zero latency, group created before we say ready."""
    from rotation_fsm.devkit.paper_exchange.apply import ApplyConfig, ApplyLoop

    loop = ApplyLoop(redis, book, Keys(), ApplyConfig(latency_ms=0, seed=1))
    await loop.ensure_group()
    return asyncio.ensure_future(loop.run(stop, block_ms=500))


def main() -> int:
    """Entry point; SIGTERM exits 0."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.exchange")
    parser.add_argument("--positions", type=int, default=0, help="positions open at start")
    parser.add_argument("--apply", action="store_true", help="execute decisions, write results")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.positions, args.apply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
