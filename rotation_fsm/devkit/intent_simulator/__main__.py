"""`python -m rotation_fsm.devkit.intent_simulator`: publish plans until stopped or bounded.

It waits until some consumer group reads the plan stream before publishing: the
engine creates its group at `$`, so a plan written before that would never be
decided. A bad setting exits 2 with one line naming it; SIGTERM/SIGINT exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ...store.retry import Backoff, wait_or_stop
from ..entry import run_main
from .simulator import REDIS_DOWN, IntentSimulator, SimConfig, load_config


async def until_consumed(redis: Redis, config: SimConfig, stop: asyncio.Event) -> None:
    """Return once the plan stream has a consumer group (or `stop` is set)."""
    waiting_said = redis_said = False
    backoff = Backoff(first_s=0.2, cap_s=1.0)
    while not stop.is_set():
        try:
            if await redis.exists(config.keys.plans) and await redis.xinfo_groups(
                config.keys.plans
            ):
                return
            if not waiting_said:
                print(f"intent-simulator: waiting for a consumer group on {config.keys.plans}")
                waiting_said = True
        except (ResponseError, *REDIS_DOWN) as exc:
            if not redis_said:
                print(f"intent-simulator: waiting for redis: {exc}", file=sys.stderr)
                redis_said = True
        await wait_or_stop(stop, backoff.next_s())


async def _main(config: SimConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    redis = Redis.from_url(config.redis_url, socket_connect_timeout=2.0)
    try:
        await until_consumed(redis, config, stop)
        simulator = IntentSimulator(redis, config)
        await simulator.seed_policy()
        bound = []
        if config.seconds is not None:
            bound.append(f"for {config.seconds:g} s")
        if config.count is not None:
            bound.append(f"at most {config.count} plans")
        print(
            f"intent simulator publishing {config.rate:g} plans/s to {config.keys.plans} "
            f"({', '.join(bound) or 'until stopped'}); universe of {len(config.universe)} "
            f"symbols in {config.keys.policy}",
            flush=True,
        )
        stats = await simulator.run(stop)
    finally:
        await redis.aclose()
    print(
        f"intent simulator done: {stats.new} new plans, {stats.duplicates} duplicates, "
        f"{stats.resends} resends",
        flush=True,
    )
    return 0


def main() -> int:
    """Entry point; returns the exit code."""
    return run_main("intent-simulator", load_config, _main)


if __name__ == "__main__":
    sys.exit(main())
