"""The `rotation-fsm` command (contract §8)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from .settings import SettingError, load_settings


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except SettingError as exc:
        print(f"rotation-fsm: bad setting: {exc}", file=sys.stderr)
        return 2
    _setup_logging(args.verbose)
    from .service import run_engine

    try:
        return asyncio.run(run_engine(settings))
    except KeyboardInterrupt:
        return 0


def _cmd_diagram(args: argparse.Namespace) -> int:
    from .diagram import render

    print(render(args.format), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rotation-fsm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the engine (configured from the environment)")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_cmd_run)
    diagram = sub.add_parser("diagram", help="print the state diagram from the machine")
    diagram.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")
    diagram.set_defaults(func=_cmd_diagram)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
