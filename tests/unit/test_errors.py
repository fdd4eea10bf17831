"""Every exception the package raises on purpose has one base: RotationFsmError."""

import importlib
import inspect
import pkgutil

import rotation_fsm
from rotation_fsm.core.errors import RotationFsmError


def _own_exceptions() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(rotation_fsm.__path__, "rotation_fsm."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
                and not name.startswith("_")
            ):
                found.append(obj)
    return found


def test_every_public_exception_of_the_package_is_a_rotation_fsm_error():
    exceptions = _own_exceptions()
    assert len(exceptions) >= 15
    strays = [
        f"{e.__module__}.{e.__qualname__}"
        for e in exceptions
        if not issubclass(e, RotationFsmError)
    ]
    assert strays == [], (
        "derive each from rotation_fsm.core.errors.RotationFsmError (keep its own base)"
    )


def test_an_error_still_is_what_it_was():
    from rotation_fsm.core.decide import UnknownRotation
    from rotation_fsm.core.settings import SettingError

    assert issubclass(SettingError, ValueError) and issubclass(UnknownRotation, KeyError)
