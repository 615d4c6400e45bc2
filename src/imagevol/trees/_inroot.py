"""One in-root path walker: every lookup below a tree root, by layers and by sub paths, goes here.

A path is never joined to the root and handed to the kernel as a string. It is resolved from a
directory file descriptor of the root, one of two ways that give the same answer:

* **the kernel** (:func:`open_entry`): one ``openat2`` with ``RESOLVE_BENEATH`` or
  ``RESOLVE_IN_ROOT``, plus ``RESOLVE_NO_MAGICLINKS``. Used for plain lookups when the kernel has it.
* **the userspace walk** (:func:`walk`): one component at a time with ``O_PATH|O_NOFOLLOW``
  relative to the previous directory fd. Symlink text is read and spliced in front of the remaining
  components, so a link can only send the walk where the policy allows. It also does what openat2
  cannot: create missing directories on the way, bound the depth and length of the *real* path,
  and report that real (symlink-free) path.

Two policies (:class:`Policy`): ``BENEATH`` (containerd, kubelet) calls an absolute link or ``..`` at
the root an ``escape``; ``IN_ROOT`` (CRI-O, libpathrs, layer application) re-roots absolute links
and clamps ``..`` at the root. Either way the walk can never leave the tree.

Errors are :class:`WalkError`, an ``OSError`` with the errno the kernel would return and a ``kind``
from :data:`KINDS`; :func:`errno_kind` is the one mapping from an errno to a kind. Callers word
them. The module also holds the fd-relative primitives the tree code shares (``lstat_at``, an
exact-mode ``mkdir``, listing; recursive removal is :mod:`imagevol.trees._remove_tree`) and depends
only on the standard library and :mod:`imagevol.trees._openat2`.
"""

from __future__ import annotations

import enum
import errno
import functools
import os
import stat
from collections.abc import Callable, Sequence

from . import _openat2
from ._openat2 import O_PATH

#: The kernel's MAXSYMLINKS: every walk gives up after this many symlink follows (``loop``).
MAX_SYMLINK_FOLLOWS = 40
#: Linux limits, in bytes: a path (with its NUL) and one name.
PATH_MAX = 4096
NAME_MAX = 255

# Open flags, named for what the descriptor is good for.
#: A handle on a directory to look names up in: needs no read permission, opens no device.
PATH_DIR = O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
#: One component, never followed: on a symlink this opens the link itself.
PATH_ENTRY = O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
#: A directory by a name that must not be a symlink, as a handle.
PATH_DIR_NOFOLLOW = PATH_DIR | os.O_NOFOLLOW
#: A directory to list or to change (``fchmod``, ``fchown``, ``futimens`` need a real open).
READ_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
#: The same, by a name that must not be a symlink.
READ_DIR_NOFOLLOW = READ_DIR | os.O_NOFOLLOW
#: A new regular file: fails on any existing name, a symlink included (never followed).
CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Policy(enum.Enum):
    """How absolute symlinks and ``..`` at the root are treated (see the module docstring)."""

    BENEATH = "beneath"
    IN_ROOT = "in_root"


class Backend(enum.Enum):
    """Who resolves a plain lookup: the kernel's ``openat2``, the userspace walk, or the kernel
    when this process has a usable ``openat2`` (probed once)."""

    AUTO = "auto"
    KERNEL = "kernel"
    USERSPACE = "userspace"


# --- errors ----------------------------------------------------------------------------------------

#: What a walk can fail with, one word each, whoever decides (the kernel or the userspace walk).
KINDS = ("escape", "notfound", "notdir", "loop", "toolong", "denied")

#: The errno the kernel returns for each kind (what the userspace walk raises with it).
KIND_ERRNO = {
    "escape": errno.EXDEV,
    "notfound": errno.ENOENT,
    "notdir": errno.ENOTDIR,
    "loop": errno.ELOOP,
    "toolong": errno.ENAMETOOLONG,
    "denied": errno.EACCES,
}
_ERRNO_KIND = {**{code: kind for kind, code in KIND_ERRNO.items()}, errno.EPERM: "denied"}


def errno_kind(code: int | None) -> str | None:
    """The kind of a failed lookup's errno, None for an errno that says nothing about the path."""
    return _ERRNO_KIND.get(code or 0)


class WalkError(OSError):
    """The userspace walk refused a path: an ``OSError`` with the errno the kernel would have
    returned for the same path, and its ``kind``."""

    def __init__(self, kind: str) -> None:
        code = KIND_ERRNO[kind]
        super().__init__(code, os.strerror(code))
        self.kind = kind


class NotBelowError(WalkError):
    """The final containment check failed: the entry, or a directory the walk held on its way to
    it, was moved out of the tree while the walk ran."""

    def __init__(self) -> None:
        super().__init__("escape")


# --- one lookup ------------------------------------------------------------------------------------

_KERNEL_SCOPE = {
    Policy.BENEATH: (_openat2.RESOLVE_BENEATH | _openat2.RESOLVE_NO_MAGICLINKS, (errno.EAGAIN,)),
    # Under IN_ROOT nothing is an escape by construction, so EXDEV can only come from the kernel's
    # final "is it still under the root?" check after a concurrent rename: retry it like EAGAIN
    # (libpathrs does the same), and report it if it persists.
    Policy.IN_ROOT: (_openat2.RESOLVE_IN_ROOT | _openat2.RESOLVE_NO_MAGICLINKS, (errno.EAGAIN, errno.EXDEV)),
}


def open_entry(
    root_fd: int, path: str, policy: Policy, backend: Backend = Backend.AUTO, *, follow_final: bool = True
) -> int:
    """An ``O_PATH`` handle on ``path`` below ``root_fd`` (``.``: the root itself). Both backends
    give the same answer; ``AUTO`` takes the kernel when it has ``openat2``. A present ``openat2``
    that fails is reported, never retried in userspace: a downgrade would let an attacker who can
    provoke an error pick the weaker resolver. Raises ``OSError`` (:class:`WalkError` from the
    userspace walk)."""
    if backend is Backend.AUTO:
        backend = Backend.KERNEL if _openat2.available() else Backend.USERSPACE
    if backend is Backend.USERSPACE:
        return walk(root_fd, path, policy, follow_final=follow_final)[0]
    scope, retry = _KERNEL_SCOPE[policy]
    flags = O_PATH if follow_final else O_PATH | os.O_NOFOLLOW
    return _openat2.openat2(root_fd, path, flags, scope, retry=retry)


def _open_component(dir_fd: int, name: str) -> int:
    """One step of the userspace walk. ``O_NOFOLLOW`` returns a symlink itself, so the walk decides
    what a link means; ``O_PATH`` needs no read permission and never triggers device opens."""
    return os.open(name, PATH_ENTRY, dir_fd=dir_fd)


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


def walk(
    root_fd: int,
    path: str | Sequence[str],
    policy: Policy,
    *,
    follow_final: bool = True,
    protect_trailing: bool = True,
    directory: bool = False,
    create_mode: int | None = None,
    on_create: Callable[[int, tuple[str, ...], str], None] | None = None,
    max_depth: int = 0,
    max_real_len: int = 0,
    check_below: bool = True,
) -> tuple[int, tuple[str, ...]]:
    """The userspace walk: an ``O_PATH`` handle on ``path`` below ``root_fd`` and the names of the
    entries opened on the way (its real path below the root; ``()`` for the root).

    ``path`` is a string (a leading ``/`` is read like an absolute link target) or its components.
    ``follow_final``: a trailing symlink is followed (else the link itself is the result);
    ``protect_trailing``: the kernel's ``fs.protected_symlinks`` rule applies to it (a walk to the
    parent of an entry has no trailing link); ``directory``: the result must be a directory
    (``notdir``). ``create_mode``: a missing component is created as a directory of exactly that
    mode, after ``on_create(dir fd, real path of the dir, name)``; without it a missing component
    is ``notfound``. ``max_depth`` / ``max_real_len`` (0: no bound): more directories on the real
    path, or a real path (a ``/`` before each name) of that many bytes or more, is ``toolong``.
    ``check_below``: end with the containment check (off only for a private tree that nobody else
    can rename in). Raises :class:`WalkError` for what it refuses, ``OSError`` for what fails.

    Invariant: every fd on ``stack`` is a directory reached from ``root_fd`` by name lookups that
    never followed a link, so ``..`` is a pop (never a filesystem ``..`` lookup, which could climb
    out through a directory moved away meanwhile) and the root is below the bottom of the stack.
    The one thing an invariant on names cannot stop, a directory on the stack being renamed out of
    the tree while the walk is below it, is caught by the final containment check."""
    stack: list[int] = []  # directories below the root, each one opened in the one before
    names: list[str] = []  # names[i] is the name stack[i] (or the final non-directory) was opened as
    pending: list[str] = []  # components still to walk, last first
    follows = 0
    real_len = 0  # bytes of the real path, a "/" before each name (only counted when bounded)
    result: int | None = None

    def splice(target: str) -> None:
        nonlocal real_len
        if target.startswith("/"):
            if policy is Policy.BENEATH:
                raise WalkError("escape")
            while stack:  # IN_ROOT: an absolute target restarts at the root
                os.close(stack.pop())
            names.clear()
            real_len = 0
        pending.extend(reversed(target.split("/")))

    try:
        if isinstance(path, str):
            splice(path)  # the path itself is read like a link target (but costs no follow)
        else:
            pending.extend(reversed(path))
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if stack:
                    os.close(stack.pop())
                    if max_real_len:
                        real_len -= len(os.fsencode(names[-1])) + 1
                    names.pop()
                elif policy is Policy.BENEATH:
                    raise WalkError("escape")
                continue  # IN_ROOT: `..` at the root stays at the root
            cur = stack[-1] if stack else root_fd
            try:
                fd = _open_component(cur, name)
            except FileNotFoundError:
                if create_mode is None:
                    raise WalkError("notfound") from None
                # The bounds are checked before anything is made: a refused walk creates nothing.
                if (max_depth and len(stack) >= max_depth) or (
                    max_real_len and real_len + len(os.fsencode(name)) + 1 >= max_real_len
                ):
                    raise WalkError("toolong") from None
                if on_create is not None:
                    on_create(cur, tuple(names), name)
                mkdir_exact(cur, name, create_mode)
                fd = os.open(name, PATH_DIR_NOFOLLOW, dir_fd=cur)
            st = os.fstat(fd)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                stack.append(fd)
                names.append(name)
                if max_real_len:
                    real_len += len(os.fsencode(name)) + 1
                    if real_len >= max_real_len:
                        raise WalkError("toolong")
                if max_depth and len(stack) > max_depth:
                    raise WalkError("toolong")
            elif stat.S_ISLNK(mode) and (pending or follow_final):
                trailing = not any(pending)
                try:
                    target = os.readlink("", dir_fd=fd)  # readlinkat(fd, ""): no second lookup
                    magic = _is_magic(fd, target)
                finally:
                    os.close(fd)
                # Checks in the kernel's order (pick_link): budget, protected_symlinks (only
                # for a trailing link), magic links, then the target itself.
                follows += 1
                if follows > MAX_SYMLINK_FOLLOWS:
                    raise WalkError("loop")
                if protect_trailing and trailing and not _may_follow(cur, st):
                    raise WalkError("denied")
                if magic:
                    raise WalkError("loop")
                if not target:
                    raise WalkError("notfound")
                splice(target)
            else:
                # Anything after a non-directory (`file/`, `file/.`, `file/..`, `file/x`) is
                # notdir, as it is for the kernel.
                result = fd
                if pending or directory:
                    raise WalkError("notdir")
                names.append(name)
        if result is None:
            result = stack.pop() if stack else os.open(".", PATH_DIR, dir_fd=root_fd)
        if check_below:
            # Equivalent of the kernel's last check in complete_walk(): whatever happened to the
            # directories meanwhile, the handle we return lies below the root right now.
            _check_below(root_fd, result, stack[-1] if stack else root_fd)
        return result, tuple(names)
    except BaseException:
        if result is not None:
            os.close(result)
        raise
    finally:
        for fd in stack:
            os.close(fd)


# --- where a handle is ----------------------------------------------------------------------------


def path_below(root_fd: int, fd: int) -> str:
    """Where ``fd`` is now, relative to ``root_fd`` (``.`` for the root), read back from the kernel
    through ``/proc/self/fd`` and checked to lie under it (libpathrs ``check_current``). Raises
    :class:`NotBelowError`, or ``OSError`` (``ENAMETOOLONG`` when the kernel cannot print a path of
    PATH_MAX bytes or more from ``/``)."""
    root = os.readlink(f"/proc/self/fd/{root_fd}")
    here = os.readlink(f"/proc/self/fd/{fd}")
    if here == root:
        return "."
    prefix = root.rstrip("/") + "/"
    if not here.startswith(prefix) or root.endswith(" (deleted)"):
        raise NotBelowError()
    return here[len(prefix) :]


#: Bounded ascent of :func:`is_below`: more ``..`` steps than a PATH_MAX-long path can have.
_MAX_ASCENT = PATH_MAX


def is_below(root_fd: int, dir_fd: int) -> bool:
    """Whether the directory ``dir_fd`` is ``root_fd`` or lies below it right now, found by
    climbing ``..`` from it (the kernel's ``path_is_under``). Used when ``/proc/self/fd`` cannot
    print the path (PATH_MAX); the climb uses names only as ``..``, so its length does not matter."""
    root = os.fstat(root_fd)
    fd = os.open(".", PATH_DIR, dir_fd=dir_fd)
    try:
        for _ in range(_MAX_ASCENT):
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == (root.st_dev, root.st_ino):
                return True
            parent = os.open("..", PATH_DIR, dir_fd=fd)
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
    """The userspace walk's final containment check. Raises :class:`NotBelowError`."""
    try:
        path_below(root_fd, final)
    except NotBelowError:
        raise
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        # Too deep to print: climb from the entry itself if it is a directory, else from the
        # directory it was opened in (a non-directory has no "..").
        here = final if stat.S_ISDIR(os.fstat(final).st_mode) else parent
        if not is_below(root_fd, here):
            raise NotBelowError() from None


def reopen_beneath(root_fd: int, real_path: str, *, inode: int = 0) -> int:
    """Re-open a real path recorded earlier (free of symlinks, as :func:`walk` or
    :func:`path_below` report it). It contains no symlinks, so the lookup refuses any
    (``RESOLVE_NO_SYMLINKS``, or ``ELOOP`` from the strict walk below): if somebody swapped a
    component since, this fails instead of following it. With ``inode``, the entry must also be
    the very same inode (a directory renamed over another would otherwise pass). Raises
    ``OSError``."""
    path = real_path or "."
    if _openat2.available():
        fd = _openat2.openat2(
            root_fd,
            path,
            O_PATH,
            _openat2.RESOLVE_BENEATH | _openat2.RESOLVE_NO_SYMLINKS | _openat2.RESOLVE_NO_MAGICLINKS,
        )
    else:
        fd = os.open(".", PATH_DIR, dir_fd=root_fd)
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


# --- fd-relative primitives ---------------------------------------------------------------------


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """What is at ``name`` in ``dir_fd``, never followed; None if nothing is."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def umask() -> int:
    """The process umask, read without changing it (os.umask would race with other threads)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o777  # unknown: assume every bit may be masked, so modes are always set explicitly


def mkdir_exact(dir_fd: int, name: str, mode: int) -> None:
    """mkdirat with exactly ``mode`` whatever the umask."""
    os.mkdir(name, mode, dir_fd=dir_fd)
    if mode & umask():
        fd = os.open(name, READ_DIR_NOFOLLOW, dir_fd=dir_fd)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)


def list_dir(fd: int) -> list[tuple[str, bool]]:
    """(name, is_dir) of the entries of the directory open as ``fd``; symlinks are not dirs."""
    with os.scandir(fd) as it:
        return [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
