"""Canonical listings of a materialised tree, to compare imagevol with a peer (``umoci raw unpack``).

One line per entry below the root: type, mode, uid:gid, mtime, content hash or link target and the
hardlink group (the first path, in sorted order, that shares the inode). Nothing is followed.
"""

from __future__ import annotations

import hashlib
import os
import stat

import attrs

_TYPES = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "file",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
    stat.S_IFSOCK: "socket",
}


@attrs.frozen
class Item:
    """One entry of a tree listing: type, mode, owner, size, content digest, link target."""

    path: str
    type: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    sha256: str = ""
    target: str = ""
    hardlink_of: str = ""

    def line(self) -> str:
        """The entry as one line of :func:`render`."""
        extra = self.sha256[:16] if self.type == "file" else self.target
        link = f" hl={self.hardlink_of}" if self.hardlink_of else ""
        return f"{self.path} {self.type} {self.mode:04o} {self.uid}:{self.gid} {self.mtime_ns} {extra}{link}"


def _sha256(dir_fd: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        h = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
        return h.hexdigest()
    finally:
        os.close(fd)


def listing(root: str) -> dict[str, Item]:
    """Every entry below ``root`` by relative path (directories walked by fd, links not followed)."""
    raw: list[tuple[str, os.stat_result, str, str]] = []
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    stack: list[tuple[int, str]] = [(root_fd, "")]
    try:
        while stack:
            dir_fd, rel = stack.pop()
            try:
                with os.scandir(dir_fd) as it:
                    names = sorted(e.name for e in it)
                for name in names:
                    path = f"{rel}/{name}" if rel else name
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    digest = target = ""
                    if stat.S_ISREG(st.st_mode):
                        digest = _sha256(dir_fd, name)
                    elif stat.S_ISLNK(st.st_mode):
                        target = os.readlink(name, dir_fd=dir_fd)
                    elif stat.S_ISDIR(st.st_mode):
                        sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                        stack.append((sub, path))
                    raw.append((path, st, digest, target))
            finally:
                if dir_fd != root_fd:
                    os.close(dir_fd)
    finally:
        for fd, _ in stack:
            if fd != root_fd:
                os.close(fd)
        os.close(root_fd)
    raw.sort(key=lambda r: r[0])
    first_of_inode: dict[tuple[int, int], str] = {}
    out: dict[str, Item] = {}
    for path, st, digest, target in raw:
        hl = ""
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            hl = first_of_inode.setdefault(key, path)
            if hl == path:
                hl = ""
        out[path] = Item(
            path=path,
            type=_TYPES.get(stat.S_IFMT(st.st_mode), "other"),
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            mtime_ns=st.st_mtime_ns,
            sha256=digest,
            target=target,
            hardlink_of=hl,
        )
    return out


def render(items: dict[str, Item]) -> str:
    """A listing as text, one line per path in sorted order."""
    return "\n".join(items[p].line() for p in sorted(items))
