"""What the chaos run observes and schedules: the permit writes in Redis's AOF, the
malformed entries it sends, and the faults' timetable."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from rotation_fsm.core.decide import BadIn
from rotation_fsm.devkit.chaos import Fault, _set_keys, malformed, read_permits, schedule
from rotation_fsm.runtime.listener import to_input
from rotation_fsm.store.keys import Keys
from tests.conftest import RedisFactory

SET_PERMIT = (
    "redis.call('SET', KEYS[1], '{}', 'EX', 60); redis.call('XADD', KEYS[2], '*', 'a', 'b')"
)


def resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        out.append(f"${len(arg.encode())}\r\n{arg}\r\n".encode())
    return b"".join(out)


def test_the_keys_of_set_commands_are_read_from_resp() -> None:
    data = (
        resp("SELECT", "0")
        + resp("MULTI")
        + resp("SET", "quantum:permit:p1", '{"granted": true}', "PXAT", "1795589903936")
        + resp("XADD", "s", "1-0", "body", "x" * 5000)
        + resp("EXEC")
        + resp("SET", "other", "v")
    )
    assert _set_keys(data) == ([b"quantum:permit:p1", b"other"], True)


def test_a_command_cut_short_is_reported() -> None:
    data = resp("SET", "quantum:permit:p1", "{}") + resp("SET", "quantum:permit:p2", "{}")
    keys, intact = _set_keys(data[:-4])
    assert (keys, intact) == ([b"quantum:permit:p1"], False)


def test_permit_writes_are_read_from_a_real_servers_aof(
    redis_factory: RedisFactory, any_redis_binary: str
) -> None:
    server = redis_factory(appendonly=True, binary=any_redis_binary)
    keys = Keys()
    with redis.Redis.from_url(server.url) as client:
        for plan_id in ("p1", "p2", "p1"):
            client.eval(SET_PERMIT, 2, keys.permit(plan_id), "stream")
        client.set("unrelated", "x")
    # appendfsync always: every acknowledged write is in the file already
    assert read_permits(server.data_dir, keys) == (["p1", "p2", "p1"], True)


def test_a_rewritten_aof_is_reported_incomplete(
    redis_factory: RedisFactory, any_redis_binary: str
) -> None:
    server = redis_factory(appendonly=True, binary=any_redis_binary)
    with redis.Redis.from_url(server.url) as client:
        client.set(Keys().permit("p1"), "{}", ex=60)
        client.bgrewriteaof()
        _until_rewritten(client)
    _, complete = read_permits(server.data_dir, Keys())
    assert complete is False


def _until_rewritten(client: redis.Redis, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = client.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            return
        time.sleep(0.01)  # a readiness probe of the server's child process
    raise TimeoutError("BGREWRITEAOF did not finish")


def test_no_aof_means_no_complete_permit_log(tmp_path: Path) -> None:
    assert read_permits(tmp_path, Keys()) == ([], False)


@pytest.mark.parametrize("n", range(6))
def test_every_malformed_entry_is_one_the_engine_dead_letters(n: int) -> None:
    logical, fields = malformed(n)
    raw = {
        (k if isinstance(k, bytes) else k.encode()): (v if isinstance(v, bytes) else v.encode())
        for k, v in fields.items()
    }
    assert isinstance(to_input(logical, "1-0", raw), BadIn)


def _exchange(faults: list[Fault]) -> list[Fault]:
    return [f for f in faults if f.kind.startswith("exchange:")]


@pytest.mark.parametrize("seconds", [20.0, 45.0, 60.0, 300.0])
def test_the_exchange_faults_stay_out_of_the_redis_cut(seconds: float) -> None:
    faults = schedule(seconds, cut_s=10.0)
    cut = next(f for f in faults if f.kind == "redis:cut")
    for fault in _exchange(faults):
        assert fault.at_s + fault.for_s <= cut.at_s or fault.at_s >= cut.at_s + cut.for_s


@pytest.mark.parametrize("seconds", [20.0, 45.0, 60.0, 300.0])
def test_every_fault_happens_once_within_the_run(seconds: float) -> None:
    faults = schedule(seconds, cut_s=10.0)
    kinds = sorted(f.kind for f in faults)
    assert kinds == sorted(
        ["exchange:500", "exchange:429", "exchange:timeout", "exchange:garbage", "redis:restart",
         "redis:cut", "stream:drop", "stream:lose", "stream:expire", "stream:silent"]
    )  # fmt: skip
    assert all(f.at_s > 0 and f.at_s + f.for_s < seconds for f in faults)
