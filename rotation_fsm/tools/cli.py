"""The `rotation-fsm` command (contract §8).

Each subcommand lives in its own module, exposing `command(args) -> int`; this
file only declares the arguments (so `--help` is complete and a bad argument
exits 2 through argparse) and imports the module it needs lazily, keeping
`rotation-fsm diagram` from loading aiohttp.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import NamedTuple

from .. import CONTRACT_VERSION, __version__
from ..core.logs import LOG_FORMATS


def version_line() -> str:
    """What `--version` prints: this package's version and the contract's it speaks."""
    return f"rotation-fsm {__version__} (contract {CONTRACT_VERSION})"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples keep their line breaks."""


def _redis(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--redis-url",
        default=None,
        help="Redis to use (default: REDIS_URL, else REDIS_HOST/PORT/DB, as `run` reads them)",
    )


def _book(p: argparse.ArgumentParser) -> None:
    book = os.environ.get("GOV_BOOK", "")
    p.add_argument("--book", default=book, help=f"book (default: GOV_BOOK, now {book!r})")


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


RANGE_HELP = (
    "{which} entry: -/+ (the {end}), an entry id (`1733500000000-0`), milliseconds "
    "since the epoch, or an ISO 8601 time (`2026-12-07T01:00:00`, UTC unless it has a "
    "zone; default: %(default)s)"
)


def _range(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", default="-", help=RANGE_HELP.format(which="first", end="oldest"))
    p.add_argument("--until", default="+", help=RANGE_HELP.format(which="last", end="newest"))


def _by(p: argparse.ArgumentParser) -> None:
    who = os.environ.get("USER", "cli")
    p.add_argument("--by", default=who, help=f"who acts, for the audit (default: $USER, {who!r})")


class Command(NamedTuple):
    """A subcommand: the module serving it, one line of help, more words, an example."""

    module: str
    help: str
    description: str
    example: str


COMMANDS: dict[str, Command] = {
    "run": Command(
        "rotation_fsm.runtime.service",
        "run the engine, configured from the environment",
        "Consume the book's plan and result streams, decide, commit; serve /healthz, "
        "/readyz, /metrics and the web console. Every setting is an environment variable.",
        "REDIS_URL=redis://127.0.0.1:6379/0 GOV_BOOK=acct-1 rotation-fsm run",
    ),
    "demo": Command(
        "rotation_fsm.tools.demo",
        "see the whole system work, on an embedded redis-server",
        "Plays the four rotation scenarios, then a random run, narrating each step.",
        "rotation-fsm demo --seconds 5",
    ),
    "stack": Command(
        "rotation_fsm.tools.stack",
        "bring the compose services up as local processes",
        "Redis, the paper exchange, two engine replicas and the intent simulator, as in "
        "docker-compose.yml; prints the `export REDIS_URL=…` line for the other commands.",
        "rotation-fsm stack --seconds 60",
    ),
    "dump": Command(
        "rotation_fsm.tools.replay",
        "write stream history to a JSON-lines file",
        "Streams the book's audit, plans, results, decisions and events to FILE in "
        "bounded memory (a progress bar on a terminal).",
        "rotation-fsm dump -o book.jsonl --since 2026-12-07T00:00:00",
    ),
    "replay": Command(
        "rotation_fsm.tools.replay",
        "run recorded history through today's core and compare",
        "Feeds the recorded audit (from a dump file or Redis) to today's core and lists "
        "every decision that differs.",
        "rotation-fsm replay book.jsonl",
    ),
    "explain": Command(
        "rotation_fsm.tools.explain",
        "the story of one plan or rotation",
        "Any unique prefix of a plan or rotation id works, as in git; an ambiguous one "
        "lists the candidates.",
        "rotation-fsm explain 884aa713",
    ),
    "status": Command(
        "rotation_fsm.tools.explain",
        "live slots and rotations",
        "Regime, slots desired and occupied, rotations in flight and recent final states.",
        "rotation-fsm status --window 600",
    ),
    "diagram": Command(
        "rotation_fsm.tools.diagram",
        "print the state diagram generated from the machine",
        "The rotation state machine as Mermaid, Graphviz dot or SVG.",
        "rotation-fsm diagram --format dot | dot -Tpng > rotation.png",
    ),
    "set": Command(
        "rotation_fsm.runtime.controls",
        "change a live setting",
        "Stores KEY=VALUE in the book's settings hash: every replica decides the next plan "
        "with it. Validated like the environment; audited.",
        "rotation-fsm set GOV_ACTIVE_SLOTS_BASE 5",
    ),
    "unset": Command(
        "rotation_fsm.runtime.controls",
        "return a live setting to each replica's environment value",
        "Removes KEY from the book's settings hash; audited like `set`.",
        "rotation-fsm unset GOV_ACTIVE_SLOTS_BASE",
    ),
    "settings": Command(
        "rotation_fsm.runtime.controls",
        "show what each engine replica runs with",
        "Per replica (from its heartbeat): each setting's value and source (default, env, "
        "live); flags settings the replicas disagree on and replicas gone silent.",
        "rotation-fsm settings --book acct-1",
    ),
    "pause": Command(
        "rotation_fsm.runtime.controls",
        "block every new entry (active_slots_paused)",
        "Sets GOV_ENTRIES_PAUSED=true: OPEN plans are blocked, closes and rotations go on.",
        "rotation-fsm pause --by alice",
    ),
    "resume": Command(
        "rotation_fsm.runtime.controls",
        "let entries through again",
        "Sets GOV_ENTRIES_PAUSED=false.",
        "rotation-fsm resume --by alice",
    ),
    "extend": Command(
        "rotation_fsm.runtime.controls",
        "move a rotation's deadline",
        "The new deadline is SECONDS from now (not added to the old one): shorter or longer.",
        "rotation-fsm extend 884aa713 300",
    ),
    "abort": Command(
        "rotation_fsm.runtime.controls",
        "abort a rotation in flight",
        "The rotation ends ABORTED and the plan waiting on it is blocked.",
        "rotation-fsm abort 884aa713",
    ),
    "acl": Command(
        "rotation_fsm.tools.acl",
        "print the least-privilege ACL SETUSER line for the engine",
        "The password is read from --password-file, the variable --password-env names, "
        "or a prompt: never from the command line (shell history, ps).",
        "rotation-fsm acl --password-file /run/secrets/redis_password | redis-cli",
    ),
}


def _rule_keys() -> str:
    from ..core.settings import RULE_SPECS

    width = max(len(n) for n in RULE_SPECS)
    rows = [f"  {n:<{width}}  {s.expected} (default {s.default})" for n, s in RULE_SPECS.items()]
    return "keys:\n" + "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rotation-fsm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True)
    p: dict[str, argparse.ArgumentParser] = {}
    for name, c in COMMANDS.items():
        epilog = f"example:\n  {c.example}"
        if name in ("set", "unset"):
            epilog = f"{_rule_keys()}\n\n{epilog}"
        p[name] = sub.add_parser(
            name,
            help=c.help,
            description=f"{c.help[0].upper()}{c.help[1:]}.\n\n{textwrap.fill(c.description, 78)}",
            epilog=epilog,
            formatter_class=_Formatter,
        )

    p["run"].add_argument("-v", "--verbose", action="store_true", help="DEBUG log lines too")
    p["demo"].add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="length of the random run (default: %(default)s)",
    )
    p["run"].add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help="text, or json (one object per line); default: GOV_LOG_FORMAT, else text",
    )
    _redis(p["demo"])
    _redis(p["stack"])
    p["stack"].add_argument(
        "--seconds", type=float, default=0.0, help="run time; 0: until Ctrl-C (default: 0)"
    )
    for name in ("dump", "replay", "explain", "status"):
        _redis(p[name])
        _book(p[name])
        _json(p[name])
    _range(p["dump"])
    p["dump"].add_argument("-o", "--output", required=True, help="JSON-lines file to write")
    p["replay"].add_argument("file", nargs="?", help="a file made by `dump` (default: Redis)")
    _range(p["replay"])
    p["explain"].add_argument(
        "id", metavar="PLAN_ID|ROTATION_ID", help="an id or any unique prefix of one"
    )
    p["status"].add_argument(
        "--window",
        type=float,
        default=3600.0,
        help="seconds of finished rotations (default: %(default)s)",
    )
    p["diagram"].add_argument(
        "--format",
        choices=["mermaid", "dot", "svg"],
        default="mermaid",
        help="(default: %(default)s)",
    )
    for name in ("set", "unset", "settings", "pause", "resume", "extend", "abort"):
        _redis(p[name])
        _book(p[name])
        _by(p[name])
    _json(p["settings"])
    p["set"].add_argument("key", help="a setting's name (listed below)")
    p["set"].add_argument("value", help="its new value, checked as the environment's would be")
    p["unset"].add_argument("key", help="a setting's name (listed below)")
    for name in ("extend", "abort"):
        p[name].add_argument("rotation_id", help="a rotation id or any unique prefix of one")
    p["extend"].add_argument(
        "seconds", type=float, help="the new deadline, in seconds FROM NOW (not added to the old)"
    )
    p["acl"].add_argument("--user", default="rotation-fsm", help="(default: %(default)s)")
    p["acl"].add_argument(
        "--password-file", default=None, help="read the password from this file (`-`: stdin)"
    )
    p["acl"].add_argument(
        "--password-env", default=None, metavar="VAR", help="read the password from $VAR"
    )
    # Still accepted for scripts written before; a secret on the command line leaks.
    p["acl"].add_argument("--password", default=None, help=argparse.SUPPRESS)
    p["acl"].add_argument(
        "--format",
        choices=["setuser", "aclfile"],
        default="setuser",
        help="an ACL SETUSER command, or a line of an ACL file with the password hashed "
        "(default: %(default)s)",
    )
    p["acl"].add_argument(
        "--books", default="", help="comma-separated books (GOV_BOOKS); empty: the bare names"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command].module)
    try:
        code: int = module.command(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
