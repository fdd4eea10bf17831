"""The least-privilege Redis ACL the engine needs (README "Reliability" quotes it).

The commands are what the engine sends (listener, timer, loads, HTTP status)
plus what `lua/commit.lua` calls inside the script: Redis checks a script's
calls against the caller's ACL too. Keys are limited to the `quantum:*`
namespace (per book: `{BOOK}:quantum:*`). A test runs the engine as this user.
"""

from __future__ import annotations

from typing import Any

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


def setuser_line(
    user: str = "rotation-fsm", password: str = "CHANGE-ME", books: tuple[str, ...] = ("",)
) -> str:
    """The one-line `redis-cli ACL SETUSER …` command to run as an admin."""
    return "ACL SETUSER " + " ".join(setuser_args(user, password, books))


def command(args: Any) -> int:
    """`rotation-fsm acl [--user U] [--password P] [--books a,b]`: print the line."""
    books = tuple(b.strip() for b in args.books.split(",") if b.strip()) or ("",)
    print(setuser_line(args.user, args.password, books))
    return 0
