"""The measurements of one run, in order, each repeated, collected into a `Report`.

Phases (`--only` picks some; `scaling` brings `free_slot` along, its 1-engine
baseline):

- `raw`        the yardstick, measured first: sequential one-plan commits, one client
- `free_slot`  a burst decided by one engine with free slots
- `scaling`    the same burst with two engines in one consumer group
- `full_book`  every plan rotating, closes executed by the paper exchange; the
               Redis footprint per finished rotation is measured on its rotations
- `latency`    steady 2,000 and 10,000 plans/s, p50/p99/p99.9
- `timer`      100,000 deadlines within 3 s: timeouts/s, and the lag of TIMED_OUT
- `timer_spread` 100,000 in flight with deadlines spread over 60 s: the lag (once: it
               lasts a minute)

A phase that fails is recorded with its error and the run goes on; the figures it
would have filled stay empty.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import yardstick
from .burst import BurstResult, run_burst
from .full_book import run_full_book
from .latency import run_latency
from .profile import summarize
from .rig import Rig
from .stats import Figure, Target, at_least, at_most
from .timer_lag import TimerResult, run_timer

PHASES = ("raw", "free_slot", "scaling", "full_book", "latency", "timer", "timer_spread", "books")
LATENCY_RATES = (2_000, 10_000)
MB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    """How big and how often: the full run, or `--quick`."""

    repeat: int
    raw_s: float
    burst_plans: int
    book_positions: int
    book_window: int
    book_plans: int
    latency_s: float
    latency_warmup_s: float
    timer_in_flight: int
    timer_spread_s: float
    timer_grace_s: float
    timer_long_spread_s: float


FULL = Sizes(
    repeat=3,
    raw_s=1.5,
    burst_plans=50_000,
    book_positions=20,
    book_window=10,
    book_plans=1_000,
    latency_s=3.0,
    latency_warmup_s=0.5,
    timer_in_flight=100_000,
    timer_spread_s=3.0,
    timer_grace_s=10.0,
    timer_long_spread_s=60.0,
)
QUICK = Sizes(
    repeat=1,
    raw_s=0.5,
    burst_plans=5_000,
    book_positions=20,
    book_window=10,
    book_plans=200,
    latency_s=1.5,
    latency_warmup_s=0.3,
    timer_in_flight=10_000,
    timer_spread_s=2.0,
    timer_grace_s=6.0,
    timer_long_spread_s=10.0,
)


@dataclass
class Report:
    """Figures (the table's rows, in order), details behind them, and what failed."""

    sizes: Sizes
    figures: dict[str, Figure] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    others_cores: list[float] = field(default_factory=list)
    profile: list[str] = field(default_factory=list)

    def figure(self, key: str, name: str, unit: str, **options: Any) -> Figure:
        """The row `key`, created on first use."""
        if key not in self.figures:
            self.figures[key] = Figure(name, unit, **options)
        return self.figures[key]

    @property
    def raw_rate(self) -> float | None:
        raw = self.figures.get("raw")
        return raw.median if raw is not None and raw.measured else None


Phase = Callable[[Rig, Report], Awaitable[None]]


async def run_phases(rig: Rig, report: Report, phases: list[str], profile: Path | None) -> None:
    """Run `phases` in the order of `PHASES`, each failure recorded, never fatal."""
    table: dict[str, Phase] = {
        "raw": _raw,
        "free_slot": _free_slot,
        "scaling": _scaling,
        "full_book": _full_book,
        "latency": _latency,
        "timer": _timer,
        "timer_spread": _timer_spread,
        "books": _books,
    }
    for name in PHASES:
        if name not in phases:
            continue
        began = time.monotonic()
        try:
            await table[name](rig, report)
        except Exception as exc:
            report.failures.append(f"{name}: {type(exc).__name__}: {exc}")
            report.details.setdefault("tracebacks", {})[name] = traceback.format_exc()
        finally:
            rig.stop_engines()
        took = round(time.monotonic() - began, 1)
        report.details.setdefault("phase_seconds", {})[name] = took
        print(f"benchmark: {name} done in {took} s", file=sys.stderr, flush=True)
    if profile is not None:
        began = time.monotonic()
        await _profile(rig, report, profile)
        took = round(time.monotonic() - began, 1)
        report.details.setdefault("phase_seconds", {})["profile"] = took


async def _raw(rig: Rig, report: Report) -> None:
    fixed = report.figure(
        "raw", "raw Redis bound: HSET+XADD script round trips (the yardstick)", "calls/s"
    )
    commit = report.figure(
        "raw_commit", "raw Redis bound: 1-plan commit.lua round trips", "calls/s"
    )
    redis_us: dict[str, list[float]] = {"fixed": [], "commit": []}
    for _ in range(report.sizes.repeat):
        for name, figure in (("fixed", fixed), ("commit", commit)):
            await rig.redis.flushall()
            result = await yardstick.measure(
                rig.server.port,
                rig.server.pid,
                warmup_s=0.2,
                seconds=report.sizes.raw_s,
                fixed=name == "fixed",
            )
            figure.values.append(result.rate)
            redis_us[name].append(result.redis_us_per_call)
    report.details["raw"] = {
        "redis_cpu_us_per_call": statistics.median(redis_us["fixed"]),
        "commit_redis_cpu_us_per_call": statistics.median(redis_us["commit"]),
    }


async def _bursts(rig: Rig, report: Report, replicas: int) -> list[BurstResult]:
    results = []
    for rep in range(report.sizes.repeat):
        result = await run_burst(
            rig, plans=report.sizes.burst_plans, replicas=replicas, tag=f"b{replicas}r{rep}"
        )
        results.append(result)
        report.others_cores.append(result.others_cores)
        if not result.complete:
            report.failures.append(
                f"burst with {replicas} engine(s): {result.decided} of {result.plans} decided, "
                f"{result.pending} pending, {result.dead_letters} dead-lettered"
            )
    return results


async def _free_slot(rig: Rig, report: Report) -> None:
    plans = report.sizes.burst_plans
    figure = report.figure(
        "free_slot",
        f"free slots: plans decided/s, 1 engine ({plans:,} burst)",
        "plans/s",
        target=at_least(25_000),
        throughput=True,
        ratio_target=at_least(2.0),
    )
    engine_cpu = report.figure(
        "cpu_engine_free_slot", "engine CPU per free-slot plan", "µs", target=at_most(35)
    )
    redis_cpu = report.figure(
        "cpu_redis_free_slot", "redis-server CPU per free-slot plan", "µs", target=at_most(15)
    )
    audit = report.figure(
        "audit_bytes",
        "audit stream bytes per decided plan (free-slot burst)",
        "bytes",
        target=at_most(200),
    )
    rss = report.figure(
        "rss_free_slot", "engine RSS after the free-slot burst", "MB", target=at_most(150)
    )
    results = await _bursts(rig, report, replicas=1)
    figure.values += [r.rate for r in results]
    engine_cpu.values += [r.cpu_us_per_plan.get("engine", math.nan) for r in results]
    redis_cpu.values += [r.cpu_us_per_plan.get("redis-server", math.nan) for r in results]
    audit.values += [r.audit_bytes / max(1, r.decided) for r in results]
    rss.values += [max(r.engine_rss) / MB for r in results]
    report.details["free_slot"] = _burst_details(results)


async def _scaling(rig: Rig, report: Report) -> None:
    figure = report.figure(
        "scaling", "scaling: plans decided/s, 2 engines, 1 group", "plans/s", throughput=True
    )
    results = await _bursts(rig, report, replicas=2)
    figure.values += [r.rate for r in results]
    single = report.figures.get("free_slot")
    if single is not None and single.measured:
        factor = report.figure("scaling_factor", "scaling: 2 engines ÷ 1 engine", "×")
        factor.values += [r.rate / single.median for r in results]
    report.details["scaling"] = _burst_details(results)


async def _books(rig: Rig, report: Report) -> None:
    """Issue 7's row: total decisions/s with 1, 3 and 6 books on a three-master cluster
    against one book on one node (`benchmarks.cluster` starts its own servers)."""
    from .cluster import measure_books

    quick = report.sizes.burst_plans < FULL.burst_plans
    # Once, and smaller than `python -m benchmarks.cluster`'s run (README "Scaling"):
    # starting a six-node cluster per repetition would take the full run past 5 min.
    books = await measure_books(
        (1, 3, 6),
        plans_per_book=3_000 if quick else 10_000,
        repeat=1,
        idle_books=(1,),
        idle_seconds=3.0 if quick else 5.0,
    )
    for row in books.rows:
        key = f"books_{row.setup}_{row.books}".replace(" ", "_")
        name = f"books: {row.setup}, {row.books} book(s), decisions/s"
        report.figure(key, name, "plans/s", throughput=True).values.append(row.rate)
    report.details["books"] = books.render()


def _burst_details(results: list[BurstResult]) -> dict[str, Any]:
    return {
        "decided": [f"{r.decided}/{r.plans}" for r in results],
        "reasons": results[-1].reasons if results else {},
        "cpu_us_per_plan": _median_dicts([r.cpu_us_per_plan for r in results]),
        "seconds": [round(r.seconds, 3) for r in results],
        "commits": [r.commits for r in results],
        "refused_commits": [r.refused for r in results],
    }


async def _full_book(rig: Rig, report: Report) -> None:
    s = report.sizes
    figure = report.figure(
        "full_book",
        f"full book: plans rotated/s ({s.book_positions} positions, {s.book_window} in flight)",
        "plans/s",
        throughput=True,
        target=at_least(1_000),
    )
    state = report.figure(
        "footprint_state",
        "Redis per finished rotation: engine state (expires)",
        "bytes",
        target=at_most(512),
    )
    everything = report.figure(
        "footprint_all", "Redis per finished rotation: incl. stream entries", "bytes"
    )
    rss = report.figure(
        "rss_full_book", "engine RSS after the full book", "MB", target=at_most(150)
    )
    runs = []
    for rep in range(s.repeat):
        result = await run_full_book(
            rig,
            plans=s.book_plans,
            positions=s.book_positions,
            window=s.book_window,
            tag=f"fb{rep}",
        )
        runs.append(result)
        report.others_cores.append(result.others_cores)
        if not result.complete:
            report.failures.append(
                f"full book: {result.rotated} of {result.plans} rotated; other answers "
                f"{result.other}"
            )
        figure.values.append(result.rate)
        rss.values.append(result.engine_rss / MB)
        if result.footprint is not None:
            state.values.append(result.footprint.engine_state_bytes)
            everything.values.append(result.footprint.everything_bytes)
    last = runs[-1]
    report.details["full_book"] = {
        "rotated": [f"{r.rotated}/{r.plans}" for r in runs],
        "cycle_ms_p50": statistics.median(r.cycle_ms_p50 for r in runs),
        "cycle_ms_p99": statistics.median(r.cycle_ms_p99 for r in runs),
        "cpu_us_per_plan": _median_dicts([r.cpu_us_per_plan for r in runs]),
        "footprint_parts": last.footprint.parts if last.footprint else {},
        "footprint_expires": last.footprint.expires if last.footprint else None,
    }


async def _latency(rig: Rig, report: Report) -> None:
    s = report.sizes
    targets = {2_000: 2.0, 10_000: 10.0}
    for rate in LATENCY_RATES:
        at = f"@ {rate:,}/s"
        p50 = report.figure(f"lat{rate}_p50", f"latency p50 {at}", "ms")
        p99 = report.figure(
            f"lat{rate}_p99", f"latency p99 {at}", "ms", target=at_most(targets[rate])
        )
        p999 = report.figure(f"lat{rate}_p999", f"latency p99.9 {at}", "ms")
        runs = []
        for rep in range(s.repeat):
            result = await run_latency(
                rig,
                rate=rate,
                seconds=s.latency_s,
                warmup_s=s.latency_warmup_s,
                tag=f"l{rate}r{rep}",
            )
            runs.append(result)
            report.others_cores.append(result.others_cores)
            p50.values.append(result.p50_ms)
            p99.values.append(result.p99_ms)
            p999.values.append(result.p999_ms)
        undecided = sum(r.undecided for r in runs)
        if undecided:
            p99.note = f"{undecided} plans undecided after the drain (counted as waited)"
        report.details[f"latency_{rate}"] = {
            "achieved_rate": [round(r.achieved_rate) for r in runs],
            "measured": [r.measured for r in runs],
            "undecided": [r.undecided for r in runs],
            "max_ms": [round(r.max_ms, 1) for r in runs],
            "cpu_us_per_plan": _median_dicts([r.cpu_us_per_plan for r in runs]),
            "engine_rss_mb": [round(r.engine_rss / MB, 1) for r in runs],
        }


async def _timer(rig: Rig, report: Report) -> None:
    s = report.sizes
    count = f"{s.timer_in_flight:,} within {s.timer_spread_s:g} s"
    rate = report.figure(
        "timer_rate", f"timer: timeouts/s ({count})", "1/s", target=at_least(20_000)
    )
    p50 = report.figure("timer_p50", f"timer lag p50 ({count})", "ms")
    p99 = report.figure("timer_p99", f"timer lag p99 ({count})", "ms")
    rss = report.figure(
        "rss_timer", f"engine RSS after the timer run ({count})", "MB", target=at_most(150)
    )
    runs = await _timer_runs(rig, report, s.timer_spread_s, s.repeat, "t", rate)
    rss.values += [r.engine_rss / MB for r in runs]
    p50.values += [r.p50_ms for r in runs]
    p99.values += [r.p99_ms for r in runs]
    _timer_note(p99, runs, s)
    report.details["timer"] = _timer_details(runs)


async def _timer_spread(rig: Rig, report: Report) -> None:
    """Deadlines spread over a minute: the lag when the timer keeps up (once)."""
    s = report.sizes
    count = f"{s.timer_in_flight:,} in flight, deadlines over {s.timer_long_spread_s:g} s, once"
    p50 = report.figure("timer_spread_p50", f"timer lag p50 ({count})", "ms")
    p99 = report.figure("timer_spread_p99", f"timer lag p99 ({count})", "ms", target=at_most(50))
    runs = await _timer_runs(rig, report, s.timer_long_spread_s, 1, "ts", None)
    p50.values += [r.p50_ms for r in runs]
    p99.values += [r.p99_ms for r in runs]
    _timer_note(p99, runs, s)
    report.details["timer_spread"] = _timer_details(runs)


async def _timer_runs(
    rig: Rig, report: Report, spread_s: float, repeat: int, tag: str, rate: Figure | None
) -> list[TimerResult]:
    s = report.sizes
    runs = []
    for rep in range(repeat):
        result = await run_timer(
            rig,
            in_flight=s.timer_in_flight,
            lead_s=1.0,
            spread_s=spread_s,
            grace_s=s.timer_grace_s,
            tag=f"{tag}{rep}",
        )
        runs.append(result)
        if rate is not None:
            rate.values.append(result.timeouts_per_s)
    return runs


def _timer_note(p99: Figure, runs: list[TimerResult], s: Sizes) -> None:
    fired = [r.fired for r in runs]
    if any(f < s.timer_in_flight for f in fired):
        p99.note = (
            f"only {min(fired):,} of {s.timer_in_flight:,} had timed out {s.timer_grace_s:g} s "
            "after the last deadline: the rest count with the lag they had reached (a lower "
            "bound)"
        )


def _timer_details(runs: list[TimerResult]) -> dict[str, Any]:
    return {
        "fired": [r.fired for r in runs],
        "write_s": [round(r.write_s, 1) for r in runs],
        "max_ms": [r.max_ms for r in runs],
        "redis_used_memory_mb": [round(r.used_memory / MB) for r in runs],
    }


async def _profile(rig: Rig, report: Report, path: Path) -> None:
    """One more free-slot burst, not counted, with py-spy on the engine."""
    try:
        await run_burst(rig, plans=report.sizes.burst_plans, replicas=1, tag="prof", profile=path)
    except Exception as exc:
        report.failures.append(f"profile: {type(exc).__name__}: {exc}")
        return
    summary = summarize(path)
    report.profile = summary.lines() if summary else ["(no profile: is py-spy installed?)"]


def _median_dicts(dicts: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for d in dicts for k in d}
    return {k: round(statistics.median(d.get(k, 0.0) for d in dicts), 1) for k in sorted(keys)}


def target_text(figure: Figure) -> str:
    """The target column: the bound, and the ratio bound when there is one."""
    parts = []
    if figure.target is not None:
        parts.append(figure.target.text(""))
    if figure.ratio_target is not None:
        parts.append(f"{figure.ratio_target.text('')}× raw")
    return "; ".join(p.strip() for p in parts)


def ratio_met(figure: Figure, raw: float | None) -> bool | None:
    if figure.ratio_target is None or raw is None or not figure.measured:
        return None
    return figure.ratio_target.met(figure.median / raw)


__all__ = ["FULL", "PHASES", "QUICK", "Report", "Sizes", "Target", "run_phases"]
