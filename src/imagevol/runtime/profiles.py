"""The runtime profiles by name (``--runtime``): one per upstream runtime whose behaviour imagevol
reproduces."""

from __future__ import annotations

from .base import Runtime
from .containerd import ContainerdRuntime, LegacyRuntime
from .crio import CrioRuntime

PROFILES: dict[str, type[Runtime]] = {
    "containerd": ContainerdRuntime,
    "crio": CrioRuntime,
    "legacy": LegacyRuntime,
}


def runtime_class(name: str) -> type[Runtime]:
    """The runtime class of the ``--runtime`` profile ``name`` (``ValueError`` if unknown)."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}: choose from {', '.join(sorted(PROFILES))}") from None


__all__ = ["PROFILES", "ContainerdRuntime", "CrioRuntime", "LegacyRuntime", "runtime_class"]
