"""Operator controls on running engines (issue 9): live settings, pause, extend, abort."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import aiohttp
import pytest

from rotation_fsm.core import reasons as R
from rotation_fsm.core.audit import SettingChange, parse_entry
from rotation_fsm.core.settings import load_settings
from rotation_fsm.runtime.controls import Controls, Refused
from rotation_fsm.store.keys import Keys
from tests.integration.harness import Stack, fields_of

pytestmark = pytest.mark.timeout(60)
SLOTS = {"GOV_ACTIVE_SLOTS_CHOP": "3"}


def controls_for(stack: Stack) -> Controls:
    return Controls(stack.redis, Keys(), load_settings(stack.env()))


async def rotation_in_flight(stack: Stack, ttl: str = "30", **env: str) -> dict[str, str]:
    stack.fill_book("BTCUSDT", "ETHUSDT", "SOLUSDT")
    await stack.start_engine(**SLOTS, GOV_ROTATION_LOCK_TTL=ttl, **env)
    await stack.send_plan("a1b2c3d4e5f67890")
    return await stack.event(R.EV_LOCK_CREATED)


async def test_a_slot_change_governs_the_next_plan_on_both_replicas(stack: Stack):
    stack.fill_book("BTCUSDT", "ETHUSDT")
    a = await stack.start_engine(**SLOTS, GOV_CONSUMER_NAME="replica-a")
    b = await stack.start_engine(**SLOTS, GOV_CONSUMER_NAME="replica-b")
    await controls_for(stack).set("GOV_ACTIVE_SLOTS_CHOP", "2", "test")
    changed_at = time.monotonic()
    before = (a.listener.handled, b.listener.handled)
    for i in range(40):
        await stack.send_plan(f"after-{i:02d}", "NEWUSDT")
    decisions = [await stack.decision(f"after-{i:02d}") for i in range(40)]
    assert time.monotonic() - changed_at < 10
    assert {d["desired_slots"] for d in decisions} == {"2"}
    assert decisions[0]["reason"] != R.SLOTS_AVAILABLE  # 2 open of 2: the book is full
    assert a.listener.handled > before[0] and b.listener.handled > before[1]


async def test_an_invalid_value_is_refused_and_changes_nothing(stack: Stack):
    controls = controls_for(stack)
    with pytest.raises(Refused, match="GOV_ACTIVE_SLOTS_BASE='abc'"):
        await controls.set("GOV_ACTIVE_SLOTS_BASE", "abc", "test")
    with pytest.raises(Refused, match="one of"):
        await controls.set("GOV_NO_SUCH_THING", "1", "test")
    assert await stack.redis.hgetall(stack.keys.settings) == {}


async def test_a_bad_value_written_behind_our_back_keeps_the_last_good_one(stack: Stack):
    await stack.start_engine(**SLOTS)
    await controls_for(stack).set("GOV_ACTIVE_SLOTS_CHOP", "5", "test")
    await stack.send_plan("p-1")
    assert (await stack.decision("p-1"))["desired_slots"] == "5"
    await stack.redis.hset(stack.keys.settings, "GOV_ACTIVE_SLOTS_CHOP", "lots")
    await stack.send_plan("p-2")
    assert (await stack.decision("p-2"))["desired_slots"] == "5"


async def test_pause_blocks_entries_but_a_pending_rotation_completes(stack: Stack):
    lock = await rotation_in_flight(stack)
    await controls_for(stack).set("GOV_ENTRIES_PAUSED", "true", "test")
    await stack.send_plan("p-paused", "BNBUSDT")
    assert (await stack.decision("p-paused"))["reason"] == R.PAUSED
    close = lock["close_plan_id"]
    await stack.send_plan(
        close, lock["close_symbol"], action="FULL_CLOSE_PROPOSED", reduceOnly="true"
    )
    assert (await stack.decision(close))["reason"] == R.CLOSE_EXEMPT  # closes go on
    await stack.send_result(close, symbol=lock["close_symbol"])
    await stack.event(R.EV_COMPLETE)
    await controls_for(stack).set("GOV_ENTRIES_PAUSED", "false", "test")
    await stack.send_plan("p-paused", "BNBUSDT")  # a resend is decided afresh
    assert (await stack.decision("p-paused"))["reason"] != R.PAUSED


async def test_extend_moves_the_deadline_and_the_timer_honours_it_across_a_restart(
    stack: Stack,
):
    lock = await rotation_in_flight(stack, ttl="1.0")
    rec = await controls_for(stack).extend(lock["rotation_id"], 3.0, "test")
    changed = await stack.event(R.EV_DEADLINE_CHANGED)
    assert changed["by"] == "test" and float(changed["new_deadline"]) == rec.deadline_ms / 1000
    await stack.stop_engines()  # a replica restart while the rotation waits
    await stack.start_engine(**SLOTS)
    await stack.event(R.EV_TIMEOUT)
    done = await stack.engines[0][1].engine.store.rotation(lock["rotation_id"])
    assert done is not None and done.state == "TIMED_OUT"
    assert 0 <= done.ended_ms - rec.deadline_ms < 1000  # at the new deadline, not the old


async def test_abort_blocks_the_waiting_plan_and_a_final_rotation_refuses_it(stack: Stack):
    lock = await rotation_in_flight(stack)
    controls = controls_for(stack)
    rec = await controls.abort(lock["rotation_id"], "test")
    assert rec.state == "ABORTED"
    ev = await stack.event(R.EV_ABORTED)
    assert ev["by"] == "test"
    d = await stack.next_entry(stack.keys.decisions, {"reason": R.ROTATION_ABORTED})
    assert d["plan_id"] == "a1b2c3d4e5f67890" and d["decision"] == R.BLOCK
    with pytest.raises(Refused, match="ABORTED"):
        await controls.abort(lock["rotation_id"], "test")
    with pytest.raises(Refused, match="no rotation"):
        await controls.abort("nope", "test")


async def test_every_change_is_on_the_audit_stream(stack: Stack):
    controls = controls_for(stack)
    await controls.set("GOV_ACTIVE_SLOTS_BASE", "5", "alice")
    await controls.set("GOV_ACTIVE_SLOTS_BASE", "6", "bob")
    entries = [parse_entry(fields_of(raw)) for _, raw in await stack.redis.xrange(stack.keys.audit)]
    changes = [e for e in entries if isinstance(e, SettingChange)]
    assert [(c.key, c.old, c.new, c.by) for c in changes] == [
        ("GOV_ACTIVE_SLOTS_BASE", None, "5", "alice"),
        ("GOV_ACTIVE_SLOTS_BASE", "5", "6", "bob"),
    ]


async def test_http_controls_need_the_bearer_token(stack: Stack):
    lock = await rotation_in_flight(stack, GOV_HTTP_TOKEN="s3cret-token")
    port = stack.engines[0][1].http_port
    url = f"http://127.0.0.1:{port}/api/rotations/{lock['rotation_id']}/abort"
    async with aiohttp.ClientSession() as http:
        async with http.post(url) as resp:
            assert resp.status == 401
        async with http.post(url, headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
        auth = {"Authorization": "Bearer s3cret-token"}
        async with http.post(url, headers=auth, json={"by": "desk"}) as resp:
            assert resp.status == 200 and (await resp.json())["state"] == "ABORTED"
        async with http.post(url, headers=auth) as resp:
            assert resp.status == 409  # already final
        async with http.put(
            f"http://127.0.0.1:{port}/api/settings/GOV_ACTIVE_SLOTS_BASE",
            headers=auth,
            json={"value": "-3"},
        ) as resp:
            assert resp.status == 409 and "GOV_ACTIVE_SLOTS_BASE" in (await resp.json())["error"]
    assert (await stack.event(R.EV_ABORTED))["by"] == "desk"


async def test_http_controls_refuse_when_no_token_is_configured(stack: Stack):
    running = await stack.start_engine()
    url = f"http://127.0.0.1:{running.http_port}/api/pause"
    async with aiohttp.ClientSession() as http, http.post(url) as resp:
        assert resp.status == 403
    assert await stack.redis.hgetall(stack.keys.settings) == {}


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rotation_fsm.tools.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_cli_exit_codes(stack: Stack):
    import os

    env = {**os.environ, **stack.env()}
    ok = await asyncio.to_thread(cli, "set", "GOV_ACTIVE_SLOTS_BASE", "5", "--by", "ops", env=env)
    assert ok.returncode == 0 and "-> 5" in ok.stdout
    refused = await asyncio.to_thread(cli, "set", "GOV_ACTIVE_SLOTS_BASE", "abc", env=env)
    assert refused.returncode == 1 and "GOV_ACTIVE_SLOTS_BASE='abc'" in refused.stderr
    bad_arg = await asyncio.to_thread(cli, "extend", "rot-1", "soon", env=env)
    assert bad_arg.returncode == 2
    shown = await asyncio.to_thread(cli, "settings", env=env)
    assert "GOV_ACTIVE_SLOTS_BASE" in shown.stdout and "live" in shown.stdout
    paused = await asyncio.to_thread(cli, "pause", env=env)
    assert paused.returncode == 0
    assert await stack.redis.hget(stack.keys.settings, "GOV_ENTRIES_PAUSED") == b"true"


async def test_a_replay_of_a_run_with_live_changes_reproduces_its_decisions(
    stack: Stack, tmp_path, monkeypatch, capsys
):
    from rotation_fsm.core.settings import RULE_SPECS
    from rotation_fsm.tools.cli import main

    for name in RULE_SPECS:  # replay overrides recorded rules only with what the env sets
        monkeypatch.delenv(name, raising=False)
    stack.fill_book("BTCUSDT", "ETHUSDT")
    await stack.start_engine(**SLOTS)
    controls = controls_for(stack)
    await stack.send_plan("live-1", "NEWUSDT")
    assert (await stack.decision("live-1"))["desired_slots"] == "3"
    await controls.set("GOV_ACTIVE_SLOTS_CHOP", "5", "alice")
    await stack.send_plan("live-2", "BNBUSDT")
    assert (await stack.decision("live-2"))["desired_slots"] == "5"
    await controls.set("GOV_ENTRIES_PAUSED", "true", "alice")
    await stack.send_plan("live-3", "XRPUSDT")
    assert (await stack.decision("live-3"))["reason"] == R.PAUSED
    dump = tmp_path / "run.jsonl"
    url = ["--redis-url", stack.redis_url]
    assert await asyncio.to_thread(main, ["dump", *url, "-o", str(dump)]) == 0
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["replay", str(dump)]) == 0  # identical
    capsys.readouterr()
    # The recorded live settings are what the replay used: override the pause and
    # exactly the paused plan decides differently.
    monkeypatch.setenv("GOV_ENTRIES_PAUSED", "false")
    assert await asyncio.to_thread(main, ["replay", str(dump), "--json"]) == 1
    report = capsys.readouterr().out
    assert "live-3" in report and "live-1" not in report.split("diverg", 1)[-1]
