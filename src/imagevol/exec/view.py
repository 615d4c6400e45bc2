"""What a container sees through its image-volume mounts: read-only ``cat``/``ls``/``stat``/
``readlink`` evaluated against the container's mount table, without any mount.

Each mount is re-opened by the runtime (``RuntimeService.open_mount``, an imagevol extension of the
CRI: the recorded symlink-free path, ``RESOLVE_NO_SYMLINKS``, same inode), and paths inside a mount
are resolved beneath the mount with the same safe resolver as sub paths: a symlink or ``..`` that
leaves the volume is reported, never followed on the host. Only directories and regular files are
ever opened for reading: a device node shipped in an image is refused here exactly as the ``nodev``
mount of ``exec --real`` refuses it.
"""

from __future__ import annotations

import datetime
import os
import stat
from collections.abc import Callable, Iterator, Sequence

import attrs

from ..cri import MountStatus
from ..errors import ImageVolError, SubPathError
from ..trees import subpath as sp

COMMANDS = ("cat", "ls", "stat", "readlink")
#: How deep :meth:`ContainerView.tree` descends at most: one directory fd is held per level, so a
#: hostile image nested thousands of levels deep ends in a note, never in running out of fds.
MAX_TREE_DEPTH = 128
#: Commands that write, and which of their operands they write to: ``all``, ``last`` (the
#: destination of ``cp``/``ln``) or ``rest`` (all but the mode or owner of ``chmod``/``chown``).
#: On an image-volume mount each fails as on the read-only mount (R11.4), and nothing is written:
#: the view never opens anything for writing.
WRITE_COMMANDS = {
    "touch": "all", "mkdir": "all", "rm": "all", "rmdir": "all", "mv": "all", "tee": "all",
    "truncate": "all", "cp": "last", "ln": "last", "chmod": "rest", "chown": "rest", "chgrp": "rest",
}  # fmt: skip


class ViewError(ImageVolError):
    """A command cannot run in the container view: a relative path, a path outside every
    image-volume mount, a command the view does not have, a mount that cannot be opened."""


class CommandFailedError(ViewError):
    """The command ran in the view and failed as it would in the container: its error lines
    (coreutils style, one per operand that failed) and exit status 1. The operands that did not
    fail were still served, as ``cat a missing b`` prints ``a`` and ``b``."""


_STRERROR = {
    "notfound": "No such file or directory",
    "notdir": "Not a directory",
    "loop": "Too many levels of symbolic links",
    "toolong": "File name too long",
    "invalid": "Invalid argument",
    "denied": "Permission denied",
}


@attrs.frozen
class _Target:
    mount: MountStatus
    #: Path inside the mount, as typed (``..`` kept: it is resolved, scoped, not cleaned).
    rest: str


@attrs.frozen
class TreeEntry:
    """One entry of :meth:`ContainerView.tree`: its path in the container, its depth below the
    start (the start is 0), its name, ``lstat`` mode and size, a symlink's target (never
    followed), for each level down to it whether that entry is the last of its directory (to draw
    the branches), and the image-volume mount that starts here, if one does. ``note`` marks a
    directory whose entries are not listed (deeper than the depth asked for, or unreadable)."""

    path: str
    depth: int
    name: str
    mode: int
    size: int = 0
    target: str = ""
    last: tuple[bool, ...] = ()
    mount: MountStatus | None = None
    note: str = ""


def _components(path: str) -> list[str]:
    return [c for c in path.split("/") if c not in ("", ".")]


class ContainerView:
    """``open_mount`` returns an ``O_PATH`` fd on what a mount status mounts (the runtime's
    :meth:`~imagevol.cri.RuntimeService.open_mount`)."""

    def __init__(self, container: str, mounts: Sequence[MountStatus], open_mount: Callable[[MountStatus], int]) -> None:
        self.container = container
        self.mounts = list(mounts)
        self.open_mount = open_mount
        self._points = {tuple(_components(m.container_path)): m for m in self.mounts}

    def _covering(self, parts: list[str]) -> tuple[MountStatus, list[str]] | None:
        """The innermost mount whose mount point is a prefix of ``parts``, and the rest."""
        for n in range(len(parts), -1, -1):
            found = self._points.get(tuple(parts[:n]))
            if found is not None:
                return found, parts[n:]
        return None

    def _target(self, cmd: str, path: str) -> _Target:
        """Find the mount ``path`` ends in. Mount points are plain directories of the container's
        own filesystem (not modelled), so outside every mount and at a mount's root ``..`` is
        lexical; inside a volume the rest is kept verbatim for the scoped resolver (links and
        ``..`` there depend on the volume's content), unless it walks onto a nested mount point."""
        if not path.startswith("/"):
            raise ViewError(f"{cmd}: {path}: paths in a container view must be absolute")
        prefix: list[str] = []  # container path of the current mount point (or position outside)
        mount: MountStatus | None = None
        rest: list[str] = []  # components inside the current mount, verbatim
        for c in path.split("/"):
            if mount is not None and (c != ".." or _components("/".join(rest))):
                rest.append(c)
                if ".." not in rest:
                    nested = self._points.get(tuple(prefix + _components("/".join(rest))))
                    if nested is not None:
                        mount, prefix, rest = nested, prefix + _components("/".join(rest)), []
                continue
            if c == "..":
                prefix = prefix[:-1]
                covering = self._covering(prefix) if mount is not None else None
                if covering is not None:  # back from a nested mount's root into its parent mount
                    mount, extra = covering
                    prefix, rest = prefix[: len(prefix) - len(extra)], extra
                    continue
            elif c not in ("", "."):
                prefix.append(c)
            mount, rest = self._points.get(tuple(prefix)), []
        if mount is None:
            listed = ", ".join(sorted(m.container_path for m in self.mounts)) or "none"
            raise ViewError(
                f"{cmd}: {path}: not inside any image-volume mount of container {self.container!r} "
                f"(imagevol models image-volume mounts only; mounts: {listed})"
            )
        return _Target(mount, "/".join(rest))

    def _mount_fd(self, m: MountStatus) -> int:
        try:
            return self.open_mount(m)
        except ImageVolError as exc:
            raise ViewError(str(exc)) from None

    def _open(self, cmd: str, path: str, *, follow: bool = True) -> int:
        """An ``O_PATH`` fd on ``path``, the final symlink followed or not."""
        target = self._target(cmd, path)
        mfd = self._mount_fd(target.mount)
        if not target.rest.strip("/"):
            return mfd
        try:
            if not stat.S_ISDIR(os.fstat(mfd).st_mode):
                raise CommandFailedError(f"{cmd}: {path}: Not a directory")
            parent, _, name = target.rest.rpartition("/")
            if follow or name in ("", ".", ".."):
                return sp.lookup(mfd, target.rest, sp.Policy.BENEATH, shown=path).fd
            pfd = sp.lookup(mfd, parent or ".", sp.Policy.BENEATH, shown=path).fd
            try:
                if not stat.S_ISDIR(os.fstat(pfd).st_mode):
                    raise CommandFailedError(f"{cmd}: {path}: Not a directory")
                # The last name is looked up in a directory we hold, without following it.
                return os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            except FileNotFoundError:
                raise CommandFailedError(f"{cmd}: {path}: No such file or directory") from None
            finally:
                os.close(pfd)
        except SubPathError as exc:
            if exc.kind == "escape":
                raise ViewError(
                    f"{cmd}: {path}: leads outside the volume mounted at {target.mount.container_path} "
                    "(into the container's own filesystem, which imagevol does not model)"
                ) from None
            raise CommandFailedError(f"{cmd}: {path}: {_STRERROR.get(exc.kind, exc.kind)}") from None
        finally:
            os.close(mfd)

    def cat(self, path: str) -> bytes:
        """The bytes of a regular file (``cat``)."""
        fd = self._open("cat", path)
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise CommandFailedError(f"cat: {path}: Is a directory")
            if not stat.S_ISREG(mode):
                # Never open a device node, FIFO or socket from an image: a block device would read
                # the host's disk, a FIFO would block forever. Mounts are nodev for the same reason.
                raise CommandFailedError(f"cat: {path}: {_kind(mode)}: not opened (image volumes are mounted nodev)")
            # Re-open the very inode we resolved, through its magic link (no name lookup).
            rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            with open(rfd, "rb") as f:
                return f.read()
        finally:
            os.close(fd)

    def ls(self, path: str) -> list[str]:
        """The names in a directory, sorted, or the path itself for a file (``ls``)."""
        fd = self._open("ls", path)
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
        """A symlink's target, never followed (``readlink``)."""
        fd = self._open("readlink", path, follow=False)
        try:
            if not stat.S_ISLNK(os.fstat(fd).st_mode):
                raise CommandFailedError(f"readlink: {path}: not a symbolic link")
            return os.readlink("", dir_fd=fd)
        finally:
            os.close(fd)

    def stat(self, path: str) -> str:
        """``stat``'s report on a path (the last symlink not followed)."""
        fd = self._open("stat", path, follow=False)
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

    def mount_points(self) -> list[MountStatus]:
        """The container's image-volume mounts not nested in another one, by mount path."""
        tops: list[MountStatus] = []
        for m in sorted(self.mounts, key=lambda m: _components(m.container_path)):
            parts = _components(m.container_path)
            # Sorted by components, a mount's ancestors come before it.
            if not any(_components(t.container_path) == parts[: len(_components(t.container_path))] for t in tops):
                tops.append(m)
        return tops

    def tree(self, path: str, max_depth: int | None = None) -> Iterator[TreeEntry]:
        """What the container sees at ``path`` and below (``max_depth`` levels at most), depth
        first, names sorted. Directories are listed from directory fds and each entry is looked
        up beneath its parent's fd without following it, so a symlink is listed with its target
        and never followed, and a directory that is a mount point shows that mount's content, as
        it does in the container."""
        capped = max_depth is None or max_depth > MAX_TREE_DEPTH
        limit = MAX_TREE_DEPTH if max_depth is None or capped else max_depth
        target = self._target("tree", path)
        mount = None if target.rest.strip("/") else target.mount
        start = "/" + "/".join(_components(path))
        fd = self._open("tree", path)
        try:
            st = os.fstat(fd)
            if not stat.S_ISDIR(st.st_mode):
                yield TreeEntry(start, 0, start, st.st_mode, st.st_size, mount=mount)
                return
            names, note = _listing(fd)
            yield TreeEntry(start, 0, start, st.st_mode, st.st_size, mount=mount, note=note)
            if limit > 0:
                yield from self._children(fd, names, start, (), limit, capped)
        finally:
            os.close(fd)

    def _children(
        self, fd: int, names: list[str], path: str, last: tuple[bool, ...], limit: int, capped: bool
    ) -> Iterator[TreeEntry]:
        depth = len(last) + 1
        for i, name in enumerate(names):
            child = f"{path.rstrip('/')}/{name}"
            here = (*last, i == len(names) - 1)
            mount = self._points.get(tuple(_components(child)))
            # A mount point shows the mount; anything else is looked up beneath the fd we hold.
            cfd = self._mount_fd(mount) if mount is not None else None
            try:
                st = os.fstat(cfd) if cfd is not None else os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    link = os.readlink(name, dir_fd=fd) if cfd is None and stat.S_ISLNK(st.st_mode) else ""
                    yield TreeEntry(child, depth, name, st.st_mode, st.st_size, link, here, mount)
                    continue
                if depth >= limit:
                    # Cut by -L is silent, as tree's -L; cut by the fd budget is said.
                    note = "deeper levels not shown" if capped else ""
                    yield TreeEntry(child, depth, name, st.st_mode, st.st_size, "", here, mount, note)
                    continue
                if cfd is None:
                    cfd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                entries, note = _listing(cfd)
                yield TreeEntry(child, depth, name, st.st_mode, st.st_size, "", here, mount, note)
                yield from self._children(cfd, entries, child, here, limit, capped)
            finally:
                if cfd is not None:
                    os.close(cfd)

    def run(self, argv: Sequence[str]) -> Iterator[bytes]:
        """Run one file command; yields output chunks. Raises :class:`CommandFailedError` after the
        last operand when any failed, :class:`ViewError` at once when the view cannot run it."""
        if argv and argv[0] in WRITE_COMMANDS:
            self._refuse_write(argv[0], [a for a in argv[1:] if not a.startswith("-")])
        if not argv or argv[0] not in COMMANDS:
            raise ViewError(
                f"exec: {argv[0] if argv else '(nothing)'}: only {', '.join(COMMANDS)} are available "
                "in a container view (use --real to run real commands where the host allows it)"
            )
        cmd, args = argv[0], [a for a in argv[1:] if not a.startswith("-")]
        if not args:
            raise CommandFailedError(f"{cmd}: missing operand")
        failed = []
        for path in args:
            try:
                yield self._run_one(cmd, path, listing_many=len(args) > 1)
            except CommandFailedError as exc:  # the next operand is still served, as by cat and ls
                failed.append(str(exc))
        if failed:
            raise CommandFailedError("\n".join(failed))

    def _run_one(self, cmd: str, path: str, *, listing_many: bool) -> bytes:
        if cmd == "cat":
            return self.cat(path)
        if cmd == "ls":
            names = self.ls(path)
            return ((f"{path}:\n" if listing_many else "") + "".join(f"{n}\n" for n in names)).encode()
        if cmd == "readlink":
            return (self.readlink(path) + "\n").encode()
        return (self.stat(path) + "\n").encode()

    def _refuse_write(self, cmd: str, args: list[str]) -> None:
        """A write into an image volume fails with ``Read-only file system``, as the ``ro`` mount
        makes it fail (BusyBox's wording); a write elsewhere is outside what the view models."""
        which = WRITE_COMMANDS[cmd]
        targets = args[-1:] if which == "last" else args[1:] if which == "rest" else args
        if not targets:
            raise CommandFailedError(f"{cmd}: missing operand")
        errors = []
        for path in targets:
            self._target(cmd, path)  # outside every mount: says so
            errors.append(f"{cmd}: {path}: Read-only file system")
        raise CommandFailedError("\n".join(errors))


def _listing(fd: int) -> tuple[list[str], str]:
    """The sorted names in the directory ``fd`` (an ``O_PATH`` fd, re-opened through its magic
    link for reading: no name lookup), or no names and why they cannot be read."""
    try:
        dfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return [], os.strerror(exc.errno or 0)
    try:
        return sorted(os.listdir(dfd)), ""
    except OSError as exc:
        return [], os.strerror(exc.errno or 0)
    finally:
        os.close(dfd)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode):
        return "character special file"
    if stat.S_ISBLK(mode):
        return "block special file"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _short(m: MountStatus) -> str:
    sub = f", sub path {m.sub_path!r}" if m.sub_path else ""
    return f"{m.user_specified_image} ({m.image_id[:19]}){sub}"
