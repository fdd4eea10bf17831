"""CPU time per process over a measured window: where the machine's two cores went.

Sampled from /proc before and after a window for the engines, redis-server, the
paper exchange and the measuring process itself, and reported per plan, so a
reading like "the engine spends 70 µs of CPU per plan, Redis 25 µs" falls out
of every run. The machine's total busy time (/proc/stat) minus ours is what
*other* processes took meanwhile: a run on a busy machine says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .procs import CLOCK_TICKS, cpu_seconds, cpu_split, self_cpu_seconds

OTHERS = "other processes"
#: the part of the engines' CPU time spent in the kernel (syscalls), counted within "engine"
ENGINE_KERNEL = "engine: kernel"


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat, first line)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


@dataclass
class CpuWindow:
    """CPU seconds of named processes between `start()` and `stop()`."""

    pids: dict[str, list[int]]
    _before: dict[str, float] = field(default_factory=dict)
    used_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    def _sample(self) -> dict[str, float]:
        sampled = {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.pids.items()}
        sampled[ENGINE_KERNEL] = sum(cpu_split(p)[1] for p in self.pids.get("engine", []))
        sampled["bench client"] = self_cpu_seconds()
        sampled[OTHERS] = machine_busy_seconds()
        sampled["wall"] = time.monotonic()
        return sampled

    def start(self) -> None:
        self._before = self._sample()

    def stop(self) -> dict[str, float]:
        """CPU seconds used per process name since `start()` (`other processes`: the rest
        of the machine's busy time)."""
        after = self._sample()
        used = {name: after[name] - self._before[name] for name in after}
        self.wall_s = used.pop("wall")
        used[OTHERS] -= sum(v for k, v in used.items() if k not in (OTHERS, ENGINE_KERNEL))
        used[OTHERS] = max(0.0, used[OTHERS])
        self.used_s = used
        return used

    def per_item_us(self, items: int) -> dict[str, float]:
        """CPU µs per item (plan, rotation) per process name."""
        return {name: used / max(1, items) * 1e6 for name, used in self.used_s.items()}

    @property
    def others_cores(self) -> float:
        """How many cores other processes kept busy, on average, during the window."""
        return self.used_s.get(OTHERS, 0.0) / self.wall_s if self.wall_s > 0 else 0.0


def cpu_window(engines: list[int], redis_pid: int, exchange_pid: int) -> CpuWindow:
    """A window over the usual cast of a measurement."""
    return CpuWindow({"engine": engines, "redis-server": [redis_pid], "exchange": [exchange_pid]})
