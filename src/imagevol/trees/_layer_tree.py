"""The tree a layer is applied to: directories resolved in root through :mod:`imagevol._inroot`,
cached by their lexical path, and removal that keeps the cache honest.

Why nothing can be reached outside the root: every directory handed out is the result of the
in-root walk (``IN_ROOT``: an absolute symlink target restarts at the root, ``..`` pops a directory
fd and never goes above it, 40 follows at most), and every later call is an ``*at()`` call relative
to it. No host path string is ever built.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from ..errors import LayerError
from . import _inroot
from ._inroot import PATH_MAX, Policy, lstat_at
from ._remove_tree import remove_tree_at


class Tree:
    """A directory tree addressed only through fds below ``root_fd``.

    :meth:`parent` resolves a directory path in root and caches its fd by the *lexical* path (a
    bounded cache). :meth:`remove` drops the cache when it removes a directory or a symlink: a
    cached resolution may have passed through either. (A removed regular file cannot have been
    passed through.)"""

    MAX_CACHED = 256

    def __init__(self, root_fd: int, *, max_depth: int = 512) -> None:
        self.root_fd = root_fd
        self.max_depth = max_depth
        self._cache: dict[tuple[str, ...], tuple[int, tuple[str, ...]]] = {}
        #: Directory fds to close once the entry being applied is done (:meth:`end_entry`); the
        #: applier looks at it after each entry and calls :meth:`end_entry` only when it holds any.
        self.retired: list[int] = []
        #: Called as (dir fd, real path of the dir, real path of the new child) before a missing
        #: parent is created in an existing directory.
        self.on_implicit_mkdir: Callable[[int, tuple[str, ...], tuple[str, ...]], None] | None = None

    def close(self) -> None:
        """Close every cached directory fd."""
        self.invalidate()
        self.end_entry()

    def invalidate(self) -> None:
        """Forget the cached directories (their fds close after the current entry)."""
        # The fds may still be in use by the entry being applied: they are closed after it.
        self.retired.extend(fd for fd, _ in self._cache.values())
        self._cache.clear()

    def end_entry(self) -> None:
        """The entry being applied is done: close the fds :meth:`invalidate` retired."""
        if self.retired:
            for fd in self.retired:
                os.close(fd)
            self.retired.clear()

    def parent(self, parts: tuple[str, ...], *, create: bool) -> tuple[int, tuple[str, ...]] | None:
        """(fd, real path) of the directory ``parts``, resolved in root. Missing directories are
        created (0755) when ``create``; otherwise ``None`` is returned for a missing one. Raises
        ``notdir`` if a component is not a directory, ``loop`` after 40 symlinks and ``toolong``
        when the real path would be 4096 bytes or longer or deeper than ``max_depth``."""
        if not parts:
            return self.root_fd, ()
        hit = self._cache.get(parts)
        if hit is not None:
            return hit
        try:
            found = _inroot.walk(
                self.root_fd,
                parts,
                Policy.IN_ROOT,
                # The walk ends at the parent of an entry: no component is a trailing link.
                protect_trailing=False,
                directory=True,
                create_mode=0o755 if create else None,
                on_create=self._created if create else None,
                max_depth=self.max_depth,
                max_real_len=PATH_MAX,
                # The tree is a private staging directory: nobody else can rename in it.
                check_below=False,
            )
        except _inroot.WalkError as exc:
            shown = "/".join(parts)
            if exc.kind == "notfound" and not create:
                return None
            if exc.kind == "notdir":
                raise LayerError("notdir", f"{shown!r}: a parent is not a directory") from None
            if exc.kind == "loop":
                raise LayerError("loop", f"too many levels of symbolic links in {shown!r}") from None
            if exc.kind == "toolong":
                raise LayerError("toolong", f"{shown[:80]!r}... resolves to a path that is too long") from None
            raise
        if len(self._cache) >= self.MAX_CACHED:
            oldest = next(iter(self._cache))
            self.retired.append(self._cache.pop(oldest)[0])
        self._cache[parts] = found
        return found

    def _created(self, dir_fd: int, real: tuple[str, ...], name: str) -> None:
        if self.on_implicit_mkdir is not None:
            self.on_implicit_mkdir(dir_fd, real, (*real, name))

    def open_real(self, parts: tuple[str, ...]) -> int | None:
        """A readable fd on the directory at the real path ``parts``, following no symlink; None if
        it no longer exists as a directory."""
        fd = os.open(".", _inroot.READ_DIR, dir_fd=self.root_fd)
        for name in parts:
            try:
                nxt = os.open(name, _inroot.READ_DIR_NOFOLLOW, dir_fd=fd)
            except (FileNotFoundError, NotADirectoryError):
                os.close(fd)
                return None
            except OSError as exc:
                os.close(fd)
                if exc.errno == errno.ELOOP:  # replaced by a symlink
                    return None
                raise
            os.close(fd)
            fd = nxt
        return fd

    def remove(self, dir_fd: int, name: str, st: os.stat_result | None = None) -> os.stat_result | None:
        """Remove ``name`` (recursively for a directory) without following any symlink; return what
        it was (None if nothing was there)."""
        if st is None:
            st = lstat_at(dir_fd, name)
            if st is None:
                return None
        if stat.S_ISDIR(st.st_mode):
            self.invalidate()
            remove_tree_at(dir_fd, name)
        else:
            if stat.S_ISLNK(st.st_mode):
                self.invalidate()
            os.unlink(name, dir_fd=dir_fd)
        return st
