"""The staging helper and container monitor: ``python -m imagevol.runtime._shim BUNDLE [--monitor]``.

It plays the part of conmon / containerd-shim for one container. In a private mount namespace of its
own (``unshare(CLONE_NEWNS)``, every mount made private first, so nothing propagates to the host) it

1. mounts the root filesystem: an overlay with the image's published tree as its only lower dir and
   the bundle's ``upper``/``work`` dirs above (containerd's overlayfs snapshotter), or a read-only bind
   of the tree when the root filesystem is read-only;
2. stages every image-volume source: re-opens the tree's entry along its recorded symlink-free path
   with ``RESOLVE_NO_SYMLINKS`` and checks it is the very inode resolved at create time, then binds
   *that fd* (``/proc/self/fd/N``: mount(2) follows the magic link to the exact inode, no path string
   is resolved again) onto a mount point of the bundle, and remounts it ``ro,nosuid,nodev``. A
   symlink swapped into the tree since fails the re-open; it can never redirect the bind. (The fd
   has to be opened inside the new namespace: the kernel refuses to bind a mount of another one.)
3. runs ``runc run`` in the foreground: the runtime's process inherits the namespace, so the
   generated config's bind sources are the staged mounts, and the container's mount namespace is a
   copy of this one. When the container and this process are gone, so are all their mounts: the host
   mount table never changed, and nothing needs unmounting at delete.

Without ``--monitor`` the container's stdio is this process's and the exit status is the
container's (``exec --real`` one-off containers). With ``--monitor`` it detaches (double fork, new
session), sends the container's output to the bundle's log, and records the start and then the exit
code and finish time in ``status.json`` by rename, which the runtime's ``ContainerStatus`` reads.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import subprocess
import sys
import time
from typing import Any

from ..trees import subpath as sp

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 0x400, 0x800, 0x200000, 0x1000000
ST_RDONLY, ST_NOSUID, ST_NODEV, ST_NOEXEC = 0x1, 0x2, 0x4, 0x8
ST_NOATIME, ST_NODIRATIME, ST_RELATIME = 0x400, 0x800, 0x1000

#: Exit status when staging failed (the container never ran), as runc/crun use 125-127.
EXIT_SETUP_FAILED = 125
#: A command that is not there (a shell's status), and a process runc could not start (containerd's).
EXIT_NOT_FOUND = 127
EXIT_START_FAILED = 128
RUNC_LOG = "runc.log"
PLAN = "plan.json"
STATUS = "status.json"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.mount.restype = ctypes.c_int
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.unshare.restype = ctypes.c_int


class StageError(Exception):
    """Staging failed; the message is for the Pod author (no host paths)."""


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise StageError(f"{what}: {os.strerror(err).lower()}")


def _mount(what: str, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), what)


def _kept_flags(fd: int) -> int:
    """Atime and noexec flags a bind remount must repeat (the kernel refuses to change locked ones)."""
    have = os.fstatvfs(fd).f_flag
    flags = MS_NOEXEC if have & ST_NOEXEC else 0
    if have & ST_NOATIME:
        flags |= MS_NOATIME
    elif have & ST_RELATIME:
        flags |= MS_RELATIME
    else:
        flags |= MS_STRICTATIME
    return flags | (MS_NODIRATIME if have & ST_NODIRATIME else 0)


def _fd(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _bind_ro(source_fd: int, target_fd: int, what: str) -> None:
    """Bind ``source_fd`` onto ``target_fd`` (both by fd), then remount ``ro,nosuid,nodev`` and check."""
    _mount(f"bind {what}", _fd(source_fd), _fd(target_fd), None, MS_BIND)


def _remount_ro(parent: int, name: str, what: str) -> None:
    mounted = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)  # the new mount
    try:
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | _kept_flags(mounted)
        _mount(f"remount {what} ro,nosuid,nodev", None, _fd(mounted), None, flags)
        want = ST_RDONLY | ST_NOSUID | ST_NODEV
        if os.fstatvfs(mounted).f_flag & want != want:
            raise StageError(f"{what} did not become ro,nosuid,nodev")
    finally:
        os.close(mounted)


def _stage(bundle_fd: int, stage: dict[str, Any]) -> None:
    """Bind one image-volume source from its re-opened, inode-checked fd onto ``stage/<n>``."""
    what = str(stage["container_path"])
    root = sp.open_root(stage["tree"])
    try:
        try:
            source = sp.reopen_beneath(root, stage["real_path"], inode=int(stage["inode"]))
        except OSError as exc:
            why = os.strerror(exc.errno or 0).lower()
            raise StageError(f"the image volume mounted at {what} changed since it was mounted ({why})") from None
    finally:
        os.close(root)
    try:
        is_dir = stat.S_ISDIR(os.fstat(source).st_mode)
        if is_dir != bool(stage["is_dir"]):
            raise StageError(f"the image volume mounted at {what} changed since it was mounted")
        stages = os.open("stage", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=bundle_fd)
        try:
            name = str(stage["name"])
            if is_dir:
                os.mkdir(name, 0o755, dir_fd=stages)
            else:
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=stages))
            target = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stages)
            try:
                _bind_ro(source, target, what)
            finally:
                os.close(target)
            _remount_ro(stages, name, what)
        finally:
            os.close(stages)
    finally:
        os.close(source)


def _rootfs(bundle_fd: int, rootfs: dict[str, Any]) -> None:
    dir_flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    target = os.open("rootfs", dir_flags, dir_fd=bundle_fd)
    lower = os.open(rootfs["lower"], dir_flags)
    try:
        if rootfs.get("readonly"):
            _mount("bind rootfs", _fd(lower), _fd(target), None, MS_BIND)
            return
        upper, work = (os.open(n, dir_flags, dir_fd=bundle_fd) for n in ("upper", "work"))
        try:
            options = f"lowerdir={_fd(lower)},upperdir={_fd(upper)},workdir={_fd(work)}"
            _mount("overlay rootfs", "overlay", _fd(target), "overlay", 0, options)
        finally:
            os.close(upper)
            os.close(work)
    finally:
        os.close(lower)
        os.close(target)


def prepare(bundle: str, plan: dict[str, Any]) -> None:
    """Steps 1 and 2 in this process's own new mount namespace. Raises :class:`StageError`."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare")
    # Nothing done from here on may propagate to the host's peer groups.
    _mount("make / rprivate", None, "/", None, MS_REC | MS_PRIVATE)
    bundle_fd = os.open(bundle, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _rootfs(bundle_fd, plan["rootfs"])
        for stage in plan["stages"]:
            _stage(bundle_fd, stage)
    finally:
        os.close(bundle_fd)


def write_status(bundle: str, status: dict[str, Any]) -> None:
    tmp = os.path.join(bundle, f".{STATUS}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(status, f)
    os.rename(tmp, os.path.join(bundle, STATUS))


def _runc(plan: dict[str, Any], bundle: str) -> list[str]:
    log = os.path.join(bundle, RUNC_LOG)
    return [plan["runc"], "--root", plan["runc_root"], "--log", log, "--log-format", "json", "run", "--bundle", bundle,
            plan["id"]]  # fmt: skip


def start_failure(bundle: str) -> str:
    """What runc said when it could not start the container's process ("" when it started): its
    last error, without runc's own prefix."""
    message = ""
    try:
        with open(os.path.join(bundle, RUNC_LOG), errors="replace") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(entry, dict) and entry.get("level") == "error":
                    message = str(entry.get("msg", ""))
    except FileNotFoundError:
        return ""
    return message.removeprefix("runc run failed: ")


def _run(bundle: str, plan: dict[str, Any]) -> tuple[int, str]:
    """Run runc in the foreground: the container's exit status, or 128 and runc's reason when its
    process could not be started (as containerd reports a ``StartError``)."""
    code = subprocess.run(_runc(plan, bundle), check=False).returncode
    failure = start_failure(bundle) if code != 0 else ""
    if failure:
        return EXIT_START_FAILED, f"OCI runtime create failed: {failure}: unknown"
    return (code if code >= 0 else 128 - code), ""


def _foreground(bundle: str, plan: dict[str, Any]) -> int:
    try:
        prepare(bundle, plan)
    except (StageError, OSError) as exc:
        print(f"failed to start container: {exc}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    code, failure = _run(bundle, plan)
    if failure:  # runc said why on the container's stderr, which is ours
        return EXIT_NOT_FOUND if "executable file not found" in failure or "no such file" in failure else code
    return code


def _monitor(bundle: str, plan: dict[str, Any]) -> int:
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    if os.fork() != 0:
        # The caller waits for this process, which waits until the monitor recorded the start (or
        # the failure, or died): StartContainer returns with the container started. The monitor is
        # orphaned and never a zombie of the caller.
        os.close(ready_w)
        os.read(ready_r, 1)
        return 0
    os.close(ready_r)
    os.setsid()
    code = EXIT_SETUP_FAILED
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        log = os.open(os.path.join(bundle, "container.log"), flags, 0o600)
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        status: dict[str, Any] = {"monitor_pid": os.getpid(), "monitor_start": _start_time(os.getpid())}
        try:
            prepare(bundle, plan)
        except (StageError, OSError) as exc:
            status.update(exit_code=EXIT_SETUP_FAILED, finished_at=time.time(), reason="StartError", message=str(exc))
            write_status(bundle, status)
            return EXIT_SETUP_FAILED
        status["started_at"] = time.time()
        write_status(bundle, status)
        os.close(ready_w)  # started: the caller may go
        logged = os.fstat(log).st_size
        code, failure = _run(bundle, plan)
        status.update(exit_code=code, finished_at=time.time())
        if failure:
            # runc's own complaint went to the container's stderr; the status carries it instead.
            os.ftruncate(log, logged)
            status.update(reason="StartError", message=failure)
        write_status(bundle, status)
        return code
    finally:
        os._exit(code if 0 <= code < 256 else 255)


def _start_time(pid: int) -> int:
    """The start time of ``pid`` in clock ticks (``/proc/PID/stat`` field 22): a pid with another
    start time is another process (pids are reused)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return -1
    return int(text.rpartition(")")[2].split()[19])


def main(argv: list[str]) -> int:
    bundle = os.path.abspath(argv[0])
    with open(os.path.join(bundle, PLAN)) as f:
        plan = json.load(f)
    if "--monitor" in argv[1:]:
        return _monitor(bundle, plan)
    return _foreground(bundle, plan)


if __name__ == "__main__":  # pragma: no cover - run as a process
    sys.exit(main(sys.argv[1:]))
