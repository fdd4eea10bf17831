"""Security: the engine runs as a least-privilege ACL user; secrets never leak."""

from __future__ import annotations

import aiohttp
import pytest

from rotation_fsm.core import reasons as R
from rotation_fsm.core.audit import entry_body
from rotation_fsm.tools.acl import setuser_args, setuser_line
from tests.integration.harness import API_KEY, API_SECRET, Stack

pytestmark = pytest.mark.timeout(60)


async def test_the_engine_works_under_the_least_privilege_acl(
    stack: Stack, any_redis_binary, redis_factory
):
    server = redis_factory(binary=any_redis_binary)
    from tests.integration.harness import open_stack

    async with open_stack(server.url) as acl_stack:
        await acl_stack.redis.execute_command("ACL", "SETUSER", *setuser_args("gov", "pw-1"))
        user_url = server.url.replace("redis://", "redis://gov:pw-1@")
        acl_stack.fill_book("BTCUSDT", "ETHUSDT", "SOLUSDT")
        running = await acl_stack.start_engine(
            REDIS_URL=user_url, GOV_ACTIVE_SLOTS_CHOP="3", GOV_ROTATION_LOCK_TTL="1"
        )
        await acl_stack.send_plan("acl-plan-1")
        lock = await acl_stack.event(R.EV_LOCK_CREATED)
        await acl_stack.send_result(lock["close_plan_id"], symbol=lock["close_symbol"])
        await acl_stack.event(R.EV_COMPLETE)
        await acl_stack.send_plan("acl-plan-2", "BNBUSDT")
        await acl_stack.event(R.EV_TIMEOUT)  # the timer and the commit script under the ACL
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{running.http_port}/rotations") as resp:
                assert resp.status == 200
            async with http.get(f"http://127.0.0.1:{running.http_port}/metrics") as resp:
                assert resp.status == 200
            base = f"http://127.0.0.1:{running.http_port}/api/console"
            async with http.get(f"{base}/state") as resp:  # the web console's reads
                assert resp.status == 200 and (await resp.json())["finished"]
            async with http.get(f"{base}/story/{lock['rotation_id']}") as resp:
                assert resp.status == 200
            async with http.get(f"{base}/events") as resp:
                assert await resp.content.readline() == b"retry: 2000\n"
                assert await resp.content.readline() == b"event: hello\n"
                await acl_stack.send_plan("acl-plan-3", "XRPUSDT")
                pushed = [await resp.content.readline() for _ in range(5)]
            # its live reader (XREAD) works too: it pushed a change, not an error
            (data,) = [line for line in pushed if line.startswith(b'data: {"')]
            assert b'"kind": "redis"' not in data and b'"book": ""' in data
        # and the user really is confined to the engine's keys
        from redis.asyncio import Redis

        confined = Redis.from_url(user_url)
        with pytest.raises(Exception, match="permission"):
            await confined.set("not-ours", "1")
        with pytest.raises(Exception, match="permission"):
            await confined.flushall()
        await confined.aclose()


async def test_http_binds_to_loopback_by_default(stack: Stack):
    running = await stack.start_engine()
    from rotation_fsm.core.settings import load_settings

    assert load_settings({}).http_host == "127.0.0.1"
    url = f"http://127.0.0.1:{running.http_port}/healthz"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200


async def test_bad_credentials_never_show_the_secret(stack: Stack, caplog):
    await stack.start_engine(BINANCE_API_SECRET="wrong-" + API_SECRET)
    await stack.send_plan("p-badsig")
    d = await stack.decision("p-badsig", timeout_s=20)
    assert d["reason"] == R.POSITIONS_UNAVAILABLE
    produced = caplog.text + repr(await stack.redis.xrange(stack.keys.decisions))
    produced += repr([entry_body(f) for _, f in await stack.redis.xrange(stack.keys.audit)])
    assert API_SECRET not in produced and API_KEY not in produced
    assert "-1022" in produced  # the reason is there, the secret is not


def test_the_readme_gives_the_acl_the_engine_is_tested_under(capsys, monkeypatch) -> None:
    from pathlib import Path

    from rotation_fsm.tools.cli import main

    monkeypatch.setenv("ENGINE_REDIS_PASSWORD", "CHANGE-ME")
    assert main(["acl", "--password-env", "ENGINE_REDIS_PASSWORD"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == setuser_line() and printed.startswith("ACL SETUSER rotation-fsm ")
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert f"\n{printed}\n" in readme  # the README's copy is the one the test runs
