"""Child processes of the benchmark (engines, the paper exchange) and what /proc says of them.

A child's stdout and stderr go to a file, never a pipe: the engine logs a line
per decision, and a pipe the benchmark had to drain would cost the measuring
process CPU time (or stall the engine when full). Start-up is detected by
polling that file for the line the child prints when it is ready.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from rotation_fsm.devkit.launch import die_with_parent

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


class ChildError(RuntimeError):
    """A child process exited early or never said it was ready; carries its log tail."""


class Child:
    """One `python -m MODULE ...` child with its output in `log_path`."""

    def __init__(self, module: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.module = module
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(),
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for_line(self, pattern: str, timeout_s: float = START_TIMEOUT_S) -> re.Match[str]:
        """The first match of regex `pattern` in the child's output; raises ChildError if
        the child exits or `timeout_s` passes first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        delay_s = 0.005
        while True:
            text = self.log_path.read_text(errors="replace")
            match = regex.search(text)
            if match:
                return match
            if self.proc.poll() is not None:
                raise ChildError(
                    f"{self.module} exited with {self.proc.returncode}:\n{_tail(text)}"
                )
            if time.monotonic() > deadline:
                raise ChildError(f"{self.module} not ready after {timeout_s} s:\n{_tail(text)}")
            time.sleep(delay_s)
            delay_s = min(0.05, delay_s * 2)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self) -> str:
        return _tail(self.log_path.read_text(errors="replace"))

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after `STOP_TIMEOUT_S`; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:])


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` (VmRSS in /proc/PID/status), in bytes; 0 if it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds `pid` has used so far (/proc/PID/stat); zeros if it is gone.

    System time is the kernel working for the process: socket sends and receives
    (on loopback a send also runs the receiving side's network stack), epoll, file writes.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    # Fields after the command name, which is in parentheses and may contain spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used so far; 0.0 if it is gone."""
    return sum(cpu_split(pid))


def self_cpu_seconds() -> float:
    """CPU time of this (the measuring) process."""
    times = os.times()
    return times.user + times.system
