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
time with ``O_PATH|O_NOFOLLOW`` relative to the previous directory fd. Both follow at most 40 symlinks
(the kernel's MAXSYMLINKS). Neither ever turns a partially resolved path back into a string.
"""

from __future__ import annotations

import enum
import errno
import functools
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

_DIR_FLAGS = O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_NOFOLLOW_FLAGS = O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class Policy(enum.Enum):
    BENEATH = "beneath"
    IN_ROOT = "in_root"


class Backend(enum.Enum):
    AUTO = "auto"
    KERNEL = "kernel"
    USERSPACE = "userspace"


#: Error classes of ``vectors/subpath.json`` plus two for what the vectors do not cover.
KINDS = ("invalid", "escape", "notfound", "notdir", "loop", "toolong", "denied", "failed")

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

_ERRNO_KIND = {
    errno.EXDEV: "escape",
    errno.ELOOP: "loop",
    errno.ENOENT: "notfound",
    errno.ENOTDIR: "notdir",
    errno.ENAMETOOLONG: "toolong",
    errno.EACCES: "denied",
    errno.EPERM: "denied",
}


_KIND_ERRNO = {
    "invalid": "EINVAL",
    "escape": "EXDEV",
    "notfound": "ENOENT",
    "notdir": "ENOTDIR",
    "loop": "ELOOP",
    "toolong": "ENAMETOOLONG",
    "denied": "EACCES",
}


def _error(kind: str, shown: str, detail: str = "") -> SubPathError:
    msg = MESSAGES.get(kind, kind)
    return SubPathError(kind, f"openat {shown}: {msg}{': ' + detail if detail else ''}", _KIND_ERRNO.get(kind, ""))


def _os_error(exc: OSError, shown: str) -> SubPathError:
    code = exc.errno or 0
    kind = _ERRNO_KIND.get(code)
    if kind is None:
        return SubPathError("failed", f"openat {shown}: {os.strerror(code).lower()}", errno.errorcode.get(code, ""))
    return SubPathError(kind, f"openat {shown}: {MESSAGES[kind]}", errno.errorcode.get(code, ""))


# --- validation ------------------------------------------------------------------------------------


def validate(sub_path: str) -> str:
    """Check ``sub_path`` before any I/O (C1.1) and return it unchanged.

    Absolute paths, ``..`` elements and NUL are ``invalid``; an element over 255 bytes or a path of
    4096 bytes or more is ``toolong``. Names are raw bytes: no normalisation, ``\\`` is a character.
    """
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
        fd, names = _resolve_user(root_fd, self.path, self.policy, self.path)
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
        os.close(self.fd)


def relative_path(root_fd: int, fd: int) -> str:
    """Where ``fd`` is now, relative to ``root_fd``, read back from the kernel and checked to lie
    under it (libpathrs ``check_current``). Only ever used for display and containment checks.
    Raises ``SubPathError``: ``escape`` when it is not below the root, ``toolong`` (errno name
    ``ENAMETOOLONG``) when the kernel cannot print a path of PATH_MAX bytes or more."""
    try:
        root = os.readlink(f"/proc/self/fd/{root_fd}")
        here = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        raise _os_error(exc, "resolved handle") from None
    if here == root:
        return "."
    prefix = root.rstrip("/") + "/"
    if not here.startswith(prefix) or root.endswith(" (deleted)"):
        raise SubPathError("escape", "resolved handle is outside the volume root", "EXDEV")
    return here[len(prefix) :]


def open_root(path: str) -> int:
    """Open a tree root as the anchor of resolutions."""
    return os.open(path, _DIR_FLAGS)


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
    if backend is Backend.AUTO:
        backend = Backend.KERNEL if _openat2.available() else Backend.USERSPACE
    fd = (
        _resolve_kernel(root_fd, path, policy, shown)
        if backend is Backend.KERNEL
        else _resolve_user(root_fd, path, policy, shown)[0]
    )
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    return Resolved(fd, stat.S_ISDIR(st.st_mode), st.st_dev, st.st_ino, path, policy)


def _resolve_kernel(root_fd: int, path: str, policy: Policy, shown: str) -> int:
    retry: tuple[int, ...]
    if policy is Policy.BENEATH:
        scope, retry = _openat2.RESOLVE_BENEATH, (errno.EAGAIN,)
    else:
        # Under IN_ROOT nothing is an escape by construction, so EXDEV can only come from the
        # kernel's final "is it still under the root?" check after a concurrent rename: retry it
        # like EAGAIN (libpathrs does the same), and report it if it persists.
        scope, retry = _openat2.RESOLVE_IN_ROOT, (errno.EAGAIN, errno.EXDEV)
    try:
        return _openat2.openat2(root_fd, path, O_PATH, scope | _openat2.RESOLVE_NO_MAGICLINKS, retry=retry)
    except OSError as exc:
        raise _os_error(exc, shown) from None


def _open_component(dir_fd: int, name: str) -> int:
    """One step of the userspace walk. ``O_NOFOLLOW`` returns a symlink itself, so the walk decides
    what a link means; ``O_PATH`` needs no read permission and never triggers device opens."""
    return os.open(name, _NOFOLLOW_FLAGS, dir_fd=dir_fd)


@functools.cache
def _protected_symlinks() -> bool:
    try:
        with open("/proc/sys/fs/protected_symlinks") as f:
            return f.read().strip() not in ("", "0")
    except OSError:
        return False


def _may_follow(dir_fd: int, link: os.stat_result) -> bool:
    """The kernel's ``fs.protected_symlinks`` rule (``may_follow_link``), so both backends refuse the
    same links: a *trailing* link in a sticky world-writable directory is followed only if the
    follower or the directory's owner owns it."""
    if not _protected_symlinks() or link.st_uid == os.geteuid():
        return True
    parent = os.fstat(dir_fd)
    sticky_public = stat.S_ISVTX | stat.S_IWOTH
    return (parent.st_mode & sticky_public) != sticky_public or parent.st_uid == link.st_uid


def _is_magic(link_fd: int, target: str) -> bool:
    """Emulates ``RESOLVE_NO_MAGICLINKS``: only procfs has magic links (``/proc/self/root``,
    ``fd/N``, ``exe``); their text is absolute or a ``type:[inode]`` label, while procfs' plain
    links (``self``, ``mounts``) are relative names."""
    if not (target.startswith("/") or ":" in target):
        return False
    return _openat2.fs_type(link_fd) == _openat2.PROC_SUPER_MAGIC


#: Bounded ascent of :func:`_is_below`: more ``..`` steps than a PATH_MAX-long path can have.
_MAX_ASCENT = PATH_MAX


def _is_below(root_fd: int, dir_fd: int) -> bool:
    """Whether the directory ``dir_fd`` is ``root_fd`` or lies below it right now, found by
    climbing ``..`` from it (the kernel's ``path_is_under``). Used when ``/proc/self/fd`` cannot
    print the path (PATH_MAX); the climb uses names only as ``..``, so its length does not matter."""
    root = os.fstat(root_fd)
    fd = os.open(".", _DIR_FLAGS, dir_fd=dir_fd)
    try:
        for _ in range(_MAX_ASCENT):
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == (root.st_dev, root.st_ino):
                return True
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            up = os.fstat(fd)
            if (up.st_dev, up.st_ino) == (st.st_dev, st.st_ino):
                return False  # "/" is its own parent: the climb passed no root
        return False
    except OSError:
        return False  # a directory removed meanwhile has no ".." to climb: not below anything
    finally:
        os.close(fd)


def _check_below(root_fd: int, final: int, parent: int) -> None:
    """The userspace walk's final containment check (see :func:`_resolve_user`)."""
    try:
        relative_path(root_fd, final)
    except SubPathError as exc:
        if exc.errno_name != "ENAMETOOLONG":
            raise
        # Too deep to print: climb from the entry itself if it is a directory, else from the
        # directory it was opened in (a non-directory has no "..").
        here = final if stat.S_ISDIR(os.fstat(final).st_mode) else parent
        if not _is_below(root_fd, here):
            raise SubPathError("escape", "resolved handle is outside the volume root", "EXDEV") from None


def _resolve_user(root_fd: int, path: str, policy: Policy, shown: str) -> tuple[int, list[str]]:
    """Walk one component at a time; return the handle and the names of the entries opened on
    the way (its real path below the root).

    Invariant: every fd on ``stack`` is an ``O_PATH`` handle on a directory reached from ``root_fd``
    by name lookups that never followed a link, so ``..`` is a pop (never a filesystem ``..``
    lookup, which could climb out through a directory moved away meanwhile) and the root is
    ``stack[0]``. Symlink text is spliced in front of the remaining components and walked the same
    way, so a link can redirect the walk only to places the policy allows. The one thing an
    invariant on names cannot stop, a directory on the stack being renamed out of the tree while
    we walk below it, is caught by the final containment check."""
    stack = [os.open(".", _DIR_FLAGS, dir_fd=root_fd)]
    names: list[str] = []  # names[i] is the entry stack[i + 1] (or the final non-directory) was opened as
    pending: deque[str] = deque()
    follows = 0
    result: int | None = None

    def splice(target: str) -> None:
        if target.startswith("/"):
            if policy is Policy.BENEATH:
                raise _error("escape", shown)
            while len(stack) > 1:  # IN_ROOT: an absolute target restarts at the root
                os.close(stack.pop())
            names.clear()
        pending.extendleft(reversed(target.split("/")))

    try:
        splice(path)  # the path itself is read like a link target (but costs no follow)
        while pending:
            name = pending.popleft()
            if result is not None:
                # Anything after a non-directory (`file/`, `file/.`, `file/..`, `file/x`).
                raise _error("notdir", shown)
            if name in ("", "."):
                continue
            if name == "..":
                if len(stack) == 1:
                    if policy is Policy.BENEATH:
                        raise _error("escape", shown)
                    continue  # IN_ROOT: `..` at the root stays at the root
                os.close(stack.pop())
                names.pop()
                continue
            try:
                fd = _open_component(stack[-1], name)
            except OSError as exc:
                raise _os_error(exc, shown) from None
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink("", dir_fd=fd)  # readlinkat(fd, ""): no second lookup
                    magic = _is_magic(fd, target)
                finally:
                    os.close(fd)
                # Checks in the kernel's order (pick_link): budget, protected_symlinks (only
                # for a trailing link), magic links, then the target itself.
                follows += 1
                if follows > MAX_SYMLINK_FOLLOWS:
                    raise _error("loop", shown)
                if not any(pending) and not _may_follow(stack[-1], st):
                    raise _error("denied", shown)
                if magic:
                    raise _error("loop", shown)
                if not target:
                    raise _error("notfound", shown)
                splice(target)
            elif stat.S_ISDIR(st.st_mode):
                stack.append(fd)
                names.append(name)
            else:
                result = fd
                names.append(name)
        final = result if result is not None else os.dup(stack[-1])
        result = final
        # Equivalent of the kernel's last check in complete_walk(): whatever happened to the
        # directories meanwhile, the handle we return lies below the root right now.
        _check_below(root_fd, final, stack[-1])
        return final, names
    except BaseException:
        if result is not None:
            os.close(result)
        raise
    finally:
        for fd in stack:
            os.close(fd)


# --- re-opening a recorded path ------------------------------------------------------------------


def reopen_beneath(root_fd: int, real_path: str, *, inode: int = 0) -> int:
    """Re-open a path recorded from :meth:`Resolved.relative_path`. It contains no symlinks, so the
    lookup refuses any (``RESOLVE_NO_SYMLINKS``): if somebody swapped a component since, this fails
    instead of following it. With ``inode``, the entry must also be the very same inode (a
    directory renamed over another would otherwise pass). Raises ``OSError``."""
    path = real_path or "."
    if _openat2.available():
        fd = _openat2.openat2(
            root_fd,
            path,
            O_PATH,
            _openat2.RESOLVE_BENEATH | _openat2.RESOLVE_NO_SYMLINKS | _openat2.RESOLVE_NO_MAGICLINKS,
        )
    else:
        fd = os.open(".", _DIR_FLAGS, dir_fd=root_fd)
        try:
            for name in path.split("/"):
                if name in ("", "."):
                    continue
                if name == "..":
                    raise OSError(errno.EXDEV, "'..' in a recorded path", real_path)
                nxt = _open_component(fd, name)
                os.close(fd)
                fd = nxt
                if stat.S_ISLNK(os.fstat(fd).st_mode):
                    raise OSError(errno.ELOOP, "symlink in a recorded path", real_path)
        except BaseException:
            os.close(fd)
            raise
    if inode and os.fstat(fd).st_ino != inode:
        os.close(fd)
        raise OSError(errno.ESTALE, "the entry was replaced since it was recorded", real_path)
    return fd
