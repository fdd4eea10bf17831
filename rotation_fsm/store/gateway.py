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
from itertools import chain
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from ..core.decide import (
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
    ViewAsOf,
)
from ..core.errors import RotationFsmError
from ..core.machine import IN_FLIGHT
from ..core.messages import (
    BadEntry,
    Decision,
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
)
from ..core.slots import close_plan_id_candidates
from .keys import BLOCK_TTL_S, PERMIT_TTL_S, Keys

AnyRedis = Redis | RedisCluster
COMMIT_LUA = resources.files("rotation_fsm.store").joinpath("lua/commit.lua").read_text()
LOAD_ROTATIONS_LUA = (
    resources.files("rotation_fsm.store").joinpath("lua/load_rotations.lua").read_text()
)
#: rotation hashes per load call (a call blocks Redis while it runs)
LOAD_CHUNK = 1000


#: a string argument longer than this goes beside the JSON (ARGV), not escaped inside it
BESIDE_BYTES = 256


class _Batch:
    """Builds one commit's arguments (see commit.lua): a header, then one record per op.

    Writes to the reservation and confidence hashes are coalesced to each symbol's
    final value: the script applies the whole batch atomically, so only that value
    is ever visible, and a burst into one symbol costs one field write, not one per
    plan. Long values (the audit body) and bytes travel beside the JSON as ARGV.
    """

    def __init__(self, head: list[str], now_ms: int) -> None:
        self.now_ms = now_ms
        self.records: list[list[Any]] = [head]
        self.beside: list[bytes | str] = []
        self.reserved: dict[str, str | None] = {}  # symbol → reservation JSON, None: gone
        self.confidence: dict[str, str] = {}
        self.unheld: dict[str, None] = {}  # hold keys to delete (a later SET takes one back)
        self.acks: dict[str, list[str]] = {}
        # The rotation indexes, coalesced to each member's final state the same way.
        self.inflight: dict[str, bool] = {}  # rotation id → in the set or not
        self.deadlines: dict[str, int | None] = {}  # rotation id → score, None: removed
        self.finished: dict[str, int] = {}
        self.unlocked: dict[str, None] = {}  # lock keys to delete, likewise

    def op(self, command: str, key: str, *args: Any) -> None:
        limit, slow = BESIDE_BYTES, self._arg
        self.records.append(
            [command, key, *[a if type(a) is str and len(a) <= limit else slow(a) for a in args]]
        )

    def op_text(self, command: str, key: str, args: list[str]) -> None:
        """`op` for arguments known to be short text (field names and values of
        records and events): appended as they are, without a look at each."""
        self.records.append([command, key, *args])

    def _arg(self, arg: Any) -> str | int:
        if type(arg) is str:
            if len(arg) <= BESIDE_BYTES:
                return arg
        elif isinstance(arg, bytes):
            try:
                text = arg.decode()
            except UnicodeDecodeError:  # JSON cannot carry it: pass it beside
                text = None
            if text is not None and len(text) <= BESIDE_BYTES:
                return text
        else:
            return str(arg)
        self.beside.append(arg)
        return 2 + len(self.beside)

    def argv(self, expected: int) -> list[Any]:
        return [expected, _encode_batch(self.records), *self.beside]


_encode_batch = msgspec.json.Encoder().encode


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
        self._load_rotations_script = redis.register_script(LOAD_ROTATIONS_LUA)
        self._retention = str(self.retention_ms)
        self._head = [
            keys.decisions,
            keys.permit(""),
            keys.block(""),
            keys.plan(""),
            str(PERMIT_TTL_S),
            str(BLOCK_TTL_S),
        ]
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
            pipe.get(k.view_as_of)
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
        version, policy, reservations, confidence, live, view_as_of = replies[:6]
        rest = iter(replies[6:])
        inflight = next(rest) if whole else set()
        plan_raw = next(rest) if plan_ids else []
        close_raw = next(rest) if close_ids else []
        dead_raw = next(rest) if bad else []
        hold_raw = next(rest) if answered else []
        view = BookView(
            version=int(version or 0),
            view_as_of_ms=int(view_as_of or 0),
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
        replies: list[list[bytes]] = []
        for start in range(0, len(rotation_ids), LOAD_CHUNK):
            names = [self.keys.rotation(r) for r in rotation_ids[start : start + LOAD_CHUNK]]
            replies += await self._load_rotations_script(keys=names, args=[])
        for rotation_id, flat in zip(rotation_ids, replies, strict=True):
            if flat:
                view.rotations[rotation_id] = rotation_from_hash(
                    dict(zip(flat[::2], flat[1::2], strict=False))
                )
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
        """Apply `effects` atomically if the book is still at `version`.

        Raises `CommitRefused` (nothing written) when an effect carries a value
        Redis would refuse, such as a TTL out of range.
        """
        if not effects:
            return True
        batch = _Batch(self._head, now_ms)
        for effect in effects:
            self._translate(batch, effect, now_ms)
        self._coalesced(batch)
        try:
            applied, _ = await self._commit(keys=[self.keys.version], args=batch.argv(version))
        except ResponseError as exc:
            if "commit.lua: nothing written" in str(exc):
                raise CommitRefused(str(exc)) from None
            raise
        return int(applied) == 1

    def _translate(self, batch: _Batch, effect: Effect, now_ms: int) -> None:
        # The three effects every plan has first, by isinstance: a `match` with keyword
        # patterns costs more than the rest of the translation.
        if isinstance(effect, Decided):
            d = effect.decision
            allowed = d.decision == "ALLOW"
            batch.records.append(
                [
                    "D",
                    d.plan_id,
                    decision_fields(d),
                    permit_body(d) if allowed and effect.permit else "",
                    "" if allowed else block_body(d),
                    1 if allowed and effect.unblock else 0,
                ]
            )
        elif isinstance(effect, SavePlan):
            rec = effect.record
            batch.records.append(["P", rec.plan_id, encode_json(rec), self._retention])
        elif isinstance(effect, Ack):
            batch.acks.setdefault(effect.stream, []).append(effect.entry_id)
        else:
            self._translate_rare(batch, effect, now_ms)

    def _translate_rare(self, batch: _Batch, effect: Effect, now_ms: int) -> None:
        k = self.keys
        match effect:
            case Reserve(symbol=sym, reservation=res, holder=holder, hold_until_ms=until):
                batch.reserved[sym] = encode_json(res)
                if holder:
                    hold = encode_json(Hold(symbol=sym, made_by=res.plan_id))
                    batch.unheld.pop(k.hold(holder), None)
                    batch.op("SET", k.hold(holder), hold, "PX", max(1, until - now_ms))
            case Release(symbol=sym):
                batch.reserved[sym] = None
            case Unhold(plan_id=plan_id):
                batch.unheld[k.hold(plan_id)] = None
            case ViewAsOf(as_of_ms=as_of_ms):
                batch.op("SET", k.view_as_of, str(as_of_ms))
            case SetConfidence(symbol=sym, confidence=value):
                batch.confidence[sym] = repr(value)
            case Emit(stream="audit", fields=fields):
                # Only the audit stream is capped by us (contract §7): the others belong
                # to the trading stack, whose own retention applies. Its body is long:
                # checked by `op`, so it travels beside the JSON.
                head = ("MAXLEN", "~", self.audit_maxlen, "*")
                batch.op("XADD", self.keys.audit, *head, *_flat(fields))
            case Emit(stream=stream, fields=fields):
                batch.op_text("XADD", self._stream[stream], ["*", *_flat(fields)])
            case DeadLetter():
                batch.op("XADD", k.dlq, "*", *_flat(effect.entry()))
                batch.op("SET", k.dead(effect.stream, effect.entry_id), "1", "PX", self._retention)
            case SaveRotation(record=rec):
                self._save_rotation(batch, rec, now_ms)
            case ForgetDeadline(rotation_id=rid):
                batch.deadlines[rid] = None
                batch.inflight[rid] = False

    def _coalesced(self, batch: _Batch) -> None:
        """The hash writes and acks gathered over the batch, one command each."""
        k = self.keys
        kept = [x for sym, body in batch.reserved.items() if body is not None for x in (sym, body)]
        gone = [sym for sym, body in batch.reserved.items() if body is None]
        if gone:
            batch.op("HDEL", k.reservations, *gone)
        if kept:
            batch.op("HSET", k.reservations, *kept)
        if batch.confidence:
            batch.op("HSET", k.entry_confidence, *_flat(batch.confidence))
        for keys in (list(batch.unheld), list(batch.unlocked)):
            for start in range(0, len(keys), DEL_CHUNK):
                key, *more = keys[start : start + DEL_CHUNK]
                batch.op("DEL", key, *more)
        _set_members(batch, "SADD", "SREM", k.inflight, batch.inflight)
        removed = [rid for rid, score in batch.deadlines.items() if score is None]
        if removed:
            batch.op("ZREM", k.deadlines, *removed)
        due = [
            x
            for rid, score in batch.deadlines.items()
            if score is not None
            for x in (str(score), rid)
        ]
        if due:
            batch.op("ZADD", k.deadlines, *due)
        if batch.finished:
            ended = [x for rid, score in batch.finished.items() for x in (str(score), rid)]
            batch.op("ZADD", k.finished, *ended)
            # The index keeps what the rotation hashes keep: trim it as they expire.
            batch.op("ZREMRANGEBYSCORE", k.finished, "-inf", str(batch.now_ms - self.retention_ms))
        for stream, ids in sorted(batch.acks.items()):
            batch.op("XACK", self._stream[stream], self.group, *ids)

    def _save_rotation(self, batch: _Batch, rec: RotationRecord, now_ms: int) -> None:
        """The hash, and everything that follows from the state: in-flight set,
        deadline, the seed's lock key, the close-plan index, the finished index."""
        k = self.keys
        key = k.rotation(rec.rotation_id)
        retention = self._retention
        rid = rec.rotation_id
        batch.op_text("HSET", key, _flat(rotation_to_hash(rec)))
        batch.op("SET", k.close_index(rec.close_plan_id), rid, "PX", retention)
        if rec.state in IN_FLIGHT:
            batch.inflight[rid] = True
            batch.deadlines[rid] = rec.deadline_ms
            batch.unlocked.pop(k.lock(rec.new_plan_id), None)
            batch.op("SET", k.lock(rec.new_plan_id), encode_json(lock_body(rec)))
        else:
            batch.inflight[rid] = False
            batch.deadlines[rid] = None
            batch.unlocked[k.lock(rec.new_plan_id)] = None
            batch.finished[rid] = rec.ended_ms or now_ms
            batch.op("PEXPIRE", key, retention)


#: keys per DEL: a batch of results must not become one command of thousands of args
DEL_CHUNK = 500


class CommitRefused(RotationFsmError, ValueError):
    """The commit script refused a batch before writing anything (a value out of range)."""


def _set_members(batch: _Batch, add: str, remove: str, key: str, members: dict[str, bool]) -> None:
    gone = [m for m, kept in members.items() if not kept]
    if gone:
        batch.op(remove, key, *gone)
    kept = [m for m, kept in members.items() if kept]
    if kept:
        batch.op(add, key, *kept)


def decision_fields(d: Decision) -> list[str]:
    """The decision entry's fields, flat, as `to_fields` would give them (None left out)."""
    out = [
        "plan_id", d.plan_id, "symbol", d.symbol, "action", d.action,
        "decision", d.decision, "reason", d.reason, "regime", d.regime,
        "desired_slots", str(d.desired_slots), "open_slots", str(d.open_slots),
        "timestamp", d.timestamp,
    ]  # fmt: skip
    if d.rotation_id is not None:
        out += ("rotation_id", d.rotation_id)
    if d.entry_id is not None:
        out += ("entry_id", d.entry_id)
    return out


def permit_body(d: Decision) -> str:
    """The permit key's JSON (contract §3) for an ALLOW."""
    return encode_json(
        {
            "granted": True,
            "symbol": d.symbol,
            "decision": "EXECUTE",
            "created_at": float(d.timestamp),
            "consumed": False,
        }
    )


def block_body(d: Decision) -> str:
    """The block key's JSON (contract §3) for a BLOCK."""
    return encode_json({"reason": d.reason, "timestamp": float(d.timestamp), "symbol": d.symbol})


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
    return list(chain.from_iterable(fields.items()))


__all__ = ["BadEntry", "CommitRefused", "Store"]
