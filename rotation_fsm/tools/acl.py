"""The least-privilege Redis ACL the engine needs (README "Reliability" quotes it).

The commands are what the engine sends (listener, timer, loads, HTTP status)
plus what `lua/commit.lua` calls inside the script: Redis checks a script's
calls against the caller's ACL too. Keys are limited to the `quantum:*`
namespace (per book: `{BOOK}:quantum:*`). A test runs the engine as this user.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import sys
from typing import Any

from ..core.errors import RotationFsmError
from ..core.settings import load_settings

ENGINE_COMMANDS = (
    # streams: consume, claim, emit, acknowledge
    "xreadgroup",
    "xautoclaim",
    "xack",
    "xadd",
    "xgroup|create",
    "xinfo|groups",
    # state loads and the timer
    "get",
    "mget",
    "hget",
    "hgetall",
    "smembers",
    "scard",
    "zrangebyscore",
    "zrevrange",
    # the web console and /rotations (read-only): its live reader and its pages
    "xread",
    "xrange",
    "xrevrange",
    "zrevrangebyscore",
    "zcount",
    # the commit script and what it calls
    "evalsha",
    "eval",
    "script|load",
    "set",
    "del",
    "hset",
    "hdel",
    "sadd",
    "srem",
    "zadd",
    "zrem",
    "zremrangebyscore",
    "pexpire",
    "persist",
    "incr",
    # the operator controls served over HTTP: a setting and its audit entry together
    "multi",
    "exec",
    # connection housekeeping (redis-py sends these)
    "ping",
    "client|setname",  # (CLIENT SETINFO is refused quietly: redis-py ignores it)
)


def key_patterns(books: tuple[str, ...] = ("",)) -> list[str]:
    """`~pattern`s for the given books (the empty book is the seed's bare names)."""
    return sorted({f"~{{{b}}}:quantum:*" if b else "~quantum:*" for b in books})


def setuser_args(user: str, password: str, books: tuple[str, ...] = ("",)) -> list[str]:
    """Arguments of `ACL SETUSER` for the engine's user."""
    return [
        user,
        "reset",
        "on",
        f">{password}",
        *key_patterns(books),
        "resetchannels",
        "-@all",
        *(f"+{c}" for c in ENGINE_COMMANDS),
    ]


def aclfile_line(user: str, password: str, books: tuple[str, ...] = ("",)) -> str:
    """The same user as a line of a Redis ACL file (`redis-server --aclfile`), its
    password stored as its SHA-256 (`#…`): no plaintext password on disk, and any
    password will do (only the user name must be one word)."""
    _check_word("user name", user)
    if not password:
        raise ValueError("password must be non-empty")
    digest = hashlib.sha256(password.encode()).hexdigest()
    rules = setuser_args(user, password, books)
    return "user " + " ".join(f"#{digest}" if r == f">{password}" else r for r in rules)


def setuser_line(
    user: str = "rotation-fsm", password: str = "CHANGE-ME", books: tuple[str, ...] = ("",)
) -> str:
    """The one-line `redis-cli ACL SETUSER …` command to run as an admin.

    ValueError when the user or password holds what redis-cli would split or unquote
    (blanks, quotes, backslashes, control characters)."""
    for what, word in (("user name", user), ("password", password)):
        _check_word(what, word)
    return "ACL SETUSER " + " ".join(setuser_args(user, password, books))


def _check_word(what: str, word: str) -> None:
    """ValueError when `word` holds what Redis would split or unquote in a rule."""
    if not word or any(ch.isspace() or ch in "\"'\\" or not ch.isprintable() for ch in word):
        raise ValueError(f"{what} must be non-empty, without blanks, quotes or backslashes")


class NoPassword(RotationFsmError):
    """No way to read the password was given or worked; the message says which."""


def read_password(args: Any) -> str:
    """The password from a file, an environment variable or a prompt, in that order.

    Never from the command line by choice: an argument is kept in shell history
    and shown by `ps` (`--password` is still honoured, with a warning).
    """
    if args.password_file:
        try:
            text = sys.stdin.read() if args.password_file == "-" else _read(args.password_file)
        except OSError as exc:
            raise NoPassword(f"--password-file: {exc.strerror}: {args.password_file}") from None
        return text.rstrip("\r\n")
    if args.password_env:
        value = os.environ.get(args.password_env)
        if not value:
            raise NoPassword(f"--password-env: ${args.password_env} is not set")
        return value
    if args.password is not None:
        print(
            "rotation-fsm acl: warning: --password leaves the secret in shell history",
            file=sys.stderr,
        )
        return str(args.password)
    if not sys.stdin.isatty():
        raise NoPassword("give --password-file FILE, --password-env VAR, or run on a terminal")
    return getpass.getpass("password for the engine's Redis user: ")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def parse_books(text: str) -> tuple[str, ...]:
    """`--books a,b` read exactly as the engine reads GOV_BOOKS (SettingError if it
    would refuse them); empty: the bare names."""
    return tuple(book.name for book in load_settings({"GOV_BOOKS": text}).books)


def command(args: Any) -> int:
    """`rotation-fsm acl [--user U] [--password-file F | --password-env V] [--books a,b]`:
    print the line; 2 with one line when no password could be read, or a value would
    give a rule Redis reads otherwise."""
    line = aclfile_line if args.format == "aclfile" else setuser_line
    try:
        print(line(args.user, read_password(args), parse_books(args.books)))
    except (NoPassword, ValueError) as exc:
        print(f"rotation-fsm acl: {exc}", file=sys.stderr)
        return 2
    return 0
