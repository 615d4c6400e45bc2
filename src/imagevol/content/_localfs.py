"""The local disk as the content store and OCI layouts see a filesystem: the few fsspec methods they
call, made directly with :mod:`os`.

A store or layout on the local disk (every node the CLI builds) does not need fsspec, whose import
(with asyncio, which it brings) costs about as much as starting the interpreter; fsspec is imported
only by a caller that hands in a filesystem of its own (``NodeConfig.content_fs``, a memory
filesystem in tests). Each method keeps the fsspec behaviour the callers rely on: errors are the
``OSError`` subclasses fsspec's local filesystem raises (``FileNotFoundError`` for a missing file,
which callers catch), :meth:`LocalFiles.ls` names entries by their full path, and :meth:`LocalFiles.mv`
is a rename (atomic within the store, which keeps its temporary files on the same filesystem).
"""

from __future__ import annotations

import os
import shutil
from typing import IO, Any


class LocalFiles:
    """The local disk, through the subset of fsspec's ``AbstractFileSystem`` API that
    :class:`~imagevol.content.store.ContentStore` and the OCI layout source use."""

    #: What fsspec's local filesystem calls itself (the store checks for ``file``).
    protocol = ("file", "local")

    def open(self, path: str, mode: str = "rb") -> IO[Any]:
        """Open ``path`` (the caller closes it)."""
        return open(path, mode)

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists (a dangling link does not, as with ``os.path.exists``)."""
        return os.path.exists(path)

    def isdir(self, path: str) -> bool:
        """Whether ``path`` is a directory."""
        return os.path.isdir(path)

    def size(self, path: str) -> int:
        """The size of the file ``path`` in bytes; ``FileNotFoundError`` if there is none."""
        return os.stat(path).st_size

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        """Create ``path`` and its missing parents."""
        os.makedirs(path, exist_ok=exist_ok)

    def ls(self, path: str, detail: bool = False) -> list[str]:
        """The full paths of the entries of the directory ``path`` (names only: ``detail`` must
        be False)."""
        if detail:
            raise ValueError("LocalFiles.ls lists names only")
        return [os.path.join(path, name) for name in os.listdir(path)]

    def mv(self, source: str, destination: str) -> None:
        """Rename ``source`` to ``destination``, replacing it (one rename: readers see the old
        file or the new one, never part of one)."""
        os.replace(source, destination)

    def rm(self, path: str, recursive: bool = False) -> None:
        """Remove the file ``path`` (a directory and what it holds with ``recursive``; a link is
        removed, never followed)."""
        if recursive and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
