"""Removing a tree below a directory fd, whatever its modes, without following any symlink.

Why nothing outside is touched: every call is relative to a directory fd opened with
``O_NOFOLLOW`` (a symlink is unlinked as itself, never entered), names come from listing the
directory itself, and the walk down is iterative with its fds on an explicit stack, so a tree
nested thousands of levels deep is removed without recursion.
"""

from __future__ import annotations

import os
import stat

from ._inroot import PATH_DIR_NOFOLLOW, READ_DIR, READ_DIR_NOFOLLOW, list_dir, lstat_at


def _open_dir_for_removal(dir_fd: int, name: str) -> int:
    try:
        return os.open(name, READ_DIR_NOFOLLOW, dir_fd=dir_fd)
    except PermissionError:
        # A directory without read/search permission (mode 0000 in a layer): make it ours first.
        # chmod goes through an O_PATH|O_NOFOLLOW handle, so it acts on this very inode.
        pfd = os.open(name, PATH_DIR_NOFOLLOW, dir_fd=dir_fd)
        try:
            os.chmod(f"/proc/self/fd/{pfd}", 0o700)
        finally:
            os.close(pfd)
        return os.open(name, READ_DIR_NOFOLLOW, dir_fd=dir_fd)


def _removal_frame(dir_fd: int, name: str) -> tuple[int, str, list[tuple[str, bool]]]:
    fd = _open_dir_for_removal(dir_fd, name)
    try:
        if os.fstat(fd).st_mode & 0o700 != 0o700:
            os.fchmod(fd, 0o700)  # we own it (or are root): let us list and unlink in it
        return fd, name, list_dir(fd)
    except BaseException:
        os.close(fd)
        raise


def remove_tree_at(dir_fd: int, name: str) -> None:
    """Remove the directory ``name`` below ``dir_fd`` and everything in it, iteratively (a layer can
    nest 2000 levels deep), with fd-relative calls only: no symlink is ever followed, so nothing
    outside is touched; modes that forbid it are lifted first."""
    # Each frame: (fd of a directory being emptied, its name, entries still to remove).
    frames: list[tuple[int, str, list[tuple[str, bool]]]] = []
    try:
        frames.append(_removal_frame(dir_fd, name))
        while frames:
            fd, dname, entries = frames[-1]
            if entries:
                child, is_dir = entries.pop()
                if is_dir:
                    frames.append(_removal_frame(fd, child))
                else:
                    os.unlink(child, dir_fd=fd)
                continue
            frames.pop()
            os.close(fd)
            os.rmdir(dname, dir_fd=frames[-1][0] if frames else dir_fd)
    finally:
        for fd, _, _ in frames:
            os.close(fd)


def rmtree(path: str) -> None:
    """Remove a tree we own (a snapshot or staging directory), whatever its modes."""
    parent, name = os.path.split(os.path.abspath(path))
    pfd = os.open(parent, READ_DIR)
    try:
        st = lstat_at(pfd, name)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            remove_tree_at(pfd, name)
        else:
            os.unlink(name, dir_fd=pfd)
    finally:
        os.close(pfd)
