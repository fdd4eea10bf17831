"""Sampling profile of an engine process with py-spy, summarised as text.

py-spy attaches to the running engine (`--nonblocking`: it does not stop the
process to sample) and writes collapsed stacks (`--format raw`, one line per
distinct stack: `frame;frame;... count`). Only samples where the engine holds
the GIL are kept (`--gil`): Python at work. Time in syscalls (socket sends and
receives) is left out on purpose — a wall-clock sample taken there mostly
catches the engine preempted by the process its send just woke (Redis, the
exchange), which would be billed to the engine; the kernel's share of the
engine's CPU is reported from /proc instead (`engine: kernel`). The summary
lists the functions where samples *ended* (self time), the same by module, and
the project's functions *on* the stack (inclusive time), as percentages.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SAMPLE_RATE = 250
ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("rotation_fsm/",)
UNMATCHED = "none of these (event loop, timer, other)"
#: the steps of the engine's batch, found by the functions on the stack
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("XREADGROUP and parsing entries", ("xreadgroup", "to_input", "_entries (rotation_fsm")),
    ("exchange HTTP (fetch_market, aiohttp)", ("fetch_market", "(aiohttp/", "ExchangeClient")),
    ("load the view (Store.load)", ("Store.load",)),
    ("decide, pure core (decide_batch)", ("decide_batch",)),
    ("audit entry (batch_entry, seed_of)", ("batch_entry", "seed_of")),
    ("commit: ops + EVALSHA (Store.commit)", ("Store.commit",)),
    ("log lines (logging)", ("(logging/",)),
    ("metrics (Metrics.observe)", ("Metrics.observe",)),
]
_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::\d+)?\)$")


class Profiler:
    """A py-spy recording of one process, from `start` until `stop`."""

    def __init__(self, proc: subprocess.Popen[bytes], path: Path) -> None:
        self.proc = proc
        self.path = path

    @classmethod
    def start(cls, pid: int, path: Path) -> Profiler | None:
        """Start recording `pid` into `path`; None when py-spy is not installed."""
        exe = shutil.which("py-spy")
        if exe is None:
            return None
        command = [
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(SAMPLE_RATE),
            "--nonblocking",
            "--gil",
            "--function",
            "--format",
            "raw",
            "-o",
            str(path),
        ]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return cls(proc, path)

    def stop(self) -> None:
        """Stop sampling and wait for py-spy to write its file (it does so on SIGINT)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass(frozen=True)
class ProfileSummary:
    """Shares of the samples: by leaf function, by leaf module, and project functions on
    the stack."""

    samples: int
    stages: list[tuple[str, float]]
    self_top: list[tuple[str, float]]
    module_top: list[tuple[str, float]]
    inclusive_top: list[tuple[str, float]]

    def lines(self) -> list[str]:
        """The summary as printable lines."""
        out = [f"{self.samples} samples of the engine holding the GIL ({SAMPLE_RATE}/s)"]
        out.append("  stages of a batch (inclusive; a sample may count in two):")
        out += [f"    {share:5.1f}%  {name}" for name, share in self.stages]
        out.append("  self, by function (where the CPU was):")
        out += [f"    {share:5.1f}%  {name}" for name, share in self.self_top]
        out.append("  self, by module or library:")
        out += [f"    {share:5.1f}%  {name}" for name, share in self.module_top]
        out.append("  inclusive, rotation_fsm functions (on the stack):")
        out += [f"    {share:5.1f}%  {name}" for name, share in self.inclusive_top]
        return out


def summarize(path: Path, top: int = 15) -> ProfileSummary | None:
    """Summary of a py-spy raw file; None if it is missing or empty."""
    if not path.exists():
        return None
    own: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    samples = in_project = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        samples += count
        own[_label(frames[-1])] += count
        modules[_module(frames[-1][1])] += count
        ours = {f for f in frames if f[1].startswith(PROJECT)}
        in_project += count if ours else 0
        for frame in ours:
            inclusive[_label(frame)] += count
        labels = ";".join(_label(f) for f in frames)
        matched = [stage for stage, needles in STAGES if any(n in labels for n in needles)]
        for stage in matched or [UNMATCHED]:
            stages[stage] += count
    if not samples:
        return None
    # Frames on (nearly) every stack of ours — the CLI, the service's run loop — say nothing.
    for name in [n for n, c in inclusive.items() if c >= 0.9 * in_project]:
        del inclusive[name]

    def shares(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(name, 100 * c / samples) for name, c in counter.most_common(n)]

    return ProfileSummary(
        samples,
        [(name, 100 * stages[name] / samples) for name in [*(n for n, _ in STAGES), UNMATCHED]],
        shares(own, top),
        shares(modules, 10),
        shares(inclusive, top),
    )


def _frame(text: str) -> tuple[str, str]:
    """`handle (/x/rotation_fsm/engine.py:123)` → (`handle`, `rotation_fsm/runtime/engine.py`)."""
    match = _FRAME.match(text.strip())
    if match is None:
        return text.strip(), ""
    path = match["file"]
    for marker in (str(ROOT) + "/", "site-packages/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return match["func"], path


def _label(frame: tuple[str, str]) -> str:
    return f"{frame[0]} ({frame[1]})" if frame[1] else frame[0]


def _module(path: str) -> str:
    """`rotation_fsm/store/gateway.py` stays; a library's file becomes its package (`redis`)."""
    if path.startswith(PROJECT):
        return path
    return path.split("/", 1)[0] if "/" in path else path or "?"
