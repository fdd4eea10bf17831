"""The `rotation-fsm` command (contract §8).

Each subcommand lives in its own module, exposing `command(args) -> int`; this
file only declares the arguments (so `--help` is complete and a bad argument
exits 2 through argparse) and imports the module it needs lazily, keeping
`rotation-fsm diagram` from loading aiohttp.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from . import CONTRACT_VERSION, __version__


def setup_logging(verbose: bool = False) -> None:
    """One line per record on stderr."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def version_line() -> str:
    """What `--version` prints: this package's version and the contract's it speaks."""
    return f"rotation-fsm {__version__} (contract {CONTRACT_VERSION})"


def _redis(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", default=None, help="default: REDIS_URL (as `run` reads it)")


def _book(p: argparse.ArgumentParser) -> None:
    p.add_argument("--book", default=os.environ.get("GOV_BOOK", ""), help="default: GOV_BOOK")


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _range(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", default="-", help="first stream entry id (or ms)")
    p.add_argument("--until", default="+", help="last stream entry id (or ms)")


# name → (module, help, argument adders)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("rotation_fsm.service", "run the engine, configured from the environment"),
    "demo": ("rotation_fsm.demo", "see the whole system work, on an embedded redis-server"),
    "stack": ("rotation_fsm.stack", "bring the compose services up as local processes"),
    "dump": ("rotation_fsm.replay", "write stream history to a JSON-lines file"),
    "replay": ("rotation_fsm.replay", "run recorded history through today's core and compare"),
    "explain": ("rotation_fsm.explain", "the story of one plan or rotation"),
    "status": ("rotation_fsm.explain", "live slots and rotations"),
    "diagram": ("rotation_fsm.diagram", "print the state diagram generated from the machine"),
    "set": ("rotation_fsm.controls", "change a live setting"),
    "settings": ("rotation_fsm.controls", "show the settings in force"),
    "pause": ("rotation_fsm.controls", "block every new entry (active_slots_paused)"),
    "resume": ("rotation_fsm.controls", "let entries through again"),
    "extend": ("rotation_fsm.controls", "move a rotation's deadline"),
    "abort": ("rotation_fsm.controls", "abort a rotation in flight"),
    "acl": ("rotation_fsm.acl", "print the least-privilege ACL SETUSER line for the engine"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rotation-fsm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True)
    p = {name: sub.add_parser(name, help=text) for name, (_, text) in COMMANDS.items()}

    p["run"].add_argument("-v", "--verbose", action="store_true")
    p["demo"].add_argument("--seconds", type=float, default=10.0, help="random run length")
    _redis(p["demo"])
    _redis(p["stack"])
    p["stack"].add_argument("--seconds", type=float, default=0.0, help="0: until Ctrl-C")
    for name in ("dump", "replay", "explain", "status"):
        _redis(p[name])
        _book(p[name])
        _json(p[name])
    _range(p["dump"])
    p["dump"].add_argument("-o", "--output", required=True, help="JSON-lines file to write")
    p["replay"].add_argument("file", nargs="?", help="a file made by `dump`")
    _range(p["replay"])
    p["explain"].add_argument("id", metavar="PLAN_ID|ROTATION_ID")
    p["status"].add_argument("--window", type=float, default=3600.0, help="seconds")
    p["diagram"].add_argument("--format", choices=["mermaid", "dot", "svg"], default="mermaid")
    for name in ("set", "settings", "pause", "resume", "extend", "abort"):
        _redis(p[name])
        _book(p[name])
        p[name].add_argument("--by", default=os.environ.get("USER", "cli"), help="who acts")
    for name in ("settings",):
        _json(p[name])
    p["set"].add_argument("key")
    p["set"].add_argument("value")
    p["extend"].add_argument("rotation_id")
    p["extend"].add_argument("seconds", type=float)
    p["abort"].add_argument("rotation_id")
    p["acl"].add_argument("--user", default="rotation-fsm")
    p["acl"].add_argument("--password", default="CHANGE-ME")
    p["acl"].add_argument(
        "--books", default="", help="comma-separated books (GOV_BOOKS); empty: the bare names"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        code: int = module.command(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
