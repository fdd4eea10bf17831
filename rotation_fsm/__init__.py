"""rotation-fsm: the governor's active-slots controller with strict, confirmed rotation.

The pure core (`machine`, `regime`, `slots`, `decide`) knows nothing of Redis or
HTTP; `store`, `listener`, `timer`, `exchange` and `service` are the shell.
"""

from .core.decide import BookView, Market, decide_batch
from .core.machine import FINAL, IN_FLIGHT, IllegalTransition, State, Trigger
from .core.messages import BadEntry, Plan, Result, RotationRecord, parse_plan, parse_result
from .core.settings import Rules, SettingError, Settings, load_settings

#: the package's version, written here only (pyproject.toml reads it; CHANGELOG.md tells it)
__version__ = "0.2.0"
#: the version of the external contract (streams, keys, fields, reasons, settings,
#: commands) this build speaks; it changes only with docs/contract.md
CONTRACT_VERSION = "1.3"

__all__ = [
    "CONTRACT_VERSION",
    "FINAL",
    "IN_FLIGHT",
    "BadEntry",
    "BookView",
    "IllegalTransition",
    "Market",
    "Plan",
    "Result",
    "RotationRecord",
    "Rules",
    "SettingError",
    "Settings",
    "State",
    "Trigger",
    "decide_batch",
    "load_settings",
    "parse_plan",
    "parse_result",
]
