"""qrfarm's exceptions have one home, qrfarm.errors, under one root."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import qrfarm
from qrfarm import errors


def qrfarm_modules() -> list[str]:
    names = [
        info.name
        for info in pkgutil.walk_packages(qrfarm.__path__, prefix="qrfarm.")
        # Alembic's revision scripts run only inside a migration; a __main__ runs its command.
        if ".migrations." not in info.name and not info.name.endswith(".__main__")
    ]
    return sorted(names)


def test_every_exception_class_is_defined_in_qrfarm_errors() -> None:
    elsewhere = []
    for name in qrfarm_modules():
        module = importlib.import_module(name)
        for attribute, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and name != errors.__name__
            ):
                elsewhere.append(f"{name}.{attribute}")
    assert elsewhere == []


def test_every_exception_of_qrfarm_errors_derives_from_its_root() -> None:
    defined = [
        value
        for value in vars(errors).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == errors.__name__
    ]
    assert len(defined) > 40
    assert [c.__name__ for c in defined if not issubclass(c, errors.QrfarmError)] == []
