"""The CRI seam: the slice of the CRI (k8s.io/cri-api ``runtime/v1``) that image volumes use.

Everything the kubelet side (pod sync, image manager, image GC, the ``exec`` view) and the runtime
side exchange is a value of :mod:`imagevol.cri._values`, and the two service protocols of
:mod:`imagevol.cri._services` (:class:`ImageService`, :class:`RuntimeService`) name nothing else.
The kubelet side is typed by the protocols only; the runtime's own records (image database, content
store, snapshots) never cross. The package imports nothing of imagevol but text helpers (and, for
type checking, the API's ``Secret``), so either side can be replaced: the tests drive the kubelet
with an in-memory runtime. Every name is exported here: ``from imagevol.cri import Mount``.
"""

from __future__ import annotations

from ._services import ContainerLifecycle, ContainerRuntime, ImageService, RuntimeService
from ._values import (
    ANONYMOUS,
    DOCKER_CFG,
    DOCKER_CONFIG_JSON,
    PROPAGATION,
    ContainerConfig,
    ContainerStatus,
    Credentials,
    FilesystemIdentifier,
    FilesystemUsage,
    Image,
    ImageFsInfo,
    ImageSpec,
    Keyring,
    Mount,
    MountStatus,
    PullImageResult,
)

__all__ = [
    "ANONYMOUS",
    "DOCKER_CFG",
    "DOCKER_CONFIG_JSON",
    "PROPAGATION",
    "ContainerConfig",
    "ContainerLifecycle",
    "ContainerRuntime",
    "ContainerStatus",
    "Credentials",
    "FilesystemIdentifier",
    "FilesystemUsage",
    "Image",
    "ImageFsInfo",
    "ImageService",
    "ImageSpec",
    "Keyring",
    "Mount",
    "MountStatus",
    "PullImageResult",
    "RuntimeService",
]
