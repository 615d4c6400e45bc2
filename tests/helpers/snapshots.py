"""Images for snapshot tests: a layout holding one image of given layers, and the checks the
snapshot tests share (also run in a child process that became an unprivileged user)."""

from __future__ import annotations

import os
import stat

from imagevol.content.store import ContentStore
from imagevol.oci import Manifest
from imagevol.testing.images import Layer, LayoutBuilder
from imagevol.testing.tarbuild import TarEntry
from imagevol.trees.snapshots import SnapshotPlan, plan_for

from .layerkit import D, F, S

#: One of each kind of entry, with write bits the published tree must keep (read-only is the
#: mounts' job).
GOOD = [D("d", 0o777), F("d/f", "x", 0o666), F("exe", "#!", 0o775), S("l", "d/f"), TarEntry("p", "fifo", mode=0o666)]


def image_plan(path: str, *layers: list[TarEntry], tag: str = "t") -> tuple[ContentStore, SnapshotPlan]:
    """A layout at ``path`` with one image of ``layers``, its store and its snapshot plan."""
    b = LayoutBuilder(path)
    desc = b.add_image([Layer(tuple(layer)) for layer in layers], tag=tag)
    b.save()
    store = ContentStore(path)
    manifest = store.read_manifest(desc)
    assert isinstance(manifest, Manifest)
    return store, plan_for(store, desc.digest, manifest)


def modes(root: str) -> dict[str, int]:
    """The permission bits of every entry below ``root`` (``.`` for itself), links aside."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if not stat.S_ISLNK(st.st_mode):
                out[os.path.relpath(full, root)] = stat.S_IMODE(st.st_mode)
    out["."] = stat.S_IMODE(os.lstat(root).st_mode)
    return out
