"""Intent simulator: seeds the policy universe and publishes OPEN plans like an intent bridge."""

from .simulator import (
    DEFAULT_UNIVERSE,
    IntentSimulator,
    SimConfig,
    SimStats,
    load_config,
)

__all__ = [
    "DEFAULT_UNIVERSE",
    "IntentSimulator",
    "SimConfig",
    "SimStats",
    "load_config",
]
