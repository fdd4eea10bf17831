"""`python -m benchmarks.exchange_view`: the engine deciding on its live exchange view.

Its own redis-server, the real paper exchange (`python -m rotation_fsm.devkit.paper_exchange`:
REST with Binance's weight accounting on — 2,400 per minute, 429 then 418 — the
user-data stream, and the apply loop filling every ALLOW after `--fill-ms`), and one
`rotation-fsm run`. Three rows:

- **weight**: a steady run at `--rate` plans/s for `--seconds`, then a burst of
  `--burst` plans; the REST weight the engine used per minute (the paper exchange's
  own count) against the engine's budget, and the 429/418 answers (target: 0, and
  ≤ 10 % of the budget).
- **latency**: XADD → decision at `--rate` plans/s with every REST answer delayed
  `--http-ms` (a real exchange's distance): p50/p99 (target p99 ≤ 5 ms).
- **fill → view**: the paper fill (the stream event's `E`) → the engine's view has
  it, p50/p99 on loopback (the engine's /readyz reports it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from rotation_fsm.devkit.redis_process import RedisProcess
from rotation_fsm.store.keys import Keys

from .latency import _Books, _drain, _produce, _read
from .procs import Child
from .rig import API_KEY, API_SECRET, Engine, Rig
from .stats import percentile

PAPER_READY = r"paper exchange listening on (http://\S+)"
BUDGET_SHARE = 0.5
LIMIT_PER_MIN = 2400


async def _json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as reply:
        return await reply.json()


def _paper(
    server: RedisProcess, workdir: Path, http_ms: int, fill_ms: int | None
) -> tuple[Child, str]:
    """The paper exchange as a child; `fill_ms` None: it executes nothing."""
    env = {
        "REDIS_URL": server.url,
        "BINANCE_API_KEY": API_KEY,
        "BINANCE_API_SECRET": API_SECRET,
        "PAPER_PORT": "0",
        "PAPER_LATENCY_MS": str(fill_ms or 0),
        "PAPER_APPLY": "false" if fill_ms is None else "true",
        "PAPER_HTTP_LATENCY_MS": str(http_ms),
        "PAPER_WEIGHT_LIMIT": str(LIMIT_PER_MIN),
        "PAPER_SEED": "7",
    }
    log = workdir / f"paper-exchange-{'fills' if fill_ms is not None else 'api'}.log"
    child = Child("rotation_fsm.devkit.paper_exchange", [], env, log)
    return child, child.wait_for_line(PAPER_READY).group(1)


async def steady(rig: Rig, engine: Engine, rate: float, seconds: float) -> dict[str, Any]:
    """Plans at `rate`/s for `seconds` (1 s of warm-up not counted): latency percentiles."""
    books = _Books(counted_from=int(rate))
    total = int(rate * (seconds + 1))
    reader = Redis.from_url(rig.server.url, socket_timeout=None)
    try:
        done = asyncio.Event()
        reading = asyncio.create_task(_read(reader, rig.keys.decisions, books, total, done))
        await _produce(rig, books, rate, total, "view")
        await _drain(reading, done)
    finally:
        await reader.aclose()
    latencies = sorted(books.latencies_ms)
    return {
        "rate": rate,
        "decided": books.seen,
        "undecided": len(books.sent_at),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


async def burst(rig: Rig, plans: int) -> dict[str, Any]:
    """`plans` written at once: how long until every one is decided."""
    start_len = int(await rig.redis.xlen(rig.keys.decisions))
    started = time.perf_counter()
    await rig.preload(
        {"plan_id": f"burst-{i}", "symbol": f"B{i % 8:02d}USDT", "decision": "EXECUTE",
         "action": "OPEN_LONG", "side": "BUY", "qty": "0.1", "timestamp": f"{time.time():.3f}"}
        for i in range(plans)
    )  # fmt: skip
    got = await rig.wait_length(rig.keys.decisions, start_len + plans, timeout_s=120)
    return {"plans": plans, "decided": got - start_len, "s": time.perf_counter() - started}


async def _session(
    args: argparse.Namespace, workdir: Path, *, fills: bool
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """One redis-server, paper exchange and engine: a steady run then a burst; returns
    (steady row, burst row, the engine's view from /readyz, the paper's own counts)."""
    server = RedisProcess()
    server.start()
    redis = Redis.from_url(server.url, socket_timeout=None)
    universe = [f"F{i:02d}USDT" for i in range(8)] + [f"B{i:02d}USDT" for i in range(8)]
    await redis.hset(Keys().policy, "universe_symbols", json.dumps(universe))
    paper, url = _paper(server, workdir, args.http_ms, args.fill_ms if fills else None)
    rig = Rig(workdir, server, redis, paper, url)
    try:
        engine = rig.start_engine("view-engine", GOV_MAX_MARGIN_USAGE_PCT="0.99")
        await rig.wait_groups()
        steady_row = await steady(rig, engine, args.rate, args.seconds)
        burst_row = await burst(rig, args.burst)
        ready = await _json(f"http://127.0.0.1:{engine.http_port}/readyz")
        stats = await _json(f"{url}/paper/stats")
    finally:
        rig.stop_engines()
        paper.stop()
        await redis.aclose()
        server.stop()
    return steady_row, burst_row, ready["exchange_views"]["-"], stats


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every row of this benchmark, as one JSON-ready dict: the latency with nothing
    executed (as the other latency rows), then weight and fill → view with every ALLOW
    filled on the paper book (the stream busy, reconciles and refreshes running)."""
    latency, _, _, _ = await _session(args, workdir, fills=False)
    started = time.monotonic()
    filled, burst_row, view, stats = await _session(args, workdir, fills=True)
    minutes = max(1.0, (time.monotonic() - started) / 60)
    budget = int(LIMIT_PER_MIN * BUDGET_SHARE)
    used = view["weight"]["weight_total"]
    return {
        "weight": {
            "budget_per_min": budget,
            "engine_weight_total": used,
            "engine_weight_per_min": used / minutes,
            "share_of_budget": used / minutes / budget,
            "paper_weight_per_minute": stats["weight_per_minute"],
            "answers_429": stats["answers"].get("429", 0),
            "answers_418": stats["answers"].get("418", 0),
        },
        "latency": latency,
        "latency_with_fills": filled,
        "burst": burst_row,
        "fill_to_view_ms": view["fill_to_view_ms"],
        "view": {k: view[k] for k in ("source", "events", "snapshots", "mismatches")},
        "stream": stats["stream"],
    }


def render(result: dict[str, Any], args: argparse.Namespace) -> str:
    """The rows as a small table."""
    w, lat, fill = result["weight"], result["latency"], result["fill_to_view_ms"] or {}
    lines = [
        f"exchange view: {args.rate:g} plans/s for {args.seconds:g} s + a {args.burst:,}-plan "
        f"burst; paper REST {args.http_ms} ms away, fills {args.fill_ms} ms after ALLOW",
        f"  REST weight/min   {w['engine_weight_per_min']:.0f} of a {w['budget_per_min']} "
        f"budget ({w['share_of_budget']:.1%}; target ≤ 10 %); per minute at the exchange "
        f"{w['paper_weight_per_minute']}",
        f"  429 / 418         {w['answers_429']} / {w['answers_418']} (target 0 / 0)",
        f"  latency @{lat['rate']:g}/s  p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms "
        f"(target p99 ≤ 5 ms), {lat['undecided']} undecided",
        f"  with fills        p50 {result['latency_with_fills']['p50_ms']:.2f} ms, "
        f"p99 {result['latency_with_fills']['p99_ms']:.2f} ms (every ALLOW filled, results "
        f"and stream events flowing back)",
        f"  burst             {result['burst']['decided']:,} decided in "
        f"{result['burst']['s']:.1f} s",
        f"  fill → view       p50 {fill.get('p50', float('nan')):.0f} ms, "
        f"p99 {fill.get('p99', float('nan')):.0f} ms over {fill.get('fills', 0):.0f} fills",
        f"  view              {result['view']}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; a bad argument exits 2."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.exchange_view")
    parser.add_argument("--quick", action="store_true", help="10 s and a 5,000-plan burst")
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--burst", type=int)
    parser.add_argument("--http-ms", type=int, default=50, help="REST answers wait this long")
    parser.add_argument("--fill-ms", type=int, default=20, help="ALLOW → fill on the paper")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path, help="keep child logs here")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (10.0 if args.quick else 60.0)
    args.burst = args.burst or (5_000 if args.quick else 20_000)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run, print the rows (and write JSON when asked)."""
    args = parse_args(argv)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(run(args, args.workdir))
    else:
        with tempfile.TemporaryDirectory(prefix="bench-view-") as tmp:
            result = asyncio.run(run(args, Path(tmp)))
    print(render(result, args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
