"""The exchange account as a live view: a REST snapshot, then the user-data stream.

One view per book, in the engine process. At start and after every (re)connect it
takes a listenKey, opens the websocket, takes a REST snapshot (positions and
account) while buffering the stream's events, then applies the buffered events in
order of `E` and every later one as it comes (`ACCOUNT_UPDATE` carries absolute
position amounts, so an event is applied at most once per symbol and never an
older one over a newer). A REST reconcile runs every `reconcile_s` (sooner when an
event names a symbol never seen or cannot be read, or when an engine's fill wants
the view to be as of a later time); a difference from the view is logged and
counted as a mismatch, and REST wins. The stream only speaks on change, so its
health is the connection's (aiohttp's ping/pong heartbeat), never its silence.

Where the exchange has no user-data stream (the listenKey call is refused) or the
stream cannot be had, the view polls REST every `poll_s` inside the request-weight
budget. A batch reads the view with no round trip (`market`); when the stream is
down and the last good snapshot is older than `stale_ms`, it asks REST once
(shared by the batches waiting) and otherwise reports the view stale, which the
core turns into `active_slots_exchange_stale`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec

from ..core.errors import RotationFsmError
from ..core.market import OPEN_QTY_EPSILON, Account, Kline, Position
from ..core.settings import Rules
from ..core.snapshot import Market, build_market
from ..store.view_share import SharedSnapshot, SnapshotShare
from .exchange import LISTEN_KEY, LISTEN_KEY_MISSING, ExchangeClient, ExchangeUnavailable

log = logging.getLogger("rotation_fsm.runtime.account_view")

STARTING, STREAM, POLLING, STALE = "starting", "stream", "polling", "stale"
#: events kept to be applied again over a REST snapshot taken while they arrived
RECENT_EVENTS = 10_000
#: a closing connection waits this long for the exchange's close frame (a stop must be quick)
WS_CLOSE_S = 0.5
#: listenKey answers that mean "no user-data stream here": poll for a while
NO_STREAM_STATUSES = frozenset({400, 401, 403, 404, 405, 501})


@dataclass(frozen=True)
class ViewConfig:
    """How one book's view keeps up (environment names in the README's contract)."""

    ws_url: str = ""  # with `{listenKey}`; "" → no stream, poll only
    stale_ms: int = 2000
    reconcile_s: float = 30.0
    poll_s: float = 1.0
    keepalive_s: float = 1800.0
    reconnect_s: float = 23 * 3600.0
    heartbeat_s: float = 5.0
    refresh_gap_s: float = 5.0  # REST refreshes asked for by fills: at most one per gap
    retry_stream_s: float = 60.0  # polling: try the stream again after this long
    account_poll_ms: int = 10_000  # polling: the account numbers at most this often
    mismatch_grace_ms: int = 1000  # a change this recent may still be on the stream
    reconnect_backoff_s: float = 0.2


class _StreamEnded(RotationFsmError):
    """The stream session is over; the reason says why (a new one starts)."""


def wall_ms() -> int:
    """Milliseconds since the epoch (the view's receive times and as-of times)."""
    return int(time.time() * 1000)


class AccountView:
    """Positions and account numbers of one exchange account, kept current.

    Read by `market(...)`; run by `run(stop)`. Everything an operator needs is in
    `state()`: the source (stream / polling / stale / starting), the age of the last
    snapshot, the last event, mismatches, the cause of the last failure.
    """

    def __init__(
        self,
        client: ExchangeClient,
        config: ViewConfig,
        *,
        clock_ms: Callable[[], int] = wall_ms,
        needs_account: Callable[[], bool] = lambda: True,
        share: SnapshotShare | None = None,
    ) -> None:
        self.client = client
        self.share = share
        self.adopted = 0  # snapshots taken over from another replica
        self.config = config
        self.clock_ms = clock_ms
        self.needs_account = needs_account
        self.positions: dict[str, Position] = {}
        self.account: Account | None = None
        self.as_of_ms = 0  # start of the last good REST snapshot (0: none yet)
        self.seen_ms: dict[str, int] = {}
        self.snapshots = 0
        self.stream_up = False
        self.polling = False
        self.last_event_ms = 0  # E of the last event applied
        self.last_event_recv_ms = 0
        self.events = 0
        self.mismatches = 0
        self.cause = ""  # why the exchange last failed ("" while it works)
        self._cause_key = ""
        self.causes: Counter[str] = Counter()  # failures by kind, for the metric
        self.listen_keys = 0
        self.reconnects = 0
        #: (client order id, E, received) of the last fills the stream reported
        self.fills: deque[tuple[str, int, int]] = deque(maxlen=10_000)
        self._event_ms: dict[str, int] = {}  # symbol → E of the event that set it
        self._recent: deque[tuple[int, int, dict[str, Any]]] = deque(maxlen=RECENT_EVENTS)
        self._known: set[str] = set()
        self._buffer: list[tuple[int, dict[str, Any]]] | None = None
        self._wake = asyncio.Event()
        self._want_ms = 0  # a REST refresh is wanted as of this time (0: none)
        self._last_refresh_ms = 0
        self._account_ms = 0
        self._inline: asyncio.Task[bool] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.changed: list[Callable[[], None]] = []  # observers (metrics, console)

    # ---------------------------------------------------------------- reading

    @property
    def source(self) -> str:
        """Where the view's numbers come from now: stream, polling, stale or starting."""
        if self.stream_up:
            return STREAM
        if self.as_of_ms == 0:
            return STARTING
        if self.clock_ms() - self.as_of_ms > self.config.stale_ms:
            return STALE
        return POLLING

    def fresh(self, now_ms: int) -> bool:
        """The view may be decided on: the stream is up, or the snapshot is recent."""
        if self.stream_up:
            return True
        return self.as_of_ms > 0 and now_ms - self.as_of_ms <= self.config.stale_ms

    def reference(self) -> str:
        """Which snapshot and stream event a decision used, for its audit entry."""
        return (
            f"{self.source} snapshot#{self.snapshots}@{self.as_of_ms} "
            f"event#{self.events}@E{self.last_event_ms}"
        )

    def state(self) -> dict[str, Any]:
        """The view's health for /readyz, the console and the log."""
        now = self.clock_ms()
        return {
            "source": self.source,
            "snapshot_age_ms": now - self.as_of_ms if self.as_of_ms else None,
            "last_event_age_ms": now - self.last_event_recv_ms if self.last_event_recv_ms else None,
            "positions": len(self.positions),
            "events": self.events,
            "snapshots": self.snapshots,
            "adopted": self.adopted,
            "mismatches": self.mismatches,
            "reconnects": self.reconnects,
            "error": self.cause,
            "weight": self.client.budget.state(),
            "fill_to_view_ms": self.fill_lag_ms(),
        }

    def fill_lag_ms(self) -> dict[str, float] | None:
        """Fill (the event's `E`) → the view has it, over the last fills the stream
        reported: p50 and p99 in ms (clocks of exchange and engine compared as they are)."""
        lags = sorted(recv - at for _, at, recv in self.fills)
        if not lags:
            return None
        return {
            "p50": float(lags[len(lags) // 2]),
            "p99": float(lags[min(len(lags) - 1, (len(lags) * 99) // 100)]),
            "fills": float(len(lags)),
        }

    async def market(self, symbols: list[str], rules: Rules, at_least_ms: int = 0) -> Market:
        """What a batch needs, from the view: no round trip while it is fresh (klines
        come from the per-hour cache; a symbol not cached yet is asked for once).

        `at_least_ms`: the book already decided on a view as of then; an older view
        first catches up with the book's shared snapshot, else asks REST."""
        if not symbols:
            return Market()
        # A REST answer just taken is as fresh as the exchange can give, whatever the bound.
        if not self.fresh(self.clock_ms()) and not await self._refresh_inline():
            return self._unusable()
        if self.as_of_ms < at_least_ms and not await self._adopt_shared(at_least_ms):
            await self._refresh_inline()
        positions = list(self.positions.values())
        account, as_of, seen = self.account, self.as_of_ms, dict(self.seen_ms)
        reference = self.reference()
        need_account = rules.margin_gate_on and account is None
        wanted = sorted(set(symbols))
        if rules.correlation_gate_on:
            wanted = sorted(set(wanted) | {p.symbol for p in positions})
        answers = await asyncio.gather(
            *(self.client.klines(s) for s in wanted), return_exceptions=True
        )
        klines: dict[str, list[Kline] | None] = {
            s: (None if isinstance(a, BaseException) else a)
            for s, a in zip(wanted, answers, strict=True)
        }
        market = build_market(
            positions,
            account,
            klines,
            symbols,
            account_error="no account numbers yet" if need_account else "",
            as_of_ms=as_of,
            seen_ms=seen,
        )
        market.view = reference
        return market

    def _unusable(self) -> Market:
        if self.as_of_ms == 0:
            reason = self.cause or "no exchange snapshot yet"
            return Market(positions=None, positions_error=reason, view=self.reference())
        age_ms = self.clock_ms() - self.as_of_ms
        reason = f"exchange view stale: stream down, last snapshot {age_ms} ms old"
        if self.cause:
            reason += f" ({self.cause})"
        return Market(
            positions=None,
            positions_error=reason,
            stale=True,
            as_of_ms=self.as_of_ms,
            view=self.reference(),
        )

    # ---------------------------------------------------------------- the engine's hints

    def want_refresh(self, as_of_ms: int) -> None:
        """An engine's own entry filled: the view should soon be as of `as_of_ms` (the
        next stream event or REST answer, whichever comes first)."""
        if as_of_ms <= self.as_of_ms:
            return
        if self._want_ms == 0 or as_of_ms < self._want_ms:
            self._want_ms = as_of_ms
        self._wake.set()

    async def refresh_now(self) -> bool:
        """A REST snapshot now (compared with the view); True when it worked."""
        return await self._snapshot(compare=True)

    # ---------------------------------------------------------------- running

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the view current until `stop`: the stream when it can be had, else
        polling, and back to the stream when it returns."""
        self._session = aiohttp.ClientSession()
        backoff_s = self.config.reconnect_backoff_s
        try:
            while not stop.is_set():
                if not self.config.ws_url:
                    await self._poll(stop, math.inf)
                    continue
                span_s = backoff_s
                try:
                    await self._stream_session(stop)
                except _StreamEnded as ended:
                    self._set_cause(f"user-data stream: {ended}", "stream")
                except ExchangeUnavailable as exc:
                    self._set_cause(str(exc), _kind(exc))
                    if exc.endpoint == LISTEN_KEY and exc.status in NO_STREAM_STATUSES:
                        span_s = self.config.retry_stream_s  # this exchange has no stream
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    self._set_cause(f"user-data stream: {type(exc).__name__}", "stream")
                finally:
                    was_up = self.stream_up
                    self._stream_down()
                if stop.is_set():
                    return
                self.reconnects += 1
                backoff_s = self.config.reconnect_backoff_s if was_up else min(5.0, backoff_s * 2)
                await self._poll(stop, span_s)
        finally:
            self._stream_down()
            await self._session.close()

    async def _poll(self, stop: asyncio.Event, span_s: float) -> None:
        """Poll REST every `poll_s` for `span_s` seconds (or until stop)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + span_s
        if span_s > self.config.poll_s:  # not a mere pause between reconnects: say so
            log.info(
                "exchange view: source=polling every %.1f s (%s), weight %s",
                self.config.poll_s,
                self.cause or "no user-data stream configured",
                self._weight_text(),
            )
        self.polling = True
        try:
            while not stop.is_set():
                account_age_ms = self.clock_ms() - self._account_ms
                await self._snapshot(
                    compare=False, with_account=account_age_ms >= self.config.account_poll_ms
                )
                left = until - loop.time()
                if left <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(left, self.config.poll_s))
        finally:
            self.polling = False

    async def _stream_session(self, stop: asyncio.Event) -> None:
        """One listenKey and websocket: snapshot, then events, until it ends."""
        assert self._session is not None
        key = await self.client.new_listen_key()
        self.listen_keys += 1
        url = self.config.ws_url.format(listenKey=key)
        self._buffer = []
        async with self._session.ws_connect(
            url,
            heartbeat=self.config.heartbeat_s,
            timeout=aiohttp.ClientWSTimeout(ws_close=WS_CLOSE_S),
        ) as ws:
            reader = asyncio.create_task(self._read(ws))
            try:
                await self._first_snapshot(reader)
                log.info(
                    "exchange view: source=stream, %d positions, weight %s",
                    len(self.positions),
                    self._weight_text(),
                )
                tasks = [
                    reader,
                    asyncio.create_task(self._keep_alive(key)),
                    asyncio.create_task(self._refresher()),
                    asyncio.create_task(stop.wait()),
                ]
                done, _ = await asyncio.wait(
                    tasks, timeout=self.config.reconnect_s, return_when=asyncio.FIRST_COMPLETED
                )
                for task in tasks:
                    if task not in done:
                        task.cancel()
                for task in done:
                    task.result()  # a _StreamEnded or an error ends the session
                if not done:
                    log.info("exchange view: reconnecting before the 24 h cut-off")
            finally:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader

    async def _first_snapshot(self, reader: asyncio.Task[None]) -> None:
        """The REST snapshot of a new session, with the events buffered meanwhile."""
        snapshot = asyncio.create_task(self._snapshot(compare=False, raise_errors=True))
        done, _ = await asyncio.wait({snapshot, reader}, return_when=asyncio.FIRST_COMPLETED)
        if snapshot not in done:
            snapshot.cancel()
            reader.result()
            raise _StreamEnded("closed while the snapshot loaded")
        snapshot.result()
        self.stream_up = True
        self._notify()

    def _weight_text(self) -> str:
        budget = self.client.budget
        return f"{budget.used_1m}/{budget.budget_per_min} this minute"

    def _stream_down(self) -> None:
        if self.stream_up:
            log.warning(
                "exchange view: user-data stream down (%s); weight %s",
                self.cause or "closed",
                self._weight_text(),
            )
            self.stream_up = False
            self._notify()
        self._buffer = None

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            recv_ms = self.clock_ms()
            try:
                event = msgspec.json.decode(msg.data)
            except msgspec.DecodeError:
                self._unreadable("not JSON")
                continue
            if not isinstance(event, dict):
                self._unreadable("not an object")
                continue
            if event.get("e") == "listenKeyExpired":
                raise _StreamEnded("listenKeyExpired: a new key is taken")
            if self._buffer is not None and not self.stream_up:
                self._buffer.append((recv_ms, event))
            else:
                self._take(event, recv_ms)
        raise _StreamEnded(f"connection closed ({ws.close_code})")

    async def _keep_alive(self, key: str) -> None:
        while True:
            await asyncio.sleep(self.config.keepalive_s)
            try:
                await self.client.keep_alive(key)
            except ExchangeUnavailable as exc:
                if exc.code == LISTEN_KEY_MISSING:
                    raise _StreamEnded("listenKey gone (-1125): a new key is taken") from None
                self._set_cause(str(exc), _kind(exc))

    async def _refresher(self) -> None:
        """Reconcile every `reconcile_s`, and sooner when a refresh is wanted."""
        loop = asyncio.get_running_loop()
        next_reconcile = loop.time() + self.config.reconcile_s
        while True:
            wait_s = next_reconcile - loop.time()
            if self._want_ms:
                gap_s = self.config.refresh_gap_s - (self.clock_ms() - self._last_refresh_ms) / 1000
                due_s = max(gap_s, (self._want_ms - self.clock_ms()) / 1000)
                wait_s = min(wait_s, due_s)
            self._wake.clear()
            if wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait_s)
                continue
            await self._snapshot(compare=True)
            next_reconcile = loop.time() + self.config.reconcile_s

    # ---------------------------------------------------------------- REST

    async def _refresh_inline(self) -> bool:
        """One REST snapshot for batches that found the view stale (shared by the batches
        waiting); True when it worked."""
        if self._inline is None or self._inline.done():
            self._inline = asyncio.create_task(self._snapshot(compare=not self.polling))
        return await asyncio.shield(self._inline)

    async def _snapshot(
        self, *, compare: bool, raise_errors: bool = False, with_account: bool = True
    ) -> bool:
        """Positions (and account) from REST as of the request's start, with the events
        received since applied over them, shared with the book's other replicas; True
        when it worked."""
        start = self.clock_ms()
        calls: list[Awaitable[Any]] = [self.client.positions()]
        if self.needs_account() and (with_account or self.account is None):
            calls.append(self.client.account())
        try:
            answers = await asyncio.gather(*calls)
        except ExchangeUnavailable as exc:
            self._set_cause(str(exc), _kind(exc))
            if raise_errors:
                raise
            return False
        account = answers[1] if len(answers) > 1 else None
        self._install(start, answers[0], account, compare=compare)
        self._set_cause("", "")
        if self.share is not None:
            shared = SharedSnapshot(
                as_of_ms=start, positions=list(answers[0]), account=account or self.account
            )
            try:
                await self.share.publish(shared)
            except Exception as exc:  # a cache: the view works without it
                log.debug("exchange view: snapshot not shared: %s", exc)
        return True

    async def _adopt_shared(self, at_least_ms: int) -> bool:
        """Catch up with the book's newest snapshot (another replica's REST answer) if
        it is as of `at_least_ms` or later; True when the view now is."""
        if self.share is None:
            return False
        try:
            shared = await self.share.newest()
        except Exception as exc:
            log.debug("exchange view: shared snapshot unreadable: %s", exc)
            return False
        if shared is None or shared.as_of_ms < at_least_ms or shared.as_of_ms <= self.as_of_ms:
            return self.as_of_ms >= at_least_ms
        self._install(shared.as_of_ms, shared.positions, shared.account, compare=False)
        self.adopted += 1
        return True

    def _install(
        self, start: int, positions: list[Position], account: Account | None, *, compare: bool
    ) -> None:
        """Make a snapshot as of `start` the view, with every event received since
        applied over it in order of `E`."""
        fresh = {p.symbol: p for p in positions}
        # REST's word on a symbol is as of its updateTime (the exchange's clock, as E
        # is): an event at or before it is already in the answer.
        event_ms = {p.symbol: p.update_time_ms + 1 for p in positions}
        seen = {s: ms for s, ms in self.seen_ms.items() if s in fresh}
        buffered = [(recv, ev) for recv, ev in self._buffer or [] if recv >= start]
        for recv, event in buffered:
            self._record(event, recv)
        replay = sorted(
            ((e_ms, recv, ev) for recv, e_ms, ev in self._recent if recv >= start),
            key=lambda item: (item[0], item[1]),  # in order of E; stable for equal times
        )
        touched: set[str] = set()
        for _, recv, event in replay:
            with contextlib.suppress(KeyError, TypeError, ValueError):  # said when it came
                touched |= _apply(event, recv, fresh, seen, event_ms)
        if compare:
            self._compare(fresh, touched, start)
        self.positions, self.seen_ms = fresh, seen
        self._event_ms = {**event_ms}
        self._known |= set(fresh)
        if account is not None:
            self.account = account
            self._account_ms = start
        self.as_of_ms = start
        self.snapshots += 1
        self._last_refresh_ms = start
        if self._want_ms and self._want_ms <= start:
            self._want_ms = 0
        self._buffer = None
        self._notify()

    def _compare(
        self, fresh: Mapping[str, Position], touched: Iterable[str], start_ms: int
    ) -> None:
        """Count a mismatch when REST and the view disagree on a symbol the stream had
        time to tell: not one an event touched during the call, nor a position REST
        says changed within `mismatch_grace_ms` before it (its event may be on its way)."""
        skip = set(touched)
        recent = start_ms - self.config.mismatch_grace_ms
        differ = sorted(
            s
            for s in (set(fresh) | set(self.positions)) - skip
            if not _same(self.positions.get(s), fresh.get(s))
            and not (s in fresh and fresh[s].update_time_ms >= recent)
        )
        if differ:
            self.mismatches += 1
            log.warning(
                "exchange view: reconcile found %d symbol(s) the stream had wrong: %s (REST wins)",
                len(differ),
                ",".join(differ[:10]),
            )

    # ---------------------------------------------------------------- events

    def _take(self, event: dict[str, Any], recv_ms: int) -> None:
        kind = event.get("e")
        if kind not in ("ACCOUNT_UPDATE", "ORDER_TRADE_UPDATE"):
            return
        try:
            unknown = _apply(event, recv_ms, self.positions, self.seen_ms, self._event_ms)
        except (KeyError, TypeError, ValueError) as exc:
            self._unreadable(f"{kind}: {exc}")
            return
        self._record(event, recv_ms)
        new = unknown - self._known
        if new:
            self._known |= new
            self.want_refresh(recv_ms)  # a symbol never seen: check it against REST
        self._notify()

    def _record(self, event: dict[str, Any], recv_ms: int) -> None:
        """Count an applied event and keep it for the next snapshot's replay."""
        at = _event_time(event)
        self.events += 1
        self.last_event_ms = max(self.last_event_ms, at)
        self.last_event_recv_ms = recv_ms
        self._recent.append((recv_ms, at, event))
        if event.get("e") == "ORDER_TRADE_UPDATE":
            order = event.get("o")
            client_id = order.get("c", "") if isinstance(order, dict) else ""
            self.fills.append((str(client_id), at, recv_ms))

    def _unreadable(self, what: str) -> None:
        self._set_cause(f"unreadable stream event ({what})", "stream_event")
        self.want_refresh(self.clock_ms())

    def _notify(self) -> None:
        for observer in self.changed:
            observer()

    def _set_cause(self, cause: str, kind: str) -> None:
        """Say why the exchange failed, once per change of cause (the same failure on
        another endpoint, or after another number of attempts, is the same cause);
        count every failure by kind."""
        if cause:
            self.causes[kind] += 1
        key = f"{kind}:{_core(cause)}" if cause else ""
        if key != self._cause_key:
            if cause:
                log.warning("exchange: %s", cause)
            elif self.cause:
                log.info("exchange: working again (was: %s)", self.cause)
            self._cause_key = key
            self.cause = cause
            self._notify()
        self.cause = cause


def _core(cause: str) -> str:
    """A failure's text without its endpoint and attempt count."""
    text = cause.split(": ", 2)[-1] if cause.startswith("exchange unavailable: ") else cause
    return text.split(" (gave up after", 1)[0]


def _kind(exc: ExchangeUnavailable) -> str:
    """A short label of a failure for the metric: rate_limited, auth, http_5xx, ..."""
    if exc.status in (429, 418) or "throttled" in exc.reason or "banned" in exc.reason:
        return "rate_limited"
    if "budget spent" in exc.reason:
        return "weight_budget"
    if exc.status in (401, 403) or exc.code in (-2014, -2015, -1022):
        return "auth"
    if exc.status is not None and exc.status >= 500:
        return "http_5xx"
    if exc.status is not None:
        return "http_4xx"
    if "malformed" in exc.reason or "JSON" in exc.reason:
        return "malformed"
    return "unreachable"


def _event_time(event: Mapping[str, Any]) -> int:
    value = event.get("E", 0)
    return int(value) if isinstance(value, int | float) and math.isfinite(value) else 0


def _apply(
    event: Mapping[str, Any],
    recv_ms: int,
    positions: dict[str, Position],
    seen: dict[str, int],
    event_ms: dict[str, int],
) -> set[str]:
    """Apply one ACCOUNT_UPDATE to `positions`; returns the symbols it named.
    A symbol's update older (by `E`) than the one that set it is skipped."""
    if event.get("e") != "ACCOUNT_UPDATE":
        return set()
    at = _event_time(event)
    named: set[str] = set()
    for row in event["a"].get("P", []):
        symbol = row["s"]
        if not isinstance(symbol, str) or not symbol:
            raise ValueError("a position without a symbol")
        amount = float(row["pa"])
        profit = float(row.get("up", "0"))
        if not math.isfinite(amount):
            raise ValueError(f"{symbol} pa is not finite")
        named.add(symbol)
        if at < event_ms.get(symbol, 0):
            continue  # an older word on this symbol than the one the view has
        event_ms[symbol] = at
        if abs(amount) <= OPEN_QTY_EPSILON:
            positions.pop(symbol, None)
            seen.pop(symbol, None)
            continue
        old = positions.get(symbol)
        mark = old.mark_price if old is not None else float(row.get("ep", "0"))
        positions[symbol] = Position(
            symbol=symbol,
            position_amt=amount,
            mark_price=mark if math.isfinite(mark) else 0.0,
            unrealized_profit=profit if math.isfinite(profit) else 0.0,
            update_time_ms=at,
        )
        seen[symbol] = recv_ms
    return named


def _same(a: Position | None, b: Position | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a.position_amt - b.position_amt) <= OPEN_QTY_EPSILON


def ws_url_for(base_url: str, template: str = "") -> str:
    """The user-data stream URL template (with `{listenKey}`) for a REST base URL: the
    given `template`, Binance's own hosts, else the REST host's `/ws/{listenKey}`."""
    if template:
        return template
    known = {
        "https://fapi.binance.com": "wss://fstream.binance.com/private/ws?listenKey={listenKey}",
        "https://testnet.binancefuture.com": "wss://stream.binancefuture.com/ws/{listenKey}",
    }
    base = base_url.rstrip("/")
    if base in known:
        return known[base]
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + "/ws/{listenKey}"
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :] + "/ws/{listenKey}"
    return ""
