"""Hypothesis profiles for the property tests.

Locally the defaults apply: new random examples on every run, failures remembered
in `.hypothesis/` and replayed first next time. With the `CI` environment variable
set (any value but empty, `0` or `false`) the `ci` profile is loaded: derandomized —
the same examples on every run, no example database — so a red CI run is reproduced
by running it again. Each test's own `@settings` (example counts, deadline) still
apply on top of the profile.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)

if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
    settings.load_profile("ci")
