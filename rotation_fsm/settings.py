"""Configuration from the environment (contract §1), validated in one place.

Two objects: `Rules` are the numbers a decision depends on (slot counts, TTLs,
gates); they are the part an operator may change live (contract §7). `Settings`
is everything else a process needs to start (Redis, streams, exchange, HTTP).
A bad value raises `SettingError` naming the variable; it is never replaced by
a default.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

TRUE_WORDS = frozenset({"true", "1"})
FALSE_WORDS = frozenset({"false", "0"})


class SettingError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""

    def __init__(self, name: str, value: str, expected: str) -> None:
        super().__init__(f"{name}={value!r}: expected {expected}")
        self.name = name
        self.value = value


def parse_bool(text: str, *, strip: bool = True) -> bool:
    """Contract booleans: true/True/TRUE/1 and false/False/FALSE/0, nothing else.

    `strip=False` for stream fields (contract §2: any other spelling is dead-lettered);
    surrounding spaces are forgiven only in the environment.
    """
    word = (text.strip() if strip else text).lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError("true or false")


def _non_negative_int(text: str) -> int:
    value = int(text.strip())
    if value < 0:
        raise ValueError
    return value


def _positive_int(text: str) -> int:
    value = int(text.strip())
    if value < 1:
        raise ValueError
    return value


def _positive_float(text: str) -> float:
    value = float(text.strip())
    if not math.isfinite(value) or value <= 0:
        raise ValueError
    return value


def _non_negative_float(text: str) -> float:
    value = float(text.strip())
    if not math.isfinite(value) or value < 0:
        raise ValueError
    return value


def _port(text: str) -> int:
    value = int(text.strip())
    if not 0 <= value <= 65535:
        raise ValueError
    return value


def _text(text: str) -> str:
    return text


def _book(text: str) -> str:
    # A book name becomes a Redis Cluster hash tag: braces would break the tag.
    name = text.strip()
    if any(ch in name for ch in "{}, \t"):
        raise ValueError
    return name


@dataclass(frozen=True)
class _Spec:
    attr: str
    default: str
    parse: Callable[[str], Any]
    expected: str


# The live-changeable rules, named by their environment variable (contract §1, §7).
RULE_SPECS: dict[str, _Spec] = {
    "GOV_ACTIVE_SLOTS_ENABLED": _Spec("slots_enabled", "true", parse_bool, "true or false"),
    "GOV_ACTIVE_SLOTS_BASE": _Spec("slots_base", "4", _non_negative_int, "a whole number >= 0"),
    "GOV_ACTIVE_SLOTS_TREND_STRONG": _Spec(
        "slots_trend_strong", "6", _non_negative_int, "a whole number >= 0"
    ),
    "GOV_ACTIVE_SLOTS_CHOP": _Spec("slots_chop", "3", _non_negative_int, "a whole number >= 0"),
    "GOV_ROTATION_LOCK_TTL": _Spec("lock_ttl_s", "120", _positive_float, "seconds > 0"),
    "GOV_ROTATION_THRESHOLD": _Spec(
        "rotation_threshold", "0.15", _non_negative_float, "a number >= 0"
    ),
    "GOV_MAX_CORRELATION": _Spec("max_correlation", "0.80", _positive_float, "a number > 0"),
    "GOV_MAX_MARGIN_USAGE_PCT": _Spec("max_margin_usage", "0.65", _positive_float, "a number > 0"),
    "GOV_MAX_CONCURRENT_ROTATIONS": _Spec(
        "max_concurrent_rotations", "1", _positive_int, "a whole number >= 1"
    ),
    "GOV_ISSUE_PERMITS": _Spec("issue_permits", "true", parse_bool, "true or false"),
    "GOV_RESERVATION_TTL": _Spec("reservation_ttl_s", "60", _positive_float, "seconds > 0"),
    "GOV_ENTRIES_PAUSED": _Spec("entries_paused", "false", parse_bool, "true or false"),
    "GOV_CLOCK_SKEW_MS": _Spec(
        "clock_skew_ms", "250", _non_negative_int, "milliseconds, a whole number >= 0"
    ),
}


class Rules(msgspec.Struct, frozen=True, kw_only=True):
    """The numbers every decision depends on. Pure data; see `RULE_SPECS`."""

    slots_enabled: bool = True
    slots_base: int = 4
    slots_trend_strong: int = 6
    slots_chop: int = 3
    lock_ttl_s: float = 120.0
    rotation_threshold: float = 0.15
    max_correlation: float = 0.80
    max_margin_usage: float = 0.65
    max_concurrent_rotations: int = 1
    issue_permits: bool = True
    reservation_ttl_s: float = 60.0
    entries_paused: bool = False
    #: how far two replicas' wall clocks may differ: a fill read on one is trusted to
    #: show in another's exchange view only once that view is this much newer
    clock_skew_ms: int = 250

    @property
    def correlation_gate_on(self) -> bool:
        # A correlation never exceeds 1, so a limit of 1 or more can never block.
        return self.max_correlation < 1.0

    @property
    def margin_gate_on(self) -> bool:
        return self.max_margin_usage < 1.0


def _read(env: Mapping[str, str], name: str, spec: _Spec) -> Any:
    raw = env.get(name)
    text = spec.default if raw is None else raw
    try:
        return spec.parse(text)
    except ValueError:
        raise SettingError(name, text, spec.expected) from None


def rules_from(env: Mapping[str, str], base: Rules | None = None) -> Rules:
    """Rules from `env`; names absent from `env` keep `base`'s value (or the default)."""
    values: dict[str, Any] = {}
    for name, spec in RULE_SPECS.items():
        if name in env:
            values[spec.attr] = _read(env, name, spec)
        elif base is not None:
            values[spec.attr] = getattr(base, spec.attr)
        else:
            values[spec.attr] = _read({}, name, spec)
    return Rules(**values)


def overlay(base: Rules, live: Mapping[str, str], last: Rules) -> tuple[Rules, list[SettingError]]:
    """`base` (the environment) overridden by the live settings hash.

    A live value that fails validation is reported and the last good value of
    that setting (`last`) stays in force (contract §7): never a crash.
    """
    values: dict[str, Any] = {}
    errors: list[SettingError] = []
    for name, spec in RULE_SPECS.items():
        if name not in live:
            values[spec.attr] = getattr(base, spec.attr)
            continue
        try:
            values[spec.attr] = spec.parse(live[name])
        except ValueError:
            errors.append(SettingError(name, live[name], spec.expected))
            values[spec.attr] = getattr(last, spec.attr)
    return Rules(**values), errors


def validate_rule(name: str, value: str) -> str:
    """`value` as it will be stored for rule `name`; SettingError if it is refused."""
    spec = RULE_SPECS.get(name)
    if spec is None:
        raise SettingError(name, value, "one of " + ", ".join(sorted(RULE_SPECS)))
    try:
        spec.parse(value)
    except ValueError:
        raise SettingError(name, value, spec.expected) from None
    return value.strip()


def rule_value_text(rules: Rules, name: str) -> str:
    """The value of rule `name` spelled as an environment variable would be."""
    value = getattr(rules, RULE_SPECS[name].attr)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Streams:
    """Stream names before any book prefix (contract §1, §7)."""

    plans: str = "quantum:stream:apply.plan"
    results: str = "quantum:stream:apply.result"
    events: str = "quantum:stream:governor.events"
    decisions: str = "quantum:stream:rotation.decisions"
    dlq: str = "quantum:stream:rotation.dlq"
    audit: str = "quantum:stream:rotation.audit"


_STREAM_ENV = {
    "plans": "STREAM_PLANS",
    "results": "STREAM_RESULTS",
    "events": "STREAM_EVENTS",
    "decisions": "STREAM_DECISIONS",
    "dlq": "STREAM_DLQ",
    "audit": "STREAM_AUDIT",
}


@dataclass(frozen=True)
class Book:
    """One book (one exchange account): its name and its exchange credentials."""

    name: str
    binance_base_url: str
    api_key: str = field(repr=False)
    api_secret: str = field(repr=False)


def _book_suffix(name: str) -> str:
    """`acct-7` → `ACCT_7`: the suffix of per-book variables (`BINANCE_API_KEY__ACCT_7`)."""
    return "".join(ch if ch.isalnum() else "_" for ch in name.upper())


def _books(env: Mapping[str, str]) -> tuple[Book, ...]:
    expected = "names without braces or spaces, comma-separated"
    raw = env.get("GOV_BOOKS", "").strip()
    names = [_simple(env, "GOV_BOOK", "", _book, expected)]
    if raw:
        try:
            names = [_book(n) for n in raw.split(",")]
        except ValueError:
            raise SettingError("GOV_BOOKS", raw, expected) from None
        if any(not n for n in names) or len(set(names)) != len(names):
            raise SettingError("GOV_BOOKS", raw, "distinct, non-empty " + expected)
    books = []
    for name in names:
        sfx = f"__{_book_suffix(name)}" if name else ""

        def pick(var: str, fallback: str = "", sfx: str = sfx) -> str:
            return env.get(var + sfx) or env.get(var) or (env.get(fallback, "") if fallback else "")

        books.append(
            Book(
                name=name,
                binance_base_url=pick("BINANCE_BASE_URL") or "https://testnet.binancefuture.com",
                api_key=pick("BINANCE_API_KEY", "BINANCE_TESTNET_API_KEY") or "",
                api_secret=pick("BINANCE_API_SECRET", "BINANCE_TESTNET_API_SECRET") or "",
            )
        )
    return tuple(books)


@dataclass(frozen=True)
class Settings:
    """Everything `rotation-fsm run` needs, read once at start-up."""

    rules: Rules
    redis_url: str
    redis_cluster: bool
    streams: Streams
    consumer_group: str
    consumer_name: str
    books: tuple[Book, ...]
    http_host: str
    metrics_port: int
    http_token: str
    audit_maxlen: int
    claim_idle_ms: int
    retention_s: float
    heartbeat_s: float = 5.0
    #: the rule variables the environment set (the rest are defaults)
    env_rule_names: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        # Secrets never reach a log line, even through a debug repr.
        shown = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name not in {"http_token"}
        }
        return f"Settings({shown}, secrets=hidden)"

    @property
    def book(self) -> str:
        """The first (usually the only) book's name."""
        return self.books[0].name

    @property
    def binance_base_url(self) -> str:
        return self.books[0].binance_base_url

    @property
    def api_key(self) -> str:
        return self.books[0].api_key

    @property
    def api_secret(self) -> str:
        return self.books[0].api_secret


def _redis_url(env: Mapping[str, str]) -> str:
    if env.get("REDIS_URL"):
        return env["REDIS_URL"]
    host = env.get("REDIS_HOST", "localhost")
    port = _read(env, "REDIS_PORT", _Spec("", "6379", _port, "a TCP port"))
    db = _read(env, "REDIS_DB", _Spec("", "0", _non_negative_int, "a database number"))
    return f"redis://{host}:{port}/{db}"


def _simple(
    env: Mapping[str, str], name: str, default: str, parse: Callable[[str], T], expected: str
) -> T:
    value: T = _read(env, name, _Spec("", default, parse, expected))
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from `env` (default: the process environment); raises SettingError."""
    env = os.environ if env is None else env
    settings = _load(env)
    if settings.redis_cluster and not all(b.name for b in settings.books):
        # Without a book's hash tag one commit's keys spread over cluster slots.
        raise SettingError(
            "REDIS_CLUSTER",
            env.get("REDIS_CLUSTER", ""),
            "GOV_BOOK or GOV_BOOKS to be set as well (a cluster needs books)",
        )
    return settings


def _load(env: Mapping[str, str]) -> Settings:
    streams = Streams(
        **{attr: env.get(var) or getattr(Streams, attr) for attr, var in _STREAM_ENV.items()}
    )
    return Settings(
        rules=rules_from(env),
        redis_url=_redis_url(env),
        redis_cluster=_simple(env, "REDIS_CLUSTER", "0", parse_bool, "1 or 0"),
        streams=streams,
        consumer_group=env.get("GOV_CONSUMER_GROUP") or "rotation-fsm",
        consumer_name=env.get("GOV_CONSUMER_NAME") or f"{socket.gethostname()}-{os.getpid()}",
        books=_books(env),
        http_host=env.get("GOV_HTTP_HOST") or "127.0.0.1",
        metrics_port=_simple(env, "METRICS_PORT", "8044", _port, "a TCP port (0-65535)"),
        http_token=env.get("GOV_HTTP_TOKEN") or "",
        audit_maxlen=_simple(env, "GOV_AUDIT_MAXLEN", "100000", _positive_int, "a count >= 1"),
        claim_idle_ms=_simple(
            env, "GOV_CLAIM_IDLE_MS", "10000", _positive_int, "milliseconds >= 1"
        ),
        retention_s=_simple(env, "GOV_RETENTION_S", "604800", _positive_float, "seconds > 0"),
        heartbeat_s=_simple(env, "GOV_HEARTBEAT_S", "5", _positive_float, "seconds > 0"),
        env_rule_names=frozenset(name for name in RULE_SPECS if name in env),
    )
