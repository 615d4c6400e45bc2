"""Helpers for the lazy tests: the project's tar reader as a member reader, a test-only writer of a
closure (the real one, fd-based, belongs to the runtime integration), listings of a subtree, and
the full-pull side of every comparison."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from imagevol import lazy
from imagevol import subpath as sp
from imagevol.errors import LayerError, SubPathError
from imagevol.layers import apply_layers
from imagevol.tarstream import Member, TarReader
from imagevol.testing.tarbuild import TarEntry

Item = tuple[str, int | None, bytes, tuple[str, ...]]


def tar_members(source: Callable[[], bytes]) -> Iterator[lazy.MemberLike]:
    """The project's tar reader as a :data:`lazy.MemberReader`."""
    return iter(TarReader(source).next, None)


def chunks_of(data: bytes, size: int = 4096) -> Callable[[], bytes]:
    pieces = iter([data[i : i + size] for i in range(0, len(data), size)])
    return lambda: next(pieces, b"")


def members_of(tar: bytes) -> list[Member]:
    return list(iter(TarReader(chunks_of(tar)).next, None))


def plain_entries(tar: bytes) -> list[lazy.Entry]:
    """The index pass over a plain tar: members decoded, nothing written."""
    return lazy.entries_from_members(members_of(tar))


def vector_entries(tree: Sequence[Mapping[str, Any]]) -> list[TarEntry]:
    """A sub-path vector's tree as layer entries (parents come first in the vectors)."""
    out = []
    for e in tree:
        if e["type"] == "dir":
            out.append(TarEntry(e["path"] + "/", "dir", mode=0o755))
        elif e["type"] == "file":
            out.append(TarEntry(e["path"], "file", str(e.get("data", "")).encode(), mode=0o644))
        else:
            out.append(TarEntry(e["path"], "symlink", linkname=e["target"]))
    return out


# --- the full pull ---------------------------------------------------------------------------------


def full_pull(root: str, blobs: Sequence[bytes]) -> str:
    """Apply ``blobs`` into the new directory ``root``; the LayerError kind, or "" on success."""
    os.mkdir(root)
    os.chmod(root, 0o755)
    try:
        apply_layers(root, [io.BytesIO(b) for b in blobs])
    except LayerError as exc:
        return exc.kind
    return ""


def fd_resolve(root: str, sub_path: str, policy: str) -> tuple[str, str]:
    """The fd-based resolver's outcome: ("ok", real path) or ("error", kind)."""
    root_fd = sp.open_root(root)
    try:
        try:
            r = sp.resolve(root_fd, sub_path, sp.Policy(policy))
        except SubPathError as exc:
            return ("error", exc.kind)
        try:
            return ("ok", r.relative_path(root_fd))
        finally:
            r.close()
    finally:
        os.close(root_fd)


def index_resolve(index: lazy.MergedIndex, sub_path: str, policy: str) -> tuple[str, str]:
    try:
        res = lazy.resolve(index, sub_path, policy, follower=lazy.Follower.current())
    except SubPathError as exc:
        return ("error", exc.kind)
    return ("ok", res.path)


# --- a closure, written -------------------------------------------------------------------------------


def materialise(closure: lazy.Closure, root: str, content: Callable[[lazy.Node], bytes]) -> None:
    """Write ``closure`` below the new directory ``root`` (test-only: plain paths under a private
    temporary directory; the names come from the index, which holds no ``..`` and no absolute
    name). Hardlink groups become hardlinks, directory modes are set last, deepest first."""
    os.mkdir(root, 0o700)
    first: dict[int, str] = {}
    dirs: list[tuple[str, int]] = []
    for node in closure.nodes:
        full = root if node.path == "." else os.path.join(root, node.path)
        if node.type == "dir":
            if node.path != ".":
                os.mkdir(full, 0o700)
            dirs.append((full, node.mode))
            continue
        if node.ino in first:
            os.link(first[node.ino], full, follow_symlinks=False)
            continue
        first[node.ino] = full
        if node.type == "reg":
            data = content(node) if node.size else b""
            assert len(data) == node.size, node
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, data)
                os.fchmod(fd, node.mode)
            finally:
                os.close(fd)
        elif node.type == "symlink":
            os.symlink(node.target, full)
        elif node.type == "fifo":
            os.mkfifo(full, 0o600)
            os.chmod(full, node.mode)
        else:
            raise AssertionError(node)
    for full, mode in sorted(dirs, key=lambda d: -len(d[0])):
        os.chmod(full, mode)


def subtree(root: str, real: str) -> dict[str, Item]:
    """What a container mounting ``real`` (a symlink-free path below ``root``) sees: every entry
    by relative path (``.`` for the mount itself) as (type, mode, content or link target, the
    paths of the subtree sharing its inode)."""
    top = os.path.join(root, real) if real != "." else root
    raw: dict[str, tuple[os.stat_result, bytes]] = {}
    work = ["."]
    while work:
        rel = work.pop()
        full = top if rel == "." else os.path.join(top, rel)
        st = os.lstat(full)
        payload = b""
        if stat.S_ISREG(st.st_mode):
            with open(full, "rb") as f:
                payload = f.read()
        elif stat.S_ISLNK(st.st_mode):
            payload = os.fsencode(os.readlink(full))
        elif stat.S_ISDIR(st.st_mode):
            work.extend(name if rel == "." else f"{rel}/{name}" for name in os.listdir(full))
        raw[rel] = (st, payload)
    groups: dict[tuple[int, int], list[str]] = {}
    for rel, (st, _) in raw.items():
        if not stat.S_ISDIR(st.st_mode):
            groups.setdefault((st.st_dev, st.st_ino), []).append(rel)
    out: dict[str, Item] = {}
    for rel, (st, payload) in raw.items():
        kind = (
            "dir"
            if stat.S_ISDIR(st.st_mode)
            else "symlink"
            if stat.S_ISLNK(st.st_mode)
            else ("reg" if stat.S_ISREG(st.st_mode) else "fifo" if stat.S_ISFIFO(st.st_mode) else "other")
        )
        group = tuple(sorted(groups.get((st.st_dev, st.st_ino), []))) if kind != "dir" else ()
        mode = None if kind == "symlink" else stat.S_IMODE(st.st_mode)
        out[rel] = (kind, mode, payload, group if len(group) > 1 else ())
    return out
