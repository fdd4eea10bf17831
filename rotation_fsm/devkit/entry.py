"""What the helper services' entry points share: reading one setting, and `main`."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from ..core.settings import SettingError

T = TypeVar("T")
C = TypeVar("C")


def setting(
    env: Mapping[str, str], name: str, default: str, parse: Callable[[str], T], expected: str
) -> T:
    """`parse` of the variable `name`, blanks stripped; unset or empty means `default`
    (compose files pass empty values); raises SettingError naming it."""
    text = env.get(name) or default
    try:
        return parse(text.strip())
    except ValueError:
        raise SettingError(name, text, expected) from None


def run_main(
    prog: str, load: Callable[[], C], serve: Callable[[C], Coroutine[Any, Any, int]]
) -> int:
    """Load the configuration (a bad setting: one line on stderr, exit 2), then serve
    until stopped (^C exits 0)."""
    try:
        config = load()
    except SettingError as exc:
        print(f"{prog}: bad setting: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(config))
    except KeyboardInterrupt:
        return 0
