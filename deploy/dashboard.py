"""The rotation-fsm Grafana dashboard, as code (grafana-foundation-sdk).

    python deploy/dashboard.py          # rewrites deploy/grafana/dashboards/rotation-fsm.json

The JSON beside it is what Grafana provisions; tests/integration/test_prometheus.py
checks that this module's output equals that file, and evaluates every query below
against a real Prometheus scraping a real engine. Queries use `$book` (a regex,
`.*` for all books) and Grafana's `$__rate_interval`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    GridPos,
    ValueMap,
    ValueMappingResult,
)

OUTPUT = Path(__file__).parent / "grafana" / "dashboards" / "rotation-fsm.json"
UID = "rotation-fsm"
#: the provisioned datasource (deploy/grafana/provisioning/datasources/prometheus.yml)
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")
JOB = 'job="rotation-fsm"'
BOOK = f'{JOB}, book=~"$book"'
RATE = "$__rate_interval"
WIDTH, HEIGHT = 12, 8

Query = tuple[str, str]  # (PromQL, legend)


def _targets(queries: list[Query]) -> list[prometheus.Dataquery]:
    return [
        prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i))
        for i, (expr, legend) in enumerate(queries)
    ]


def _place(index: int) -> GridPos:
    """Two panels a row, in the order they are listed."""
    return GridPos(h=HEIGHT, w=WIDTH, x=(index % 2) * WIDTH, y=(index // 2) * HEIGHT)


def _series(
    title: str,
    description: str,
    queries: list[Query],
    *,
    unit: str = "short",
    stacked: bool = False,
    steps: bool = False,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .fill_opacity(20 if stacked else 0)
        .legend(
            common_b.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )
    if stacked:
        panel = panel.stacking(common_b.StackingConfig().mode(common.StackingMode.NORMAL))
    if steps:
        panel = panel.line_interpolation(common.LineInterpolation.STEP_AFTER)
    for target in _targets(queries):
        panel = panel.with_target(target)
    return panel


def _states(
    title: str, description: str, queries: list[Query], names: dict[str, tuple[str, str]]
) -> statetimeline.Panel:
    """A state timeline: `names` maps a value to (text, colour)."""
    mappings = ValueMap(
        options={
            value: ValueMappingResult(text=text, color=colour, index=i)
            for i, (value, (text, colour)) in enumerate(names.items())
        }
    )
    panel = (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .mappings([mappings])
        .show_value(common.VisibilityMode.NEVER)
    )
    for target in _targets(queries):
        panel = panel.with_target(target)
    return panel


def panels() -> list[timeseries.Panel | statetimeline.Panel]:
    """Every panel, in reading order."""
    return [
        _series(
            "Decisions/s by verdict and reason",
            "Plans decided per second, across replicas, by ALLOW/BLOCK and reason.",
            [
                (
                    f"sum by (decision, reason) (rate(rotation_decisions_total{{{JOB}}}[{RATE}]))",
                    "{{decision}} {{reason}}",
                )
            ],
            unit="ops",
            stacked=True,
        ),
        _series(
            "Decision latency p50 / p99",
            "Plan entry written to the plans stream → its decision committed.",
            [
                (
                    "histogram_quantile(0.5, sum by (le) "
                    f"(rate(rotation_decision_latency_seconds_bucket{{{JOB}}}[{RATE}])))",
                    "p50",
                ),
                (
                    "histogram_quantile(0.99, sum by (le) "
                    f"(rate(rotation_decision_latency_seconds_bucket{{{JOB}}}[{RATE}])))",
                    "p99",
                ),
            ],
            unit="s",
        ),
        _series(
            "Slots desired vs occupied",
            "Per book, as of its newest decision: the slots its regime allows and the "
            "slots taken (open, reserved by an entry in flight, or being rotated out).",
            [
                (f"max by (book) (rotation_slots_desired{{{BOOK}}})", "{{book}} desired"),
                (
                    f"max by (book) (rotation_slots_desired{{{BOOK}}} "
                    f"- rotation_slots_free{{{BOOK}}})",
                    "{{book}} occupied",
                ),
            ],
            steps=True,
        ),
        _states(
            "Regime",
            "The regime each book's newest decision was made in.",
            [(f"max by (book, regime) (rotation_regime{{{BOOK}}})", "{{book}} {{regime}}")],
            {"0": ("", "transparent"), "1": ("in force", "blue")},
        ),
        _series(
            "Rotations in flight",
            "Rotations locked or waiting for their close confirmation, per book.",
            [(f"max by (book) (rotation_in_flight{{{BOOK}}})", "{{book}}")],
            steps=True,
        ),
        _series(
            "Rotations started and ended, by final state",
            "Rotations started (lock created) and rotation records saved in a final "
            "state, per interval.",
            [
                (
                    f'sum(increase(rotation_events_total{{{JOB}, event="ROTATION_LOCK_CREATED"}}'
                    f"[{RATE}]))",
                    "started",
                ),
                (
                    f"sum by (state) (increase(rotation_transitions_total{{{JOB}, "
                    f'state=~"CONFIRMED|TIMED_OUT|CLOSE_REJECTED|ABORTED"}}[{RATE}]))',
                    "{{state}}",
                ),
            ],
        ),
        _series(
            "Timer lag",
            "How long the oldest rotation deadline has been overdue (0 while the timer "
            "keeps up; it scans every 0.1 s).",
            [(f"max by (book) (rotation_timer_lag_seconds{{{BOOK}}})", "{{book}}")],
            unit="s",
        ),
        _series(
            "Consumer group: pending and lag",
            "Pending: delivered to the group, not yet acknowledged. Lag: not yet delivered "
            "(Redis ≥ 7). Per book and input stream.",
            [
                (
                    f"max by (book, stream) (rotation_group_pending{{{BOOK}}})",
                    "{{book}} {{stream}} pending",
                ),
                (
                    f"max by (book, stream) (rotation_group_lag{{{BOOK}}})",
                    "{{book}} {{stream}} lag",
                ),
            ],
        ),
        _series(
            "Dead letters",
            "Entries moved to the dead-letter stream per interval, by the stream they came "
            "from (each dead letter carries its reason).",
            [
                (
                    f"sum by (stream) (increase(rotation_dead_letters_total{{{JOB}}}[{RATE}]))",
                    "{{stream}}",
                )
            ],
        ),
        _series(
            "Commit conflicts/s",
            "Commits refused by the version guard because another replica moved first; "
            "the batch is decided again.",
            [
                (
                    f"sum by (instance) (rate(rotation_commit_conflicts_total{{{JOB}}}[{RATE}]))",
                    "{{instance}}",
                )
            ],
            unit="ops",
        ),
        _series(
            "Exchange view freshness",
            "Per book: the age of the exchange view's last good REST snapshot (the "
            "user-data stream keeps the view current between snapshots).",
            [
                (
                    f"max by (book) (rotation_exchange_view_snapshot_age_seconds{{{BOOK}}})",
                    "{{book}} snapshot age",
                )
            ],
            unit="s",
        ),
        _states(
            "Exchange view source",
            "Where each book's view of the account comes from: the user-data stream, REST "
            "polling, starting, or stale (entries are blocked active_slots_exchange_stale).",
            [
                (
                    f"max by (book, source) (rotation_exchange_view_source{{{BOOK}}})",
                    "{{book}} {{source}}",
                )
            ],
            {"0": ("", "transparent"), "1": ("current", "blue")},
        ),
        _series(
            "Exchange request weight",
            "Request weight each replica used in the last minute, against the budget it "
            "keeps under Binance's limit; and answers 429 (throttled) / 418 (banned).",
            [
                (
                    f"max by (instance) (rotation_exchange_weight_used{{{JOB}}})",
                    "{{instance}} used",
                ),
                (
                    f"max by (instance) (rotation_exchange_weight_budget{{{JOB}}})",
                    "{{instance}} budget",
                ),
                (
                    f"sum by (status) (increase(rotation_exchange_rate_limited_total{{{JOB}}}"
                    f"[{RATE}]))",
                    "HTTP {{status}}",
                ),
            ],
        ),
        _states(
            "Engine replicas up",
            "Scraped (up) and reaching Redis, per replica.",
            [
                (f"up{{{JOB}}}", "{{instance}} scraped"),
                (f"rotation_redis_up{{{JOB}}}", "{{instance}} redis"),
            ],
            {"0": ("down", "red"), "1": ("up", "green")},
        ),
    ]


def build() -> dash.Dashboard:
    """The dashboard: a `book` selector and the panels, last hour, refreshed every 10 s."""
    book = (
        dash.QueryVariable("book")
        .label("book")
        .datasource(DATASOURCE)
        .query("label_values(rotation_in_flight, book)")
        .include_all(True)
        .all_value(".*")
        .multi(True)
    )
    board = (
        dash.Dashboard("rotation-fsm")
        .uid(UID)
        .description("Active-slots governor: decisions, latency, slots, rotations, streams.")
        .tags(["rotation-fsm"])
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(book)
    )
    for i, panel in enumerate(panels()):
        board = board.with_panel(panel.grid_pos(_place(i)))
    return board


def render() -> str:
    """The dashboard's JSON, exactly as checked in."""
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


def queries(model: dict[str, object]) -> list[str]:
    """Every PromQL expression of a dashboard's JSON model (panels and variables)."""
    found: list[str] = []
    for panel in model.get("panels", []):  # type: ignore[attr-defined]
        found += [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
    return found


if __name__ == "__main__":
    OUTPUT.write_text(render())
    sys.stdout.write(f"wrote {OUTPUT}\n")
