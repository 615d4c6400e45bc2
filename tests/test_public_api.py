"""The public API reads like a good Python package: every name a package exports (``__all__``) and
every public method and property of an exported class has a docstring, wherever it is defined
(ruff's pydocstyle rules only see public modules; ``Node`` lives in ``node/_node.py``), and every
exception imagevol raises on purpose can be imported from ``imagevol`` itself."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from types import ModuleType

import pytest

import imagevol
import imagevol.errors


def public_modules() -> Iterator[ModuleType]:
    """``imagevol`` and every package and public module below it."""
    yield imagevol
    for info in pkgutil.walk_packages(imagevol.__path__, "imagevol."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        if info.name == "imagevol.testing.pytest_plugin":
            continue  # fixtures, checked below through pytest
        yield importlib.import_module(info.name)


def exported(module: ModuleType) -> Iterator[tuple[str, object]]:
    for name in getattr(module, "__all__", ()):
        yield f"{module.__name__}.{name}", getattr(module, name)


def undocumented(objects: Iterator[tuple[str, object]]) -> list[str]:
    missing: set[str] = set()
    for where, obj in objects:
        if not (inspect.isclass(obj) or inspect.isfunction(obj)) or not obj.__module__.startswith("imagevol"):
            continue  # constants, type aliases, re-exported third-party names
        if not (obj.__doc__ or "").strip():
            missing.add(where)
        if not inspect.isclass(obj):
            continue
        for attr, member in vars(obj).items():
            if attr.startswith("_") or not (
                inspect.isfunction(member) or isinstance(member, property | classmethod | staticmethod)
            ):
                continue
            doc = member.__func__.__doc__ if isinstance(member, classmethod | staticmethod) else member.__doc__
            if not (doc or "").strip() and not _inherits_doc(obj, attr):
                missing.add(f"{where}.{attr}")
    return sorted(missing)


def _inherits_doc(cls: type, attr: str) -> bool:
    """An override documented by the method it overrides (a runtime profile's hook)."""
    return any((getattr(base, attr, None).__doc__ or "").strip() for base in cls.__mro__[1:] if hasattr(base, attr))


def test_every_exported_name_has_a_docstring() -> None:
    found = [item for module in public_modules() for item in exported(module)]
    assert len(found) > 150  # the walk sees the packages' exports
    assert undocumented(iter(found)) == []


def test_the_docstring_check_sees_a_missing_docstring() -> None:
    class Bare:
        def method(self) -> None:
            pass

    Bare.__module__ = "imagevol.fake"
    Bare.method.__module__ = "imagevol.fake"
    assert undocumented(iter([("imagevol.fake.Bare", Bare)])) == ["imagevol.fake.Bare", "imagevol.fake.Bare.method"]


def _errors() -> list[type[Exception]]:
    out = []
    for module in public_modules():
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Exception) and obj.__module__ == module.__name__ and not obj.__name__.startswith("_"):
                out.append(obj)
    return out


def test_every_public_exception_is_importable_from_imagevol() -> None:
    errors = _errors()
    assert imagevol.errors.ImageVolError in errors and imagevol.errors.ConfigError in errors
    for exc in errors:
        assert getattr(imagevol, exc.__name__) is exc, exc
        assert exc.__name__ in imagevol.__all__
    # Every name imagevol exports resolves (the lazy table has no typo).
    for name in imagevol.__all__:
        assert getattr(imagevol, name) is not None


@pytest.mark.parametrize("name", ["node", "node_factory", "demo", "demo_node"])
def test_the_pytest_plugin_documents_its_fixtures(name: str) -> None:
    from imagevol.testing import pytest_plugin

    fixture = getattr(pytest_plugin, name)
    assert (getattr(fixture, "__doc__", None) or getattr(fixture, "__wrapped__", fixture).__doc__ or "").strip()
