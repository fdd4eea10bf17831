"""The benchmark, in its smallest form, runs end to end: a table, and every decision.

Not a timing test: the numbers depend on the machine; only that the instrument
works is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BURST = 2_000


def test_quick_free_slot_burst_prints_the_table_and_decides_every_plan(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    command = [sys.executable, "-m", "benchmarks", "--quick", "--only", "free_slot",
               "--burst", str(BURST), "--json", str(report_path)]  # fmt: skip

    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=100)

    assert run.returncode == 0, run.stdout + run.stderr
    assert "free slots: plans decided/s, 1 engine (2,000 burst)" in run.stdout
    assert "engine RSS after the free-slot burst" in run.stdout
    report = json.loads(report_path.read_text())
    assert report["failures"] == []
    assert report["details"]["free_slot"]["decided"] == [f"{BURST}/{BURST}"]
    (throughput,) = [f for f in report["figures"] if f["key"] == "free_slot"]
    assert throughput["median"] > 0
