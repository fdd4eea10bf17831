"""Progress where a person waits (`dump`, `replay` of a large file).

On a terminal: a `rich` progress bar on stderr (count, rate, time left). Anywhere
else (a pipe, a log file, CI): a plain line at most every `PLAIN_EVERY_S` and one
at the end, so a log shows that work goes on without a line per entry. Stdout is
never touched: it may be the data itself (`dump -o -`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

PLAIN_EVERY_S = 2.0

#: advance the count by n
Advance = Callable[[int], None]


def _plain(
    what: str, total: int | None, unit: str, out: TextIO
) -> tuple[Advance, Callable[[], None]]:
    done = 0
    last = time.monotonic()

    def line() -> str:
        if total:
            return f"{what}: {done:,} of {total:,} {unit} ({100 * done / total:.0f}%)"
        return f"{what}: {done:,} {unit}"

    def advance(n: int) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= PLAIN_EVERY_S:
            last = now
            print(line(), file=out, flush=True)

    def finish() -> None:
        print(line(), file=out, flush=True)

    return advance, finish


@contextmanager
def progress(
    what: str, total: int | None, unit: str, out: TextIO | None = None
) -> Iterator[Advance]:
    """A callable to advance by n; a bar on a terminal, plain lines elsewhere.

    `total` None (unknown) gives a count without a percentage.
    """
    out = out or sys.stderr
    if not out.isatty():
        advance, finish = _plain(what, total, unit, out)
        yield advance
        finish()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(file=out), transient=False) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)
