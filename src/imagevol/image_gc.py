"""The kubelet's image garbage collector, for images used by image volumes (R7.1 to R7.3).

An image is in use when any container, running or not, reports a status mount whose image ID is the
image's (R7.1, R7.2: the runtime echoes ``Mount.image.image``). When disk usage is above the high
threshold, unused images are removed, least recently used first, until usage is below the low
threshold (``realImageGCManager.freeSpace``); an image in use is never removed. Removing an image
removes its record, its snapshot (once no mount holds it and no other image has the same layer
chain) and every blob no other image reaches.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import attrs

from .images import ImageRecord
from .runtime import Runtime

DEFAULT_HIGH = 85
DEFAULT_LOW = 80


@attrs.frozen
class GCResult:
    usage_before: int
    usage_after: int
    capacity: int
    removed: tuple[str, ...]
    kept_in_use: tuple[str, ...]
    freed_blobs: int

    def describe(self) -> str:
        def pct(used: int) -> float:
            return 100.0 * used / self.capacity if self.capacity else 0.0

        lines = [
            f"usage before: {self.usage_before} bytes ({pct(self.usage_before):.1f}% of {self.capacity})",
            f"usage after:  {self.usage_after} bytes ({pct(self.usage_after):.1f}%)",
        ]
        lines += [f"removed: {name}" for name in self.removed]
        lines += [f"in use, kept: {name}" for name in self.kept_in_use]
        return "\n".join(lines) + "\n"


def _tree_size(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue
    return total


class ImageGC:
    """Frees image storage of one node's runtime."""

    def __init__(self, runtime: Runtime, *, clock: Callable[[], float]) -> None:
        self.runtime = runtime
        self.clock = clock

    def usage(self) -> int:
        """Bytes the images take: content store blobs plus materialised snapshots."""
        store = self.runtime.resolver.store
        blobs = sum(store.size(d) for d in store.blobs())
        return blobs + _tree_size(self.runtime.snapshots.root)

    def in_use(self) -> set[str]:
        return self.runtime.images_in_use()

    def last_used(self, record: ImageRecord) -> float:
        """When a container last mounted the image, else when it was pulled."""
        times = [
            c.created_at for c in self.runtime.list_containers() for m in c.mounts if m.image_id == record.image_id
        ]
        return max(times, default=record.pulled_at)

    def collect(
        self,
        *,
        capacity: int,
        high_percent: int = DEFAULT_HIGH,
        low_percent: int = DEFAULT_LOW,
        force: bool = False,
    ) -> GCResult:
        """Free space down to ``low_percent`` of ``capacity`` once usage exceeds ``high_percent``
        (or unconditionally with ``force``: every unused image goes)."""
        if not 0 <= low_percent <= high_percent <= 100:
            raise ValueError("thresholds must satisfy 0 <= low <= high <= 100")
        before = self.usage()
        # Trees no record names any more (an image pulled over under the same name, a tree of an
        # earlier version) and no container holds take space for nothing: they go first.
        self.runtime.prune_snapshots()
        in_use = self.in_use()
        records = self.runtime.list_images()
        kept = tuple(sorted(r.name for r in records if r.image_id in in_use))
        removed: list[str] = []
        freed = 0
        if force or before * 100 > high_percent * capacity:
            target = 0 if force else low_percent * capacity // 100
            for record in sorted(
                (r for r in records if r.image_id not in in_use), key=lambda r: (self.last_used(r), r.name)
            ):
                if not force and self.usage() <= target:
                    break
                self.runtime.remove_image(record.name)
                removed.append(record.name)
                freed += len(self.runtime.resolver.store.garbage_collect())
        return GCResult(before, self.usage(), capacity, tuple(removed), kept, freed)


def filesystem_capacity(path: str) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize
