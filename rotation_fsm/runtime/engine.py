"""One book's engine: fetch the market, load the view, decide, commit — retried on conflict.

The listener and the timer both hand inputs to `BookEngine.handle`. The
exchange is asked *before* taking the commit lock, so a slow exchange never
delays a timeout; the load → decide → commit step is serialised per process
(replicas are kept apart by the version guard in the commit).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from ..core import reasons as R
from ..core.audit import batch_entry, seed_of
from ..core.decide import (
    BookView,
    DeadLetter,
    Decided,
    Effect,
    Emit,
    Input,
    Market,
    PlanIn,
    ResultIn,
    SaveRotation,
    ViewAsOf,
    decide_batch,
)
from ..core.errors import RotationFsmError
from ..core.market import Account, Kline, Position
from ..core.settings import Rules, overlay
from ..core.snapshot import build_market
from ..core.tally import Tally, commit_line, tally
from ..store.gateway import Store

log = logging.getLogger("rotation_fsm")


def wall_ms() -> int:
    return int(time.time() * 1000)


class Exchange(Protocol):
    """What the engine asks the exchange (see `exchange.ExchangeClient`)."""

    async def positions(self) -> list[Position]: ...
    async def account(self) -> Account: ...
    async def klines(self, symbol: str) -> list[Kline]: ...


class MarketView(Protocol):
    """A live view of the exchange account (see `account_view.AccountView`)."""

    async def market(self, symbols: list[str], rules: Rules, at_least_ms: int = 0) -> Market: ...
    def want_refresh(self, as_of_ms: int) -> None: ...


class CommitConflict(RotationFsmError, RuntimeError):
    """The book kept moving under us for every retry: another replica is very busy."""


def needs_market(inputs: Sequence[Input], rules: Rules) -> list[str]:
    """Symbols of the OPEN plans that may reach the exchange gates (empty: no fetch)."""
    if not rules.slots_enabled or rules.entries_paused:
        return []
    return sorted(
        {
            i.plan.symbol
            for i in inputs
            if isinstance(i, PlanIn) and i.plan.is_execute and not i.plan.is_close
        }
    )


async def fetch_market(
    exchange: Exchange, symbols: list[str], rules: Rules, as_of_ms: int
) -> Market:
    """One snapshot for a batch, as of `as_of_ms` (the clock read before the requests
    go out: an answer reflects at least what the exchange held then). Failures are
    recorded, never raised: the core turns a missing answer into a fail-closed block."""
    if not symbols:
        return Market()
    # Positions, account and the plans' klines at once: one exchange round trip of
    # latency per batch instead of three (klines are cached per closed hour anyway).
    asked = sorted(set(symbols))
    account_call = exchange.account() if rules.margin_gate_on else _no_account()
    answered = await asyncio.gather(
        exchange.positions(),
        account_call,
        *(exchange.klines(s) for s in asked),
        return_exceptions=True,
    )
    # gather types its answers as the union of every call's: each is what its call gives
    positions = cast("list[Position] | BaseException", answered[0])
    account = cast("Account | BaseException | None", answered[1])
    first = cast("list[list[Kline] | BaseException]", answered[2:])
    if isinstance(positions, BaseException):  # any failure of the exchange fails closed
        return Market(positions=None, positions_error=str(positions), as_of_ms=as_of_ms)
    account_error = str(account) if isinstance(account, BaseException) else ""
    klines: dict[str, list[Kline] | BaseException] = dict(zip(asked, first, strict=True))
    if rules.correlation_gate_on:  # every open position's klines too
        more = sorted({p.symbol for p in positions} - set(asked))
        answers = await asyncio.gather(*(exchange.klines(s) for s in more), return_exceptions=True)
        klines.update(zip(more, answers, strict=True))
    return build_market(
        positions,
        None if isinstance(account, BaseException) else account,
        {s: (None if isinstance(a, BaseException) else a) for s, a in klines.items()},
        symbols,
        account_error=account_error,
        as_of_ms=as_of_ms,
    )


def closes_read(inputs: Sequence[Input]) -> bool:
    """Some input is the result of an executed close (a position went flat)."""
    return any(_is_close(i) for i in inputs)


def _is_close(item: Input) -> bool:
    return isinstance(item, ResultIn) and item.result.executed and item.result.reduce_only


def split_after_closes(inputs: Sequence[Input]) -> list[Sequence[Input]]:
    """`inputs` in one part, or two when OPEN plans follow an executed close: the
    plans then wait for a view as of after it (see `BookEngine._decide`)."""
    last = max((n for n, item in enumerate(inputs) if _is_close(item)), default=-1)
    later = inputs[last + 1 :]
    if last < 0 or not any(isinstance(i, PlanIn) and not i.plan.is_close for i in later):
        return [inputs]
    return [inputs[: last + 1], later]


def _behind(market: Market, view: BookView) -> bool:
    """The book already decided on a newer exchange view than `market` (the core
    would refuse it: see `decide.newest_view`)."""
    return market.positions is not None and market.as_of_ms < view.view_as_of_ms


async def _no_account() -> None:
    return None


@dataclass
class _Ahead:
    """A commit sent but not yet known to have applied."""

    version: int
    effects: list[Effect]
    now_ms: int
    task: asyncio.Task[bool]
    inputs: Sequence[Input]
    market: Market
    # Told when the commit failed (Redis went away), whoever settles it: the listener
    # re-reads its pending entries; the timer needs nothing (the deadlines stay).
    on_lost: Callable[[], None] | None = None


class BookEngine:
    """Decides and commits inputs for one book."""

    def __init__(
        self,
        store: Store,
        exchange: Exchange,
        rules: Rules,
        *,
        clock: Callable[[], int] = wall_ms,
        max_attempts: int = 100,
    ) -> None:
        self.store = store
        self.exchange = exchange
        self.base_rules = rules  # from the environment
        self.rules = rules  # in force: the environment overlaid with the live settings
        self.clock = clock
        self.max_attempts = max_attempts
        self._lock = asyncio.Lock()
        self._ahead: _Ahead | None = None  # the pipelined commit in flight
        self._bad_settings: set[tuple[str, str]] = set()
        self.conflicts = 0
        self.observers: list[Callable[[Sequence[Effect], int], None]] = []
        self.tally_observers: list[Callable[[Tally, int], None]] = []  # e.g. metrics
        #: when set, batches decide on this live view instead of asking the exchange
        self.view: MarketView | None = None
        self._view_floor_ms = 0  # the newest exchange view the book was seen to rest on
        self.conflict_hooks: list[Callable[[], None]] = []

    async def handle(self, inputs: Sequence[Input]) -> list[Effect]:
        """Decide `inputs` and commit their effects exactly once; return the effects."""
        effects: list[Effect] = []
        for part in split_after_closes(inputs) if self.view is not None else [inputs]:
            effects += await self._handle(part)
        return effects

    async def _handle(self, inputs: Sequence[Input]) -> list[Effect]:
        if not inputs:
            return []
        market = await self._fetch(needs_market(inputs, self.rules), self.rules)
        async with self._lock:
            await self._settle()
            return await self._decide_and_commit(inputs, market)

    async def submit(
        self, inputs: Sequence[Input], on_lost: Callable[[], None] | None = None
    ) -> None:
        """Like `handle`, pipelined (see `_submit`); a batch whose OPEN plans follow a
        close is decided in two parts, the plans on a view as of after the close."""
        for part in split_after_closes(inputs) if self.view is not None else [inputs]:
            await self._submit(part, on_lost)

    async def _submit(
        self, inputs: Sequence[Input], on_lost: Callable[[], None] | None = None
    ) -> None:
        """Decide `inputs` while the previous submission's commit is still in flight,
        then send this commit once that one is known.

        The load may see the book before or after the commit in flight lands. The
        version is read first, and applying a commit's effects to a view is an
        idempotent set, so applying the in-flight effects to a load that carries
        the old version gives exactly the state after it. If the commit in flight
        is refused (another replica moved first), both batches are decided again.
        """
        if not inputs:
            return
        wanted = needs_market(inputs, self.rules)
        market = await self._fetch(wanted, self.rules)
        async with self._lock:
            started = time.perf_counter()
            view = await self.store.load(inputs, market)
            ahead = self._ahead
            if ahead is not None and view.version == ahead.version:
                for effect in ahead.effects:
                    view.apply(effect)
                view.version += 1
            rules = self._live(view.settings_raw)
            self._view_floor_ms = max(self._view_floor_ms, view.view_as_of_ms)
            if set(needs_market(inputs, rules)) - set(wanted) or _behind(market, view):
                # Rare: the settings changed what to ask the exchange, or another
                # replica already decided on a newer exchange view than ours.
                await self._settle()
                await self._decide_and_commit(
                    inputs, await self._fetch(needs_market(inputs, rules), rules)
                )
                return
            version, effects, now_ms = self._decide(inputs, view, market, rules)
            if not await self._settle():
                # The batch before was refused, so this one was decided on a state
                # that never existed: decide it again, after the one before.
                await self._decide_and_commit(inputs, market)
                return
            if effects:
                task = asyncio.create_task(self.store.commit(version, effects, now_ms))
                # Logs and metrics as soon as it lands, not when the next batch comes.
                task.add_done_callback(
                    lambda t: self._landed(t, effects, now_ms, len(inputs), version, started)
                )
                self._ahead = _Ahead(version, effects, now_ms, task, inputs, market, on_lost)

    @property
    def commit_in_flight(self) -> bool:
        """A pipelined commit was sent and not yet settled (see `flush`)."""
        return self._ahead is not None

    async def flush(self) -> None:
        """Wait for the commit in flight (if any): call before stopping."""
        async with self._lock:
            await self._settle()

    async def _settle(self) -> bool:
        """Resolve the commit in flight; redo its batch if it was refused.

        Returns False when it had to be redone (whatever was decided after it
        must be decided again too).
        """
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return True
        try:
            applied = await ahead.task
        except BaseException:
            ahead.task.cancel()
            if ahead.on_lost is not None:
                ahead.on_lost()
            raise
        if applied:
            return True  # reported by `_landed`
        self._conflict()
        await self._decide_and_commit(ahead.inputs, ahead.market)
        return False

    async def _decide_and_commit(self, inputs: Sequence[Input], market: Market) -> list[Effect]:
        """Load → decide → commit until a commit is applied (the lock is held)."""
        wanted = needs_market(inputs, self.rules)
        for attempt in range(self.max_attempts):
            started = time.perf_counter()
            view = await self.store.load(inputs, market)
            rules = self._live(view.settings_raw)
            self._view_floor_ms = max(self._view_floor_ms, view.view_as_of_ms)
            if set(needs_market(inputs, rules)) - set(wanted) or _behind(market, view):
                # The live settings changed under us (e.g. resumed), or another replica
                # decided on a newer exchange view: ask again.
                wanted = needs_market(inputs, rules)
                market = await self._fetch(wanted, rules)
                continue
            version, effects, now_ms = self._decide(inputs, view, market, rules)
            if await self.store.commit(version, effects, now_ms):
                self._report(effects, now_ms, len(inputs), version, started)
                return effects
            self._conflict()
            # Another replica committed in between: back off a little, growing
            # with the attempt so two replicas do not keep colliding in step.
            await asyncio.sleep(min(0.05, 0.001 * (attempt + 1)))
        raise CommitConflict(f"gave up after {self.max_attempts} conflicting commits")

    async def _fetch(self, symbols: list[str], rules: Rules) -> Market:
        wait_ms = self._view_floor_ms - self.clock()
        if symbols and wait_ms > 0:
            # The book moved its view mark past a close read just now (plus the clock
            # margin): only an answer asked for after that moment will do.
            await asyncio.sleep(wait_ms / 1000)
        if self.view is not None:
            # No round trip while the view is fresh and as new as the newest view the
            # book decided on (else it catches up with the book's shared snapshot).
            return await self.view.market(symbols, rules, at_least_ms=self._view_floor_ms)
        return await fetch_market(self.exchange, symbols, rules, self.clock())

    def _landed(
        self,
        task: asyncio.Task[bool],
        effects: list[Effect],
        now_ms: int,
        inputs: int,
        version: int,
        started: float,
    ) -> None:
        if not task.cancelled() and task.exception() is None and task.result():
            self._report(effects, now_ms, inputs, version, started)

    def _conflict(self) -> None:
        self.conflicts += 1
        for hook in self.conflict_hooks:
            hook()

    def _decide(
        self, inputs: Sequence[Input], view: BookView, market: Market, rules: Rules
    ) -> tuple[int, list[Effect], int]:
        """The batch's effects with its audit entry: (version decided on, effects, now)."""
        now_ms = self.clock()
        seed = seed_of(view)  # before deciding: the audit records what the batch found
        effects = decide_batch(inputs, view, market, rules, now_ms)
        if (
            self.view is not None
            and closes_read(inputs)
            and now_ms + rules.clock_skew_ms > view.view_as_of_ms
        ):
            # A position closed and we read it now: a view not as of after this may
            # still show it open, and an add "into" it (`slot_already_held`) would
            # reopen a slot that was given away since (a live view whose stream lags,
            # or is silent, while a rotation completes). The book's mark moves past
            # it, so every replica decides its next OPEN plans on a newer view.
            effects.append(ViewAsOf(now_ms + rules.clock_skew_ms))
            # This replica's next batch waits and refreshes before it takes the lock,
            # rather than finding itself behind while holding it (and the timer).
            self._view_floor_ms = max(self._view_floor_ms, now_ms + rules.clock_skew_ms)
        if self.view is not None and any(
            isinstance(i, ResultIn) and i.result.executed for i in inputs
        ):
            # An entry filled: its slot stays counted until the view is as of a later
            # time, so ask the view to catch up (the next event or REST answer).
            self.view.want_refresh(now_ms + rules.clock_skew_ms + 1)
        if effects:
            effects.append(batch_entry(inputs, seed, market, rules, now_ms, effects))
        return seed.version, effects, now_ms

    def _live(self, raw: dict[str, str]) -> Rules:
        rules, errors = overlay(self.base_rules, raw, self.rules)
        for err in errors:
            if (err.name, err.value) not in self._bad_settings:  # say it once, not per batch
                self._bad_settings.add((err.name, err.value))
                log.error("live setting refused, last good value kept: %s", err)
        self.rules = rules
        return rules

    def _report(
        self, effects: Sequence[Effect], now_ms: int, inputs: int, version: int, started: float
    ) -> None:
        """One INFO line and one metrics update per commit; each decision at DEBUG."""
        counted = tally(effects)
        took_ms = (time.perf_counter() - started) * 1000
        log.info("%s", commit_line(counted, inputs=inputs, version=version + 1, took_ms=took_ms))
        if log.isEnabledFor(logging.DEBUG):
            for effect in effects:
                line = describe(effect)
                if line:
                    log.debug("%s", line)
        for counter in self.tally_observers:
            counter(counted, now_ms)
        for observer in self.observers:
            observer(effects, now_ms)


def describe(effect: Effect) -> str | None:
    """One log line for an effect worth a line: what was decided and why."""
    match effect:
        case Decided(decision=d):
            tail = f" rotation={d.rotation_id}" if d.rotation_id else ""
            slots = (
                f" regime={d.regime} desired={d.desired_slots} free={d.open_slots}"
                if d.regime
                else ""
            )
            return f"{d.decision} plan={d.plan_id} symbol={d.symbol} reason={d.reason}{slots}{tail}"
        case SaveRotation(record=rec):
            return (
                f"rotation {rec.rotation_id} {rec.state}: close {rec.close_symbol} "
                f"({rec.close_plan_id}) for {rec.new_symbol}"
            )
        case Emit(stream="events", fields=f):
            return f"event {f.get('event')} rotation={f.get('rotation_id')}"
        case DeadLetter(stream=stream, entry_id=entry_id, error=error):
            return f"dead-letter {stream} {entry_id}: {error}"
    return None


__all__ = ["BookEngine", "CommitConflict", "Exchange", "R", "describe", "fetch_market"]
