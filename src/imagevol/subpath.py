"""Safe sub-path resolution inside a materialised image tree (safe-paths.md C1).

The result of a resolution is an ``O_PATH`` file descriptor, never a string: callers mount or reopen
through ``/proc/self/fd/N``. Re-joining a checked string and opening it later is exactly the
CVE-2017-1002101 / CVE-2021-25741 pattern (check, then a symlink is swapped in, then use).

Two policies:

* ``BENEATH`` (containerd, kubelet): a symlink that is absolute or climbs above the root is an
  ``escape`` error, even if re-rooting would land inside.
* ``IN_ROOT`` (CRI-O, pathrs): absolute links are re-rooted at the tree root and ``..`` is clamped
  there, so the walk can never leave the tree either.

Two backends with identical results: the kernel (``openat2`` with ``RESOLVE_BENEATH`` or
``RESOLVE_IN_ROOT``, plus ``RESOLVE_NO_MAGICLINKS``) and a userspace walk that opens one component at a
time with ``O_PATH|O_NOFOLLOW`` relative to the previous directory fd. Neither ever turns a
partially resolved path back into a string.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from collections import deque

import attrs

from . import _openat2
from ._openat2 import O_PATH
from .errors import SubPathError

#: The kernel's MAXSYMLINKS: both backends give up after this many symlink follows.
MAX_SYMLINK_FOLLOWS = 40
PATH_MAX = 4096
NAME_MAX = 255


class Policy(enum.Enum):
    BENEATH = "beneath"
    IN_ROOT = "in_root"


class Backend(enum.Enum):
    AUTO = "auto"
    KERNEL = "kernel"
    USERSPACE = "userspace"


_MESSAGES = {
    "invalid": "invalid sub path",
    "escape": "path escapes from parent",
    "notfound": "no such file or directory",
    "notdir": "not a directory",
    "loop": "too many levels of symbolic links",
    "toolong": "file name too long",
}


def _error(kind: str, sub_path: str, detail: str = "") -> SubPathError:
    msg = _MESSAGES[kind] if not detail else f"{_MESSAGES[kind]}: {detail}"
    return SubPathError(kind, f"openat {sub_path}: {msg}")


def validate(sub_path: str) -> str:
    """Check ``sub_path`` before any I/O (C1.1) and return it unchanged.

    Absolute paths, ``..`` elements and NUL are ``invalid``; an element over 255 bytes or a path of
    4096 bytes or more is ``toolong``. Names are raw bytes: no normalisation, ``\\`` is a character.
    """
    if "\x00" in sub_path:
        raise _error("invalid", "?", "contains NUL")
    if sub_path.startswith("/"):
        raise _error("invalid", sub_path, "must be a relative path")
    elements = sub_path.split("/")
    if ".." in elements:
        raise _error("invalid", sub_path, "must not contain '..'")
    raw = os.fsencode(sub_path)
    if len(raw) >= PATH_MAX or any(len(os.fsencode(e)) > NAME_MAX for e in elements):
        raise _error("toolong", sub_path[:64] + ("..." if len(sub_path) > 64 else ""))
    return sub_path


def is_whole_volume(sub_path: str) -> bool:
    """Empty, ``.`` or anything that cleans to ``.`` means the whole volume, as in Kubernetes."""
    return all(e in ("", ".") for e in sub_path.split("/"))


@attrs.frozen
class Resolved:
    """An open ``O_PATH`` handle on the resolved entry. The caller owns ``fd`` and closes it."""

    fd: int
    is_dir: bool
    #: The entry's real path relative to the root (``.`` for the root), for display and for
    #: re-opening later with ``RESOLVE_NO_SYMLINKS`` (it contains no symlinks).
    real_path: str

    def close(self) -> None:
        os.close(self.fd)


def resolve(
    root_fd: int,
    sub_path: str,
    policy: Policy = Policy.BENEATH,
    backend: Backend = Backend.AUTO,
) -> Resolved:
    """Resolve ``sub_path`` below the directory ``root_fd`` and return an ``O_PATH`` handle.

    The final component is followed (Kubernetes semantics); the result may be a directory or any
    other file type, the caller decides what it accepts. Errors are ``SubPathError`` with ``kind``
    in invalid, escape, notfound, notdir, loop, toolong."""
    validate(sub_path)
    if backend is Backend.AUTO:
        backend = Backend.KERNEL if _openat2.available() else Backend.USERSPACE
    if backend is Backend.KERNEL:
        fd = _resolve_kernel(root_fd, sub_path, policy)
    else:
        fd = _resolve_userspace(root_fd, sub_path, policy)
    try:
        st = os.fstat(fd)
        real = _real_path(root_fd, fd)
    except BaseException:
        os.close(fd)
        raise
    return Resolved(fd, stat.S_ISDIR(st.st_mode), real)


_ERRNO_KIND = {
    errno.EXDEV: "escape",
    errno.ELOOP: "loop",
    errno.ENOENT: "notfound",
    errno.ENOTDIR: "notdir",
    errno.ENAMETOOLONG: "toolong",
}


def _resolve_kernel(root_fd: int, sub_path: str, policy: Policy) -> int:
    scope = _openat2.RESOLVE_BENEATH if policy is Policy.BENEATH else _openat2.RESOLVE_IN_ROOT
    path = sub_path if sub_path else "."
    try:
        return _openat2.openat2(root_fd, path, O_PATH, scope | _openat2.RESOLVE_NO_MAGICLINKS)
    except OSError as exc:
        kind = _ERRNO_KIND.get(exc.errno or 0)
        if kind is None:
            raise SubPathError("notfound", f"openat {sub_path}: {os.strerror(exc.errno or 0).lower()}") from None
        raise _error(kind, sub_path) from None


def _resolve_userspace(root_fd: int, sub_path: str, policy: Policy) -> int:
    """Walk one component at a time. Invariant: every fd on ``stack`` is an ``O_PATH`` handle on a
    directory that was reached from ``root_fd`` without leaving it, so ``..`` is a pop (never a
    lookup of ``..`` in the filesystem, which could climb out through a moved directory) and the
    root is ``stack[0]``."""
    stack = [os.open(".", O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)]
    pending: deque[str] = deque(sub_path.split("/"))
    follows = 0
    result: int | None = None
    try:
        while pending:
            name = pending.popleft()
            if result is not None:
                # Something follows a non-directory (`file/`, `file/.`, `file/x`).
                raise _error("notdir", sub_path)
            if name in ("", "."):
                continue
            if name == "..":
                if len(stack) == 1:
                    if policy is Policy.BENEATH:
                        raise _error("escape", sub_path)
                    continue  # IN_ROOT: `..` at the root stays at the root
                os.close(stack.pop())
                continue
            try:
                fd = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
            except OSError as exc:
                raise _error(_ERRNO_KIND.get(exc.errno or 0, "notfound"), sub_path) from None
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                try:
                    target = os.readlink("", dir_fd=fd)  # readlinkat(fd, ""): no second lookup
                finally:
                    os.close(fd)
                follows += 1
                if follows > MAX_SYMLINK_FOLLOWS:
                    raise _error("loop", sub_path)
                if not target:
                    raise _error("notfound", sub_path)
                if target.startswith("/"):
                    if policy is Policy.BENEATH:
                        raise _error("escape", sub_path)
                    while len(stack) > 1:
                        os.close(stack.pop())
                pending.extendleft(reversed(target.split("/")))
                continue
            if stat.S_ISDIR(mode):
                stack.append(fd)
            else:
                result = fd
        if result is not None:
            return result
        return os.dup(stack[-1])
    except BaseException:
        if result is not None:
            os.close(result)
        raise
    finally:
        for fd in stack:
            os.close(fd)


def _real_path(root_fd: int, fd: int) -> str:
    """The path of ``fd`` relative to the root, read back from the kernel and checked to lie
    under the root (libpathrs ``check_current``)."""
    root = os.readlink(f"/proc/self/fd/{root_fd}")
    here = os.readlink(f"/proc/self/fd/{fd}")
    if here == root:
        return "."
    prefix = root.rstrip("/") + "/"
    if not here.startswith(prefix):
        raise SubPathError("escape", "resolved handle is outside the volume root")
    return here[len(prefix) :]


def open_root(path: str) -> int:
    """Open a tree root as the anchor of resolutions."""
    return os.open(path, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def reopen_beneath(root_fd: int, real_path: str) -> int:
    """Re-open a ``real_path`` recorded by :func:`resolve`. It contains no symlinks, so the lookup
    refuses any (``RESOLVE_NO_SYMLINKS``): if somebody swapped a component since, this fails
    instead of following it."""
    path = real_path or "."
    if _openat2.available():
        return _openat2.openat2(root_fd, path, O_PATH, _openat2.RESOLVE_BENEATH | _openat2.RESOLVE_NO_SYMLINKS)
    fd = os.open(".", O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)
    for name in path.split("/"):
        if name in ("", "."):
            continue
        nxt = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        os.close(fd)
        if stat.S_ISLNK(os.fstat(nxt).st_mode):
            os.close(nxt)
            raise OSError(errno.ELOOP, "symlink in a recorded path", real_path)
        fd = nxt
    return fd
