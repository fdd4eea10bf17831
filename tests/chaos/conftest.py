"""The chaos tests: the checker on hand-made histories, and one short chaos run.

The run is marked `chaos` so it can be left out locally (`pytest -m "not chaos"`);
it runs by default, and CI runs it.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: the ~1 min chaos run (deselect with -m 'not chaos')")
