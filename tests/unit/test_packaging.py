"""The package a user installs: one version in one place, told by `--version` and the
changelog. (The wheel itself is built and run from a fresh venv by `.ci/run`.)"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path

import pytest

from rotation_fsm import CONTRACT_VERSION, __version__
from rotation_fsm.tools.cli import main

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


UPLOT = ROOT / "rotation_fsm" / "web" / "static" / "uplot"
#: sha256 of the files of `npm pack uplot@1.6.32` (dist/ and LICENSE), as shipped
UPLOT_FILES = {
    "uPlot.iife.min.js": "19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f",
    "uPlot.min.css": "df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04",
}


def test_the_shipped_uplot_is_release_1_6_32_with_its_licence() -> None:
    shipped = json.loads((UPLOT / "package.json").read_text())
    assert (shipped["name"], shipped["version"], shipped["license"]) == ("uplot", "1.6.32", "MIT")
    for name, digest in UPLOT_FILES.items():
        assert hashlib.sha256((UPLOT / name).read_bytes()).hexdigest() == digest, name
    assert (
        (UPLOT / "uPlot.iife.min.js")
        .read_text()
        .startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
    )
    assert "MIT License" in (UPLOT / "LICENSE").read_text()


def test_the_wheel_ships_every_static_file_of_the_console() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["rotation_fsm"]
    package = ROOT / "rotation_fsm"
    shipped = {p for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    static = {p for p in (package / "web" / "static").rglob("*") if p.is_file()}
    assert static and static <= shipped
