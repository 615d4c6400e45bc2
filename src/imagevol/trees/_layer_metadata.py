"""Restoring what a tar header says about an entry besides its content: owner, mode, extended
attributes, times; and the directory modes an unprivileged build defers to its end.

:func:`restore` is the one place these calls are made, for files, directories, FIFOs and symlinks
alike, in the one safe order: owner first (``chown`` clears set-id bits, so the mode comes after
it), then the mode, the ``user.*`` xattrs, and the times last.

Why it can only change the entry it was given: the entry is named by an open descriptor (a
regular open, or an ``O_PATH`` handle used through its ``/proc/self/fd`` magic link, which the
kernel resolves to that very inode), or, for a symlink, by its name in a directory fd with
``AT_SYMLINK_NOFOLLOW``. No path that a symlink could redirect is ever used.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

from ._layer_tree import Tree

#: Set-uid and set-gid: stripped from every file and directory (privilege escalation).
SETID = stat.S_ISUID | stat.S_ISGID
WRITE_BITS = 0o222
_XATTR_NAMESPACES = ("user.",)


def restore(
    entry: int | str | tuple[int, str],
    *,
    owner: tuple[int, int] | None = None,
    mode: int | None = None,
    xattrs: Mapping[str, bytes] | None = None,
    times: tuple[int, int] | None,
) -> None:
    """Set the metadata of one entry; ``None`` leaves that part as it is, except ``times``
    (atime, mtime in ns), where ``None`` means now (as for ``os.utime``).

    ``entry`` is an fd open on it (a file or a directory), the ``/proc/self/fd/N`` path of an
    ``O_PATH`` handle on it (a FIFO, a directory we hold as a handle), or ``(dir fd, name)`` of a
    symlink, which is never followed and has no mode or xattrs of its own."""
    if isinstance(entry, tuple):
        dir_fd, name = entry
        if mode is not None or xattrs:
            raise ValueError("a symlink has no mode or extended attributes of its own")
        if owner is not None:
            os.chown(name, owner[0], owner[1], dir_fd=dir_fd, follow_symlinks=False)
        if times is None:
            os.utime(name, dir_fd=dir_fd, follow_symlinks=False)
        else:
            os.utime(name, ns=times, dir_fd=dir_fd, follow_symlinks=False)
        return
    if owner is not None:
        os.chown(entry, owner[0], owner[1])
    if mode is not None:
        os.chmod(entry, mode)
    if xattrs:
        _set_xattrs(entry, xattrs)
    if times is None:
        os.utime(entry)
    else:
        os.utime(entry, ns=times)


def _set_xattrs(entry: int | str, xattrs: Mapping[str, bytes]) -> None:
    """Restore ``user.*`` extended attributes; every other namespace is dropped (security.capability
    would grant privileges, trusted.* and ACLs change access) and failures are ignored."""
    for name, value in xattrs.items():
        if name.startswith(_XATTR_NAMESPACES):
            try:
                os.setxattr(entry, name, value)
            except OSError:
                import logging  # here: only a refused xattr needs it, not every unpack

                logging.getLogger("imagevol.layers").debug("ignoring xattr %r that this filesystem refuses", name)


class BuildState:
    """What outlives one layer of a build: the modes of directories that an unprivileged builder
    must keep open to itself (owner ``rwx``) until the last layer is applied, because a later layer
    may write into them. Privileged builders (root) apply every mode at once and defer nothing."""

    def __init__(self, *, defer: bool | None = None) -> None:
        self.defer = os.geteuid() != 0 if defer is None else defer
        self.deferred: dict[tuple[str, ...], int] = {}

    def forget(self, real: tuple[str, ...]) -> None:
        """``real`` was removed: drop what was deferred for it and below it."""
        n = len(real)
        for key in [k for k in self.deferred if k[:n] == real]:
            del self.deferred[key]

    def finish(self, root_fd: int, *, strip_write: bool = False) -> None:
        """Apply the deferred modes (without write bits when ``strip_write``), deepest first, so
        that no directory is closed to us before its children are done."""
        tree = Tree(root_fd)
        for real in sorted(self.deferred, key=len, reverse=True):
            fd = tree.open_real(real)
            if fd is None:
                continue
            try:
                os.fchmod(fd, self.deferred[real] & ~(WRITE_BITS if strip_write else 0))
            finally:
                os.close(fd)
        self.deferred.clear()
