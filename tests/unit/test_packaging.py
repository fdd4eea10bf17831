"""The package a user installs: one version in one place, told by `--version` and the
changelog. (The wheel itself is built and run from a fresh venv by `.ci/run`.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from rotation_fsm import CONTRACT_VERSION, __version__
from rotation_fsm.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_version_prints_the_package_and_the_contract_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == (
        f"rotation-fsm {__version__} (contract {CONTRACT_VERSION})"
    )


def test_pyproject_reads_the_version_from_the_package_instead_of_writing_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "rotation_fsm.__version__"}


def test_the_changelog_starts_with_this_version() -> None:
    headings = re.findall(r"(?m)^## (\S+)", (ROOT / "CHANGELOG.md").read_text())
    assert headings[0] == __version__
