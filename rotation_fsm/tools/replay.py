"""`rotation-fsm dump` and `rotation-fsm replay`: recorded history through today's core.

`dump` copies a book's streams (audit, plans, results, decisions, events) to a
JSON-lines file, one entry a line, sorted by (entry id, stream).

`replay` takes the audit stream's batches — each the inputs, market snapshot,
rules and book state one commit was decided on, and what it decided — and feeds
them, in stream order, to the same `decide_batch` through a `MemoryBook`. The
clock is virtual (each batch's recorded `now_ms`), the exchange is the recorded
snapshot, and the rules are the recorded ones unless the environment names a
rule explicitly ("what if there had been 1 CHOP slot?"). It prints a timeline
per rotation and every decision that differs from the record.
Exit 0 identical, 1 diverged, 2 unreadable input. Same input and environment,
same bytes out.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import json
import os
import re
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import msgspec
from redis.exceptions import RedisError

from ..core.audit import AuditBatch, AuditEntry, SettingChange, decided_of, parse_entry
from ..core.decide import Abort, Decided, Effect, Emit, Extend, Market, SaveRotation, Tick
from ..core.errors import RotationFsmError
from ..core.machine import IN_FLIGHT, Trigger, is_legal
from ..core.memory import MemoryBook
from ..core.messages import RotationRecord, as_text, fields_text
from ..core.settings import RULE_SPECS, Rules, SettingError, Settings, load_settings, rules_from
from ..core.timeline import iso_ms, listing, state_changes, table, to_json
from ..store.connections import connect
from ..store.gateway import AnyRedis
from ..store.keys import Keys
from ..store.stream_pages import scan_stream
from .progress import Advance, progress

EXIT_IDENTICAL, EXIT_DIVERGED, EXIT_UNREADABLE = 0, 1, 2
#: the streams `dump` copies, by their logical name (book-independent in the file)
DUMP_STREAMS = ("audit", "plans", "results", "decisions", "events")
_STEP_BYTES = 1 << 20  # progress of reading a file is reported per MiB
#: a file at least this large is read with progress (a small one is read at once)
LARGE_FILE_BYTES = 16 << 20
_MAX = 2**64 - 1  # the largest part of a stream id
_ID = re.compile(r"^\d+(-\d+)?$")
SHOWN = 10  # ids listed in one line of text output before "and N more"


class Unreadable(RotationFsmError):
    """Input replay cannot use; the message names the file line or the entry id."""


# ---------------------------------------------------------------- connection


def settings_for(args: Any) -> Settings:
    """The settings `run` would use, with `--redis-url` and `--book` applied on top."""
    env = dict(os.environ)
    if getattr(args, "redis_url", None):
        env["REDIS_URL"] = args.redis_url
    env["GOV_BOOK"] = getattr(args, "book", "") or ""
    return load_settings(env)


def open_book(settings: Settings) -> tuple[AnyRedis, Keys]:
    """A client (raw bytes replies) and the key names of the book `settings` name."""
    return connect(settings), Keys(book=settings.book, streams=settings.streams)


# ---------------------------------------------------------------- ranges


def stream_bound(text: str) -> str:
    """An XRANGE bound from `-`, `+`, an entry id (`ms` or `ms-seq`) or an ISO time.

    An ISO time without a zone is UTC. Raises Unreadable for anything else.
    """
    bound = text.strip()
    if bound in ("-", "+") or _ID.match(bound):
        return bound
    try:
        when = datetime.fromisoformat(bound)
    except ValueError:
        raise Unreadable(
            f"bad range bound {text!r}: want -, +, an entry id or an ISO time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return str(int(when.timestamp() * 1000))


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as numbers, so ids sort as Redis orders them (not as text)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _bound_key(bound: str, *, end: bool) -> tuple[int, int]:
    # Redis reads an incomplete id as ms-0 at the start of a range, ms-max at its end.
    if bound == "-":
        return (0, 0)
    if bound == "+":
        return (_MAX, _MAX)
    ms, _, seq = bound.partition("-")
    return int(ms), int(seq) if seq else (_MAX if end else 0)


# ---------------------------------------------------------------- dump


def dump_record(stream: str, entry_id: bytes | str, raw: Mapping[Any, Any]) -> dict[str, Any]:
    """One line of a dump. Fields are decoded as UTF-8 entry by entry; an entry with
    any invalid byte keeps every key and value as base64 instead (`"encoding": "base64"`),
    so nothing is lost and one bad entry does not spoil the file."""
    eid = as_text(entry_id)
    try:
        fields = fields_text(raw)
    except UnicodeDecodeError:
        encoded = {
            base64.b64encode(_raw(k)).decode(): base64.b64encode(_raw(v)).decode()
            for k, v in raw.items()
        }
        return {"stream": stream, "id": eid, "encoding": "base64", "fields": encoded}
    return {"stream": stream, "id": eid, "fields": fields}


def _raw(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


async def merged_records(
    redis: AnyRedis, keys: Keys, since: str, until: str
) -> AsyncIterator[dict[str, Any]]:
    """Dump records of every stream in `DUMP_STREAMS`, in (entry id, stream) order.

    A merge of the streams' own (ordered) pages: at most one page per stream is in
    memory, whatever the length of the history.
    """
    pages = {
        s: aiter(scan_stream(redis, getattr(keys, s), low=since, high=until)) for s in DUMP_STREAMS
    }
    heads: list[tuple[tuple[int, int], str, str, dict[Any, Any]]] = []
    for stream, entries in pages.items():
        first = await anext(entries, None)
        if first is not None:
            heapq.heappush(heads, (id_key(first[0]), stream, *first))
    while heads:
        _, stream, entry_id, raw = heapq.heappop(heads)
        yield dump_record(stream, entry_id, raw)
        following = await anext(pages[stream], None)
        if following is not None:
            heapq.heappush(heads, (id_key(following[0]), stream, *following))


def dump_line(record: dict[str, Any]) -> str:
    """One JSON line: compact, UTF-8 kept."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


@contextlib.contextmanager
def _output(path: str) -> Iterator[TextIO]:
    """The dump's destination: stdout for `-`, else a temporary file that replaces
    `path` only once complete, so a reader never sees half a dump."""
    if path == "-":
        yield sys.stdout
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as handle:
            yield handle
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


async def _dump_total(redis: AnyRedis, keys: Keys, since: str, until: str) -> int | None:
    """Entries the dump will write when it is the whole history (XLEN); else unknown."""
    if (since, until) != ("-", "+"):
        return None
    return sum([await redis.xlen(getattr(keys, s)) for s in DUMP_STREAMS])


async def _dump(args: Any) -> dict[str, Any]:
    since, until = stream_bound(args.since), stream_bound(args.until)
    redis, keys = open_book(settings_for(args))
    counts: Counter[str] = Counter()
    try:
        total = await _dump_total(redis, keys, since, until)
        with _output(args.output) as handle, progress("dump", total, "entries") as advance:
            async for record in merged_records(redis, keys, since, until):
                handle.write(dump_line(record))
                counts[record["stream"]] += 1
                advance(1)
    finally:
        await redis.aclose()
    return {
        "file": args.output,
        "entries": counts.total(),
        "by_stream": dict(sorted(counts.items())),
    }


def dump_command(args: Any) -> int:
    """`rotation-fsm dump -o FILE`: 0 written, 2 when Redis or a setting cannot be used."""
    try:
        summary = asyncio.run(_dump(args))
    except (Unreadable, SettingError, OSError, RedisError) as exc:
        print(f"rotation-fsm dump: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    out = sys.stderr if args.output == "-" else sys.stdout
    if args.json:
        out.write(to_json(summary))
    else:
        parts = ", ".join(f"{s} {n}" for s, n in summary["by_stream"].items())
        print(f"wrote {summary['entries']} entries to {args.output} ({parts or 'none'})", file=out)
    return 0


# ---------------------------------------------------------------- reading history


@dataclass(frozen=True)
class Recorded:
    """One audit stream entry: its id and what it says."""

    entry_id: str
    entry: AuditEntry


def parse_audit(entry_id: str, fields: Mapping[str, str], where: str) -> Recorded:
    """An audit entry from its decoded fields; Unreadable (naming `where`) if it is not one."""
    if "body" not in fields and "body_z" not in fields:
        raise Unreadable(f"{where}: audit entry {entry_id} has no body field")
    try:
        return Recorded(entry_id, parse_entry(dict(fields)))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Unreadable(f"{where}: audit entry {entry_id} does not decode: {exc}") from None


def _shape(obj: Any, where: str) -> tuple[str, str, dict[str, Any]]:
    if not isinstance(obj, dict):
        raise Unreadable(f"{where}: not a dump record (a JSON object)")
    stream, entry_id, fields = obj.get("stream"), obj.get("id"), obj.get("fields")
    if not isinstance(stream, str) or not isinstance(fields, dict):
        raise Unreadable(f'{where}: a dump record needs "stream" and "fields"')
    if not isinstance(entry_id, str) or not _ID.match(entry_id):
        raise Unreadable(f"{where}: bad entry id {entry_id!r}")
    return stream, entry_id, fields


def parse_dump(
    lines: Iterable[str], name: str = "<dump>", since: str = "-", until: str = "+"
) -> list[Recorded]:
    """The audit entries of a dump within [since, until], in stream order.

    Other streams' lines are checked for shape and skipped: the audit batches are
    self-contained. Raises Unreadable naming `name:line` for a line that is not a
    dump record or an audit entry that does not decode.
    """
    low, high = _bound_key(since, end=False), _bound_key(until, end=True)
    out: list[Recorded] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise Unreadable(f"{where}: not JSON: {exc}") from None
        stream, entry_id, fields = _shape(obj, where)
        if stream != "audit" or not low <= id_key(entry_id) <= high:
            continue
        if obj.get("encoding") is not None:
            raise Unreadable(f"{where}: audit entry {entry_id} is not UTF-8 text")
        out.append(parse_audit(entry_id, fields, where))
    out.sort(key=lambda r: id_key(r.entry_id))
    return out


def read_dump(path: str, since: str = "-", until: str = "+") -> list[Recorded]:
    """`parse_dump` of a file (with progress by bytes read when it is large);
    Unreadable when it cannot be opened or is not UTF-8."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < LARGE_FILE_BYTES:
                return parse_dump(_lines(handle, lambda n: None), path, since, until)
            with progress(f"replay: reading {path}", size, "bytes") as advance:
                return parse_dump(_lines(handle, advance), path, since, until)
    except (OSError, UnicodeDecodeError) as exc:
        raise Unreadable(f"cannot read {path}: {exc}") from None


def _lines(handle: BinaryIO, advance: Advance) -> Iterator[str]:
    """The file's lines as text, reporting the bytes read in steps of `_STEP_BYTES`."""
    pending = 0
    for raw in handle:
        pending += len(raw)
        if pending >= _STEP_BYTES:
            advance(pending)
            pending = 0
        yield raw.decode("utf-8")
    advance(pending)


async def read_audit(redis: AnyRedis, keys: Keys, since: str, until: str) -> list[Recorded]:
    """The book's audit entries in [since, until], straight from Redis."""
    out: list[Recorded] = []
    async for entry_id, raw in scan_stream(redis, keys.audit, low=since, high=until):
        where = f"{keys.audit}"
        try:
            fields = fields_text(raw)
        except UnicodeDecodeError:
            raise Unreadable(f"{where}: audit entry {entry_id} is not UTF-8 text") from None
        out.append(parse_audit(entry_id, fields, where))
    return out


async def _audit_from_redis(args: Any, since: str, until: str) -> list[Recorded]:
    redis, keys = open_book(settings_for(args))
    try:
        return await read_audit(redis, keys, since, until)
    except (OSError, RedisError) as exc:
        raise Unreadable(f"cannot read the audit stream: {exc}") from None
    finally:
        await redis.aclose()


# ---------------------------------------------------------------- the replay


def rule_overrides(env: Mapping[str, str]) -> dict[str, str]:
    """The rule variables `env` sets explicitly: these replace the recorded values."""
    return {name: env[name] for name in sorted(RULE_SPECS) if name in env}


@dataclass
class Divergence:
    """A decision replay made differently from the record (None: that side has none)."""

    audit_id: str
    now_ms: int
    plan_id: str
    recorded: list[str] | None
    replayed: list[str] | None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        """The row as plain data: verdict, reason and rotation id of both sides."""

        def side(row: list[str] | None) -> dict[str, str] | None:
            if row is None:
                return None
            return {"decision": row[1], "reason": row[2], "rotation_id": row[3]}

        return {
            "audit_id": self.audit_id,
            "time": iso_ms(self.now_ms),
            "plan_id": self.plan_id,
            "recorded": side(self.recorded),
            "replayed": side(self.replayed),
            "note": self.note,
        }


@dataclass
class RotationTrace:
    """What replay saw of one rotation: its last record, events and decisions."""

    record: RotationRecord
    replay_only: bool
    events: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    decisions: list[tuple[int, list[str]]] = field(default_factory=list)


@dataclass
class Report:
    """Everything `replay` prints."""

    overrides: dict[str, str]
    batches: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    recorded_decisions: int = 0
    replayed_decisions: int = 0
    by_reason: Counter[tuple[str, str]] = field(default_factory=Counter)
    rotations: dict[str, RotationTrace] = field(default_factory=dict)
    settings: list[tuple[str, SettingChange]] = field(default_factory=list)
    divergences: list[Divergence] = field(default_factory=list)
    not_replayed: list[str] = field(default_factory=list)  # recorded rotations replay never made
    virtual_ticks: int = 0

    @property
    def identical(self) -> bool:
        """True when every decision matches the record."""
        return not self.divergences


def pair_rows(
    recorded: Sequence[list[str]], replayed: Sequence[list[str]]
) -> list[tuple[str, list[str] | None, list[str] | None]]:
    """Rows that differ, paired by (plan id, n-th decision of that plan in the batch).

    Pairing by plan rather than by position keeps one extra decision from making
    every later row of the batch look different.
    """

    def keyed(rows: Sequence[list[str]]) -> dict[tuple[str, int], list[str]]:
        seen: Counter[str] = Counter()
        out: dict[tuple[str, int], list[str]] = {}
        for row in rows:
            out[(row[0], seen[row[0]])] = row
            seen[row[0]] += 1
        return out

    old, new = keyed(recorded), keyed(replayed)
    order = list(old) + [k for k in new if k not in old]
    return [(k[0], old.get(k), new.get(k)) for k in order if old.get(k) != new.get(k)]


def _recorded_rotations(entries: Sequence[Recorded]) -> set[str]:
    """Every rotation id the record knows: decided rows, seeds and operator inputs."""
    known: set[str] = set()
    for rec in entries:
        batch = rec.entry
        if not isinstance(batch, AuditBatch):
            continue
        known.update(row[3] for row in batch.decided if row[3])
        known.update(batch.seed.rotations)
        known.update(i.rotation_id for i in batch.inputs if isinstance(i, Tick | Abort | Extend))
    return known


class _Replayer:
    """Feeds audit batches to a MemoryBook and compares its decisions with the record."""

    def __init__(self, env: Mapping[str, str], entries: Sequence[Recorded]) -> None:
        self.env = env
        self.report = Report(overrides=rule_overrides(env))
        self.known_rotations = _recorded_rotations(entries)
        self.book: MemoryBook | None = None
        self.start_ms = 0
        self._rules: dict[Rules, Rules] = {}

    def rules(self, recorded: Rules) -> Rules:
        """The recorded rules with the environment's explicit rule variables on top."""
        found = self._rules.get(recorded)
        if found is None:
            found = self._rules[recorded] = rules_from(self.env, base=recorded)
        return found

    def run(self, entries: Sequence[Recorded]) -> Report:
        """Replay every entry in order; the report lists what differed."""
        for rec in entries:
            if isinstance(rec.entry, SettingChange):
                self.report.settings.append((rec.entry_id, rec.entry))
            else:
                self.batch(rec.entry_id, rec.entry)
        replayed = set(self.report.rotations)
        self.report.not_replayed = sorted(
            r for r in self.known_rotations - replayed if self._started_in_window(r)
        )
        return self.report

    def _started_in_window(self, rotation_id: str) -> bool:
        # Rotation ids are `{plan_id}@{created_ms}`; one begun before the window is
        # history the first seed carries, not something replay should have made.
        created = rotation_id.rpartition("@")[2]
        return created.isdigit() and int(created) >= self.start_ms

    def batch(self, audit_id: str, batch: AuditBatch) -> None:
        """Feed one recorded batch and compare its decisions with the record."""
        report = self.report
        report.batches += 1
        report.first_ms = batch.now_ms if report.first_ms is None else report.first_ms
        report.last_ms = batch.now_ms
        report.recorded_decisions += len(batch.decided)
        rules = self.rules(batch.rules)
        if self.book is None:
            # A replay may start mid-history: the first batch's view is where we begin.
            self.book = MemoryBook(view=batch.seed.to_view())
            self.start_ms = batch.now_ms
        else:
            self._adopt_history(batch)
            self._virtual_timer(audit_id, batch.now_ms, rules)
        self.book.view.policy_raw = batch.seed.policy_raw  # the policy is an outside input
        refused = self._refusal(batch)
        if refused is not None:
            self._diverge_all(audit_id, batch, refused)
            return
        try:
            effects = self.book.feed(batch.inputs, batch.market, rules, batch.now_ms)
        except Exception as exc:  # today's core failing on recorded input is a finding
            self._diverge_all(audit_id, batch, f"replay raised {type(exc).__name__}: {exc}")
            return
        self._collect(effects, batch.now_ms)
        for plan_id, old, new in pair_rows(batch.decided, decided_of(effects)):
            report.divergences.append(Divergence(audit_id, batch.now_ms, plan_id, old, new))

    def _adopt_history(self, batch: AuditBatch) -> None:
        """Take from a later seed what predates the replay window and memory lacks.

        The first seed holds only what its batch read (its own plans, rotations in
        flight); a plan decided, or a rotation started, before the window shows up
        in later seeds. Anything from inside the window memory must have made itself —
        adopting it would hide a divergence.
        """
        assert self.book is not None
        view, seed = self.book.view, batch.seed
        for plan_id, plan in seed.plans.items():
            if plan_id not in view.plans and plan.decided_ms < self.start_ms:
                view.plans[plan_id] = plan
        for rotation_id, rot in seed.rotations.items():
            if rotation_id not in view.rotations and rot.created_ms < self.start_ms:
                view.rotations[rotation_id] = rot
                if rotation_id in seed.inflight and rot.state in IN_FLIGHT:
                    view.inflight.add(rotation_id)
        for close_id, rotation_id in seed.close_index.items():
            old = view.rotations.get(rotation_id)
            if close_id not in view.close_index and old and old.created_ms < self.start_ms:
                view.close_index[close_id] = rotation_id

    def _virtual_timer(self, audit_id: str, now_ms: int, rules: Rules) -> None:
        """Time out rotations only replay started, as the engine's timer would have.

        The record's own timeouts are recorded Tick inputs; a rotation the record
        never had has no recorded tick, and no recorded result can confirm it.
        """
        assert self.book is not None
        view = self.book.view
        due = sorted(
            (view.rotations[r].deadline_ms, r)
            for r in view.inflight
            if r in view.rotations
            and r not in self.known_rotations
            and view.rotations[r].deadline_ms <= now_ms
        )
        for deadline_ms, rotation_id in due:
            effects = self.book.feed([Tick(rotation_id)], Market(), rules, deadline_ms)
            self.report.virtual_ticks += 1
            self._collect(effects, deadline_ms)
            for row in decided_of(effects):
                self.report.divergences.append(
                    Divergence(audit_id, deadline_ms, row[0], None, row, "virtual timer")
                )

    def _refusal(self, batch: AuditBatch) -> str | None:
        """Why the engine would refuse this operator batch in the replayed book, if it would.

        Controls commit nothing for an unknown rotation or an illegal trigger, so
        replay skips the whole batch as the engine would have.
        """
        assert self.book is not None
        for item in batch.inputs:
            if isinstance(item, Abort | Extend):
                trigger = Trigger.ABORT if isinstance(item, Abort) else Trigger.EXTEND
                rec = self.book.view.rotations.get(item.rotation_id)
                if rec is None:
                    return f"{trigger.value} refused: no rotation {item.rotation_id}"
                if not is_legal(rec.state, trigger):
                    return f"{trigger.value} refused: rotation {item.rotation_id} is {rec.state}"
        return None

    def _diverge_all(self, audit_id: str, batch: AuditBatch, note: str) -> None:
        for row in batch.decided:
            self.report.divergences.append(
                Divergence(audit_id, batch.now_ms, row[0], row, None, note)
            )

    def _collect(self, effects: Sequence[Effect], now_ms: int) -> None:
        report = self.report
        for effect in effects:
            match effect:
                case SaveRotation(record=rec):
                    trace = report.rotations.get(rec.rotation_id)
                    if trace is None:
                        replay_only = rec.rotation_id not in self.known_rotations
                        report.rotations[rec.rotation_id] = RotationTrace(rec, replay_only)
                    else:
                        trace.record = rec
                case Emit(stream="events", fields=fields):
                    trace = report.rotations.get(fields.get("rotation_id", ""))
                    if trace is not None:
                        trace.events.append((now_ms, fields))
                case Decided(decision=d):
                    report.replayed_decisions += 1
                    report.by_reason[(d.decision, d.reason)] += 1
                    trace = report.rotations.get(d.rotation_id or "")
                    if trace is not None:
                        trace.decisions.append(
                            (now_ms, [d.plan_id, d.decision, d.reason, d.rotation_id or ""])
                        )
                case _:
                    pass


def replay(entries: Sequence[Recorded], env: Mapping[str, str]) -> Report:
    """Run recorded audit entries (in stream order) through today's core, in memory.

    Pure: no Redis, no exchange, no wall clock. Rules are each batch's recorded
    rules overridden by the rule variables `env` sets (SettingError if one is bad).
    """
    rules_from(env)  # a bad override fails before any work, naming the variable
    return _Replayer(env, entries).run(entries)


# ---------------------------------------------------------------- output


@dataclass(frozen=True)
class Step:
    """One line of a rotation's timeline."""

    ms: int
    kind: str  # state | event | decision
    text: str


_KIND_ORDER = {"state": 0, "event": 1, "decision": 2}


def steps(trace: RotationTrace) -> list[Step]:
    """State changes, events and decisions of a rotation, in time order.

    At one instant a state change comes before the event that announces it and
    the decision that follows from it (the order the core emits them).
    """
    out = [Step(ms, "state", text) for ms, text in state_changes(trace.record.history)]
    for ms, ev in trace.events:
        out.append(Step(ms, "event", _event_text(ev)))
    for ms, row in trace.decisions:
        out.append(Step(ms, "decision", f"{row[1]} {row[0]}: {row[2]}"))
    ranked = sorted(enumerate(out), key=lambda p: (p[1].ms, _KIND_ORDER[p[1].kind], p[0]))
    return [s for _, s in ranked]


def _event_text(ev: Mapping[str, str]) -> str:
    text = f"event {ev.get('event', '?')}"
    if ev.get("lock_age"):
        text += f" (lock age {ev['lock_age']} s)"
    if ev.get("new_deadline"):
        text += f" (deadline {ev.get('old_deadline')} → {ev['new_deadline']}, by {ev.get('by')})"
    elif ev.get("by"):
        text += f" (by {ev['by']})"
    return text


def _row_text(row: list[str] | None, other: list[str] | None) -> str:
    """`VERDICT reason`; the rotation id only when it is all that differs (--json has it)."""
    if row is None:
        return "(none)"
    same_answer = other is not None and other[1:3] == row[1:3]
    return f"{row[1]} {row[2]}" + (f" [{row[3] or 'no rotation'}]" if same_answer else "")


def _trace_json(trace: RotationTrace) -> dict[str, Any]:
    rec = trace.record
    return {
        "rotation_id": rec.rotation_id,
        "state": rec.state,
        "replay_only": trace.replay_only,
        "new_plan_id": rec.new_plan_id,
        "new_symbol": rec.new_symbol,
        "close_symbol": rec.close_symbol,
        "close_plan_id": rec.close_plan_id,
        "close_weakness": rec.close_weakness,
        "regime": rec.regime,
        "desired_slots": rec.desired_slots,
        "created": iso_ms(rec.created_ms),
        "deadline": iso_ms(rec.deadline_ms),
        "ended": iso_ms(rec.ended_ms) if rec.ended_ms else None,
        "steps": [
            {"time": iso_ms(s.ms), "ms": s.ms, "kind": s.kind, "text": s.text} for s in steps(trace)
        ],
    }


def _rules_line(overrides: Mapping[str, str]) -> str:
    if not overrides:
        return "rules: as recorded"
    named = ", ".join(f"{k}={v}" for k, v in overrides.items())
    return f"rules: as recorded, overridden from the environment: {named}"


def render_json(report: Report) -> str:
    """The report for machines: sorted keys, times in ISO UTC (and ms where useful)."""
    return to_json(
        {
            "identical": report.identical,
            "batches": report.batches,
            "first": iso_ms(report.first_ms) if report.first_ms is not None else None,
            "last": iso_ms(report.last_ms) if report.last_ms is not None else None,
            "overrides": report.overrides,
            "decisions": {
                "recorded": report.recorded_decisions,
                "replayed": report.replayed_decisions,
                "by_reason": [
                    {"decision": v, "reason": r, "count": n}
                    for (v, r), n in sorted(report.by_reason.items())
                ],
            },
            "rotations": [_trace_json(t) for t in report.rotations.values()],
            "not_replayed": report.not_replayed,
            "virtual_ticks": report.virtual_ticks,
            "settings": [
                {
                    "audit_id": i,
                    "time": iso_ms(c.now_ms),
                    "key": c.key,
                    "old": c.old,
                    "new": c.new,
                    "by": c.by,
                }
                for i, c in report.settings
            ],
            "divergences": [d.to_json() for d in report.divergences],
        }
    )


def _trace_lines(trace: RotationTrace) -> list[str]:
    rec = trace.record
    tag = "  (replay only)" if trace.replay_only else ""
    ended = f", ended {iso_ms(rec.ended_ms)}" if rec.ended_ms else ""
    lines = [
        f"rotation {rec.rotation_id}: {rec.state}{tag}",
        f"  {rec.new_symbol} (plan {rec.new_plan_id}) in place of {rec.close_symbol} "
        f"(close plan {rec.close_plan_id}, weakness {rec.close_weakness:.4f})",
        f"  regime {rec.regime}, {rec.desired_slots} desired slots; "
        f"deadline {iso_ms(rec.deadline_ms)}{ended}",
    ]
    lines += table(["time", "step"], [[iso_ms(s.ms), s.text] for s in steps(trace)])
    return lines


def render_text(report: Report) -> str:
    """The report for a terminal: header, rotations, decision counts, divergences, verdict."""
    lines = [
        f"replay of {report.batches} audit batches"
        + (
            f", {iso_ms(report.first_ms)} … {iso_ms(report.last_ms)}"
            if report.first_ms is not None and report.last_ms is not None
            else ""
        ),
        _rules_line(report.overrides),
        f"decisions: {report.recorded_decisions} recorded, {report.replayed_decisions} replayed; "
        f"rotations: {len(report.rotations)}; setting changes: {len(report.settings)}",
    ]
    if report.batches == 0:
        lines.append("nothing to replay: no audit batch in this range (wrong book or range?)")
    if report.settings:
        lines += ["", "setting changes"]
        lines += table(
            ["time", "setting", "old", "new", "by"],
            [
                [iso_ms(c.now_ms), c.key, c.old or "(env)", c.new or "(env)", c.by]
                for _, c in report.settings
            ],
        )
    for trace in report.rotations.values():
        lines += ["", *_trace_lines(trace)]
    if report.by_reason:
        lines += ["", "replayed decisions by reason"]
        lines += table(
            ["decision", "reason", "count"],
            [[v, r, str(n)] for (v, r), n in sorted(report.by_reason.items())],
        )
    lines += ["", *_verdict_lines(report)]
    return "\n".join(lines) + "\n"


def _verdict_lines(report: Report) -> list[str]:
    if report.identical:
        return [f"identical: all {report.recorded_decisions} recorded decisions replayed the same"]
    lines = ["divergence from the record, entry by entry"]
    lines += table(
        ["audit entry", "time", "plan", "recorded", "replayed", "note"],
        [
            [
                d.audit_id,
                iso_ms(d.now_ms),
                d.plan_id,
                _row_text(d.recorded, d.replayed),
                _row_text(d.replayed, d.recorded),
                d.note,
            ]
            for d in report.divergences
        ],
    )
    if report.not_replayed:
        shown = report.not_replayed[:SHOWN]
        more = len(report.not_replayed) - len(shown)
        tail = f" and {more} more (--json lists all)" if more else ""
        lines.append(f"recorded rotations replay never started: {listing(shown)}{tail}")
    if report.virtual_ticks:
        lines.append(
            f"{report.virtual_ticks} replay-only rotations timed out on the virtual clock "
            f"(no recorded result can confirm a close the record never emitted)"
        )
    lines.append(
        f"DIVERGED: {len(report.divergences)} rows differ ({report.recorded_decisions} "
        f"decisions recorded, {report.replayed_decisions} replayed)"
    )
    return lines


# ---------------------------------------------------------------- command


def replay_command(args: Any) -> int:
    """`rotation-fsm replay [FILE]`: 0 identical, 1 diverged, 2 unreadable input."""
    try:
        if args.file and args.redis_url:
            raise Unreadable("give a FILE or --redis-url, not both")
        since, until = stream_bound(args.since), stream_bound(args.until)
        if args.file:
            entries = read_dump(args.file, since, until)
        else:
            entries = asyncio.run(_audit_from_redis(args, since, until))
        report = replay(entries, os.environ)
    except (Unreadable, SettingError) as exc:
        print(f"rotation-fsm replay: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    sys.stdout.write(render_json(report) if args.json else render_text(report))
    return EXIT_IDENTICAL if report.identical else EXIT_DIVERGED


def command(args: Any) -> int:
    """Entry point of `rotation-fsm dump` and `rotation-fsm replay`."""
    if args.command == "dump":
        return dump_command(args)
    return replay_command(args)


__all__ = [
    "Divergence",
    "Recorded",
    "Report",
    "Unreadable",
    "command",
    "merged_records",
    "parse_dump",
    "read_audit",
    "read_dump",
    "render_json",
    "render_text",
    "replay",
    "stream_bound",
]
