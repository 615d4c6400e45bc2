"""Real mounts for ``imagevol exec --real``: run a command with a container's image volumes bind-mounted
``ro,nosuid,nodev`` in a private mount namespace, leaving the host untouched.

A forked child makes a new mount namespace (plus a user namespace when not root), marks every mount
private so nothing propagates back, and builds a throwaway root on a tmpfs: each top-level host
directory is an overlay whose upper layer lives on that tmpfs (so mount points can be created
anywhere without writing to the host), with the host's mounts (``/proc``, ``/dev``, ...) bound in.

Each volume is then re-opened *inside* the namespace (the kernel refuses to bind from a handle on
another namespace's mount) by the runtime's strict re-open (symlink-free path,
``RESOLVE_NO_SYMLINKS``, same inode) and bound from that ``O_PATH`` fd through ``/proc/self/fd/N``
(never a path string that could be swapped) onto a mount point that is itself created and held by
fd; the bind is re-mounted read-only, nosuid, nodev and checked. The child chroots into the new root
and execs the command. When the child exits, the namespace and every mount in it go with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence

import attrs

from ..errors import ImageVolError, SubPathError
from ..trees import subpath as sp

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
#: ``statvfs`` ``f_flag`` bits (``<sys/statvfs.h>``).
ST_RDONLY, ST_NOSUID, ST_NODEV, ST_NOEXEC = 0x1, 0x2, 0x4, 0x8
ST_NOATIME, ST_NODIRATIME, ST_RELATIME = 0x400, 0x800, 0x1000

#: What every image-volume mount must carry (R11.4, C1.10; no noexec, R11.5).
VOLUME_FLAGS = MS_RDONLY | MS_NOSUID | MS_NODEV

EXIT_SETUP_FAILED = 125
EXIT_NOT_FOUND = 127

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.mount.restype = ctypes.c_int
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.unshare.restype = ctypes.c_int


class RealExecError(ImageVolError):
    """``exec --real`` could not run the command; ``exit_code`` is what the CLI returns."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@attrs.frozen
class Bind:
    """One image volume to mount. ``open`` returns a fresh ``O_PATH`` fd on the source; it is called
    once in the parent (to fail early, with the caller's error) and again inside the namespace."""

    container_path: str
    open: Callable[[], int]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def _mount(what: str, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount ({what})")


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _not_permitted(exc: OSError) -> RealExecError:
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    return RealExecError(
        f"exec --real: this host does not let {who} create a private mount namespace "
        f"({os.strerror(exc.errno or 0)}); run as root or enable unprivileged user namespaces. "
        "Without --real, exec shows the container's view of its image volumes without mounting anything."
    )


# --- inside the child ----------------------------------------------------------------------------


def _enter_namespace() -> None:
    """A private mount namespace; not being root, a user namespace that maps us to root first."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        _unshare(CLONE_NEWNS)
    else:
        _unshare(CLONE_NEWUSER | CLONE_NEWNS)
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    # Nothing done from here on may propagate to the host's peer groups.
    _mount("make / rprivate", None, "/", None, MS_REC | MS_PRIVATE)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as three-digit octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mount_points(exclude: str) -> set[str]:
    """Every mount point of this namespace except ``exclude`` and what lies below it."""
    with open("/proc/self/mountinfo") as f:
        points = {_unescape(line.split()[4]) for line in f}
    return {p for p in points if p != exclude and not p.startswith(exclude + "/")}


def _kept_flags(fd: int) -> int:
    """Flags a bind remount must repeat: a user namespace may not drop noexec or change atime
    handling of a mount it inherited (they are locked)."""
    have = os.fstatvfs(fd).f_flag
    flags = MS_NOEXEC if have & ST_NOEXEC else 0
    if have & ST_NOATIME:
        flags |= MS_NOATIME
    elif have & ST_RELATIME:
        flags |= MS_RELATIME
    else:
        flags |= MS_STRICTATIME
    return flags | (MS_NODIRATIME if have & ST_NODIRATIME else 0)


def _build_root(scratch: str) -> tuple[int, set[int]]:
    """A new root on a tmpfs mounted at ``scratch``: every top-level directory of the host is an
    overlay (host directory below, tmpfs above, so mount points can be created anywhere without
    writing to the host) or, where host mounts live below it (``/proc``, ``/dev``, ...), a recursive
    bind; top-level links are copied. Returns an ``O_PATH`` fd on the new root and the devices of
    the filesystems we own (only there may mount points be created)."""
    parent = os.open(os.path.dirname(scratch), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    name = os.path.basename(scratch)
    dir_flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    userns = os.geteuid() != 0 or _in_user_namespace()
    try:
        spot = os.open(name, dir_flags, dir_fd=parent)
        try:
            _mount("scratch tmpfs", "tmpfs", _fd_path(spot), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        finally:
            os.close(spot)
        tmp = os.open(name, dir_flags, dir_fd=parent)  # crosses onto the tmpfs just mounted
    finally:
        os.close(parent)
    try:
        for part in ("root", "upper", "work"):
            os.mkdir(part, 0o755, dir_fd=tmp)
        root, upper, work = (os.open(part, dir_flags, dir_fd=tmp) for part in ("root", "upper", "work"))
    finally:
        os.close(tmp)
    own = {os.fstat(root).st_dev}
    busy = _mount_points(exclude=scratch)
    try:
        with os.scandir("/") as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            host = "/" + entry.name
            if entry.is_symlink():
                os.symlink(os.readlink(host), entry.name, dir_fd=root)
            elif entry.is_dir(follow_symlinks=False):
                own |= _graft_dir(root, upper, work, entry.name, busy, userns)
            elif host in busy:  # a file bind-mounted at the top level (/.dockerenv and the like)
                os.close(os.open(entry.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=root))
                target = os.open(entry.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root)
                try:
                    _mount(f"bind {host}", host, _fd_path(target), None, MS_BIND | MS_REC)
                finally:
                    os.close(target)
    except BaseException:
        os.close(root)
        raise
    finally:
        os.close(upper)
        os.close(work)
    return root, own


def _graft_dir(root: int, upper: int, work: int, name: str, points: set[str], userns: bool) -> set[int]:
    """Put the host's ``/name`` into the new root; return the device of the overlay if one was made.

    A directory that is itself a mount point (``/proc``, ``/dev``) is bound recursively. Otherwise
    it becomes an overlay, and the host mounts below it are bound back in at their places. In a user
    namespace overlayfs refuses a lower directory with (locked) mounts below it: that directory is
    bound instead, so writes to it would reach the host."""
    dir_flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    host = "/" + name
    os.mkdir(name, 0o755, dir_fd=root)
    target = os.open(name, dir_flags, dir_fd=root)
    try:
        below = sorted(p for p in points if p.startswith(host + "/"))
        below = [p for p in below if not any(p.startswith(q + "/") for q in below)]  # outermost only
        if host in points or (userns and below):
            _mount(f"bind {host}", host, _fd_path(target), None, MS_BIND | MS_REC)
            return set()
        fds = []
        try:
            fds.append(os.open(host, dir_flags))
            for layer in (upper, work):
                os.mkdir(name, 0o755, dir_fd=layer)
                fds.append(os.open(name, dir_flags, dir_fd=layer))
            lower, up, wk = (_fd_path(fd) for fd in fds)
            # In a user namespace overlayfs must keep its metadata in user.* xattrs.
            options = f"lowerdir={lower},upperdir={up},workdir={wk}" + (",userxattr" if userns else "")
            _mount(f"overlay {host}", "overlay", _fd_path(target), "overlay", 0, options)
        finally:
            for fd in fds:
                os.close(fd)
        grafted = os.open(name, dir_flags, dir_fd=root)  # crosses onto the overlay
        try:
            for point in below:
                try:
                    spot = sp.reopen_beneath(root, point.lstrip("/"))
                except OSError:
                    continue  # not reachable by its own path on the host either
                try:
                    _mount(f"bind {point}", point, _fd_path(spot), None, MS_BIND | MS_REC)
                finally:
                    os.close(spot)
            return {os.fstat(grafted).st_dev}
        finally:
            os.close(grafted)
    finally:
        os.close(target)


def _in_user_namespace() -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


def _mount_point(root: int, own: set[int], container_path: str, is_dir: bool) -> tuple[int, str]:
    """Resolve ``container_path`` inside the new root like a runtime does (links confined to the
    root), creating what is missing; return ``(parent fd, name)``. Missing entries are created only
    on filesystems we own (``own``: the tmpfs and the overlays, whose writes land in the tmpfs):
    never in a host mount bound into the root, nor inside another image volume."""
    parts = [p for p in container_path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise RealExecError(f"exec --real: cannot mount an image volume at {container_path!r}", EXIT_SETUP_FAILED)
    parent = os.dup(root)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                found = sp.lookup(parent, part, sp.Policy.IN_ROOT)
            except SubPathError as exc:
                if exc.kind != "notfound":
                    message = f"exec --real: mount point {container_path}: {exc}"
                    raise RealExecError(message, EXIT_SETUP_FAILED) from None
                if os.fstat(parent).st_dev not in own:
                    raise RealExecError(
                        f"exec --real: cannot create mount point {container_path}: its parent is a host "
                        "mount bound into the container root, not the container's own writable root",
                        EXIT_SETUP_FAILED,
                    ) from None
                if last and not is_dir:
                    os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=parent))
                else:
                    os.mkdir(part, 0o755, dir_fd=parent)
                found = sp.lookup(parent, part, sp.Policy.IN_ROOT)
            if last:
                found.close()
                return parent, part
            if not found.is_dir:
                found.close()
                raise RealExecError(f"exec --real: mount point {container_path}: not a directory", EXIT_SETUP_FAILED)
            os.close(parent)
            parent = found.fd
    except BaseException:
        os.close(parent)
        raise
    raise AssertionError("unreachable")


def _bind(root: int, own: set[int], bind: Bind) -> None:
    source = bind.open()
    try:
        _bind_fd(root, own, bind.container_path, source, stat.S_ISDIR(os.fstat(source).st_mode))
    finally:
        os.close(source)


def _bind_fd(root: int, own: set[int], container_path: str, source: int, is_dir: bool) -> None:
    parent, name = _mount_point(root, own, container_path, is_dir)
    try:
        target = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            if stat.S_ISDIR(os.fstat(target).st_mode) != is_dir:
                kind = "a directory" if is_dir else "a file"
                raise RealExecError(
                    f"exec --real: mount point {container_path} exists and is not {kind}", EXIT_SETUP_FAILED
                )
            # Source and target are both named by fd: the kernel follows the magic links to the
            # exact inodes resolved earlier, so no path can be swapped in between.
            _mount(f"bind {container_path}", _fd_path(source), _fd_path(target), None, MS_BIND)
        finally:
            os.close(target)
        mounted = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)  # the new mount
        try:
            flags = MS_REMOUNT | MS_BIND | VOLUME_FLAGS | _kept_flags(mounted)
            _mount(f"remount {container_path} ro,nosuid,nodev", None, _fd_path(mounted), None, flags)
            if os.fstatvfs(mounted).f_flag & (ST_RDONLY | ST_NOSUID | ST_NODEV) != ST_RDONLY | ST_NOSUID | ST_NODEV:
                raise RealExecError(f"exec --real: {container_path} did not become ro,nosuid,nodev")
        finally:
            os.close(mounted)
    finally:
        os.close(parent)


def _child(binds: Sequence[Bind], argv: Sequence[str], env: Mapping[str, str], scratch: str, cwd: str) -> None:
    """Everything after fork; returns only by raising (exec replaces the process)."""
    try:
        _enter_namespace()
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES, errno.EINVAL, errno.ENOSPC, errno.EUSERS):
            raise _not_permitted(exc) from None
        raise
    root, own = _build_root(scratch)
    for bind in sorted(binds, key=lambda b: len([p for p in b.container_path.split("/") if p])):
        _bind(root, own, bind)
    os.fchdir(root)
    os.chroot(".")
    os.chdir(cwd if os.path.isdir(cwd) else "/")
    try:
        os.execvpe(argv[0], list(argv), dict(env))
    except OSError as exc:
        raise RealExecError(f"exec --real: {argv[0]}: {os.strerror(exc.errno or 0)}", EXIT_NOT_FOUND) from None


# --- in the parent --------------------------------------------------------------------------------


def run(
    binds: Sequence[Bind],
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str = "/",
    stdio: tuple[int, int, int] | None = None,
) -> int:
    """Run ``argv`` with ``binds`` mounted; return its exit status (128+N when killed by signal N).
    Raises :class:`RealExecError` when the namespace or a mount cannot be set up."""
    if not argv:
        raise RealExecError("exec --real: no command given")
    for bind in binds:
        os.close(bind.open())  # fail here, in the caller's process, if a mount cannot be opened
    env = dict(os.environ if env is None else env)
    scratch = tempfile.mkdtemp(prefix="imagevol-real-")
    os.chmod(scratch, 0o700)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's coverage is seen through its effects
            code = EXIT_SETUP_FAILED
            try:
                os.close(read_end)
                if stdio is not None:
                    for target, fd in enumerate(stdio):
                        os.dup2(fd, target)
                _child(binds, argv, env, scratch, cwd)
            except RealExecError as exc:
                code = exc.exit_code
                os.write(write_end, f"{code}\n{exc}".encode())
            except BaseException as exc:  # report anything, never return into the parent's code
                os.write(write_end, f"{code}\nexec --real: {exc}".encode())
            finally:
                os._exit(code)
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, "rb") as pipe:
            read_end = -1
            report = pipe.read().decode(errors="replace")
        _, status = os.waitpid(pid, 0)
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
        # Only ever an empty directory on the host: the tmpfs on it lived in the child's namespace.
        with contextlib.suppress(OSError):
            os.rmdir(scratch)
    if report:
        code_text, _, message = report.partition("\n")
        raise RealExecError(message, int(code_text) if code_text.isdigit() else EXIT_SETUP_FAILED)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def probe() -> str | None:
    """``None`` when this host lets us run :func:`run`, else the reason (for tests and the CLI)."""
    try:
        code = run([], ["true"])
    except RealExecError as exc:
        return str(exc)
    return None if code == 0 else f"exec --real: a probe command exited with {code}"
