"""What a container sees through its image-volume mounts: read-only ``cat``/``ls``/``stat``/
``readlink`` evaluated against the container's mount table.

Each mount is re-opened from its snapshot's root fd along the recorded symlink-free path with
``RESOLVE_NO_SYMLINKS``, and paths inside a mount are resolved beneath the mount with the same
safe resolver as sub paths: a symlink in a volume that points elsewhere in the container (outside the
volume) is reported, never followed on the host.
"""

from __future__ import annotations

import datetime
import os
import posixpath
import stat
from collections.abc import Iterator, Sequence

import attrs

from . import subpath as sp
from .errors import ImageVolError, SubPathError
from .oci import Digest
from .runtime import MountStatus
from .snapshots import Snapshots

COMMANDS = ("cat", "ls", "stat", "readlink")


class ViewError(ImageVolError):
    """A file command failed inside the container view (message in coreutils style)."""


_STRERROR = {
    "notfound": "No such file or directory",
    "notdir": "Not a directory",
    "loop": "Too many levels of symbolic links",
    "toolong": "File name too long",
    "invalid": "Invalid argument",
}


@attrs.frozen
class _Target:
    mount: MountStatus
    #: Path inside the mount ("" for the mount point itself).
    rest: str


class ContainerView:
    def __init__(self, container: str, mounts: Sequence[MountStatus], snapshots: Snapshots) -> None:
        self.container = container
        self.mounts = sorted(mounts, key=lambda m: len(m.container_path), reverse=True)
        self.snapshots = snapshots

    def _target(self, cmd: str, path: str) -> _Target:
        if not path.startswith("/"):
            raise ViewError(f"{cmd}: {path}: paths in a container view must be absolute")
        norm = posixpath.normpath(path)
        if norm.startswith("//"):
            norm = "/" + norm.lstrip("/")
        for m in self.mounts:
            mp = posixpath.normpath(m.container_path)
            if norm == mp or norm.startswith(mp.rstrip("/") + "/"):
                return _Target(m, norm[len(mp) :].lstrip("/"))
        listed = ", ".join(m.container_path for m in sorted(self.mounts, key=lambda m: m.container_path)) or "none"
        raise ViewError(
            f"{cmd}: {path}: not inside any image-volume mount of container {self.container!r} "
            f"(imagevol models image-volume mounts only; mounts: {listed})"
        )

    def _mount_fd(self, m: MountStatus) -> int:
        tree = self.snapshots.get(Digest.parse(m.snapshot))
        if tree is None:
            raise ViewError(f"the snapshot of {m.container_path} is gone")
        root_fd = sp.open_root(tree)
        try:
            return sp.reopen_beneath(root_fd, m.real_path)
        except OSError as exc:
            raise ViewError(f"{m.container_path}: the mounted path changed since it was mounted: {exc}") from None
        finally:
            os.close(root_fd)

    def _open(self, cmd: str, path: str, *, follow: bool = True) -> tuple[int, str]:
        """An O_PATH fd on ``path`` (the final symlink followed or not) and its name."""
        target = self._target(cmd, path)
        mfd = self._mount_fd(target.mount)
        if not target.rest:
            return mfd, posixpath.basename(path.rstrip("/")) or "/"
        try:
            if not stat.S_ISDIR(os.fstat(mfd).st_mode):
                raise ViewError(f"{cmd}: {path}: Not a directory")
            parent, _, name = target.rest.rpartition("/")
            if follow:
                return sp.resolve(mfd, target.rest, sp.Policy.BENEATH).fd, name
            pfd = sp.resolve(mfd, parent, sp.Policy.BENEATH).fd if parent else os.dup(mfd)
            try:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            except FileNotFoundError:
                raise ViewError(f"{cmd}: {path}: No such file or directory") from None
            finally:
                os.close(pfd)
            return fd, name
        except SubPathError as exc:
            if exc.kind == "escape":
                raise ViewError(
                    f"{cmd}: {path}: a symlink leads outside the volume mounted at "
                    f"{target.mount.container_path} (into the container's own filesystem, which "
                    "imagevol does not model)"
                ) from None
            raise ViewError(f"{cmd}: {path}: {_STRERROR.get(exc.kind, exc.kind)}") from None
        finally:
            os.close(mfd)

    def cat(self, path: str) -> bytes:
        fd, _ = self._open("cat", path)
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise ViewError(f"cat: {path}: Is a directory")
            with open(f"/proc/self/fd/{fd}", "rb") as f:
                return f.read()
        finally:
            os.close(fd)

    def ls(self, path: str) -> list[str]:
        fd, _ = self._open("ls", path)
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                return [path]
            rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                return sorted(os.listdir(rfd))
            finally:
                os.close(rfd)
        finally:
            os.close(fd)

    def readlink(self, path: str) -> str:
        fd, _ = self._open("readlink", path, follow=False)
        try:
            if not stat.S_ISLNK(os.fstat(fd).st_mode):
                raise ViewError(f"readlink: {path}: not a symbolic link")
            return os.readlink("", dir_fd=fd)
        finally:
            os.close(fd)

    def stat(self, path: str) -> str:
        fd, _ = self._open("stat", path, follow=False)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        mtime = datetime.datetime.fromtimestamp(st.st_mtime, datetime.UTC)
        lines = [
            f"  File: {path}",
            f"  Size: {st.st_size:<10}  Type: {_kind(st.st_mode)}",
            f"Access: ({stat.S_IMODE(st.st_mode):04o}/{stat.filemode(st.st_mode)})  Uid: {st.st_uid}  Gid: {st.st_gid}",
            f"Modify: {mtime:%Y-%m-%d %H:%M:%S} +0000",
            f"Mounted: read-only from {_short(self._target('stat', path).mount)}",
        ]
        return "\n".join(lines)

    def run(self, argv: Sequence[str]) -> Iterator[bytes]:
        """Run one file command; yields output chunks (raises ``ViewError``)."""
        if not argv or argv[0] not in COMMANDS:
            raise ViewError(
                f"exec: {argv[0] if argv else '(nothing)'}: only {', '.join(COMMANDS)} are available "
                "in a container view (use --real to run real commands where the host allows it)"
            )
        cmd, args = argv[0], [a for a in argv[1:] if not a.startswith("-")]
        if not args:
            raise ViewError(f"{cmd}: missing operand")
        for path in args:
            if cmd == "cat":
                yield self.cat(path)
            elif cmd == "ls":
                names = self.ls(path)
                if len(args) > 1:
                    yield f"{path}:\n".encode()
                yield "".join(f"{n}\n" for n in names).encode()
            elif cmd == "readlink":
                yield (self.readlink(path) + "\n").encode()
            else:
                yield (self.stat(path) + "\n").encode()


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISFIFO(mode):
        return "fifo"
    return "special file"


def _short(m: MountStatus) -> str:
    sub = f", sub path {m.sub_path!r}" if m.sub_path else ""
    return f"{m.user_specified_image} ({m.image_id[:19]}){sub}"
