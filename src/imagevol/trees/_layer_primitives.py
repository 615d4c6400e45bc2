"""Small fd-relative building blocks of layer application (none of them follows a symlink)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from ._inroot import READ_DIR, list_dir

T = TypeVar("T")


def create_or_replace(create: Callable[[], T], replace: Callable[[], object]) -> T:
    """Create first; only on ``EEXIST`` replace what is there (never followed) and create again:
    one syscall in the common case. ``create`` must fail on any existing name (``O_EXCL``,
    ``mkdirat``, ``symlinkat``, ``mkfifoat``), so nothing is ever written through what was there."""
    try:
        return create()
    except FileExistsError:
        replace()
        return create()


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def is_empty(dir_fd: int) -> bool:
    """Whether the directory given by a (possibly ``O_PATH``) handle has no entries."""
    fd = os.open(".", READ_DIR, dir_fd=dir_fd)
    try:
        with os.scandir(fd) as it:
            return next(it, None) is None
    finally:
        os.close(fd)


def list_dir_path(dir_fd: int) -> list[tuple[str, bool]]:
    """(name, is_dir) of a directory given by a (possibly ``O_PATH``) handle."""
    fd = os.open(".", READ_DIR, dir_fd=dir_fd)
    try:
        return list_dir(fd)
    finally:
        os.close(fd)
