"""Hypothesis profiles for the property tests, and one import made quietly.

Locally the defaults apply: new random examples on every run, failures remembered
in `.hypothesis/` and replayed first next time. With the `CI` environment variable
set (any value but empty, `0` or `false`) the `ci` profile is loaded: derandomized —
the same examples on every run, no example database — so a red CI run is reproduced
by running it again. Each test's own `@settings` (example counts, deadline) still
apply on top of the profile.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)

if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
    settings.load_profile("ci")

# When a @given test fails, hypothesis' pytest plugin imports libcst (to print a patch)
# and libcst defines a class with mypy_extensions.TypedDict, which warns
# DeprecationWarning. Under `filterwarnings = ["error"]` that warning, raised inside the
# plugin's report hook, is an INTERNALERROR that ends the whole session instead of
# reporting the failing example. Importing libcst once here, with that warning ignored,
# leaves the plugin nothing to warn about.
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.simplefilter("ignore", DeprecationWarning)
    importlib.import_module("libcst")
