"""`python -m benchmarks.sse_load`: decision latency with many live console pages open.

Starts a redis-server and one `rotation-fsm run` (slots gate off, so no exchange is
asked and the figure is the engine's own loop), opens `--clients` Server-Sent-Events
connections to its console from a separate process that reads whatever arrives (a
page left open), then measures decision latency (plan entry id → decision entry
id, both Redis's clock) at a steady rate and for a burst.

    python -m benchmarks.sse_load --clients 0 1000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

from redis.asyncio import Redis

from rotation_fsm.devkit.redis_process import RedisProcess, free_port
from rotation_fsm.store.keys import Keys

from .rig import plan_fields

CLIENTS_SCRIPT = """
import asyncio, sys, aiohttp
async def page(http, url, opened):
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=None)) as resp:
            if resp.status == 200:
                opened.append(1)
            async for _ in resp.content.iter_any():
                pass
    except Exception:
        pass
async def main(url, n):
    opened = []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        tasks = [asyncio.create_task(page(http, url, opened)) for _ in range(n)]
        while len(opened) < n and not all(t.done() for t in tasks):
            await asyncio.sleep(0.1)
        print(len(opened), flush=True)
        await asyncio.gather(*tasks)
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def entry_ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


async def latencies(redis: Redis, keys: Keys, ids: dict[str, int]) -> list[int]:
    """Wait for a decision on every plan of `ids` (plan id → plan entry ms)."""
    seen: dict[str, int] = {}
    cursor = "0-0"
    deadline = time.monotonic() + 60
    while len(seen) < len(ids) and time.monotonic() < deadline:
        reply = await redis.xread({keys.decisions: cursor}, count=1000, block=1000)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                cursor = entry_id.decode()
                plan_id = fields[b"plan_id"].decode()
                if plan_id in ids and plan_id not in seen:
                    seen[plan_id] = entry_ms(entry_id) - ids[plan_id]
    return list(seen.values())


def pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]) if ordered else float("nan")


async def measure(url: str, keys: Keys, tag: str, rate: float, seconds: float, burst: int) -> str:
    redis = Redis.from_url(url)
    try:
        steady: dict[str, int] = {}
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds:
            plan_id = f"{tag}-s{n}"
            steady[plan_id] = entry_ms(
                await redis.xadd(keys.plans, plan_fields(plan_id, "BTCUSDT"))
            )
            n += 1
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        steady_ms = await latencies(redis, keys, steady)
        burst_ids: dict[str, int] = {}
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(burst):
                pipe.xadd(keys.plans, plan_fields(f"{tag}-b{i}", "BTCUSDT"))
            for i, eid in enumerate(await pipe.execute()):
                burst_ids[f"{tag}-b{i}"] = entry_ms(eid)
        burst_ms = await latencies(redis, keys, burst_ids)
        after: dict[str, int] = {}
        for i in range(int(rate)):
            plan_id = f"{tag}-a{i}"
            after[plan_id] = entry_ms(await redis.xadd(keys.plans, plan_fields(plan_id, "BTCUSDT")))
            await asyncio.sleep(1 / rate)
        after_ms = await latencies(redis, keys, after)
    finally:
        await redis.aclose()
    return (
        f"steady {rate:g}/s p50 {pct(steady_ms, 0.5):.0f} ms p99 {pct(steady_ms, 0.99):.0f} ms | "
        f"burst of {burst} p50 {pct(burst_ms, 0.5):.0f} ms p99 {pct(burst_ms, 0.99):.0f} ms | "
        f"after the burst p50 {pct(after_ms, 0.5):.0f} ms p99 {pct(after_ms, 0.99):.0f} ms"
    )


def run(clients: int, args: argparse.Namespace) -> str:
    server = RedisProcess()
    server.start()
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": server.url,
        "METRICS_PORT": str(port),
        "GOV_ACTIVE_SLOTS_ENABLED": "false",
        "GOV_SSE_MAX_CLIENTS": str(max(clients, 1)),
        "BINANCE_BASE_URL": "http://127.0.0.1:9",
    }
    engine = subprocess.Popen(
        [sys.executable, "-m", "rotation_fsm.tools.cli", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    pages = None
    try:
        assert engine.stderr is not None
        for line in engine.stderr:
            if "rotation-fsm running" in line:
                break
        subprocess.Popen(["cat"], stdin=engine.stderr, stdout=subprocess.DEVNULL)
        if clients:
            pages = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    CLIENTS_SCRIPT,
                    f"http://127.0.0.1:{port}/api/console/events",
                    str(clients),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert pages.stdout is not None
            opened = pages.stdout.readline().strip()
        else:
            opened = "0"
        figures = asyncio.run(
            measure(server.url, Keys(), f"c{clients}", args.rate, args.seconds, args.burst)
        )
        return f"{clients:>5} pages ({opened} open): {figures}"
    finally:
        if pages is not None:
            pages.kill()
            pages.wait()
        engine.terminate()
        engine.wait(10)
        server.stop()


def main() -> int:
    """Entry point: one line of figures per number of pages."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sse_load")
    parser.add_argument("--clients", type=int, nargs="+", default=[0, 1000])
    parser.add_argument("--rate", type=float, default=100.0, help="steady plans/s")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--burst", type=int, default=300)
    args = parser.parse_args()
    for clients in args.clients:
        print(run(clients, args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
