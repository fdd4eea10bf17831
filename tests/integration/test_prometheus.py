"""Operations, with the real tools: the alert rules under `promtool`, the dashboard
generated from deploy/dashboard.py, and Debian's `prometheus` on loopback scraping a
real engine and the paper exchange, where every dashboard query and every alert
expression must return series and the engine-down alert is seen firing.

Prometheus must be installed (`apt-get install prometheus`; `.ci/run` does it):
without it these tests fail, they are never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
import yaml

from rotation_fsm.core import reasons as R
from rotation_fsm.core.machine import State
from rotation_fsm.devkit.prometheus_config import (
    RULES,
    config_text,
    find_prometheus,
    prometheus_argv,
)
from rotation_fsm.devkit.redis_process import free_port
from tests.integration.harness import Stack

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD_JSON = DEPLOY / "grafana" / "dashboards" / "rotation-fsm.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
#: what Grafana puts in place of its variables when the test evaluates a query
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$book": ".*"}
#: the last top-level comparison of an alert expression: `signal op bound`
COMPARISON = re.compile(
    r"^(?P<signal>.*\S)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<bound>[-+.\deE]+)\s*$", re.S
)
SCRAPE_S = 0.5


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = find_prometheus()
    assert binary, "prometheus is missing: apt-get install -y prometheus (brings promtool)"
    return subprocess.run(
        [str(Path(binary).with_name("promtool")), *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=RULES.parent,
    )  # fmt: skip


def dashboard_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboard", DEPLOY / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard_model() -> dict[str, Any]:
    model: dict[str, Any] = json.loads(DASHBOARD_JSON.read_text())
    return model


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def variable_queries(model: dict[str, Any]) -> list[str]:
    """The dashboard's `label_values(metric, label)` variables, as PromQL."""
    found = []
    for variable in model["templating"]["list"]:
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"])
        assert match, f"variable {variable['name']}: {variable['query']!r}"
        found.append(f"count by ({match.group(2)}) ({match.group(1)})")
    return found


# ------------------------------------------------------------------ the files


def test_alert_rules_pass_promtool_check_rules() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    tested = promtool("test", "rules", ALERT_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    tested_names = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    assert tested_names == {rule["alert"] for rule in alert_rules()}, "an alert has no test"


def test_the_compose_prometheus_config_passes_promtool_check_config() -> None:
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_is_one_comparison_with_a_summary_and_a_description() -> None:
    for rule in alert_rules():
        assert COMPARISON.match(rule["expr"]), f"{rule['alert']}: not `signal op bound`"
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_the_checked_in_dashboard_is_the_generators_output() -> None:
    assert dashboard_module().render() == DASHBOARD_JSON.read_text(), (
        "deploy/grafana/dashboards/rotation-fsm.json is stale: run python deploy/dashboard.py"
    )


def test_grafana_provisions_the_datasource_the_dashboard_names() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    uids = {d["uid"] for d in datasources["datasources"]}
    model = dashboard_model()
    named = {p["datasource"]["uid"] for p in model["panels"]}
    named |= {v["datasource"]["uid"] for v in model["templating"]["list"]}
    assert named == uids == {"prometheus"}
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "rotation-fsm.yml").read_text())
    mounted = {v.split(":")[1]: v.split(":")[0] for v in compose["grafana"]["volumes"]}
    source = mounted[provider["providers"][0]["options"]["path"]]
    assert (ROOT / source / DASHBOARD_JSON.name).exists()


def test_queries_name_only_events_and_states_the_engine_emits() -> None:
    events = {v for k, v in vars(R).items() if k.startswith("EV_")}
    states = {s.value for s in State}
    texts = [*dashboard_module().queries(dashboard_model()), *(r["expr"] for r in alert_rules())]
    for text in texts:
        for names in re.findall(r'event=~?"([^"]+)"', text):
            assert set(names.split("|")) <= events, text
        for names in re.findall(r'state=~?"([^"]+)"', text):
            assert set(names.split("|")) <= states, text


# ------------------------------------------------------------------ the real thing


@contextlib.contextmanager
def rules_firing_at_once(work: Path) -> Iterator[Path]:
    """alerts.yml with every `for:` cut to 1 s, so the test sees an alert fire in
    seconds (promtool's unit tests check the real durations)."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    path = work / "alerts.yml"
    path.write_text(yaml.safe_dump(rules))
    yield path


@contextlib.asynccontextmanager
async def prometheus(
    work: Path, engines: list[str], exchange: str, rules: Path
) -> AsyncIterator[str]:
    """Debian's prometheus on a loopback port, scraping every SCRAPE_S."""
    binary = find_prometheus()
    assert binary, "prometheus is missing: apt-get install -y prometheus"
    config = work / "prometheus.yml"
    config.write_text(config_text(engines, exchange, rules=[rules], interval_s=SCRAPE_S))
    listen = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        prometheus_argv(binary, config, work / "data", listen),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://{listen}"
    try:
        # The API answers 503 until Prometheus is ready.
        await _until(lambda: _get_json(f"{base}/api/v1/status/runtimeinfo"), "ready", 20)
        yield base
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err[-2000:]


async def _get_json(url: str, **params: str) -> Any:
    """The JSON body of GET `url`; None while nothing answers or the answer is no 200."""
    try:
        async with aiohttp.ClientSession() as http, http.get(url, params=params) as answer:
            return await answer.json(content_type=None) if answer.status == 200 else None
    except (aiohttp.ClientError, ValueError):
        return None


async def _until(check: Any, what: str, timeout_s: float) -> Any:
    """Poll another process's HTTP API until `check()` gives a truthy value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        await asyncio.sleep(SCRAPE_S / 2)  # the next scrape or evaluation: no event to await


async def query(base: str, promql: str) -> list[dict[str, Any]]:
    body = await _get_json(f"{base}/api/v1/query", query=promql)
    assert body is not None and body["status"] == "success", f"{promql}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def next_scrape(base: str, after: float) -> float:
    """The time of the engine's first scrape after `after` (epoch seconds)."""
    later = f'timestamp(up{{job="rotation-fsm"}}) > {after:.3f}'
    [sample] = await _until(lambda: query(base, later), "a scrape", 20)
    return float(sample["value"][1])


async def firing(base: str, alert: str) -> list[dict[str, Any]]:
    alerts = (await _get_json(f"{base}/api/v1/alerts"))["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == alert and a["state"] == "firing"]


async def drive_a_short_run(stack: Stack) -> None:
    """Two rotations on a full book — one confirmed, one timed out — a free slot
    after the confirmed close, and a malformed entry dead-lettered."""
    stack.fill_book("BTCUSDT", "ETHUSDT", "SOLUSDT")
    await stack.resync_views()  # the engine's exchange view has the positions now
    await stack.send_plan("a1b2c3d4e5f67890", "NEWUSDT")
    first = await stack.event(R.EV_LOCK_CREATED)
    await stack.send_result(first["close_plan_id"], symbol=first["close_symbol"])
    await stack.event(R.EV_COMPLETE)
    await stack.send_plan("b1b2c3d4e5f67890", "XRPUSDT")
    await stack.event(R.EV_LOCK_CREATED)
    await stack.event(R.EV_TIMEOUT)
    await stack.send_raw(stack.keys.plans, {b"symbol": b"BTCUSDT", b"decision": b"EXECUTE"})
    await stack.send_plan("c1b2c3d4e5f67890", "ADAUSDT")
    await stack.decision("c1b2c3d4e5f67890")


async def test_real_prometheus_evaluates_every_query_and_fires_engine_down(
    stack: Stack, tmp_path: Path
) -> None:
    running = await stack.start_engine(GOV_ACTIVE_SLOTS_CHOP="3", GOV_ROTATION_LOCK_TTL="1.0")
    engine = f"127.0.0.1:{running.http_port}"
    exchange = stack.exchange_url.removeprefix("http://")
    with rules_firing_at_once(tmp_path) as rules:
        async with prometheus(tmp_path, [engine], exchange, rules) as base:
            await drive_a_short_run(stack)
            await running.engine.flush()  # the last commit counted before the next scrape
            # Rates need two samples of every counter the run made: two scrapes after it.
            scraped = time.time()
            for _ in range(2):
                scraped = await next_scrape(base, scraped)
            await _until(lambda: query(base, 'up{job="paper-exchange"} == 1'), "exchange", 10)

            model = dashboard_model()
            panel_queries = [grafana_to_promql(q) for q in dashboard_module().queries(model)]
            empty = [
                q for q in [*panel_queries, *variable_queries(model)] if not await query(base, q)
            ]
            assert not empty, f"dashboard queries without series: {empty}"
            for rule in alert_rules():
                parts = COMPARISON.match(rule["expr"])
                assert parts is not None
                signal = f"{parts['signal']} {parts['op']} bool {parts['bound']}"
                assert await query(base, signal), f"{rule['alert']}: no series for {signal}"

            assert not await firing(base, "RotationEngineDown")
            await stack.stop_engines()
            down = await _until(lambda: firing(base, "RotationEngineDown"), "firing alert", 20)
    assert [a["labels"]["instance"] for a in down] == [engine]
