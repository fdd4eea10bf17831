"""Redis persistence of one book: load a `BookView`, commit effects atomically.

The only module that writes Redis. A commit is one Lua call (`lua/commit.lua`)
that checks the book's version and applies every effect of a batch — stream
appends, keys, the rotation hash and its indexes, acks — or nothing. Loads
read the version first, so anything that changes in between makes the commit
refuse and the caller decide again: a second replica, a redelivery or a retry
after a crash can never emit anything twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from .decide import (
    Abort,
    Ack,
    BadIn,
    BookView,
    DeadLetter,
    Decided,
    Effect,
    Emit,
    Extend,
    ForgetDeadline,
    Input,
    Market,
    PlanIn,
    Release,
    Reserve,
    ResultIn,
    SavePlan,
    SaveRotation,
    SetConfidence,
    Tick,
    Unhold,
)
from .keys import BLOCK_TTL_S, PERMIT_TTL_S, Keys
from .machine import IN_FLIGHT
from .messages import (
    BadEntry,
    Hold,
    Reservation,
    RotationRecord,
    encode_json,
    hold_decoder,
    lock_body,
    plan_record_decoder,
    reservation_decoder,
    rotation_from_hash,
    rotation_to_hash,
    to_fields,
)
from .slots import close_plan_id_candidates

AnyRedis = Redis | RedisCluster
COMMIT_LUA = resources.files("rotation_fsm").joinpath("lua/commit.lua").read_text()


class _Ops:
    """Builds one commit: keys numbered once, ops as one JSON argument (see commit.lua)."""

    def __init__(self, version_key: str, expected: int) -> None:
        self.keys: list[str] = [version_key]
        self._index: dict[str, int] = {version_key: 1}
        self.expected = expected
        self.ops: list[list[str | int]] = []
        self.binary: list[bytes] = []

    def add(self, command: str, key: str, *args: Any) -> None:
        index = self._index.get(key)
        if index is None:
            self.keys.append(key)
            index = self._index[key] = len(self.keys)
        op: list[str | int] = [command, index, *args]
        if not all(type(a) is str for a in args):  # the common case needs no conversion
            op[2:] = [self._arg(a) for a in args]
        self.ops.append(op)

    def _arg(self, arg: Any) -> str | int:
        if isinstance(arg, str):
            return arg
        if isinstance(arg, bytes):
            try:
                return arg.decode()
            except UnicodeDecodeError:  # JSON cannot carry it: pass it beside
                self.binary.append(arg)
                return 2 + len(self.binary)
        return str(arg)

    def argv(self) -> list[Any]:
        return [self.expected, _ops_encoder.encode(self.ops), *self.binary]


_ops_encoder = msgspec.json.Encoder()


class Store:
    """One book's state in Redis."""

    def __init__(
        self,
        redis: AnyRedis,
        keys: Keys,
        *,
        group: str,
        retention_s: float,
        audit_maxlen: int = 100_000,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.group = group
        self.retention_ms = int(retention_s * 1000)
        self.audit_maxlen = audit_maxlen
        self._commit = redis.register_script(COMMIT_LUA)
        self._stream = {
            "plans": keys.plans,
            "results": keys.results,
            "events": keys.events,
            "decisions": keys.decisions,
            "dlq": keys.dlq,
            "audit": keys.audit,
        }

    # ------------------------------------------------------------ load

    async def load(
        self, inputs: Sequence[Input], market: Market, *, whole: bool | None = None
    ) -> BookView:
        """The view `inputs` need; the version is read before anything else.

        Only an OPEN plan needs every rotation in flight (its close targets, the
        symbols they wait to open, the concurrency cap). A batch without plans —
        the timer's ticks, results, operator actions — loads just the rotations it
        names, so its cost does not grow with the number in flight; `whole` forces
        the full book (status pages).
        """
        if whole is None:
            whole = any(isinstance(i, PlanIn) for i in inputs)
        k = self.keys
        plan_ids = sorted({i.plan.plan_id for i in inputs if isinstance(i, PlanIn)})
        close_ids = sorted(_close_ids_wanted(inputs, market))
        bad = sorted({(i.stream, i.entry_id) for i in inputs if isinstance(i, BadIn)})
        answered = sorted({i.result.plan_id for i in inputs if isinstance(i, ResultIn)})
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(k.version)
            pipe.hget(k.policy, "universe_symbols")
            pipe.hgetall(k.reservations)
            pipe.hgetall(k.entry_confidence)
            pipe.hgetall(k.settings)
            if whole:
                pipe.smembers(k.inflight)
            # MGET through execute_command: redis-py's cluster pipeline refuses its
            # `mget()` method outright, though every key here shares the book's hash
            # tag (one slot), which is all Redis Cluster itself requires (issue #7).
            if plan_ids:
                pipe.execute_command("MGET", *[k.plan(p) for p in plan_ids])
            if close_ids:
                pipe.execute_command("MGET", *[k.close_index(c) for c in close_ids])
            if bad:
                pipe.execute_command("MGET", *[k.dead(st, i) for st, i in bad])
            if answered:
                pipe.execute_command("MGET", *[k.hold(p) for p in answered])
            replies = await pipe.execute()
        version, policy, reservations, confidence, live = replies[:5]
        rest = iter(replies[5:])
        inflight = next(rest) if whole else set()
        plan_raw = next(rest) if plan_ids else []
        close_raw = next(rest) if close_ids else []
        dead_raw = next(rest) if bad else []
        hold_raw = next(rest) if answered else []
        view = BookView(
            version=int(version or 0),
            policy_raw=policy,
            reservations=_reservations(reservations),
            inflight={m.decode() for m in inflight},
            plans={
                pid: plan_record_decoder.decode(raw)
                for pid, raw in zip(plan_ids, plan_raw, strict=True)
                if raw is not None
            },
            close_index={
                cid: raw.decode() for cid, raw in zip(close_ids, close_raw, strict=True) if raw
            },
            entry_confidence={s.decode(): float(v) for s, v in confidence.items()},
            settings_raw={
                k.decode(errors="replace"): v.decode(errors="replace") for k, v in live.items()
            },
        )
        view.holds = {
            pid: hold_decoder.decode(raw)
            for pid, raw in zip(answered, hold_raw, strict=True)
            if raw is not None
        }
        view.dead_lettered = {
            f"{st}:{i}" for (st, i), raw in zip(bad, dead_raw, strict=True) if raw is not None
        }
        wanted = view.inflight | set(view.close_index.values())
        wanted |= {i.rotation_id for i in inputs if isinstance(i, Tick | Abort | Extend)}
        await self._load_rotations(view, sorted(wanted))
        if not whole:
            # The ones in flight among those loaded (what an audit seed then shows).
            view.inflight = {r for r, rec in view.rotations.items() if rec.state in IN_FLIGHT}
        return view

    async def _load_rotations(self, view: BookView, rotation_ids: list[str]) -> None:
        if not rotation_ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for rotation_id in rotation_ids:
                pipe.hgetall(self.keys.rotation(rotation_id))
            replies = await pipe.execute()
        for rotation_id, raw in zip(rotation_ids, replies, strict=True):
            if raw:
                view.rotations[rotation_id] = rotation_from_hash(raw)
            else:
                # The set says in flight but the hash is gone (expired by hand?):
                # nothing can be decided for it, so it no longer holds a slot.
                view.inflight.discard(rotation_id)
        # A rotation's end decides its waiting plan: its record (with the entries
        # already answered) must be in the view, or a redelivery of the plan's
        # entry after that would be answered a second time.
        waiting = sorted({r.new_plan_id for r in view.rotations.values()} - set(view.plans))
        if waiting:
            records = await self.redis.execute_command(
                "MGET", *[self.keys.plan(p) for p in waiting]
            )
            for plan_id, body in zip(waiting, records, strict=True):
                if body is not None:
                    view.plans[plan_id] = plan_record_decoder.decode(body)

    async def rotation(self, rotation_id: str) -> RotationRecord | None:
        """One rotation record, or None."""
        raw = await self.redis.hgetall(self.keys.rotation(rotation_id))
        return rotation_from_hash(raw) if raw else None

    # ------------------------------------------------------------ commit

    async def commit(self, version: int, effects: Sequence[Effect], now_ms: int) -> bool:
        """Apply `effects` atomically if the book is still at `version`."""
        if not effects:
            return True
        ops = _Ops(self.keys.version, version)
        acks: dict[str, list[str]] = {}
        for effect in effects:
            self._translate(ops, effect, now_ms)
            if isinstance(effect, Ack):
                acks.setdefault(effect.stream, []).append(effect.entry_id)
        for stream, ids in sorted(acks.items()):
            ops.add("XACK", self._stream[stream], self.group, *ids)
        applied, _ = await self._commit(keys=ops.keys, args=ops.argv())
        return int(applied) == 1

    def _translate(self, ops: _Ops, effect: Effect, now_ms: int) -> None:
        k = self.keys
        match effect:
            case Emit(stream=stream, fields=fields):
                ops.add(
                    "XADD",
                    self._stream[stream],
                    *_maxlen(stream, self.audit_maxlen),
                    "*",
                    *_flat(fields),
                )
            case DeadLetter():
                ops.add("XADD", k.dlq, "*", *_flat(effect.entry()))
                ops.add("SET", k.dead(effect.stream, effect.entry_id), "1", "PX", self.retention_ms)
            case Decided(decision=d, permit=permit, unblock=unblock):
                ops.add("XADD", k.decisions, "*", *_flat(to_fields(d)))
                if d.decision == "ALLOW":
                    if unblock:
                        ops.add("DEL", k.block(d.plan_id))
                    if permit:
                        body = {
                            "granted": True,
                            "symbol": d.symbol,
                            "decision": "EXECUTE",
                            "created_at": float(d.timestamp),
                            "consumed": False,
                        }
                        ops.add("SET", k.permit(d.plan_id), encode_json(body), "EX", PERMIT_TTL_S)
                else:
                    body = {"reason": d.reason, "timestamp": float(d.timestamp), "symbol": d.symbol}
                    ops.add("SET", k.block(d.plan_id), encode_json(body), "EX", BLOCK_TTL_S)
            case SaveRotation(record=rec):
                self._save_rotation(ops, rec, now_ms)
            case ForgetDeadline(rotation_id=rid):
                ops.add("ZREM", k.deadlines, rid)
                ops.add("SREM", k.inflight, rid)
            case SavePlan(record=rec):
                ops.add("SET", k.plan(rec.plan_id), encode_json(rec), "PX", self.retention_ms)
            case Reserve(symbol=sym, reservation=res, holder=holder, hold_until_ms=until):
                ops.add("HSET", k.reservations, sym, encode_json(res))
                if holder:
                    hold = Hold(symbol=sym, made_by=res.plan_id)
                    ops.add("SET", k.hold(holder), encode_json(hold), "PX", max(1, until - now_ms))
            case Release(symbol=sym):
                ops.add("HDEL", k.reservations, sym)
            case Unhold(plan_id=plan_id):
                ops.add("DEL", k.hold(plan_id))
            case SetConfidence(symbol=sym, confidence=value):
                ops.add("HSET", k.entry_confidence, sym, repr(value))
            case Ack():
                pass  # gathered into one XACK per stream below

    def _save_rotation(self, ops: _Ops, rec: RotationRecord, now_ms: int) -> None:
        """The hash, and everything that follows from the state: in-flight set,
        deadline, the seed's lock key, the close-plan index, the finished index."""
        k = self.keys
        key = k.rotation(rec.rotation_id)
        ops.add("HSET", key, *_flat(rotation_to_hash(rec)))
        ops.add("SET", k.close_index(rec.close_plan_id), rec.rotation_id, "PX", self.retention_ms)
        if rec.state in IN_FLIGHT:
            ops.add("SADD", k.inflight, rec.rotation_id)
            ops.add("ZADD", k.deadlines, rec.deadline_ms, rec.rotation_id)
            ops.add("SET", k.lock(rec.new_plan_id), encode_json(lock_body(rec)))
        else:
            ops.add("SREM", k.inflight, rec.rotation_id)
            ops.add("ZREM", k.deadlines, rec.rotation_id)
            ops.add("DEL", k.lock(rec.new_plan_id))
            ops.add("ZADD", k.finished, rec.ended_ms or now_ms, rec.rotation_id)
            # The index keeps what the rotation hashes keep: trim it as they expire.
            ops.add("ZREMRANGEBYSCORE", k.finished, "-inf", now_ms - self.retention_ms)
            ops.add("PEXPIRE", key, self.retention_ms)


def _close_ids_wanted(inputs: Sequence[Input], market: Market) -> set[str]:
    """Close plan ids whose owner the batch may need: results' plan ids, and the close
    ids each OPEN plan could use for each open position."""
    wanted = {i.result.plan_id for i in inputs if isinstance(i, ResultIn)}
    symbols = [p.symbol for p in market.positions or []]
    for item in inputs:
        if isinstance(item, PlanIn) and item.plan.is_execute and not item.plan.is_close:
            for symbol in symbols:
                wanted.update(close_plan_id_candidates(item.plan.plan_id, symbol))
    return wanted


def _reservations(raw: dict[bytes, bytes]) -> dict[str, Reservation]:
    out: dict[str, Reservation] = {}
    for symbol, body in raw.items():
        try:
            out[symbol.decode()] = reservation_decoder.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError):
            continue  # unreadable: it cannot be honoured, and it never blocks forever
    return out


def _flat(fields: dict[Any, Any]) -> list[Any]:
    out: list[Any] = []
    for name, value in fields.items():
        out.append(name)
        out.append(value)
    return out


def _maxlen(stream: str, audit_maxlen: int) -> tuple[Any, ...]:
    # Only the audit stream is capped by us (contract §7); the others belong to
    # the trading stack, whose own retention applies.
    return ("MAXLEN", "~", audit_maxlen) if stream == "audit" else ()


__all__ = ["BadEntry", "Store"]
