"""A tree on disk in the shape of :func:`imagevol.testing.model.listing`, to compare the real
applier with the reference model."""

from __future__ import annotations

import os
import stat


def real_listing(root: str) -> dict[str, tuple[object, ...]]:
    """``path -> (kind, mode, payload, hardlink group)`` for everything below ``root``."""
    inodes: dict[tuple[int, int], list[str]] = {}
    entries: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st_ = os.lstat(full)
            entries[rel] = st_
            if not stat.S_ISDIR(st_.st_mode):
                inodes.setdefault((st_.st_dev, st_.st_ino), []).append(rel)
    out: dict[str, tuple[object, ...]] = {}
    for rel, st_ in sorted(entries.items()):
        full = os.path.join(root, rel)
        payload: str | bytes
        if stat.S_ISDIR(st_.st_mode):
            kind, payload = "dir", ""
        elif stat.S_ISLNK(st_.st_mode):
            kind, payload = "symlink", os.readlink(full)
        elif stat.S_ISFIFO(st_.st_mode):
            kind, payload = "fifo", ""
        else:
            with open(full, "rb") as f:
                kind, payload = "file", f.read()
        group = tuple(sorted(inodes.get((st_.st_dev, st_.st_ino), []))) if kind != "dir" else ()
        mode = None if kind == "symlink" else stat.S_IMODE(st_.st_mode)
        out[rel] = (kind, mode, payload, group if len(group) > 1 else ())
    return out
