"""The intent simulator: an intent bridge's plan stream, on demand.

It seeds the policy universe (`quantum:policy:current`, field `universe_symbols`)
and publishes OPEN plans to the plan stream at a chosen rate, with the fields a
real bridge writes (contract §2): 16-hex plan ids, symbols of the universe,
`decision=EXECUTE`, `OPEN_LONG`/`OPEN_SHORT` with their side, a quantity worth a
few hundred USDT, `confidence`, `kill_score`, `timestamp`, `source`. Like a real
bridge it sometimes writes an entry twice (a *duplicate*: the same entry again at
once) and sometimes sends a plan again later (a *resend*: same plan id, new
timestamp). Usable in-process (the demo) or as `python -m rotation_fsm.devkit.intent_simulator`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...core.settings import load_settings
from ...store.keys import Keys
from ...store.retry import Backoff, wait_or_stop
from ..entry import setting
from ..paper_exchange.apply import REFERENCE_PRICES, reference_price

T = TypeVar("T")

SOURCE = "intent-simulator"
#: the symbols the paper market knows, so plan sizes follow its prices
DEFAULT_UNIVERSE = tuple(REFERENCE_PRICES)
#: a resend picks one of this many recent plans
RECENT = 50
#: what a Redis that is restarting or unreachable raises
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


@dataclass(frozen=True)
class SimConfig:
    """What to publish, how fast and for how long (None: no bound)."""

    redis_url: str = "redis://localhost:6379/0"
    keys: Keys = field(default_factory=Keys)
    rate: float = 2.0
    duplicate_rate: float = 0.05
    resend_rate: float = 0.05
    seconds: float | None = None
    count: int | None = None
    seed: int | None = None
    universe: tuple[str, ...] = DEFAULT_UNIVERSE


@dataclass
class SimStats:
    """What was published: new plans, duplicates (same entry twice) and resends."""

    new: int = 0
    duplicates: int = 0
    resends: int = 0

    @property
    def entries(self) -> int:
        return self.new + self.duplicates + self.resends

    def add(self, kind: str) -> None:
        """Count one entry written; kind is new, duplicate or resend."""
        if kind == "new":
            self.new += 1
        elif kind == "duplicate":
            self.duplicates += 1
        else:
            self.resends += 1


def _positive(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError
    return value


def _seconds(text: str) -> float | None:
    value = float(text) if text else 0.0
    if not math.isfinite(value) or value < 0:
        raise ValueError
    return value or None  # 0: run until stopped


def _count(text: str) -> int | None:
    value = int(text) if text else 0
    if value < 0:
        raise ValueError
    return value or None


def _seed(text: str) -> int | None:
    return int(text) if text else None


def _universe(text: str) -> tuple[str, ...]:
    symbols = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not symbols:
        raise ValueError
    return symbols


def load_config(env: Mapping[str, str] | None = None) -> SimConfig:
    """The simulator's configuration from `env` (default: the process environment):
    `REDIS_URL`, `GOV_BOOK`, `STREAM_PLANS` read as the engine reads them, plus
    `SIM_RATE` (plans/s, default 2), `SIM_DUPLICATE_RATE` and `SIM_RESEND_RATE`
    (fractions, default 0.05), `SIM_SECONDS` and `SIM_COUNT` (0/unset: no bound),
    `SIM_SEED`, `SIM_UNIVERSE` (comma-separated). Raises SettingError naming the variable.
    """
    env = os.environ if env is None else env
    settings = load_settings(env)
    return SimConfig(
        redis_url=settings.redis_url,
        keys=Keys(book=settings.book, streams=settings.streams),
        rate=setting(env, "SIM_RATE", "2", _positive, "plans per second > 0"),
        duplicate_rate=setting(env, "SIM_DUPLICATE_RATE", "0.05", _rate, "a fraction 0-1"),
        resend_rate=setting(env, "SIM_RESEND_RATE", "0.05", _rate, "a fraction 0-1"),
        seconds=setting(env, "SIM_SECONDS", "", _seconds, "seconds >= 0 (0: until stopped)"),
        count=setting(env, "SIM_COUNT", "", _count, "a count >= 0 (0: no bound)"),
        seed=setting(env, "SIM_SEED", "", _seed, "a whole number"),
        universe=setting(
            env, "SIM_UNIVERSE", ",".join(DEFAULT_UNIVERSE), _universe, "comma-separated symbols"
        ),
    )


def _qty_text(qty: float) -> str:
    # Two significant digits, like an exchange's lot size rounding; never an exponent.
    digits = max(0, 1 - math.floor(math.log10(qty)))
    return f"{round(qty, digits):.{digits}f}"


class IntentSimulator:
    """Publishes plans for one book; `run` paces them, `publish_next` is one tick."""

    def __init__(
        self,
        redis: Redis,
        config: SimConfig | None = None,
        *,
        clock_s: Callable[[], float] = time.time,
        prices: Mapping[str, float] | None = None,
    ) -> None:
        self.redis = redis
        self.config = config or SimConfig()
        self.clock_s = clock_s
        self.prices = prices or {}
        self.rng = random.Random(self.config.seed)
        self.stats = SimStats()
        self.outages = 0  # Redis outages waited out
        self._recent: deque[dict[str, str]] = deque(maxlen=RECENT)

    async def seed_policy(self) -> None:
        """Write the universe to the policy hash (contract §2), replacing what was there."""
        await self.redis.hset(
            self.config.keys.policy, "universe_symbols", json.dumps(list(self.config.universe))
        )

    def new_plan(self) -> dict[str, str]:
        """A fresh OPEN plan's fields, all strings, as a bridge writes them."""
        rng = self.rng
        return self.plan_for(
            rng.choice(self.config.universe),
            long=rng.random() < 0.65,
            confidence=round(rng.uniform(0.55, 0.95), 2),
        )

    def plan_for(
        self, symbol: str, *, long: bool = True, confidence: float | None
    ) -> dict[str, str]:
        """An OPEN plan for `symbol` worth 100–500 USDT, with a fresh plan id; without
        `confidence` when None (then no rotation threshold applies to it, contract §5)."""
        rng = self.rng
        price = self.prices.get(symbol) or reference_price(symbol)
        notional = rng.uniform(100.0, 500.0)
        plan = {
            "plan_id": f"{rng.getrandbits(64):016x}",
            "symbol": symbol,
            "decision": "EXECUTE",
            "action": "OPEN_LONG" if long else "OPEN_SHORT",
            "side": "BUY" if long else "SELL",
            "qty": _qty_text(notional / price),
            "reduceOnly": "false",
            "confidence": f"{confidence or 0:.2f}",
            "kill_score": f"{rng.uniform(0.0, 0.5):.3f}",
            "timestamp": f"{self.clock_s():.3f}",
            "source": SOURCE,
        }
        if confidence is None:
            del plan["confidence"]
        return plan

    async def publish_next(self) -> list[tuple[str, dict[str, str]]]:
        """One tick: a new plan or a resend of a recent one, perhaps written twice.
        Returns (kind, fields) of each entry written, kind new|resend|duplicate."""
        if self._recent and self.rng.random() < self.config.resend_rate:
            kind = "resend"
            fields = {**self.rng.choice(self._recent), "timestamp": f"{self.clock_s():.3f}"}
        else:
            kind, fields = "new", self.new_plan()
            self._recent.append(fields)
        written = [(kind, fields)]
        if self.rng.random() < self.config.duplicate_rate:
            written.append(("duplicate", fields))  # the bridge delivered it twice
        for what, entry in written:
            await self.redis.xadd(self.config.keys.plans, entry)  # type: ignore[arg-type]
            self.stats.add(what)
        return written

    async def run(self, stop: asyncio.Event | None = None) -> SimStats:
        """Publish at `rate` ticks per second until `stop`, `seconds` or `count`; a
        Redis outage is waited out (see `wait_for_redis`), not a crash."""
        stop = stop or asyncio.Event()
        interval_s = 1.0 / self.config.rate
        began = paced_from = time.monotonic()
        ticks = paced = 0
        while not stop.is_set():
            if self.config.count is not None and ticks >= self.config.count:
                break
            if self.config.seconds is not None and time.monotonic() - began >= self.config.seconds:
                break
            try:
                await self.publish_next()
            except REDIS_DOWN as exc:
                await self.wait_for_redis(exc, stop)
                paced_from, paced = time.monotonic(), 0  # no burst of the ticks missed
                continue
            ticks += 1
            paced += 1
            # Paced against a fixed start, not the last tick: no drift over a long run.
            wait_s = paced_from + paced * interval_s - time.monotonic()
            if self.config.seconds is not None:
                wait_s = min(wait_s, began + self.config.seconds - time.monotonic())
            if wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait_s)
        return self.stats

    async def wait_for_redis(self, exc: BaseException, stop: asyncio.Event) -> None:
        """Say once that Redis is away, probe it with backoff until it answers (or
        `stop`), then seed the policy again if a restart without persistence lost it."""
        self.outages += 1
        print(f"intent-simulator: redis unavailable, waiting: {exc}", file=sys.stderr, flush=True)
        backoff = Backoff(first_s=0.2, cap_s=2.0)
        while not await wait_or_stop(stop, backoff.next_s()):
            try:
                if not await self.redis.exists(self.config.keys.policy):
                    await self.seed_policy()
            except REDIS_DOWN:
                continue
            print("intent-simulator: redis is back, publishing again", file=sys.stderr, flush=True)
            return
