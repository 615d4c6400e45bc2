"""The container runtime: the CRI services (:mod:`imagevol.cri`'s ``ImageService`` and
``RuntimeService``) over the node's content store, image database and snapshots, one profile per
upstream runtime.

:class:`Runtime` (:mod:`~imagevol.runtime.base`) implements both services; the profiles differ
only where the real runtimes differ: ``containerd`` 2.2 and ``legacy`` (containerd 2.1, no
``image_sub_path``) in :mod:`~imagevol.runtime.containerd`, ``crio`` in :mod:`~imagevol.runtime.crio`;
:mod:`~imagevol.runtime.profiles` maps ``--runtime`` names to them. The package may import
:mod:`imagevol.trees`, :mod:`imagevol.content`, :mod:`imagevol.cri`, :mod:`imagevol.oci` and
:mod:`imagevol.errors`; nothing of the kubelet side imports it (the kubelet reaches a runtime
through the CRI protocols only). Names are exported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._exports import lazy_exports

#: The ``--runtime`` profiles (:data:`~imagevol.runtime.profiles.PROFILES` maps them to classes).
PROFILE_NAMES = ("containerd", "crio", "legacy")
DEFAULT_PROFILE = "containerd"

if TYPE_CHECKING:
    from ..cri import ContainerStatus, MountStatus
    from ..errors import CreateContainerError
    from .base import ContainerRecord, Runtime
    from .containerd import ContainerdRuntime, LegacyRuntime
    from .crio import CrioRuntime
    from .profiles import PROFILES, runtime_class

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "PROFILES": ".profiles",
        "ContainerRecord": ".base",
        "ContainerStatus": "..cri",
        "ContainerdRuntime": ".containerd",
        "CreateContainerError": "..errors",
        "CrioRuntime": ".crio",
        "LegacyRuntime": ".containerd",
        "MountStatus": "..cri",
        "Runtime": ".base",
        "runtime_class": ".profiles",
    },
)

__all__ = [
    "DEFAULT_PROFILE",
    "PROFILES",
    "PROFILE_NAMES",
    "ContainerRecord",
    "ContainerStatus",
    "ContainerdRuntime",
    "CreateContainerError",
    "CrioRuntime",
    "LegacyRuntime",
    "MountStatus",
    "Runtime",
    "runtime_class",
]
