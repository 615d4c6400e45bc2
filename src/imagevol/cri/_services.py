"""The two CRI services (``runtime.v1.ImageService`` and the container part of
``runtime.v1.RuntimeService``) as protocols that name only the values of :mod:`imagevol.cri`.
The kubelet side is typed by them; :class:`imagevol.runtime.Runtime` implements both."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ._values import ContainerConfig, ContainerStatus, Image, ImageFsInfo, Keyring, MountStatus, PullImageResult


@runtime_checkable
class ImageService(Protocol):
    """``runtime.v1.ImageService``: the RPCs image volumes go through (no new ones, R8.2), plus one
    imagevol extension, :meth:`garbage_collect`."""

    def pull_image(self, reference: str, keyring: Keyring | None = None) -> PullImageResult:
        """``PullImage``."""
        ...

    def image_status(self, reference: str) -> Image | None:
        """``ImageStatus``: the local image ``reference`` names, None when there is none."""
        ...

    def list_images(self) -> Sequence[Image]:
        """``ListImages``."""
        ...

    def remove_image(self, reference: str) -> Image:
        """``RemoveImage``: refused while a container mounts the image (R7.3). Returns what was
        removed (the CRI answers nothing; ``rmi`` prints it)."""
        ...

    def image_fs_info(self) -> ImageFsInfo:
        """``ImageFsInfo``: what the images take on the image filesystem."""
        ...

    def garbage_collect(self) -> int:
        """imagevol extension: one pass of the runtime's own garbage collector, which removes every
        tree and blob no image and no container references, and returns how many blobs went.
        containerd runs its collector by itself after changes; imagevol runs no daemon, so the
        kubelet's image GC starts one at its own start and after each removal."""
        ...


@runtime_checkable
class RuntimeService(Protocol):
    """``runtime.v1.RuntimeService``, container part: image volumes are mounted lazily at
    ``CreateContainer`` (R8.4) and echoed back by ``ContainerStatus`` (R7.2). :meth:`open_mount`
    is an imagevol extension for the ``exec`` view (the real kubelet never opens container files)."""

    @property
    def name(self) -> str:
        """The runtime's name (``VersionResponse.runtime_name``): the kubelet words the one
        failure it reports on the runtime's behalf (R5.8) as that runtime does."""
        ...

    def create_container(self, sandbox_id: str, config: ContainerConfig) -> ContainerStatus:
        """``CreateContainer``: every image volume of ``config`` mounted, or nothing held."""
        ...

    def remove_container(self, container_id: str) -> None:
        """``RemoveContainer``: its mounts released; an unknown ID is not an error."""
        ...

    def container_status(self, container_id: str) -> ContainerStatus | None:
        """``ContainerStatus``, None for an unknown ID."""
        ...

    def list_containers(self) -> Sequence[ContainerStatus]:
        """``ListContainers`` (each with its mounts, see :class:`ContainerStatus`)."""
        ...

    def open_mount(self, status: MountStatus) -> int:
        """imagevol extension: an ``O_PATH`` fd on what ``status`` (from a container's status)
        mounts, re-opened without following any symlink and only if it is still the very inode
        that was mounted. The caller closes it. Raises :class:`~imagevol.errors.ImageVolError`."""
        ...


@runtime_checkable
class ContainerLifecycle(Protocol):
    """``StartContainer`` and ``StopContainer`` of ``runtime.v1.RuntimeService``: only a runtime
    that runs containers for real needs them (imagevol's simulated containers run from creation)."""

    def start_container(self, container_id: str) -> None:
        """``StartContainer``: run the created container's process."""
        ...

    def stop_container(self, container_id: str, timeout: float = 10.0) -> None:
        """``StopContainer``: SIGTERM, ``timeout`` seconds of grace, then SIGKILL."""
        ...


@runtime_checkable
class ContainerRuntime(ImageService, RuntimeService, Protocol):
    """Both services, as one runtime endpoint serves them (what the image GC needs)."""
