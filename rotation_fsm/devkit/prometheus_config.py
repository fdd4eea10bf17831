"""A Prometheus for local runs: its configuration and command line.

`rotation-fsm stack` starts Debian's `prometheus` (when it is on PATH) with a config
written here: the same jobs as deploy/prometheus/prometheus.yml (`rotation-fsm` for
every engine replica, `paper-exchange`), pointed at loopback ports, and the alert rules
of deploy/prometheus/alerts.yml when running from a checkout. The real-Prometheus
test uses the same function.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

#: the alert rules of the compose stack; present in a checkout, not in the wheel
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
ENGINE_JOB = "rotation-fsm"
EXCHANGE_JOB = "paper-exchange"


def find_prometheus() -> str | None:
    """The `prometheus` binary on PATH, or None."""
    return shutil.which("prometheus")


def config_text(
    engines: Sequence[str],
    exchange: str | None,
    *,
    rules: Sequence[Path] = (),
    interval_s: float = 5.0,
) -> str:
    """The configuration (JSON is YAML) scraping `engines` and `exchange` (host:port)."""
    interval = f"{max(1, round(interval_s * 1000))}ms"
    jobs = [{"job_name": ENGINE_JOB, "static_configs": [{"targets": list(engines)}]}]
    if exchange:
        jobs.append({"job_name": EXCHANGE_JOB, "static_configs": [{"targets": [exchange]}]})
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(path) for path in rules],
        "scrape_configs": jobs,
    }
    return json.dumps(config, indent=2) + "\n"


def prometheus_argv(binary: str, config: Path, data_dir: Path, listen: str) -> list[str]:
    """The command line of a Prometheus on `listen` (host:port) keeping data in `data_dir`."""
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address={listen}",
        "--log.level=warn",
    ]
