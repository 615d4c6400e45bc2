"""The slice of the CRI (k8s.io/cri-api runtime/v1) that image volumes use: values (R8.1) and the
two small service interfaces every runtime profile implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import attrs

from ._text import goquote

if TYPE_CHECKING:
    from .images import ImageRecord
    from .resolver import PullResult
    from .runtime import ContainerRecord
    from .sources.auth import Keyring

#: CRI MountPropagation enum names, translated from the API's mountPropagation (R4.6).
PROPAGATION = {None: "PROPAGATION_PRIVATE", "None": "PROPAGATION_PRIVATE",
               "HostToContainer": "PROPAGATION_HOST_TO_CONTAINER",
               "Bidirectional": "PROPAGATION_BIDIRECTIONAL"}  # fmt: skip


def _text_field(name: str, value: object) -> str:
    """One field in protobuf text format; proto3 default values are omitted, as Go prints them."""
    if isinstance(value, bool):
        return f"{name}:true" if value else ""
    if isinstance(value, str):
        return f"{name}:{goquote(value)}" if value else ""
    return f"{name}:{value}"


def _text(fields: Sequence[str]) -> str:
    return " ".join(f for f in fields if f)


@attrs.frozen
class ImageSpec:
    """``runtime.v1.ImageSpec``: ``image`` is the runtime's image ref returned by the pull (not the
    user string, R3.8); ``user_specified_image`` is the reference as written in the Pod (R11.10)."""

    image: str
    user_specified_image: str = ""
    runtime_handler: str = ""
    annotations: Mapping[str, str] = attrs.field(factory=dict)

    def proto_text(self) -> str:
        """What Go's ``%+v`` prints for the generated message (protobuf text format, one line;
        upstream's spacing is deliberately unstable, so only the field content is reproduced)."""
        annotations = [
            f"annotations:{{key:{goquote(k)} value:{goquote(v)}}}" for k, v in sorted(self.annotations.items())
        ]
        return _text(
            [
                _text_field("image", self.image),
                *annotations,
                _text_field("user_specified_image", self.user_specified_image),
                _text_field("runtime_handler", self.runtime_handler),
            ]
        )


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

    def proto_text(self) -> str:
        """What Go's ``%+v`` prints for the generated message (containerd quotes it, R9.16)."""
        propagation = "" if self.propagation == "PROPAGATION_PRIVATE" else f"propagation:{self.propagation}"
        return _text(
            [
                _text_field("container_path", self.container_path),
                _text_field("host_path", self.host_path),
                _text_field("readonly", self.readonly),
                _text_field("selinux_relabel", self.selinux_relabel),
                propagation,
                _text_field("recursive_read_only", self.recursive_read_only),
                f"image:{{{self.image.proto_text()}}}" if self.image is not None else "",
                _text_field("image_sub_path", self.image_sub_path),
            ]
        )


@attrs.frozen
class ContainerConfig:
    name: str
    image: str
    mounts: tuple[Mount, ...] = ()
    envs: tuple[tuple[str, str], ...] = ()


@runtime_checkable
class ImageService(Protocol):
    """``runtime.v1.ImageService``: the RPCs image volumes go through (R8.2, no new ones)."""

    def pull_image(self, reference: str, keyring: Keyring | None = None) -> PullResult: ...

    def image_status(self, reference: str) -> ImageRecord | None: ...

    def list_images(self) -> list[ImageRecord]: ...

    def remove_image(self, reference: str) -> ImageRecord: ...


@runtime_checkable
class RuntimeService(Protocol):
    """``runtime.v1.RuntimeService``, container part: image volumes are mounted lazily at
    ``CreateContainer`` (R8.4) and echoed back by ``ContainerStatus`` (R7.2)."""

    name: str

    def create_container(self, sandbox_id: str, config: ContainerConfig) -> ContainerRecord: ...

    def remove_container(self, container_id: str) -> None: ...

    def container_status(self, container_id: str) -> ContainerRecord | None: ...

    def list_containers(self) -> Sequence[ContainerRecord]: ...
