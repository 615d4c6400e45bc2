"""The slice of the CRI (k8s.io/cri-api runtime/v1) that image volumes use, as values (R8.1)."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

#: CRI MountPropagation enum names, translated from the API's mountPropagation (R4.6).
PROPAGATION = {None: "PROPAGATION_PRIVATE", "None": "PROPAGATION_PRIVATE",
               "HostToContainer": "PROPAGATION_HOST_TO_CONTAINER",
               "Bidirectional": "PROPAGATION_BIDIRECTIONAL"}  # fmt: skip


@attrs.frozen
class ImageSpec:
    """``runtime.v1.ImageSpec``: ``image`` is the runtime's image ref returned by the pull (not the
    user string, R3.8); ``user_specified_image`` is the reference as written in the Pod (R11.10)."""

    image: str
    user_specified_image: str = ""
    runtime_handler: str = ""
    annotations: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Mount:
    """``runtime.v1.Mount`` as the kubelet builds it for an image volume (R4.6, R8.1)."""

    container_path: str
    host_path: str = ""
    readonly: bool = True
    image: ImageSpec | None = None
    image_sub_path: str = ""
    propagation: str = "PROPAGATION_PRIVATE"
    selinux_relabel: bool = False
    recursive_read_only: bool = False


@attrs.frozen
class ContainerConfig:
    name: str
    image: str
    mounts: tuple[Mount, ...] = ()
    envs: tuple[tuple[str, str], ...] = ()
