"""Log set-up for every command: one record per line, values escaped, credentials masked.

A log line carries values that outside clients choose (plan ids, symbols, dead
letters' errors) and URLs that may hold a password. So every record is rendered
through one formatter that escapes control characters (a plan id holding `\\r\\n`
cannot forge a line of its own) and masks credentials in any URL or query string
it carries. `text` is for people; `json` writes one object per line for log
shippers. The libraries' own loggers (the state-machine library logs each
transition at INFO) are kept at WARNING.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import TextIO

LOG_FORMATS = ("text", "json")
# Loggers of libraries we use: their INFO is noise in ours (transitions: 4-6 lines per
# rotation; aiohttp and redis-py: one per connection).
QUIET_LIBRARIES = ("transitions", "aiohttp", "redis", "asyncio")
MASK = "***"

# `scheme://user:password@host` (or `scheme://secret@host`): everything before `@`
# but the user name is the secret.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@\s:]*)(?::[^/@\s]*)?@")
# `?password=…`, `&token=…`, `api_key=…` and the like, in a URL or a `key=value` line.
_SECRET_PARAM = re.compile(
    r"(?P<name>\b(?:password|passwd|pass|pwd|secret|token|access_token|auth|"
    r"api[_-]?key|apikey|api[_-]?secret|key|listen[_-]?key|signature|sig|credentials?)=)"
    r"[^&#\s,;]*",
    re.IGNORECASE,
)
# Binance's older user-data stream URL carries the listen key as its last path part.
_LISTEN_KEY_PATH = re.compile(r"(?P<head>/ws/)[A-Za-z0-9]{32,}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x80-\x9f\u2028\u2029]")


def mask_credentials(text: str) -> str:
    """`text` with the password of every `scheme://user:pass@`, the value of every
    credential-like parameter (`password=`, `token=`, `key=`, `listenKey=`…) and a
    listen key in a `/ws/<key>` path replaced by `***`."""

    def userinfo(match: re.Match[str]) -> str:
        had_password = match.group(0).count(":") > 1 or not match.group("user")
        user = match.group("user")
        if had_password and user:
            return f"{match.group('scheme')}{user}:{MASK}@"
        return f"{match.group('scheme')}{MASK}@"

    text = _USERINFO.sub(userinfo, text)
    text = _LISTEN_KEY_PATH.sub(lambda m: m.group("head") + MASK, text)
    return _SECRET_PARAM.sub(lambda m: m.group("name") + MASK, text)


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape (`\\n`, `\\x1b`…), so
    a value can never start a line of its own or move a terminal's cursor."""
    return _CONTROL.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    ch = match.group(0)
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return named.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


class _Secrets:
    """Literal secrets of this process (exchange keys, HTTP token, Redis password):
    masked wherever they appear, whatever the message's shape."""

    def __init__(self) -> None:
        self.values: tuple[str, ...] = ()

    def add(self, values: Iterable[str]) -> None:
        # Short values would mask ordinary words; a real secret is longer.
        fresh = {v for v in values if len(v) >= 6}
        self.values = tuple(sorted(set(self.values) | fresh, key=len, reverse=True))

    def mask(self, text: str) -> str:
        for value in self.values:
            if value in text:
                text = text.replace(value, MASK)
        return text


SECRETS = _Secrets()


def clean(text: str) -> str:
    """A value made safe for a log line: credentials masked, controls escaped."""
    return escape_controls(SECRETS.mask(mask_credentials(text)))


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, one line; a traceback follows indented, so none
    of its lines can pass for a record."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        head = f"{self.formatTime(record)} {record.levelname} {record.name}: "
        line = head + clean(record.getMessage())
        trace = _trace(self, record)
        if trace:
            body = SECRETS.mask(mask_credentials(trace))
            line += "".join("\n    " + escape_controls(part) for part in body.splitlines() if part)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record and line: ts (ISO 8601, UTC), level, logger, msg,
    and exc when there is a traceback. JSON escapes control characters itself."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        body: dict[str, str] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": SECRETS.mask(mask_credentials(record.getMessage())),
        }
        trace = _trace(self, record)
        if trace:
            body["exc"] = SECRETS.mask(mask_credentials(trace))
        return json.dumps(body, ensure_ascii=True)


def _trace(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    parts = []
    if record.exc_info:
        parts.append(formatter.formatException(record.exc_info))
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(parts)


def quiet_libraries() -> None:
    """The libraries' loggers at WARNING, whatever the root level."""
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


def setup_logging(
    verbose: bool = False, log_format: str = "text", stream: TextIO | None = None
) -> None:
    """Every record of the process on stderr (or `stream`), one line each, in
    `log_format` (`text` or `json`); DEBUG with `verbose`, else INFO."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    quiet_libraries()
