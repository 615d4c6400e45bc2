"""Lazy re-exports for package ``__init__`` modules (PEP 562).

A package lists which of its names live in which submodule; a name is imported on first use and
then cached in the package. ``import imagevol.cli`` therefore costs only what the CLI needs, not
the registry stack, fsspec and every tree module that ``imagevol``'s public API reaches.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any


def lazy_exports(
    namespace: MutableMapping[str, Any], exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for the package whose ``globals()`` is ``namespace``.
    ``exports`` maps each name to the module that defines it, relative to the package
    (``{"Node": "._node"}``), or to ``module:name`` when the package exports it under another name
    (an old name kept as an alias)."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:  # noqa: N807 - the PEP 562 hook
        where = exports.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = where.partition(":")
        value = getattr(importlib.import_module(module, package), attribute or name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:  # noqa: N807 - the PEP 562 hook
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
