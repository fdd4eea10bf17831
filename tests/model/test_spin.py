"""The protocol model (`model/rotation.pml`) checked exhaustively by spin.

Each check compiles the model with spin and a C compiler and runs the verifier to
the end of the state space: the real protocol must hold every invariant in every
configuration, and each seeded fault (a part of the protocol taken out) must make
spin report the invariant that part protects. spin missing is a failure, not a skip:
`.ci/run` installs Debian's `spin`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

MODEL = Path(__file__).resolve().parents[2] / "model" / "rotation.pml"

#: The configurations the real protocol is checked in (model/README.md explains
#: each); every one is a complete search.
CONFIGURATIONS = {
    "claim-from-live-consumer": ["-DMAXSTEAL=1", "-DMAXCRASH=0", "-DMAXDIE=0"],
    "kill-and-restart": ["-DMAXSTEAL=0", "-DMAXCRASH=1", "-DMAXDIE=0"],
    "killed-for-good": ["-DMAXSTEAL=0", "-DMAXCRASH=0", "-DMAXDIE=1"],
    "lost-result-and-stop-loss": [
        "-DMAXSTEAL=0",
        "-DMAXCRASH=0",
        "-DMAXDIE=0",
        "-DMAXLOST=1",
        "-DMAXSTOP=1",
    ],
    "ttl-and-lost-result": [
        "-DTTL",
        "-DRESEND=0",
        "-DMAXSTEAL=0",
        "-DMAXCRASH=0",
        "-DMAXDIE=0",
        "-DMAXLOST=1",
    ],
    "three-replicas-one-killed": [
        "-DNR=3",
        "-DRESEND=0",
        "-DMAXSTEAL=0",
        "-DMAXCRASH=0",
        "-DMAXDIE=1",
    ],
}

#: A seeded fault, and the invariant spin must then report violated: at least one for
#: each invariant, so none of the checks can pass for want of looking.
FAULTS = {
    "snapshot-race-without-settling": (["-DNO_SETTLE"], 1),
    "snapshot-race-without-forward-views": (["-DNO_FORWARD"], 1),
    "doubled-close-without-version-guard": (["-DNO_GUARD", "-DCHECK=2"], 2),
    "snapshot-race-when-ttl-ends-on-any-view": (["-DTTL", "-DTTL_ANY_VIEW", "-DRESEND=0"], 1),
    "rotation-never-final-without-timer": (["-DNO_TIMER", "-DMAXLOST=1"], 4),
    "entry-lost-when-acked-on-read": (["-DACK_ON_READ"], 5),
}

# Smallest world in which the faults show: no kills, no claim from a live consumer.
_QUICK = ["-DMAXSTEAL=0", "-DMAXCRASH=0", "-DMAXDIE=0"]


@dataclass
class Verdict:
    """What pan said: errors, the invariant an assertion names, the search's size."""

    output: str
    errors: int
    violated: int | None
    states: int
    complete: bool


def verify(workdir: Path, defines: list[str], *, optimize: str = "-O2") -> Verdict:
    """Generate, compile and run the verifier for `defines`; parse its report.

    `-O0` compiles in a second instead of five: for searches that stop early."""
    spin = shutil.which("spin")
    assert spin, "spin is not installed: apt-get install spin (Debian's package)"
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "no C compiler to build spin's verifier"
    shutil.copy(MODEL, workdir / MODEL.name)
    subprocess.run([spin, "-a", *defines, MODEL.name], cwd=workdir, check=True, capture_output=True)
    subprocess.run(
        # COLLAPSE: states stored compressed (a third of the memory, exact).
        [cc, optimize, "-w", "-DSAFETY", "-DCOLLAPSE", "-o", "pan", "pan.c"],
        cwd=workdir,
        check=True,
        capture_output=True,
    )
    run = subprocess.run(
        ["./pan", "-m20000"], cwd=workdir, check=False, capture_output=True, text=True
    )
    out = run.stdout + run.stderr
    errors = re.search(r"errors: (\d+)", out)
    states = re.search(r"(\d+) states, stored", out)
    assert errors and states, f"unexpected pan output:\n{out}"
    # INV(n) expands to ((CHECK >> ((n) - 1)) & 1): the assertion text names n.
    named = re.search(r"assertion violated .*?>>\((\d)-1\)\)", out)
    return Verdict(
        output=out,
        errors=int(errors.group(1)),
        violated=int(named.group(1)) if named else None,
        states=int(states.group(1)),
        complete="max search depth too small" not in out,
    )


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(CONFIGURATIONS))
def test_protocol_holds_every_invariant(tmp_path: Path, name: str) -> None:
    verdict = verify(tmp_path, CONFIGURATIONS[name])
    assert verdict.errors == 0, verdict.output
    assert verdict.complete, verdict.output
    assert verdict.states > 100_000, verdict.output  # the whole protocol, not a stub


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(FAULTS))
def test_seeded_fault_is_found(tmp_path: Path, name: str) -> None:
    defines, invariant = FAULTS[name]
    verdict = verify(tmp_path, [*_QUICK, *defines], optimize="-O0")
    assert verdict.errors >= 1, verdict.output
    assert verdict.violated == invariant, verdict.output
