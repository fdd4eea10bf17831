"""Child processes that never outlive their parent: one way for every launcher.

The demo's and the tests' Redis servers, the stack's services and the benchmark's
engines are children of a process that may end without cleaning up — `os._exit`
(pytest-timeout's thread method), a SIGKILLed run, a crashed benchmark — and a child
left behind keeps a port, retries a vanished Redis, or writes into the next run.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when this process dies (None off Linux
    or off the main thread).

    Covers what atexit cannot: ``os._exit`` (pytest-timeout's thread method) or a
    SIGKILLed test run. Linux sends it when the *thread* that forked exits, so it is only
    used from the main thread.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork, not in the child
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    parent = os.getpid()

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec
