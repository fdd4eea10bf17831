"""The operator's view (issue 17): replicas' heartbeats, `settings`, `unset`, the
target each mutating command names, short ids, and the ACL password's sources."""

from __future__ import annotations

import asyncio
import json
import time

import msgspec
import pytest

from rotation_fsm.core import reasons as R
from rotation_fsm.core.audit import SettingChange, parse_entry
from rotation_fsm.core.settings import RULE_SPECS
from rotation_fsm.runtime.heartbeat import Heartbeat
from rotation_fsm.store.keys import Keys
from rotation_fsm.tools.cli import main
from tests.integration.harness import Stack, fields_of

pytestmark = pytest.mark.timeout(60)
SLOTS = {"GOV_ACTIVE_SLOTS_CHOP": "3"}
PLAN = "a1b2c3d4e5f67890"


@pytest.fixture(autouse=True)
def _no_rule_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI's own environment must not be where the values below come from.
    for name in RULE_SPECS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("GOV_BOOK", raising=False)


async def cli(capsys: pytest.CaptureFixture[str], stack: Stack, *args: str) -> tuple[int, str, str]:
    """`rotation-fsm ARGS` against the stack's Redis: exit code, stdout, stderr."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, [*args, "--redis-url", stack.redis_url])
    out, err = capsys.readouterr()
    return code, out, err


async def heartbeat(stack: Stack, consumer: str) -> Heartbeat | None:
    raw = await stack.redis.get(stack.keys.replica(consumer))
    return None if raw is None else msgspec.json.decode(raw, type=Heartbeat)


async def until(check, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Poll another process's state (a heartbeat written or expired) until `check()`."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def both_beating(stack: Stack) -> None:
    async def two() -> bool:
        return await stack.redis.zcard(stack.keys.replicas) == 2

    await until(two)


async def test_settings_shows_what_each_replica_runs_with_not_the_cli_env(stack: Stack, capsys):
    await stack.start_engine(GOV_CONSUMER_NAME="engine-1", GOV_ROTATION_LOCK_TTL="15")
    await stack.start_engine(GOV_CONSUMER_NAME="engine-2", GOV_ROTATION_LOCK_TTL="15")
    await both_beating(stack)
    code, out, _ = await cli(capsys, stack, "settings")
    assert code == 0
    row = next(line for line in out.splitlines() if "GOV_ROTATION_LOCK_TTL" in line)
    assert row.split()[1:] == ["15.0", "(env)", "15.0", "(env)"]
    assert "replica engine-1: up" in out and "replica engine-2: up" in out
    assert "120" not in row  # the CLI's default is not what the engines run with


async def test_each_setting_names_its_source_default_env_or_live(stack: Stack, capsys):
    await stack.start_engine(GOV_CONSUMER_NAME="engine-1", GOV_HEARTBEAT_S="0.05", **SLOTS)
    await cli(capsys, stack, "set", "GOV_ACTIVE_SLOTS_BASE", "7")

    async def live_seen() -> bool:
        beat = await heartbeat(stack, "engine-1")
        return beat is not None and beat.settings["GOV_ACTIVE_SLOTS_BASE"].source == "live"

    await until(live_seen)
    _code, out, _ = await cli(capsys, stack, "settings", "--json")
    mine = json.loads(out)["replicas"][0]["settings"]
    assert mine["GOV_ACTIVE_SLOTS_BASE"] == {"value": "7", "source": "live"}
    assert mine["GOV_ACTIVE_SLOTS_CHOP"] == {"value": "3", "source": "env"}
    assert mine["GOV_RESERVATION_TTL"] == {"value": "60.0", "source": "default"}


async def test_settings_flags_the_replicas_that_disagree(stack: Stack, capsys):
    await stack.start_engine(GOV_CONSUMER_NAME="engine-1", GOV_ACTIVE_SLOTS_CHOP="3")
    await stack.start_engine(GOV_CONSUMER_NAME="engine-2", GOV_ACTIVE_SLOTS_CHOP="2")
    await both_beating(stack)
    _code, out, _ = await cli(capsys, stack, "settings")
    row = next(
        line for line in out.splitlines() if line.strip().startswith("GOV_ACTIVE_SLOTS_CHOP")
    )
    assert "≠ replicas disagree" in row
    base = next(line for line in out.splitlines() if "GOV_ACTIVE_SLOTS_BASE" in line)
    assert "disagree" not in base
    _, js, _ = await cli(capsys, stack, "settings", "--json")
    assert json.loads(js)["disagree"] == ["GOV_ACTIVE_SLOTS_CHOP"]


async def test_a_replica_that_stops_beating_is_shown_silent(stack: Stack, engine_process, capsys):
    engine = await engine_process(stack.env(GOV_CONSUMER_NAME="doomed", GOV_HEARTBEAT_S="0.1"))
    await until(lambda: stack.redis.exists(stack.keys.replica("doomed")))
    engine.kill9()  # no clean stop: its record expires after three missed beats
    await until(lambda: _gone(stack, "doomed"))
    code, out, _ = await cli(capsys, stack, "settings")
    assert code == 0
    assert "replica doomed: SILENT, last seen" in out


async def _gone(stack: Stack, consumer: str) -> bool:
    return not await stack.redis.exists(stack.keys.replica(consumer))


async def test_a_replica_stopped_cleanly_leaves_the_index(stack: Stack):
    await stack.start_engine(GOV_CONSUMER_NAME="engine-1")
    await until(lambda: stack.redis.exists(stack.keys.replica("engine-1")))
    assert await stack.redis.zscore(stack.keys.replicas, "engine-1") is not None
    await stack.stop_engines()
    assert await stack.redis.zscore(stack.keys.replicas, "engine-1") is None
    assert await _gone(stack, "engine-1")


async def test_settings_without_any_replica_says_the_values_are_the_clis(stack: Stack, capsys):
    code, out, _ = await cli(capsys, stack, "settings")
    assert code == 0
    assert "no engine replica of this book is publishing a heartbeat" in out
    assert "cli env" in out


async def test_unset_returns_a_setting_to_the_environment_and_is_audited(stack: Stack, capsys):
    await stack.start_engine(GOV_CONSUMER_NAME="engine-1", GOV_HEARTBEAT_S="0.05", **SLOTS)
    await cli(capsys, stack, "set", "GOV_ACTIVE_SLOTS_CHOP", "5", "--by", "alice")
    code, out, _ = await cli(capsys, stack, "unset", "GOV_ACTIVE_SLOTS_CHOP", "--by", "bob")
    assert code == 0 and "GOV_ACTIVE_SLOTS_CHOP: 5 -> (env)" in out
    assert await stack.redis.hget(stack.keys.settings, "GOV_ACTIVE_SLOTS_CHOP") is None
    _, last = (await stack.redis.xrevrange(stack.keys.audit, count=1))[0]
    change = parse_entry(fields_of(last))
    assert change == SettingChange(
        now_ms=change.now_ms, key="GOV_ACTIVE_SLOTS_CHOP", old="5", new=None, by="bob"
    )
    stack.fill_book("BTCUSDT")
    await stack.send_plan("after-unset")
    assert (await stack.decision("after-unset"))["desired_slots"] == "3"


async def test_unset_of_a_setting_not_set_live_writes_nothing(stack: Stack, capsys):
    code, out, _ = await cli(capsys, stack, "unset", "GOV_ACTIVE_SLOTS_CHOP")
    assert code == 0 and "no live value" in out
    assert await stack.redis.xlen(stack.keys.audit) == 0


async def test_unset_of_an_unknown_key_is_refused(stack: Stack, capsys):
    code, _, err = await cli(capsys, stack, "unset", "GOV_NO_SUCH_THING")
    assert code == 1 and "one of" in err


async def test_every_mutating_command_names_the_redis_and_book_it_acted_on(stack: Stack, capsys):
    target = f"acted on redis {stack.redis_url}, book acct-7"
    for args in (
        ("set", "GOV_ACTIVE_SLOTS_BASE", "5"),
        ("unset", "GOV_ACTIVE_SLOTS_BASE"),
        ("pause",),
        ("resume",),
    ):
        code, out, _ = await cli(capsys, stack, *args, "--book", "acct-7")
        assert code == 0 and target in out, (args, out)
    assert await stack.redis.hget(Keys(book="acct-7").settings, "GOV_ENTRIES_PAUSED") == b"false"


async def rotation_in_flight(stack: Stack) -> dict[str, str]:
    stack.fill_book("BTCUSDT", "ETHUSDT", "SOLUSDT")
    await stack.start_engine(**SLOTS, GOV_ROTATION_LOCK_TTL="30")
    await stack.send_plan(PLAN)
    return await stack.event(R.EV_LOCK_CREATED)


async def test_abort_takes_a_prefix_of_a_rotation_id_and_names_its_target(stack: Stack, capsys):
    lock = await rotation_in_flight(stack)
    code, out, _ = await cli(capsys, stack, "abort", PLAN[:8])
    assert code == 0, out
    assert f"rotation {lock['rotation_id']}: ABORTED" in out
    assert f"acted on redis {stack.redis_url}, book (default)" in out


async def test_extend_takes_a_prefix_and_counts_the_deadline_from_now(stack: Stack, capsys):
    lock = await rotation_in_flight(stack)
    before_ms = int(time.time() * 1000)
    code, out, _ = await cli(capsys, stack, "extend", PLAN[:8], "600")
    assert code == 0, out
    rec = await stack.engines[0][1].engine.store.rotation(lock["rotation_id"])
    assert rec is not None and rec.deadline_ms - before_ms >= 600_000


async def test_explain_takes_a_unique_prefix_of_a_plan_id(stack: Stack, capsys):
    await rotation_in_flight(stack)
    code, out, _ = await cli(capsys, stack, "explain", PLAN[:8])
    assert code == 0
    assert out.startswith(f"plan {PLAN}: NEWUSDT")


async def test_an_ambiguous_prefix_lists_the_candidates(stack: Stack, capsys):
    stack.fill_book("BTCUSDT")
    await stack.start_engine(**SLOTS)
    for plan_id in ("cafe0001", "cafe0002"):
        await stack.send_plan(plan_id)
        await stack.decision(plan_id)
    code, _, err = await cli(capsys, stack, "explain", "cafe")
    assert code == 1
    assert "'cafe' is ambiguous, it starts 2 ids:" in err
    assert "  cafe0001" in err and "  cafe0002" in err


async def test_an_unknown_prefix_is_unknown(stack: Stack, capsys):
    code, _, err = await cli(capsys, stack, "explain", "beef")
    assert code == 1 and "no plan or rotation 'beef'" in err
