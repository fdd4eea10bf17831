"""The raw Redis bounds: sequential round trips of one client, one EVALSHA per call.

Two scripts are timed the same way:

- **the fixed yardstick** (`FIXED_LUA`): `HSET` of a small hash and `XADD` of a
  small entry — the least any store of a decision could do per plan in one atomic
  call. It does not change with the engine, so a heavier commit cannot make the
  engine's ratio to it look better; every throughput's "× raw" is against it.
- **commit.lua's bound**: the engine's own `lua/commit.lua` with exactly the
  KEYS/ARGV the engine sends to commit a batch of one free-slot plan (the
  decision entry, the permit, the plan record, the reservation, the XACK and the
  audit entry), captured once by running the engine's pure core and its
  `Store.commit` against a recorder instead of Redis, then replayed with a fresh
  plan id per call.

The client is as thin as a client gets — a blocking socket, the command
pre-encoded in RESP, replies parsed by hiredis — so the rate is what one
connection doing one awaited call per plan, one after another, can reach.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import hiredis

from rotation_fsm.core.audit import batch_entry, seed_of
from rotation_fsm.core.decide import BookView, PlanIn, decide_batch
from rotation_fsm.core.messages import parse_plan
from rotation_fsm.core.settings import Rules
from rotation_fsm.core.snapshot import build_market
from rotation_fsm.store.gateway import COMMIT_LUA, Store
from rotation_fsm.store.keys import Keys

from .procs import cpu_seconds
from .resp import RawConnection
from .rig import GROUP, plan_fields

BOOK = "yardstick"
SYMBOL = "YARDUSDT"
#: a plan id of fixed width whose digits are replaced per call
PLACEHOLDER = b"yard-00000000"


@dataclass(frozen=True)
class YardstickResult:
    """One repetition: calls per second, and Redis CPU per call (µs)."""

    rate: float
    calls: int
    redis_us_per_call: float


#: the fixed yardstick: a small hash field and a small stream entry, atomically
FIXED_LUA = """
redis.call('HSET', KEYS[1], 'plan_id', ARGV[1], 'decision', 'ALLOW')
return redis.call('XADD', KEYS[2], '*', 'plan_id', ARGV[1], 'decision', 'ALLOW')
"""


class _Recorder:
    """Stands in for a Redis client: the registered script records its KEYS/ARGV."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Any], list[Any]]] = []

    def register_script(self, lua: str) -> Any:
        async def script(*, keys: list[Any], args: list[Any]) -> list[int]:
            self.calls.append((list(keys), list(args)))
            return [1, 1]

        return script


async def _one_plan_commit() -> tuple[list[bytes], list[bytes]]:
    """KEYS and ARGV the engine would send to commit one free-slot plan (book `BOOK`)."""
    recorder = _Recorder()
    keys = Keys(book=BOOK)
    store = Store(recorder, keys, group=GROUP, retention_s=604_800)  # type: ignore[arg-type]
    rules = Rules(slots_chop=1_000_000, max_correlation=1.0, max_margin_usage=1.0)
    plan = parse_plan(plan_fields(PLACEHOLDER.decode(), SYMBOL))
    inputs = [PlanIn("1700000000000-0", plan)]
    view = BookView(version=0, policy_raw=json.dumps([SYMBOL]))
    market = build_market([], None, {SYMBOL: []}, [SYMBOL])
    now_ms = int(time.time() * 1000)
    seed = seed_of(view)
    effects = decide_batch(inputs, view, market, rules, now_ms)
    effects.append(batch_entry(inputs, seed, market, rules, now_ms, effects))
    await store.commit(0, effects, now_ms)
    (call_keys, call_args), *_ = recorder.calls
    return [_bytes(k) for k in call_keys], [_bytes(a) for a in call_args]


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class _Commands:
    """The EVALSHA, with the plan id (and, for commit.lua, the expected version) per call."""

    def __init__(self, sha: bytes, keys: list[bytes], args: list[bytes], versioned: bool) -> None:
        self.head = (b"EVALSHA", sha, len(keys), *keys)
        self.args = args
        self.versioned = versioned

    def pack(self, serial: int, version: int) -> bytes:
        plan_id = b"yard-%08d" % serial
        if not self.versioned:
            return hiredis.pack_command((*self.head, plan_id))
        varying = [a.replace(PLACEHOLDER, plan_id) for a in self.args[1:]]
        return hiredis.pack_command((*self.head, version, *varying))


def _round_trips(
    port: int, lua: str, commands: _Commands, warmup_s: float, seconds: float
) -> tuple[int, int]:
    """Sequential EVALSHAs for `seconds` after `warmup_s`: (calls measured, calls made)."""
    with RawConnection(port) as conn:
        conn.call("SCRIPT", "LOAD", lua)
        serial = version = counted = 0
        start = time.perf_counter()
        measure_from, end = start + warmup_s, start + warmup_s + seconds
        while (now := time.perf_counter()) < end:
            reply = conn.send_packed(commands.pack(serial, version))
            serial += 1
            if commands.versioned:
                if not isinstance(reply, list) or reply[0] != 1:
                    raise RuntimeError(f"commit.lua refused the yardstick's commit: {reply!r}")
                version = int(reply[1])
            if now >= measure_from:
                counted += 1
        return counted, serial


async def measure(
    port: int, redis_pid: int, *, warmup_s: float, seconds: float, fixed: bool = True
) -> YardstickResult:
    """One repetition on a flushed Redis on `port` (its server's pid for CPU time): the
    fixed yardstick, or (`fixed=False`) commit.lua with a one-plan commit."""
    if fixed:
        lua = FIXED_LUA
        keys, args = [b"{yardstick}:hash", b"{yardstick}:stream"], []
    else:
        lua = COMMIT_LUA
        keys, args = await _one_plan_commit()
    sha = hashlib.sha1(lua.encode()).hexdigest().encode()
    commands = _Commands(sha, keys, args, versioned=not fixed)
    cpu_before = cpu_seconds(redis_pid)
    calls, made = await asyncio.to_thread(_round_trips, port, lua, commands, warmup_s, seconds)
    cpu = cpu_seconds(redis_pid) - cpu_before
    return YardstickResult(calls / seconds, calls, cpu / max(1, made) * 1e6)
