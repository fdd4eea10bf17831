"""The report of a run: one aligned table, the details behind it, and a JSON form."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from typing import Any

from .stats import Figure, fmt
from .suite import Report, ratio_met, target_text
from .usage import ENGINE_KERNEL, OTHERS

HEADER = ("figure", "median", "min", "max", "unit", "× raw", "target", "met?")
CPU_COLUMNS = ("engine", ENGINE_KERNEL, "redis-server", "exchange", "bench client", OTHERS)
NOTE_MARKS = "¹²³⁴⁵⁶⁷⁸⁹"


@dataclass(frozen=True)
class RunInfo:
    """Where and when the numbers were taken."""

    started: str
    seconds: float
    python: str
    redis: str
    cores: int
    engine_commit: str
    command: str


def _yes(flag: bool | None) -> str:
    return "" if flag is None else ("yes" if flag else "no")


def _met(figure: Figure, raw: float | None) -> str:
    own, ratio = figure.met(), ratio_met(figure, raw)
    if own is not None and ratio is not None:
        return f"{_yes(own)}; ratio {_yes(ratio)}"
    return _yes(own if own is not None else ratio)


def _ratio(figure: Figure, raw: float | None) -> str:
    if not figure.throughput or raw is None or not figure.measured:
        return ""
    return f"{figure.median / raw:.2f}×"


def table_rows(report: Report) -> tuple[list[tuple[str, ...]], list[str]]:
    """The table's rows (header first) and its footnotes."""
    raw = report.raw_rate
    rows: list[tuple[str, ...]] = [HEADER]
    notes: list[str] = []
    for figure in report.figures.values():
        name = figure.name
        if figure.note:
            mark = NOTE_MARKS[len(notes) % len(NOTE_MARKS)]
            notes.append(f"{mark} {figure.note}")
            name += mark
        rows.append(
            (
                name,
                fmt(figure.median),
                fmt(figure.low),
                fmt(figure.high),
                figure.unit,
                _ratio(figure, raw),
                target_text(figure),
                _met(figure, raw),
            )
        )
    return rows, notes


def render_table(report: Report) -> str:
    """The table, aligned: text columns left, numbers right."""
    rows, notes = table_rows(report)
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    numeric = {1, 2, 3, 5}
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines + notes)


def render_details(report: Report, info: RunInfo) -> str:
    """What the table rests on: the run, CPU per plan, outcomes, failures, the profile."""
    d = report.details
    out = [
        f"Run {info.started}: {info.seconds:.0f} s, `{info.command}`.",
        f"Machine: {info.cores} cores, Python {info.python}, {info.redis}, "
        f"engine at {info.engine_commit}; every figure: median of {report.sizes.repeat} "
        "repetition(s), min and max.",
    ]
    if report.others_cores:
        out.append(
            "Other processes on the machine kept "
            f"{statistics.mean(report.others_cores):.2f} cores busy on average during the "
            f"measured windows (max {max(report.others_cores):.2f})."
        )
    out += _cpu_lines(d)
    out += _outcome_lines(d)
    if report.failures:
        out.append("FAILURES (the instrument could not measure these):")
        out += [f"  - {f}" for f in report.failures]
    if report.profile:
        out.append("Profile of the engine during a free-slot burst (py-spy, not counted):")
        out += [f"  {line}" for line in report.profile]
    return "\n".join(out)


def _cpu_lines(d: dict[str, Any]) -> list[str]:
    sources = [
        ("free slots, 1 engine", d.get("free_slot")),
        ("scaling, 2 engines", d.get("scaling")),
        ("full book (per rotation)", d.get("full_book")),
        ("latency @ 2,000/s", d.get("latency_2000")),
        ("latency @ 10,000/s", d.get("latency_10000")),
    ]
    rows = [(label, src["cpu_us_per_plan"]) for label, src in sources if src]
    if not rows:
        return []
    width = max(len(label) for label, _ in rows)
    head = " ".join(c.rjust(14) for c in CPU_COLUMNS)
    lines = ["CPU per plan (µs, median of the repetitions):", f"  {'':{width}} {head}"]
    for label, cpu in rows:
        cells = " ".join(fmt(cpu.get(c, math.nan)).rjust(14) for c in CPU_COLUMNS)
        lines.append(f"  {label:{width}} {cells}")
    return lines


def _outcome_lines(d: dict[str, Any]) -> list[str]:
    lines = []
    if "raw" in d:
        raw = d["raw"]
        lines.append(
            f"Raw bounds: Redis CPU per call {raw['redis_cpu_us_per_call']:.1f} µs for the "
            f"yardstick (HSET+XADD), {raw['commit_redis_cpu_us_per_call']:.1f} µs for a "
            "one-plan commit.lua."
        )
    for key, label in (("free_slot", "Free slots"), ("scaling", "Scaling")):
        if key in d:
            b = d[key]
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(b["reasons"].items()))
            lines.append(
                f"{label}: decided {', '.join(b['decided'])}; {reasons}; commits applied "
                f"{b['commits']}, refused by the version guard {b['refused_commits']}."
            )
    if "full_book" in d:
        fb = d["full_book"]
        parts = ", ".join(f"{k} {v:,.0f} B" for k, v in fb["footprint_parts"].items())
        lines.append(
            f"Full book: rotated {', '.join(fb['rotated'])}; plan → ALLOW rotation_complete "
            f"p50 {fb['cycle_ms_p50']:.1f} ms, p99 {fb['cycle_ms_p99']:.1f} ms."
        )
        lines.append(
            f"Footprint per finished rotation: {parts}; rotation hashes carry the retention "
            f"TTL: {_yes(fb['footprint_expires'])}."
        )
    for rate in (2000, 10000):
        lat = d.get(f"latency_{rate}")
        if lat:
            lines.append(
                f"Latency @ {rate:,}/s: achieved {lat['achieved_rate']}/s, measured "
                f"{lat['measured']}, undecided {lat['undecided']}, max {lat['max_ms']} ms, "
                f"engine RSS {lat['engine_rss_mb']} MB."
            )
    for key, label in (("timer", "Timer"), ("timer_spread", "Timer, spread")):
        if key in d:
            t = d[key]
            lines.append(
                f"{label}: timed out {t['fired']} (of the in-flight count); writing them took "
                f"{t['write_s']} s; Redis used_memory after {t['redis_used_memory_mb']} MB."
            )
    if "phase_seconds" in d:
        lines.append(f"Phase durations (s): {d['phase_seconds']}.")
    return lines


def to_json(report: Report, info: RunInfo) -> str:
    """Everything in the report, machine-readable."""
    raw = report.raw_rate
    figures = [
        {
            "key": key,
            "name": f.name,
            "unit": f.unit,
            "values": f.values,
            "median": None if not f.measured else f.median,
            "min": None if not f.measured else f.low,
            "max": None if not f.measured else f.high,
            "ratio_to_raw": (f.median / raw) if f.throughput and raw and f.measured else None,
            "target": target_text(f) or None,
            "met": f.met(),
            "ratio_met": ratio_met(f, raw),
            "note": f.note or None,
        }
        for key, f in report.figures.items()
    ]
    body = {
        "run": info.__dict__,
        "sizes": report.sizes.__dict__,
        "figures": figures,
        "details": {k: v for k, v in report.details.items() if k != "tracebacks"},
        "failures": report.failures,
        "others_cores": report.others_cores,
        "profile": report.profile,
    }
    return json.dumps(body, indent=2, default=str)
