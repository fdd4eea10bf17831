"""The base of every exception rotation-fsm raises on purpose.

`except RotationFsmError` catches ours and nothing of Redis's, aiohttp's or Python's.
Each of ours keeps its standard base as well (`SettingError` is a `ValueError`,
`UnknownRotation` a `KeyError`, …), so a caller may catch either.
"""


class RotationFsmError(Exception):
    """An error of rotation-fsm's own, with the offending value in its message."""
