"""`python -m benchmarks`: rotation-fsm's benchmark, one command, one table.

Starts its own redis-server (never the one on 6379) and paper exchange, runs the
engine as separate `rotation-fsm run` processes, and measures, in this order:
the raw Redis bound (the yardstick), free-slot throughput, scaling to two
engines, full-book throughput with the Redis footprint per finished rotation,
decision latency at 2,000 and 10,000 plans/s, and timer lag with many rotations
in flight; engine RSS after each. Every figure is the median of `--repeat` runs
with min and max; throughputs are also shown as a ratio to the raw bound of the
same run. Targets are printed, not enforced: the exit code is 1 only when the
instrument itself failed (an engine died, a decision never came).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rotation_fsm.devkit.redis_process import find_redis_server

from .report import RunInfo, render_details, render_table, to_json
from .rig import open_rig
from .suite import FULL, PHASES, QUICK, Report, Sizes, run_phases

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; a bad argument exits 2."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smaller and fewer runs (< 60 s)")
    parser.add_argument("--repeat", type=int, help="repetitions per figure (default 3; quick 1)")
    parser.add_argument("--only", default="", help=f"comma-separated phases of {','.join(PHASES)}")
    parser.add_argument("--burst", type=int, help="plans per free-slot burst (default 50,000)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one more free-slot burst with py-spy on the engine (not counted)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep child logs (and the profile) here; default: a temp dir"
    )
    args = parser.parse_args(argv)
    phases = [p.strip() for p in args.only.split(",") if p.strip()] or list(PHASES)
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {sorted(unknown)}; choose from {', '.join(PHASES)}")
    if "scaling" in phases and "free_slot" not in phases:
        phases.append("free_slot")  # its 1-engine baseline
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.burst is not None and args.burst < 2:
        parser.error("--burst must be at least 2")
    args.phases = phases
    return args


def sizes_for(args: argparse.Namespace) -> Sizes:
    """`FULL` or `QUICK`, with `--repeat` and `--burst` applied."""
    sizes = QUICK if args.quick else FULL
    changes: dict[str, int] = {}
    if args.repeat is not None:
        changes["repeat"] = args.repeat
    if args.burst is not None:
        changes["burst_plans"] = args.burst
    return dataclasses.replace(sizes, **changes)


def _engine_commit() -> str:
    """`abc1234` (or `abc1234+changes` when the engine's files differ from it)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "rotation_fsm"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+changes" if dirty else head


async def _run(args: argparse.Namespace, workdir: Path) -> tuple[Report, float]:
    report = Report(sizes_for(args))
    began = time.monotonic()
    print(
        f"benchmark: phases {', '.join(p for p in PHASES if p in args.phases)}; logs in {workdir}",
        file=sys.stderr,
    )
    async with open_rig(workdir) as rig:
        report.details["redis"] = f"redis-server {rig.redis_version}"
        profile = workdir / "engine-profile.txt" if args.profile else None
        await run_phases(rig, report, args.phases, profile)
    return report, time.monotonic() - began


def main(argv: list[str] | None = None) -> int:
    """Run, print the table and the details, write JSON if asked; 1 if the instrument failed."""
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    with tempfile.TemporaryDirectory(prefix="rotation-fsm-bench-") as temp:
        workdir = args.workdir or Path(temp)
        workdir.mkdir(parents=True, exist_ok=True)
        report, seconds = asyncio.run(_run(args, workdir))
    info = RunInfo(
        started=started,
        seconds=seconds,
        python=platform.python_version(),
        redis=str(report.details.get("redis") or find_redis_server()[1]),
        cores=os.cpu_count() or 0,
        engine_commit=_engine_commit(),
        command="python -m benchmarks " + shlex.join(argv if argv is not None else sys.argv[1:]),
    )
    print(render_table(report))
    print()
    print(render_details(report, info))
    if args.json is not None:
        args.json.write_text(to_json(report, info))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
