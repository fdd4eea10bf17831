"""`rotation-fsm settings`: what each engine replica of a book is running with.

Built from the replicas' heartbeats (`heartbeat.py`), never from the CLI's own
environment: each rule's value and source per replica, a flag on every rule the
live replicas disagree on, and a line for every replica that went silent. With
no heartbeat at all (no engine running) it says so and shows the live settings
hash over this CLI's environment, marked as such.
"""

from __future__ import annotations

from typing import Any

from ..core.settings import RULE_SPECS, Settings, rule_value_text
from ..core.timeline import iso_ms, table
from ..store.gateway import AnyRedis
from ..store.keys import Keys
from ..store.live_settings import read_live
from .heartbeat import Replica, disagreements, read_replicas

DISAGREE = "≠ replicas disagree"


def _replica_json(r: Replica, now_ms: int) -> dict[str, Any]:
    data: dict[str, Any] = {
        "consumer": r.consumer,
        "silent": r.silent,
        "last_seen": iso_ms(r.last_seen_ms),
        "last_seen_ago_s": round((now_ms - r.last_seen_ms) / 1000, 1),
    }
    if r.record is not None:
        data |= {
            "version": r.record.version,
            "book": r.record.book,
            "started": iso_ms(r.record.started_ms),
            "heartbeat_s": r.record.interval_s,
            "settings": {
                n: {"value": e.value, "source": e.source} for n, e in r.record.settings.items()
            },
        }
    return data


async def replica_settings(
    redis: AnyRedis, keys: Keys, settings: Settings, now_ms: int
) -> dict[str, Any]:
    """The book's replicas and their settings, as JSON-ready data."""
    replicas = await read_replicas(redis, keys)
    live = await read_live(redis, keys)
    return {
        "book": keys.book,
        "replicas": [_replica_json(r, now_ms) for r in replicas],
        "disagree": disagreements(replicas),
        "live": live,
        # Only for the case of no replica: this CLI's environment, not the engines'.
        "cli_env": {n: rule_value_text(settings.rules, n) for n in RULE_SPECS},
    }


def _cell(replica: dict[str, Any], name: str) -> str:
    effective = replica["settings"].get(name)
    return "?" if effective is None else f"{effective['value']} ({effective['source']})"


def settings_text(data: dict[str, Any]) -> str:
    """The per-replica table an operator reads."""
    alive = [r for r in data["replicas"] if not r["silent"]]
    silent = [r for r in data["replicas"] if r["silent"]]
    lines: list[str] = []
    for r in alive:
        lines.append(
            f"replica {r['consumer']}: up, version {r['version']}, started {r['started']}, "
            f"last seen {r['last_seen_ago_s']:g} s ago"
        )
    for r in silent:
        lines.append(
            f"replica {r['consumer']}: SILENT, last seen {r['last_seen']} "
            f"({r['last_seen_ago_s']:g} s ago)"
        )
    if not alive:
        lines += [
            "no engine replica of this book is publishing a heartbeat (none running?):",
            "below, the live settings over THIS CLI's environment, not an engine's",
            "",
            *table(
                ["setting", "value", "source"],
                [
                    [n, data["live"][n], "live"] if n in data["live"] else [n, v, "cli env"]
                    for n, v in data["cli_env"].items()
                ],
            ),
        ]
        return "\n".join(lines)
    rows = [
        [name, *(_cell(r, name) for r in alive), DISAGREE if name in data["disagree"] else ""]
        for name in RULE_SPECS
    ]
    lines += ["", *table(["setting", *(r["consumer"] for r in alive), ""], rows)]
    if data["disagree"]:
        lines += ["", f"{DISAGREE}: " + ", ".join(data["disagree"])]
    return "\n".join(lines)
