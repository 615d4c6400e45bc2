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
from imagevol.errors import LayerError, SubPathError, ValidationError
from imagevol.node import Node
from imagevol.testing.images import Layer, LayoutBuilder
from imagevol.testing.lazy_layers import LazyLayer, add_lazy_image, estargz_layer, zstd_chunked_layer
from imagevol.testing.tarbuild import TarEntry
from imagevol.trees import subpath as sp
from imagevol.trees._tarstream import Member, TarReader
from imagevol.trees.layers import apply_layers

from .fixture_node import PREFIX
from .pods import make_pod

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


def _open_dir(root_fd: int, path: str) -> int:
    """A directory fd for the symlink-free real path ``path`` below ``root_fd``, one component at
    a time (paths of up to 4095 bytes below a temporary directory exceed PATH_MAX as strings)."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=root_fd)
    for name in [] if path == "." else path.split("/"):
        nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        os.close(fd)
        fd = nxt
    return fd


def materialise(closure: lazy.Closure, root: str, content: Callable[[lazy.Node], bytes]) -> None:
    """Write ``closure`` below the new directory ``root`` (test-only; the runtime's writer is fd-
    based over the in-root walker). Hardlink groups become hardlinks, directory modes are set last,
    deepest first."""
    os.mkdir(root, 0o700)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    first: dict[int, tuple[str, str]] = {}
    dirs: list[tuple[str, int]] = []
    try:
        for node in closure.nodes:
            if node.type == "dir" and node.path == ".":
                dirs.append((".", node.mode))
                continue
            parent, _, name = node.path.rpartition("/")
            dfd = _open_dir(root_fd, parent or ".")
            try:
                _write(node, dfd, name, first, dirs, root_fd, content)
            finally:
                os.close(dfd)
        for path, mode in sorted(dirs, key=lambda d: -len(d[0])):
            fd = _open_dir(root_fd, path)
            try:
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)


def _write(
    node: lazy.Node,
    dfd: int,
    name: str,
    first: dict[int, tuple[str, str]],
    dirs: list[tuple[str, int]],
    root_fd: int,
    content: Callable[[lazy.Node], bytes],
) -> None:
    if node.type == "dir":
        os.mkdir(name, 0o700, dir_fd=dfd)
        dirs.append((node.path, node.mode))
        return
    if node.ino in first:
        parent, base = first[node.ino]
        src = _open_dir(root_fd, parent)
        try:
            os.link(base, name, src_dir_fd=src, dst_dir_fd=dfd, follow_symlinks=False)
        finally:
            os.close(src)
        return
    parent, _, base = node.path.rpartition("/")
    first[node.ino] = (parent or ".", base)
    if node.type == "reg":
        data = content(node) if node.size else b""
        assert len(data) == node.size, node
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
        try:
            os.write(fd, data)
            os.fchmod(fd, node.mode)
        finally:
            os.close(fd)
    elif node.type == "symlink":
        os.symlink(node.target, name, dir_fd=dfd)
    elif node.type == "fifo":
        os.mkfifo(name, 0o600, dir_fd=dfd)
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK, dir_fd=dfd)
        try:
            os.fchmod(fd, node.mode)
        finally:
            os.close(fd)
    else:
        raise AssertionError(node)


def subtree(root: str, real: str) -> dict[str, Item]:
    """What a container mounting ``real`` (a symlink-free path below ``root``) sees: every entry
    by relative path (``.`` for the mount itself) as (type, mode, content or link target, the
    paths of the subtree sharing its inode)."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        parent, _, base = real.rpartition("/")
        if real == ".":
            parent, base = "", "."
        top = _open_dir(root_fd, parent or ".")
    finally:
        os.close(root_fd)
    raw: dict[str, tuple[os.stat_result, bytes]] = {}
    try:
        _collect(top, base, ".", raw)
    finally:
        os.close(top)
    groups: dict[tuple[int, int], list[str]] = {}
    for rel, (st, _) in raw.items():
        if not stat.S_ISDIR(st.st_mode):
            groups.setdefault((st.st_dev, st.st_ino), []).append(rel)
    out: dict[str, Item] = {}
    for rel, (st, payload) in raw.items():
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "other")
        group = tuple(sorted(groups.get((st.st_dev, st.st_ino), []))) if kind != "dir" else ()
        mode = None if kind == "symlink" else stat.S_IMODE(st.st_mode)
        out[rel] = (kind, mode, payload, group if len(group) > 1 else ())
    return out


_KINDS = {stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFREG: "reg", stat.S_IFIFO: "fifo"}


def _collect(dfd: int, name: str, rel: str, raw: dict[str, tuple[os.stat_result, bytes]]) -> None:
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    payload = b""
    if stat.S_ISREG(st.st_mode):
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
        with os.fdopen(fd, "rb") as f:
            payload = f.read()
    elif stat.S_ISLNK(st.st_mode):
        payload = os.fsencode(os.readlink(name, dir_fd=dfd))
    raw[rel] = (st, payload)
    if stat.S_ISDIR(st.st_mode):
        sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
        try:
            for child in os.listdir(sub):
                _collect(sub, child, child if rel == "." else f"{rel}/{child}", raw)
        finally:
            os.close(sub)


# --- through a real node -------------------------------------------------------------------------------

View = dict[str, tuple[str, int | None, bytes, tuple[str, ...], int | None]]


def view_of(fd: int) -> View:
    """What a container sees below the ``O_PATH`` handle ``fd`` of a mount (``Runtime.open_mount``,
    what the exec view reads through): every entry by relative path as (type, mode, content or
    link target, the paths sharing its inode, the modification time of files and links)."""
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "other")
        if kind != "reg":  # a sub path naming a FIFO (or a device): never opened, it could block forever
            return {".": (kind, stat.S_IMODE(st.st_mode), b"", (), None)}
        with open(f"/proc/self/fd/{fd}", "rb") as f:
            return {".": ("reg", stat.S_IMODE(st.st_mode), f.read(), (), st.st_mtime_ns)}
    top = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    raw: dict[str, tuple[os.stat_result, bytes]] = {}
    try:
        raw["."] = (os.fstat(top), b"")
        for child in os.listdir(top):
            _collect(top, child, child, raw)
    finally:
        os.close(top)
    groups: dict[tuple[int, int], list[str]] = {}
    for rel, (st_, _) in raw.items():
        if not stat.S_ISDIR(st_.st_mode):
            groups.setdefault((st_.st_dev, st_.st_ino), []).append(rel)
    out: View = {}
    for rel, (st_, payload) in raw.items():
        kind = _KINDS.get(stat.S_IFMT(st_.st_mode), "other")
        group = tuple(sorted(groups.get((st_.st_dev, st_.st_ino), []))) if kind != "dir" else ()
        mode = None if kind == "symlink" else stat.S_IMODE(st_.st_mode)
        when = st_.st_mtime_ns if kind in ("reg", "symlink") else None
        out[rel] = (kind, mode, payload, group if len(group) > 1 else (), when)
    return out


# --- through the real node ---------------------------------------------------------------------------


def layer_of(entries: Sequence[TarEntry], fmt: str) -> LazyLayer | Layer:
    if fmt == "zstd:chunked":
        return zstd_chunked_layer(entries, chunk_size=4096)
    if fmt == "zstd:chunked-legacy":
        return zstd_chunked_layer(entries, dialect="legacy")
    if fmt == "estargz":
        return estargz_layer(entries, chunk_size=4096)
    return Layer(tuple(entries), fmt)


def write_layout(path: str, layers: Sequence[LazyLayer | Layer], tag: str = "img") -> None:
    builder = LayoutBuilder(path)
    add_lazy_image(builder, layers, tag=tag)
    builder.save()


Outcome = tuple[str, str, View | None]


def mount(node: Node, sub_path: str, name: str = "p", tag: str = "img") -> Outcome:
    """Run a Pod mounting ``sub_path`` of the image; (state, message, what the container sees)."""
    try:
        pod = make_pod(name, [("v", f"{PREFIX}:{tag}", "IfNotPresent")], [("v", "/v", sub_path)])
        record = node.create_pod(pod)
    except ValidationError as exc:
        return "invalid", str(exc), None
    state = record.containers[0]
    if state.state != "running":
        return state.state, state.message, None
    status = node.runtime.container_status(state.container_id)
    assert status is not None
    fd = node.runtime.open_mount(status.mounts[0])
    try:
        return "running", "", view_of(fd)
    finally:
        os.close(fd)


def mount_status(node: Node, name: str = "p") -> Any:
    state = node.get_pod(name).containers[0]
    status = node.runtime.container_status(state.container_id)
    assert status is not None
    return status.mounts[0]
