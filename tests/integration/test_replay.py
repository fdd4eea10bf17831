"""Issue #4 end to end: record a real run (engine + real Redis), dump it, replay it.

The run has a free-slot allow, a confirmed rotation and a timed-out one. The
commands run in-process through `rotation_fsm.tools.cli.main`, each in a thread of
its own: they call `asyncio.run`, which cannot nest in the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from rotation_fsm.core import reasons as R
from rotation_fsm.core.regime import Regime
from rotation_fsm.core.settings import RULE_SPECS
from rotation_fsm.devkit.paper_exchange.book import synthetic_klines
from rotation_fsm.tools.cli import main
from tests.integration.harness import Stack

pytestmark = pytest.mark.timeout(90)

LOCK_TTL_S = 2.0
ENGINE_ENV = {"GOV_ACTIVE_SLOTS_CHOP": "3", "GOV_ROTATION_LOCK_TTL": str(LOCK_TTL_S)}
NEW_SYMBOLS = ("NEWUSDT", "BNBUSDT", "AVAXUSDT")


@dataclass
class Run:
    """What the recorded run produced that the tests look at."""

    confirmed: dict[str, str]  # ROTATION_LOCK_CREATED of the rotation that completes
    timed_out: dict[str, str]  # ROTATION_LOCK_CREATED of the rotation that times out
    status_in_flight: dict[str, object]  # `status --json` while `confirmed` was in flight


class Cli:
    """`rotation-fsm …` in-process, in a worker thread; output captured by capsys."""

    def __init__(self, capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
        self.capsys = capsys
        self.redis_url = redis_url

    async def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = await asyncio.to_thread(main, list(argv))
        out = self.capsys.readouterr()
        return code, out.out, out.err

    async def redis(self, *argv: str) -> tuple[int, str, str]:
        """The same command against the stack's Redis."""
        return await self(*argv, "--redis-url", self.redis_url)


@pytest.fixture
def cli(stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    # Replay takes rule overrides from the environment: start from none at all.
    for name in RULE_SPECS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("GOV_BOOK", raising=False)
    return Cli(capsys, stack.redis_url)


async def record_run(stack: Stack, cli: Cli) -> Run:
    """Two positions and CHOP klines for the new symbols (3 slots): one free slot, then
    a rotation confirmed by its result, then one left to time out."""
    now_ms = int(time.time() * 1000)
    for seed, symbol in enumerate(NEW_SYMBOLS):
        stack.exchange.set_klines(symbol, synthetic_klines(Regime.CHOP, now_ms=now_ms, seed=seed))
    stack.fill_book("BTCUSDT", "ETHUSDT")  # ETHUSDT the weaker
    await stack.start_engine(**ENGINE_ENV)

    await stack.send_plan("p-free", "NEWUSDT")
    assert (await stack.decision("p-free"))["reason"] == R.SLOTS_AVAILABLE

    await stack.send_plan("p-rot1", "BNBUSDT", confidence="0.9")
    confirmed = await stack.event(R.EV_LOCK_CREATED)
    code, out, _ = await cli.redis("status", "--json")
    assert code == 0
    status_in_flight = json.loads(out)
    await stack.send_result(confirmed["close_plan_id"], symbol=confirmed["close_symbol"])
    await stack.event(R.EV_COMPLETE)
    stack.exchange.close(confirmed["close_symbol"])  # the apply layer closed it

    await stack.send_plan("p-rot2", "AVAXUSDT")
    timed_out = await stack.event(R.EV_LOCK_CREATED)
    await stack.event(R.EV_TIMEOUT, timeout_s=LOCK_TTL_S + 5)
    # Both close plans came back through the plan stream: let their answers commit.
    await stack.next_entry(stack.keys.decisions, {"plan_id": timed_out["close_plan_id"]})
    return Run(confirmed, timed_out, status_in_flight)


@pytest.fixture
async def run(stack: Stack, cli: Cli) -> Run:
    recorded = await record_run(stack, cli)
    await stack.stop_engines()  # nothing may commit while the history is read
    return recorded


@pytest.fixture
async def dump_file(run: Run, cli: Cli, tmp_path: Path) -> Path:
    path = tmp_path / "history.jsonl"
    code, out, err = await cli.redis("dump", "-o", str(path))
    assert code == 0, err
    assert out.startswith("wrote ")
    return path


async def test_a_recorded_run_replays_from_its_dump_with_no_divergence(dump_file: Path, cli: Cli):
    code, out, _ = await cli("replay", str(dump_file))
    assert code == 0, out
    assert "identical: all" in out and "divergence" not in out
    assert "CLOSE_EMITTED → CONFIRMED (confirm)" in out
    assert "CLOSE_EMITTED → TIMED_OUT (timeout)" in out


async def test_the_dump_holds_every_stream_sorted_by_entry_id(dump_file: Path):
    records = [json.loads(line) for line in dump_file.read_text().splitlines()]
    assert {r["stream"] for r in records} == {"audit", "plans", "results", "decisions", "events"}
    keys = [(tuple(int(p) for p in r["id"].split("-")), r["stream"]) for r in records]
    assert keys == sorted(keys)


async def test_fewer_slots_in_the_environment_diverge_naming_the_plans(
    dump_file: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("GOV_ACTIVE_SLOTS_CHOP", "1")
    code, out, _ = await cli("replay", str(dump_file), "--json")
    assert code == 1
    report = json.loads(out)
    assert report["overrides"] == {"GOV_ACTIVE_SLOTS_CHOP": "1"}
    named = {d["plan_id"] for d in report["divergences"]}
    assert {"p-free", "p-rot1", "p-rot2"} <= named
    first = report["divergences"][0]
    assert first["plan_id"] == "p-free"
    assert first["recorded"]["reason"] == R.SLOTS_AVAILABLE
    assert first["replayed"]["reason"] == R.WAITING_ROTATION_CLOSE
    code, text, _ = await cli("replay", str(dump_file))
    assert code == 1 and "DIVERGED" in text and "p-free" in text


async def test_replaying_twice_gives_byte_identical_output(dump_file: Path, cli: Cli):
    first = await cli("replay", str(dump_file))
    second = await cli("replay", str(dump_file))
    assert first == second
    assert await cli("replay", str(dump_file), "--json") == await cli(
        "replay", str(dump_file), "--json"
    )


async def test_replay_straight_from_redis_matches_the_file(dump_file: Path, cli: Cli):
    from_file = await cli("replay", str(dump_file))
    from_redis = await cli.redis("replay")
    assert from_redis[0] == 0
    assert from_redis == from_file


async def test_explain_a_rotation_tells_why_its_position_was_closed(run: Run, cli: Cli):
    rotation_id = run.confirmed["rotation_id"]
    code, out, _ = await cli.redis("explain", rotation_id)
    assert code == 0
    assert f"rotation {rotation_id}: CONFIRMED" in out
    assert "It closes ETHUSDT, the weakest position it may close: weakness 0.0101" in out
    assert "BNBUSDT reads CHOP: EMA20" in out and "3 desired slots" in out
    assert "Occupied 3: open BTCUSDT, ETHUSDT; reserved NEWUSDT" in out
    assert "ROTATION_COMPLETE" in out and "ALLOW rotation_complete" in out
    code, out, _ = await cli.redis("explain", rotation_id, "--json")
    story = json.loads(out)
    assert story["start"]["facts"]["occupied"] == ["BTCUSDT", "ETHUSDT", "NEWUSDT"]
    assert "class CONFIRMED current" in story["rotation"]["diagram_mermaid"]


async def test_explain_a_rotation_lists_the_positions_it_began_with_from_its_audit_entry(
    run: Run, cli: Cli
):
    # The rotation hash keeps no copy of the snapshot: it comes from the audit batch.
    rotation_id = run.confirmed["rotation_id"]
    code, out, _ = await cli.redis("explain", rotation_id)
    assert code == 0
    table = out.split("positions when it began:", 1)[1].split("Close plan", 1)[0]
    assert "ETHUSDT" in table and "closed" in table and "BTCUSDT" in table
    code, out, _ = await cli.redis("explain", rotation_id, "--json")
    rows = json.loads(out)["rotation"]["snapshot"]
    assert sorted(row[0] for row in rows) == ["BTCUSDT", "ETHUSDT"]


async def test_explain_a_plan_gives_each_decision_with_its_numbers(run: Run, cli: Cli):
    code, out, _ = await cli.redis("explain", "p-free")
    assert code == 0
    assert "ALLOW slots_available" in out
    assert "NEWUSDT reads CHOP: EMA20" in out and "ATR%" in out
    assert "Occupied 2: open BTCUSDT, ETHUSDT" in out and "3 − 2 = 1 free" in out
    code, out, _ = await cli.redis("explain", "p-rot2", "--json")
    story = json.loads(out)
    reasons = [d["reason"] for d in story["decisions"]]
    assert reasons == [R.WAITING_ROTATION_CLOSE, R.ROTATION_TIMEOUT]
    assert story["decisions"][0]["facts"]["candidate"]["symbol"] == "BTCUSDT"
    assert story["rotations"][0]["state"] == "TIMED_OUT"


async def test_explain_an_unknown_id_exits_1(run: Run, cli: Cli):
    code, out, err = await cli.redis("explain", "no-such-plan")
    assert code == 1 and out == "" and "no-such-plan" in err


async def test_status_shows_the_rotation_in_flight_and_later_the_final_counts(run: Run, cli: Cli):
    flying = run.status_in_flight["rotations_in_flight"]
    assert isinstance(flying, list) and len(flying) == 1
    assert flying[0]["rotation_id"] == run.confirmed["rotation_id"]
    assert flying[0]["state"] == "CLOSE_EMITTED"
    assert 0 < flying[0]["to_deadline_s"] <= LOCK_TTL_S
    slots = run.status_in_flight["slots"]
    assert isinstance(slots, dict) and slots["regime"] == "CHOP" and slots["desired"] == 3
    code, out, _ = await cli.redis("status")
    assert code == 0
    assert "CONFIRMED    1" in out and "TIMED_OUT    1" in out
