"""One short chaos run, as CI runs it: `python -m rotation_fsm.devkit.chaos --seconds 45`.

Three replicas, the paper exchange with rejects and lost results, plans with
duplicates, resends and malformed entries; replicas killed -9, Redis killed -9 and
restarted, Redis frozen, the exchange answering 5xx, 429, timeouts and garbage. No
invariant may be violated, and every kind of fault must really have happened (a run
that injected nothing would prove nothing). About a minute in all; deselect it
locally with `-m "not chaos"`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SECONDS = 45
ROOT = Path(__file__).resolve().parents[2]
FAULT_KINDS = (
    "replica_kill9",
    "redis_restart",
    "redis_cut_ms",
    "exchange_500",
    "exchange_429",
    "exchange_timeout",
    "exchange_garbage",
    "orders_rejected",
    "results_lost",
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(SECONDS + 120)]


@dataclass
class Run:
    """The run's exit code, its printed figures and its JSON report."""

    code: int
    output: str
    report: dict[str, Any]


@pytest.fixture(scope="module")
def chaos_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The run, once for this module (its logs stay in the pytest temp directory)."""
    workdir = tmp_path_factory.mktemp("chaos")
    out = workdir / "report.json"
    argv = ["--seconds", str(SECONDS), "--json", str(out), "--workdir", str(workdir / "run")]
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-m", "rotation_fsm.devkit.chaos", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SECONDS + 100,
        check=False,
    )
    report = json.loads(out.read_text()) if out.exists() else {}
    return Run(proc.returncode, proc.stdout + proc.stderr, report)


def test_no_invariant_is_violated(chaos_run: Run) -> None:
    assert chaos_run.report, chaos_run.output[-5000:]
    found = {v["number"]: v["violations"] for v in chaos_run.report["invariants"]}
    assert found == {1: 0, 2: 0, 3: 0, 4: 0, 5: 0}, chaos_run.output[-5000:]
    assert chaos_run.code == 0, chaos_run.output[-5000:]


def test_every_kind_of_fault_was_injected(chaos_run: Run) -> None:
    faults = chaos_run.report["faults"]
    assert {kind: faults[kind] for kind in FAULT_KINDS if faults[kind] < 1} == {}, faults


def test_the_run_rotated_decided_and_dead_lettered(chaos_run: Run) -> None:
    figures = chaos_run.report["figures"]
    assert figures["rotations_by_state"].get("CONFIRMED", 0) > 0, figures
    assert figures["decisions_by_reason"].get("ALLOW slots_available", 0) > 0, figures
    assert figures["dead_letters"] > 0, figures
    assert figures["permit_log_complete"] is True, figures


def test_every_replica_stopped_cleanly(chaos_run: Run) -> None:
    assert chaos_run.report["exit_codes"] == [0, 0, 0]


def test_no_book_version_was_committed_twice(chaos_run: Run) -> None:
    assert chaos_run.report["also_checked"]["commits from one book version"]["count"] == 0


@pytest.mark.parametrize(
    "finding", ["plan entries answered more than once", "entries dead-lettered more than once"]
)
def test_a_redelivery_emits_nothing_twice(chaos_run: Run, finding: str) -> None:
    # Both happened under claim races before 8deaab5 (tests/chaos/test_bugs.py).
    assert chaos_run.report["also_checked"][finding] == {"count": 0, "examples": []}
