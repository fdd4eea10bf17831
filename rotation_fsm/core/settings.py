"""Configuration from the environment (contract §1), validated in one place.

Two objects: `Rules` are the numbers a decision depends on (slot counts, TTLs,
gates); they are the part an operator may change live (contract §7). `Settings`
is everything else a process needs to start (Redis, streams, exchange, HTTP).
A bad value raises `SettingError` naming the variable; it is never replaced by
a default.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import msgspec

from .errors import RotationFsmError
from .logs import mask_credentials

T = TypeVar("T")

TRUE_WORDS = frozenset({"true", "1"})
FALSE_WORDS = frozenset({"false", "0"})


class SettingError(RotationFsmError, ValueError):
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


# Ranges every numeric setting must fall in, whatever its source (environment,
# `rotation-fsm set`, `PUT /api/settings/…`, the live settings hash): a value outside
# them would pass Python and then fail in Redis (PEXPIRE and MAXLEN take signed
# 64-bit integers of milliseconds) or overflow a float-to-int conversion mid-commit.
DAY_S = 86_400
MAX_TTL_S = 7 * DAY_S  # a lock, reservation or rotation deadline longer than a week is a typo
MAX_RETENTION_S = 366 * DAY_S
MIN_TTL_S = 0.001  # Redis expiries are whole milliseconds: anything shorter is 0, refused
MAX_COUNT = 1_000_000_000  # stream lengths and the like
MAX_SLOTS = 1_000_000  # benchmarks use a million as "no cap"
LOOPBACK = "127.0.0.1"  # the HTTP server's default bind: nothing outside this host
MAX_SAFE_INT = 2**53  # the largest integer every JSON reader and a float carry exactly


@dataclass(frozen=True)
class Number:
    """A numeric setting's type and inclusive range, checked in this one place."""

    whole: bool
    low: float
    high: float
    unit: str = ""
    low_open: bool = False  # `low` itself excluded (a positive ratio)

    def parse(self, text: str) -> Any:
        """The value of `text`, or ValueError when it is not a number in range."""
        value: float = int(text.strip()) if self.whole else float(text.strip())
        if not self.holds(value):
            raise ValueError(text)
        return value

    def holds(self, value: float) -> bool:
        """`value` is finite and inside the range."""
        # Compared before `isfinite`: a huge int does not even convert to a float.
        if not value <= self.high or not math.isfinite(value):
            return False
        return value > self.low if self.low_open else value >= self.low

    @property
    def expected(self) -> str:
        """What a refusal says is expected, e.g. `seconds from 0.001 to 604800`."""
        kind = self.unit or ("a whole number" if self.whole else "a number")
        if self.low_open:
            return f"{kind} above {_plain(self.low)} and at most {_plain(self.high)}"
        return f"{kind} from {_plain(self.low)} to {_plain(self.high)}"


def _plain(bound: float) -> str:
    """A range bound as people write it: 604800, 1000000000, 0.001 (no exponent)."""
    return str(int(bound)) if float(bound).is_integer() else repr(bound)


def count(high: float = MAX_COUNT, low: float = 0, unit: str = "") -> Number:
    """A whole number from `low` to `high`."""
    return Number(True, low, high, unit or "a whole number")


def duration(high: float = MAX_TTL_S, low: float = MIN_TTL_S) -> Number:
    """A duration in seconds, at least one millisecond."""
    return Number(False, low, high, "seconds")


def ratio(high: float) -> Number:
    """A number above 0 and at most `high`."""
    return Number(False, 0.0, high, "a number", low_open=True)


PORT = count(65_535, unit="a TCP port")


def _text(text: str) -> str:
    return text


def _log_format(text: str) -> str:
    word = text.strip().lower()
    if word not in ("text", "json"):
        raise ValueError(text)
    return word


def book_name(text: str) -> str:
    """`text` as a book name, or ValueError: it becomes a Redis Cluster hash tag, so
    braces, commas and blanks would break the tag or the list it is written in."""
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


def _numeric(attr: str, default: str, number: Number) -> _Spec:
    return _Spec(attr, default, number.parse, number.expected)


def _flag(attr: str, default: str) -> _Spec:
    return _Spec(attr, default, parse_bool, "true or false")


# The live-changeable rules, named by their environment variable (contract §1, §7).
RULE_SPECS: dict[str, _Spec] = {
    "GOV_ACTIVE_SLOTS_ENABLED": _flag("slots_enabled", "true"),
    "GOV_ACTIVE_SLOTS_BASE": _numeric("slots_base", "4", count(MAX_SLOTS)),
    "GOV_ACTIVE_SLOTS_TREND_STRONG": _numeric("slots_trend_strong", "6", count(MAX_SLOTS)),
    "GOV_ACTIVE_SLOTS_CHOP": _numeric("slots_chop", "3", count(MAX_SLOTS)),
    "GOV_ROTATION_LOCK_TTL": _numeric("lock_ttl_s", "120", duration()),
    "GOV_ROTATION_THRESHOLD": _numeric(
        "rotation_threshold", "0.15", Number(False, 0.0, 100.0, "a number")
    ),
    "GOV_MAX_CORRELATION": _numeric("max_correlation", "0.80", ratio(100.0)),
    "GOV_MAX_MARGIN_USAGE_PCT": _numeric("max_margin_usage", "0.65", ratio(100.0)),
    "GOV_MAX_CONCURRENT_ROTATIONS": _numeric(
        "max_concurrent_rotations", "1", count(MAX_SLOTS, low=1)
    ),
    "GOV_ISSUE_PERMITS": _flag("issue_permits", "true"),
    "GOV_RESERVATION_TTL": _numeric("reservation_ttl_s", "60", duration()),
    "GOV_ENTRIES_PAUSED": _flag("entries_paused", "false"),
    "GOV_CLOCK_SKEW_MS": _numeric(
        "clock_skew_ms", "250", count(3_600_000, unit="milliseconds, a whole number")
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
    #: user-data stream URL with `{listenKey}` ("" → derived from the base URL)
    binance_ws_url: str = ""


@dataclass(frozen=True)
class ExchangeViewSettings:
    """How each book's live exchange view keeps up, and the process's weight budget."""

    mode: str = "stream"  # stream (with polling fallback) or polling
    stale_ms: int = 2000
    reconcile_s: float = 30.0
    poll_s: float = 1.0
    keepalive_s: float = 1800.0
    reconnect_s: float = 82800.0
    refresh_gap_s: float = 5.0
    weight_limit: int = 2400
    weight_share: float = 0.5


def _view_mode(text: str) -> str:
    mode = text.strip().lower()
    if mode not in {"stream", "polling"}:
        raise ValueError
    return mode


def _exchange_view(env: Mapping[str, str]) -> ExchangeViewSettings:
    day = duration(86_400.0)
    return ExchangeViewSettings(
        mode=_simple(env, "GOV_EXCHANGE_VIEW", "stream", _view_mode, "stream or polling"),
        stale_ms=_number(env, "GOV_EXCHANGE_STALE_MS", "2000", count(86_400_000, low=1)),
        reconcile_s=_number(env, "GOV_EXCHANGE_RECONCILE_S", "30", day),
        poll_s=_number(env, "GOV_EXCHANGE_POLL_S", "1", day),
        keepalive_s=_number(env, "GOV_EXCHANGE_KEEPALIVE_S", "1800", day),
        reconnect_s=_number(env, "GOV_EXCHANGE_RECONNECT_S", "82800", day),
        refresh_gap_s=_number(env, "GOV_EXCHANGE_REFRESH_GAP_S", "5", day),
        weight_limit=_number(env, "GOV_EXCHANGE_WEIGHT_LIMIT", "2400", count(10_000_000, low=1)),
        weight_share=_number(env, "GOV_EXCHANGE_WEIGHT_SHARE", "0.5", ratio(1.0)),
    )


def secret(env: Mapping[str, str], name: str) -> str:
    """`name`'s value, or the content of the file `{name}_FILE` names (compose and
    Kubernetes secrets), so a secret need not sit in the environment or a compose file.

    Setting both is refused (which one would win is a guess); so is a file that
    cannot be read. One trailing newline is not part of the secret.
    """
    path = env.get(f"{name}_FILE")
    if not path:
        return env.get(name) or ""
    if env.get(name):
        raise SettingError(f"{name}_FILE", path, f"either {name} or {name}_FILE, not both")
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().removesuffix("\n").removesuffix("\r")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise SettingError(f"{name}_FILE", path, f"a readable file ({reason})") from None


def _book_suffix(name: str) -> str:
    """`acct-7` → `ACCT_7`: the suffix of per-book variables (`BINANCE_API_KEY__ACCT_7`)."""
    return "".join(ch if ch.isalnum() else "_" for ch in name.upper())


def _books(env: Mapping[str, str]) -> tuple[Book, ...]:
    expected = "names without braces or spaces, comma-separated"
    raw = env.get("GOV_BOOKS", "").strip()
    names = [_simple(env, "GOV_BOOK", "", book_name, expected)]
    if raw:
        try:
            names = [book_name(n) for n in raw.split(",")]
        except ValueError:
            raise SettingError("GOV_BOOKS", raw, expected) from None
        if any(not n for n in names) or len(set(names)) != len(names):
            raise SettingError("GOV_BOOKS", raw, "distinct, non-empty " + expected)
    books = []
    for name in names:
        sfx = f"__{_book_suffix(name)}" if name else ""

        def pick(var: str, fallback: str = "", sfx: str = sfx) -> str:
            return env.get(var + sfx) or env.get(var) or (env.get(fallback, "") if fallback else "")

        def pick_secret(var: str, fallback: str, sfx: str = sfx) -> str:
            return secret(env, var + sfx) or secret(env, var) or secret(env, fallback)

        books.append(
            Book(
                name=name,
                binance_base_url=pick("BINANCE_BASE_URL") or "https://testnet.binancefuture.com",
                api_key=pick_secret("BINANCE_API_KEY", "BINANCE_TESTNET_API_KEY"),
                api_secret=pick_secret("BINANCE_API_SECRET", "BINANCE_TESTNET_API_SECRET"),
                binance_ws_url=_ws_url(pick("BINANCE_WS_URL")),
            )
        )
    return tuple(books)


def _ws_url(text: str) -> str:
    if text and ("{listenKey}" not in text or not text.startswith(("ws://", "wss://"))):
        raise SettingError("BINANCE_WS_URL", text, "a ws:// or wss:// URL containing {listenKey}")
    return text


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
    #: the Redis user's password when it is not in REDIS_URL (REDIS_PASSWORD[_FILE])
    redis_password: str = field(default="", repr=False)
    #: the rule variables the environment set (the rest are defaults)
    env_rule_names: frozenset[str] = frozenset()
    log_format: str = "text"
    http_allowed_hosts: tuple[str, ...] = ()
    sse_max_clients: int = 100
    exchange_view: ExchangeViewSettings = field(default_factory=ExchangeViewSettings)

    def __repr__(self) -> str:
        # Secrets never reach a log line, even through a debug repr.
        shown = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in {"http_token", "redis_password"}
        }
        return f"Settings({shown}, secrets=hidden)"

    def secrets(self) -> tuple[str, ...]:
        """Every secret this configuration holds, for the log to mask wherever it shows."""
        books = [s for b in self.books for s in (b.api_key, b.api_secret)]
        try:
            url = urlsplit(self.redis_url)
            query = [v for k, v in parse_qsl(url.query) if k.lower() in ("password", "pass")]
            redis = [url.password or "", *query]
        except ValueError:  # not a URL: connecting will say so, naming REDIS_URL
            redis = []
        return tuple(s for s in (*books, self.http_token, self.redis_password, *redis) if s)

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
        return _checked_redis_url(env["REDIS_URL"])
    host = env.get("REDIS_HOST", "localhost")
    port = _number(env, "REDIS_PORT", "6379", PORT)
    db = _number(env, "REDIS_DB", "0", count(MAX_SAFE_INT, unit="a database number"))
    return f"redis://{host}:{port}/{db}"


def _checked_redis_url(url: str) -> str:
    """`url` if redis-py can connect with it; SettingError naming REDIS_URL (its
    password masked) if not."""
    from redis.connection import parse_url  # here: `rotation-fsm diagram` needs no redis

    try:
        parse_url(url)  # type: ignore[no-untyped-call]
        path = urlsplit(url).path.strip("/")
        if not url.startswith("unix:") and path and not path.isdigit():
            raise ValueError(f"database {path!r} is not a number")
    except ValueError as exc:
        raise SettingError(
            "REDIS_URL", mask_credentials(url), f"redis://, rediss:// or unix:// URL ({exc})"
        ) from None
    return url


def _http_host(text: str) -> str:
    # A name is resolved when the server binds; only a dotted quad can be judged here.
    host = text.strip() or LOOPBACK
    if host.replace(".", "").isdigit():
        ipaddress.ip_address(host)
    return host


def _host_names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    if any(not n.replace("-", "").replace(".", "").isalnum() for n in names):
        raise ValueError(text)
    return names


def _simple(
    env: Mapping[str, str], name: str, default: str, parse: Callable[[str], T], expected: str
) -> T:
    value: T = _read(env, name, _Spec("", default, parse, expected))
    return value


def _number(env: Mapping[str, str], name: str, default: str, number: Number) -> Any:
    return _simple(env, name, default, number.parse, number.expected)


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
        http_host=_simple(env, "GOV_HTTP_HOST", LOOPBACK, _http_host, "an IP address or host name"),
        metrics_port=_number(env, "METRICS_PORT", "8044", PORT),
        http_token=secret(env, "GOV_HTTP_TOKEN"),
        redis_password=secret(env, "REDIS_PASSWORD"),
        audit_maxlen=_number(env, "GOV_AUDIT_MAXLEN", "100000", count(low=1)),
        claim_idle_ms=_number(
            env,
            "GOV_CLAIM_IDLE_MS",
            "10000",
            count(MAX_TTL_S * 1000, low=1, unit="milliseconds"),
        ),
        retention_s=_number(env, "GOV_RETENTION_S", "604800", duration(MAX_RETENTION_S, low=1)),
        heartbeat_s=_number(env, "GOV_HEARTBEAT_S", "5", duration(DAY_S)),
        env_rule_names=frozenset(name for name in RULE_SPECS if name in env),
        log_format=_simple(env, "GOV_LOG_FORMAT", "text", _log_format, "text or json"),
        sse_max_clients=_number(env, "GOV_SSE_MAX_CLIENTS", "100", count(10_000)),
        http_allowed_hosts=_simple(
            env, "GOV_HTTP_ALLOWED_HOSTS", "", _host_names, "host names, comma-separated"
        ),
        exchange_view=_exchange_view(env),
    )
