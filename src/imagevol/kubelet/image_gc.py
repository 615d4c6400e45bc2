"""The kubelet's image garbage collector, for images used by image volumes (R7.1 to R7.3).

It talks to the runtime through the CRI only (:mod:`imagevol.cri`): ``ListImages``, ``RemoveImage``,
``ListContainers``/``ContainerStatus`` for what is in use, and ``ImageFsInfo`` for the usage of the
image filesystem, whose capacity is asked of the node (``statvfs`` of the reported mount point, as
the kubelet's stats provider does). An image is in use when any container, running or not, reports
a status mount whose image ID is the image's (R7.1, R7.2: the runtime echoes ``Mount.image.image``).
When usage is above the high threshold, unused images are removed, least recently used first, until
usage is below the low threshold (``realImageGCManager.freeSpace``); an image in use is never
removed. The runtime's own garbage collector (an imagevol extension of the CRI) then takes what no
image references any more: the image's tree, unless another image has the same layer chain or a
mount still holds it, and every blob no other image reaches.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import attrs

from ..cri import ContainerRuntime, ContainerStatus, FilesystemUsage, Image
from ..errors import ImageVolError

DEFAULT_HIGH = 85
DEFAULT_LOW = 80


@attrs.frozen
class GCResult:
    """What one image GC run did: usage before and after, what it removed and why it stopped."""

    usage_before: int
    usage_after: int
    capacity: int
    removed: tuple[str, ...]
    kept_in_use: tuple[str, ...]
    freed_blobs: int

    def describe(self) -> str:
        """The run as the ``gc`` command prints it."""

        def pct(used: int) -> float:
            return 100.0 * used / self.capacity if self.capacity else 0.0

        lines = [
            f"usage before: {self.usage_before} bytes ({pct(self.usage_before):.1f}% of {self.capacity})",
            f"usage after:  {self.usage_after} bytes ({pct(self.usage_after):.1f}%)",
        ]
        lines += [f"removed: {name}" for name in self.removed]
        lines += [f"in use, kept: {name}" for name in self.kept_in_use]
        return "\n".join(lines) + "\n"


class ImageGC:
    """Frees image storage of one node's runtime, through its CRI services."""

    def __init__(self, runtime: ContainerRuntime, *, clock: Callable[[], float]) -> None:
        self.runtime = runtime
        self.clock = clock

    def image_fs(self) -> FilesystemUsage:
        """The image filesystem's usage: the first ``ImageFsInfo`` reports, as the kubelet reads it."""
        filesystems = self.runtime.image_fs_info().image_filesystems
        if not filesystems:
            raise ImageVolError("the runtime reports no image filesystem")
        return filesystems[0]

    def usage(self) -> int:
        """Bytes the images take (``ImageFsInfo`` ``used_bytes``)."""
        return self.image_fs().used_bytes

    def capacity(self) -> int:
        """Size of the filesystem holding the image filesystem's mount point."""
        return filesystem_capacity(self.image_fs().fs_id.mountpoint)

    def in_use(self) -> set[str]:
        """Image IDs some container's status mounts."""
        return _in_use(self.runtime.list_containers())

    def last_used(self, image: Image, containers: Sequence[ContainerStatus] | None = None) -> float:
        """When a container last mounted the image, else when it was pulled."""
        if containers is None:
            containers = self.runtime.list_containers()
        times = [c.created_at for c in containers for m in c.mounts if m.image_id == image.id]
        return max(times, default=image.pulled_at)

    def collect(
        self,
        *,
        capacity: int | None = None,
        high_percent: int = DEFAULT_HIGH,
        low_percent: int = DEFAULT_LOW,
        force: bool = False,
    ) -> GCResult:
        """Free space down to ``low_percent`` of ``capacity`` (by default, the image filesystem's)
        once usage exceeds ``high_percent`` (or unconditionally with ``force``: every unused image
        goes)."""
        if not 0 <= low_percent <= high_percent <= 100:
            raise ValueError("thresholds must satisfy 0 <= low <= high <= 100")
        if capacity is None:
            capacity = self.capacity()
        before = self.usage()
        # Trees and blobs no image references any more (an image pulled over under the same name,
        # a tree of an earlier version) and no container holds take space for nothing: they go first.
        freed = self.runtime.garbage_collect()
        containers = self.runtime.list_containers()
        in_use = _in_use(containers)
        images = self.runtime.list_images()
        kept = tuple(sorted(i.reference for i in images if i.id in in_use))
        removed: list[str] = []
        if force or before * 100 > high_percent * capacity:
            target = 0 if force else low_percent * capacity // 100
            for image in sorted(
                (i for i in images if i.id not in in_use), key=lambda i: (self.last_used(i, containers), i.reference)
            ):
                if not force and self.usage() <= target:
                    break
                self.runtime.remove_image(image.reference)
                removed.append(image.reference)
                freed += self.runtime.garbage_collect()
        return GCResult(before, self.usage(), capacity, tuple(removed), kept, freed)


def _in_use(containers: Sequence[ContainerStatus]) -> set[str]:
    return {m.image_id for c in containers for m in c.mounts}


def filesystem_capacity(path: str) -> int:
    """The size in bytes of the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize
