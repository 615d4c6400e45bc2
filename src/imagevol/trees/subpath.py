"""Safe sub-path resolution inside a materialised image tree (C1 in docs/requirements.md).

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
time with ``O_PATH|O_NOFOLLOW`` relative to the previous directory fd. Both follow at most 40 symlinks
(the kernel's MAXSYMLINKS). Neither ever turns a partially resolved path back into a string. Both
are :mod:`imagevol.trees._inroot`, the walker layer application uses too; this module adds the sub-path
string rules, the handle (:class:`Resolved`) and the wording of errors.
"""

from __future__ import annotations

import errno
import os
import stat

import attrs

from ..errors import SubPathError
from . import _inroot
from ._inroot import MAX_SYMLINK_FOLLOWS, NAME_MAX, PATH_DIR, PATH_MAX, Backend, Policy, reopen_beneath

__all__ = [
    "KINDS",
    "MAX_SYMLINK_FOLLOWS",
    "MESSAGES",
    "NAME_MAX",
    "PATH_MAX",
    "Backend",
    "Policy",
    "Resolved",
    "is_whole_volume",
    "lookup",
    "open_root",
    "relative_path",
    "reopen_beneath",
    "resolve",
    "validate",
]

#: Error classes of ``src/imagevol/testing/data/subpath.json`` plus two for what the vectors do not cover: the
#: walker's kinds, ``invalid`` for the string rules, ``failed`` for an errno that says nothing.
KINDS = ("invalid", *_inroot.KINDS, "failed")

#: Go's strerror wording (what upstream runtimes print), by kind.
MESSAGES = {
    "invalid": "invalid sub path",
    "escape": "path escapes from parent",
    "notfound": "no such file or directory",
    "notdir": "not a directory",
    "loop": "too many levels of symbolic links",
    "toolong": "file name too long",
    "denied": "permission denied",
}

_KIND_ERRNO = {"invalid": "EINVAL", **{kind: errno.errorcode[code] for kind, code in _inroot.KIND_ERRNO.items()}}


def _error(kind: str, shown: str, detail: str = "") -> SubPathError:
    msg = MESSAGES.get(kind, kind)
    return SubPathError(kind, f"openat {shown}: {msg}{': ' + detail if detail else ''}", _KIND_ERRNO.get(kind, ""))


def _os_error(exc: OSError, shown: str) -> SubPathError:
    code = exc.errno or 0
    kind = _inroot.errno_kind(code)
    if kind is None:
        return SubPathError("failed", f"openat {shown}: {os.strerror(code).lower()}", errno.errorcode.get(code, ""))
    return SubPathError(kind, f"openat {shown}: {MESSAGES[kind]}", errno.errorcode.get(code, ""))


def _not_below() -> SubPathError:
    return SubPathError("escape", "resolved handle is outside the volume root", "EXDEV")


# --- validation ------------------------------------------------------------------------------------


def validate(sub_path: str) -> str:
    """Check ``sub_path`` before any I/O (C1.1) and return it unchanged.

    Absolute paths, ``..`` elements and NUL are ``invalid``; an element over 255 bytes or a path of
    4096 bytes or more is ``toolong``. Names are raw bytes: no normalisation, ``\\`` is a character.
    """
    short = len(sub_path) <= NAME_MAX and sub_path.isascii()
    if short and sub_path[:1] != "/" and ".." not in sub_path and "\x00" not in sub_path:
        return sub_path  # decided without splitting: no element can be too long or be ".."
    if "\x00" in sub_path:
        raise _error("invalid", sub_path.replace("\x00", "\\x00"), "contains NUL")
    if sub_path[:1] == "/":
        raise _error("invalid", sub_path, "must be a relative path")
    elements = sub_path.split("/")
    if ".." in elements:
        raise _error("invalid", sub_path, "must not contain '..'")
    if sub_path.isascii():
        too_long = len(sub_path) >= PATH_MAX or max(map(len, elements)) > NAME_MAX
    else:
        too_long = len(os.fsencode(sub_path)) >= PATH_MAX or any(len(os.fsencode(e)) > NAME_MAX for e in elements)
    if too_long:
        raise _error("toolong", sub_path[:64] + ("..." if len(sub_path) > 64 else ""))
    return sub_path


def is_whole_volume(sub_path: str) -> bool:
    """Empty, ``.`` or anything that cleans to ``.`` means the whole volume, as in Kubernetes."""
    return all(e in ("", ".") for e in sub_path.split("/"))


# --- results -------------------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Resolved:
    """An open ``O_PATH`` handle on the resolved entry. The caller owns ``fd`` and closes it.
    ``path`` and ``policy`` are what was resolved (used only to recover the real path when the
    kernel cannot print it, see :meth:`relative_path`)."""

    fd: int
    is_dir: bool
    dev: int
    ino: int
    path: str = "."
    policy: Policy = Policy.BENEATH

    @property
    def proc_path(self) -> str:
        """The magic link that names exactly this handle (for mount(2) and re-opening)."""
        return f"/proc/self/fd/{self.fd}"

    def relative_path(self, root_fd: int) -> str:
        """The entry's real path below ``root_fd`` (``.`` for the root), free of symlinks; for
        display and for :func:`reopen_beneath`. Raises ``escape`` if it is not below the root.

        The kernel prints a handle's path from ``/`` and gives up at PATH_MAX: a legal sub path
        under a tree that itself lies deep on the host gets ``ENAMETOOLONG`` there. Then the path
        is recovered by walking the same path again in userspace, remembering the names of the
        entries it opens, and accepted only if that walk ends on this very inode; a real path of
        PATH_MAX or more (it could not be re-opened anyway) is ``toolong``."""
        try:
            return relative_path(root_fd, self.fd)
        except SubPathError as exc:
            if exc.errno_name != "ENAMETOOLONG":
                raise
        fd, names = _walk(root_fd, self.path, self.policy, self.path)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if (st.st_dev, st.st_ino) != (self.dev, self.ino):
            raise SubPathError("escape", "the resolved entry was moved while its path was read back", "EXDEV")
        real = "/".join(names) or "."
        if len(os.fsencode(real)) >= PATH_MAX:
            raise _error("toolong", real[:64] + "...")
        return real

    def close(self) -> None:
        """Close the resolved fd."""
        os.close(self.fd)


def relative_path(root_fd: int, fd: int) -> str:
    """Where ``fd`` is now, relative to ``root_fd``, read back from the kernel and checked to lie
    under it (libpathrs ``check_current``). Only ever used for display and containment checks.
    Raises ``SubPathError``: ``escape`` when it is not below the root, ``toolong`` (errno name
    ``ENAMETOOLONG``) when the kernel cannot print a path of PATH_MAX bytes or more."""
    try:
        return _inroot.path_below(root_fd, fd)
    except _inroot.NotBelowError:
        raise _not_below() from None
    except OSError as exc:
        raise _os_error(exc, "resolved handle") from None


def open_root(path: str) -> int:
    """Open a tree root as the anchor of resolutions."""
    return os.open(path, PATH_DIR)


# --- resolution --------------------------------------------------------------------------------------


def resolve(
    root_fd: int,
    sub_path: str,
    policy: Policy = Policy.BENEATH,
    backend: Backend = Backend.AUTO,
) -> Resolved:
    """Resolve ``sub_path`` below the directory ``root_fd`` and return an ``O_PATH`` handle.

    The final component is followed (Kubernetes semantics); the result may be a directory or any
    other file type, the caller decides what it accepts. Errors are ``SubPathError`` with ``kind``
    in :data:`KINDS`. The empty path is the root itself."""
    validate(sub_path)
    return lookup(root_fd, sub_path or ".", policy, backend, shown=sub_path)


def lookup(
    root_fd: int,
    path: str,
    policy: Policy = Policy.BENEATH,
    backend: Backend = Backend.AUTO,
    *,
    shown: str | None = None,
) -> Resolved:
    """Resolve ``path`` below ``root_fd`` without the sub-path string rules: ``..`` and a leading
    ``/`` are allowed and scoped by ``policy`` exactly like a symlink target would be (the
    container view resolves paths typed by a user this way). The empty path is the root."""
    shown = path if shown is None else shown
    path = path or "."
    try:
        fd = _inroot.open_entry(root_fd, path, policy, backend)
    except _inroot.NotBelowError:
        raise _not_below() from None
    except OSError as exc:
        raise _os_error(exc, shown) from None
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    return Resolved(fd, stat.S_ISDIR(st.st_mode), st.st_dev, st.st_ino, path, policy)


def _walk(root_fd: int, path: str, policy: Policy, shown: str) -> tuple[int, tuple[str, ...]]:
    """The userspace walk with the names it opened, its errors worded for sub paths."""
    try:
        return _inroot.walk(root_fd, path, policy)
    except _inroot.NotBelowError:
        raise _not_below() from None
    except OSError as exc:
        raise _os_error(exc, shown) from None
