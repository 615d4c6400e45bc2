"""Applying OCI layer changesets to a directory, safely and fast (safe-paths.md C2).

Why nothing can be written outside the root:

* Every filesystem call is relative to a directory fd reached from the root fd by :class:`Tree`, one
  component at a time with ``O_PATH|O_NOFOLLOW``. A symlink met on the way is read and its text spliced
  into the walk *in root*: an absolute target restarts at the root, ``..`` pops a directory fd and
  never goes above the root, 40 follows at most. No host path string is ever built, so no member
  name, symlink or hardlink can reach, create, remove, chmod, chown or re-time anything outside.
* The final component is never followed: files are created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` (which
  fails on any existing name, symlink included), directories with ``mkdirat``, links with
  ``symlinkat``/``linkat`` (no ``AT_SYMLINK_FOLLOW``); ownership and times of symlinks use the
  ``AT_SYMLINK_NOFOLLOW`` calls; modes, owners and times of files are set through the open fd.
* Whatever exists under a name is removed first (except directory over directory), recursively and
  with fd-relative calls only; a cached directory fd is dropped whenever a directory or symlink is
  removed, because a cached resolution may have passed through it.
* Names are validated after decoding (:mod:`imagevol.tarstream` applies PAX and GNU long names), so
  what is checked is what is used.

The output stays close to ``umoci raw unpack`` (the differential oracle): whiteouts only touch lower
layers (``upper`` paths, whatever their position in the layer), directory attributes are applied
after the layer's last entry, directories that the layer changes without naming them keep their
times. Deliberate differences are listed in ``docs/security.md``.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from typing import IO

import attrs

from ._openat2 import O_PATH
from ._text import goquote
from .decompress import ChunkPipe
from .errors import DiffIDMismatchError, LayerError
from .oci import Digest
from .tarstream import BLK, CHR, DIR, FIFO, LINK, REG, SYMLINK, Member, TarReader

log = logging.getLogger(__name__)

NAME_MAX = 255
PATH_MAX = 4096
MAX_SYMLINK_FOLLOWS = 40
WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
_SETID = stat.S_ISUID | stat.S_ISGID
_WRITE_BITS = 0o222
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "leave unchanged" to chown(2): never a real owner
_MAX_TIME_NS = 2**63 - 1
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_XATTR_NAMESPACES = ("user.",)


class LayerEntryError(LayerError):
    """A :class:`LayerError` raised while applying one member; ``member`` is its decoded name."""

    def __init__(self, kind: str, message: str, member: str) -> None:
        super().__init__(kind, message)
        self.member = member


@attrs.frozen
class LayerLimits:
    """Bounds that stop decompression bombs and pathological archives."""

    max_entries: int = 2_000_000
    max_bytes: int = 64 * 1024**3  # uncompressed tar bytes, per layer
    max_depth: int = 512


@attrs.frozen
class ApplyOptions:
    limits: LayerLimits = LayerLimits()
    #: Apply uid/gid from the headers (only possible, and only attempted, as root).
    preserve_owner: bool = attrs.field(factory=lambda: os.geteuid() == 0)
    #: Create files and FIFOs without write bits (a tree that will be published read-only).
    strip_write_bits: bool = False
    #: Decompress in a background thread (overlaps with the writes on another CPU).
    threaded: bool = True


@attrs.define
class LayerStats:
    """What applying one layer did."""

    entries: int = 0
    files: int = 0
    bytes: int = 0
    skipped_devices: list[str] = attrs.field(factory=list)
    #: Digest of the whole uncompressed stream (when asked for): the layer's diff ID.
    diff_id: Digest | None = None


class BuildState:
    """What outlives one layer of a build: the modes of directories that an unprivileged builder
    must keep open to itself (owner ``rwx``) until the last layer is applied, because a later layer
    may write into them. Privileged builders (root) apply every mode at once and defer nothing."""

    def __init__(self, *, defer: bool | None = None) -> None:
        self.defer = os.geteuid() != 0 if defer is None else defer
        self.deferred: dict[tuple[str, ...], int] = {}

    def forget(self, real: tuple[str, ...]) -> None:
        n = len(real)
        for key in [k for k in self.deferred if k[:n] == real]:
            del self.deferred[key]

    def finish(self, root_fd: int, *, strip_write: bool = False) -> None:
        """Apply the deferred modes (without write bits when ``strip_write``), deepest first, so
        that no directory is closed to us before its children are done."""
        tree = Tree(root_fd)
        for real in sorted(self.deferred, key=len, reverse=True):
            fd = tree.open_real(real)
            if fd is None:
                continue
            try:
                os.fchmod(fd, self.deferred[real] & ~(_WRITE_BITS if strip_write else 0))
            finally:
                os.close(fd)
        self.deferred.clear()


# --- names ---------------------------------------------------------------------------------------


def clean_name(name: str, *, what: str = "name") -> tuple[str, ...]:
    """Validate a decoded member name (or hardlink target) and return its components (C2.1).

    Leading ``/`` and ``.``/empty elements are dropped (names are root-relative); NUL or any ``..``
    element is refused; an element over 255 bytes or a normalised path of 4096 bytes or more is
    ``toolong``."""
    kind = "invalid_name" if what == "name" else "invalid_link"
    if "\x00" in name:
        raise LayerError(kind, f"{what} {name!r} contains NUL")
    parts = tuple(p for p in name.split("/") if p and p != ".")
    if ".." in parts:
        raise LayerError(kind, f"{what} {name!r} contains a '..' element")
    # A str of n characters encodes to at most 4n bytes (surrogate escapes to 1), so short names
    # need no encoding to be checked.
    if len(name) > NAME_MAX // 4 and (
        len(os.fsencode("/".join(parts))) >= PATH_MAX or any(len(os.fsencode(p)) > NAME_MAX for p in parts)
    ):
        raise LayerError("toolong", f"{what} {name[:80]!r}... is too long")
    return parts


# --- the tree ------------------------------------------------------------------------------------


class Tree:
    """A directory tree addressed only through fds below ``root_fd``.

    :meth:`parent` resolves a directory path in root and caches its fd by the *lexical* path (a
    bounded cache). :meth:`remove` drops the cache when it removes a directory or a symlink: a
    cached resolution may have passed through either. (A removed regular file cannot have been
    passed through.)"""

    MAX_CACHED = 256

    def __init__(self, root_fd: int, *, max_depth: int = 512) -> None:
        self.root_fd = root_fd
        self.max_depth = max_depth
        self._cache: dict[tuple[str, ...], tuple[int, tuple[str, ...]]] = {}
        self._retired: list[int] = []
        #: Called as (dir fd, real path of the dir, real path of the new child) before a missing
        #: parent is created in an existing directory.
        self.on_implicit_mkdir: Callable[[int, tuple[str, ...], tuple[str, ...]], None] | None = None

    def close(self) -> None:
        self.invalidate()
        self.end_entry()

    def invalidate(self) -> None:
        # The fds may still be in use by the entry being applied: they are closed after it.
        self._retired.extend(fd for fd, _ in self._cache.values())
        self._cache.clear()

    def end_entry(self) -> None:
        if self._retired:
            for fd in self._retired:
                os.close(fd)
            self._retired.clear()

    def parent(self, parts: tuple[str, ...], *, create: bool) -> tuple[int, tuple[str, ...]] | None:
        """(fd, real path) of the directory ``parts``, resolved in root. Missing directories are
        created (0755) when ``create``; otherwise ``None`` is returned for a missing one. Raises
        ``notdir`` if a component is not a directory, ``loop`` after 40 symlinks and ``toolong``
        when the real path would be 4096 bytes or longer."""
        if not parts:
            return self.root_fd, ()
        hit = self._cache.get(parts)
        if hit is not None:
            return hit
        found = self._walk(parts, create=create)
        if found is not None:
            if len(self._cache) >= self.MAX_CACHED:
                oldest = next(iter(self._cache))
                self._retired.append(self._cache.pop(oldest)[0])
            self._cache[parts] = found
        return found

    def _walk(self, parts: tuple[str, ...], *, create: bool) -> tuple[int, tuple[str, ...]] | None:
        # `stack` holds (fd, name) of the real directories walked from the root: `..` pops (never
        # below the root) and an absolute link target empties it, so it cannot point above the root.
        stack: list[tuple[int, str]] = []
        pending = list(reversed(parts))
        follows = 0
        real_len = 0
        try:
            while pending:
                name = pending.pop()
                if name in ("", "."):
                    continue
                if name == "..":
                    if stack:
                        fd, popped = stack.pop()
                        os.close(fd)
                        real_len -= len(os.fsencode(popped)) + 1
                    continue
                cur = stack[-1][0] if stack else self.root_fd
                try:
                    fd = os.open(name, _PATH_FLAGS, dir_fd=cur)
                except FileNotFoundError:
                    if not create:
                        return None
                    if self.on_implicit_mkdir is not None:
                        here = tuple(n for _, n in stack)
                        self.on_implicit_mkdir(cur, here, (*here, name))
                    _mkdir_exact(cur, name, 0o755)
                    fd = os.open(name, _PATH_FLAGS | os.O_DIRECTORY, dir_fd=cur)
                mode = os.fstat(fd).st_mode
                if stat.S_ISLNK(mode):
                    try:
                        target = os.readlink("", dir_fd=fd)
                    finally:
                        os.close(fd)
                    follows += 1
                    if follows > MAX_SYMLINK_FOLLOWS:
                        raise LayerError("loop", f"too many levels of symbolic links in {'/'.join(parts)!r}")
                    if target.startswith("/"):
                        while stack:
                            os.close(stack.pop()[0])
                        real_len = 0
                    pending.extend(reversed(target.split("/")))
                    continue
                if not stat.S_ISDIR(mode):
                    os.close(fd)
                    raise LayerError("notdir", f"{'/'.join(parts)!r}: a parent is not a directory")
                stack.append((fd, name))
                real_len += len(os.fsencode(name)) + 1
                if real_len >= PATH_MAX or len(stack) > self.max_depth:
                    raise LayerError("toolong", f"{'/'.join(parts)[:80]!r}... resolves to a path that is too long")
            if not stack:
                return os.dup(self.root_fd), ()
            real = tuple(n for _, n in stack)
            fd, _ = stack.pop()
            return fd, real
        finally:
            for fd, _ in stack:
                os.close(fd)

    def open_real(self, parts: tuple[str, ...]) -> int | None:
        """A readable fd on the directory at the real path ``parts``, following no symlink; None if
        it no longer exists as a directory."""
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.root_fd)
        for name in parts:
            try:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except (FileNotFoundError, NotADirectoryError):
                os.close(fd)
                return None
            except OSError as exc:
                os.close(fd)
                if exc.errno == errno.ELOOP:  # replaced by a symlink
                    return None
                raise
            os.close(fd)
            fd = nxt
        return fd

    def remove(self, dir_fd: int, name: str, st: os.stat_result | None = None) -> os.stat_result | None:
        """Remove ``name`` (recursively for a directory) without following any symlink; return what
        it was (None if nothing was there)."""
        if st is None:
            st = lstat_at(dir_fd, name)
            if st is None:
                return None
        if stat.S_ISDIR(st.st_mode):
            self.invalidate()
            _rmtree_at(dir_fd, name)
        else:
            if stat.S_ISLNK(st.st_mode):
                self.invalidate()
            os.unlink(name, dir_fd=dir_fd)
        return st


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race with other threads)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o777  # unknown: assume every bit may be masked, so modes are always set explicitly


def _mkdir_exact(dir_fd: int, name: str, mode: int) -> None:
    """mkdirat with exactly ``mode`` whatever the umask."""
    os.mkdir(name, mode, dir_fd=dir_fd)
    if mode & _umask():
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)


def _open_dir_for_removal(dir_fd: int, name: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        # A directory without read/search permission (mode 0000 in a layer): make it ours first.
        # chmod goes through an O_PATH|O_NOFOLLOW handle, so it acts on this very inode.
        pfd = os.open(name, _PATH_FLAGS | os.O_DIRECTORY, dir_fd=dir_fd)
        try:
            os.chmod(f"/proc/self/fd/{pfd}", 0o700)
        finally:
            os.close(pfd)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _list_dir(fd: int) -> list[tuple[str, bool]]:
    """(name, is_dir) of the entries of the directory open as ``fd``; symlinks are not dirs."""
    with os.scandir(fd) as it:
        return [(e.name, e.is_dir(follow_symlinks=False)) for e in it]


def _rmtree_at(dir_fd: int, name: str) -> None:
    """Remove the directory ``name`` below ``dir_fd`` and everything in it, iteratively (a layer can
    nest 2000 levels deep), with fd-relative calls only; modes that forbid it are lifted first."""
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


def _removal_frame(dir_fd: int, name: str) -> tuple[int, str, list[tuple[str, bool]]]:
    fd = _open_dir_for_removal(dir_fd, name)
    try:
        if os.fstat(fd).st_mode & 0o700 != 0o700:
            os.fchmod(fd, 0o700)  # we own it (or are root): let us list and unlink in it
        return fd, name, _list_dir(fd)
    except BaseException:
        os.close(fd)
        raise


def rmtree(path: str) -> None:
    """Remove a tree we own (a snapshot or staging directory), whatever its modes."""
    parent, name = os.path.split(os.path.abspath(path))
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st = lstat_at(pfd, name)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            _rmtree_at(pfd, name)
        else:
            os.unlink(name, dir_fd=pfd)
    finally:
        os.close(pfd)


# --- applying one layer ---------------------------------------------------------------------------


@attrs.define
class _DirAttrs:
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: dict[str, bytes] | None = None


class _LayerApplier:
    def __init__(self, tree: Tree, options: ApplyOptions, stats: LayerStats, state: BuildState) -> None:
        self.tree = tree
        self.options = options
        self.stats = stats
        self.state = state
        self.umask = _umask()
        self.owner = options.preserve_owner
        # chown of a new file is skipped when it would not change anything: it is created with our
        # euid and egid unless a set-gid directory hands down its group, and no directory below the
        # root is set-gid (every directory mode applied here has set-id stripped).
        root_st = os.fstat(tree.root_fd)
        self.default_ids = None if root_st.st_mode & stat.S_ISGID else (os.geteuid(), os.getegid())
        self.file_mask = 0o7777 & ~_SETID & ~(_WRITE_BITS if options.strip_write_bits else 0)
        #: Whiteouts act on lower layers only (C2.5). When the tree was empty before this layer
        #: there is nothing lower, so they remove nothing and ``upper`` need not be tracked.
        self.track = not _is_empty(tree.root_fd)
        #: Real paths this layer created, and their ancestors: whiteouts never touch them.
        self.upper: set[tuple[str, ...]] = set()
        #: Directory entries of this layer: attributes applied after the last entry (C2.9).
        self.dirs: dict[tuple[str, ...], _DirAttrs] = {}
        #: Directories this layer changed: their times are put back unless the layer names them.
        self.touched: dict[tuple[str, ...], tuple[int, int]] = {}
        #: Directories this layer created (named or implicit).
        self.created: set[tuple[str, ...]] = set()
        self.current = ""
        tree.on_implicit_mkdir = self._implicit_mkdir

    def _implicit_mkdir(self, dir_fd: int, real: tuple[str, ...], child: tuple[str, ...]) -> None:
        self.touch(dir_fd, real)
        self.created.add(child)

    # --- bookkeeping -----------------------------------------------------------------------------

    def mark_upper(self, real: tuple[str, ...]) -> None:
        if not self.track:
            return
        upper = self.upper
        if real[:-1] not in upper:
            for i in range(len(real)):
                upper.add(real[:i])
        upper.add(real)

    def touch(self, fd: int, real: tuple[str, ...]) -> None:
        if real not in self.touched:
            st = os.fstat(fd)
            self.touched[real] = (st.st_atime_ns, st.st_mtime_ns)

    def forget(self, real: tuple[str, ...], was_dir: bool) -> None:
        """``real`` was removed: recorded attributes of it (and, for a directory, below it) go."""
        self.dirs.pop(real, None)
        self.touched.pop(real, None)
        if was_dir:
            self.state.forget(real)
            n = len(real)
            for table in (self.dirs, self.touched):
                for key in [k for k in table if k[:n] == real]:
                    del table[key]

    def replace(self, dir_fd: int, base: str, real: tuple[str, ...]) -> None:
        st = self.tree.remove(dir_fd, base)
        if st is not None:
            self.forget(real, stat.S_ISDIR(st.st_mode))

    # --- the layer -----------------------------------------------------------------------------

    def run(self, reader: TarReader) -> None:
        max_entries = self.options.limits.max_entries
        stats = self.stats
        while True:
            m = reader.next()
            if m is None:
                break
            stats.entries += 1
            if stats.entries > max_entries:
                raise LayerError("too_large", f"layer has more than {max_entries} entries")
            self.current = m.name
            try:
                self.entry(m, reader)
            except LayerEntryError:
                raise
            except LayerError as exc:
                raise LayerEntryError(exc.kind, str(exc), m.name) from None
            finally:
                self.tree.end_entry()
        self.current = ""
        self.finish()

    def entry(self, m: Member, reader: TarReader) -> None:
        parts = clean_name(m.name)
        if len(parts) > self.options.limits.max_depth:
            raise LayerError("toolong", f"{m.name!r} is nested too deeply")
        if not (0 <= m.uid <= _MAX_ID and 0 <= m.gid <= _MAX_ID):
            raise LayerError("invalid_archive", f"{m.name!r}: uid/gid {m.uid}:{m.gid} out of range")
        if not -_MAX_TIME_NS <= m.mtime_ns <= _MAX_TIME_NS:
            raise LayerError("invalid_archive", f"{m.name!r}: modification time out of range")
        if not parts:
            if m.type != DIR:
                raise LayerError("invalid_name", f"{m.name!r}: refusing to change the type of the root directory")
            self.dirs[()] = _DirAttrs(m.mode, m.uid, m.gid, m.mtime_ns, m.xattrs)
            return
        base = parts[-1]
        if WHITEOUT_PREFIX in m.name:
            if any(p.startswith(WHITEOUT_PREFIX) for p in parts[:-1]):
                raise LayerError("invalid_name", f"{m.name!r}: a directory name cannot start with '.wh.'")
            if base.startswith(WHITEOUT_PREFIX):
                self.whiteout(parts)
                return
        kind = m.type
        if kind in (CHR, BLK):
            # Skipped without any side effect (C2.8): no parent is created, nothing is replaced.
            self.stats.skipped_devices.append(m.name)
            return
        found = self.tree.parent(parts[:-1], create=True)
        assert found is not None
        dir_fd, real_parent = found
        self.touch(dir_fd, real_parent)
        real = (*real_parent, base)
        if kind == REG:
            self.regular(m, reader, dir_fd, base, real)
        elif kind == DIR:
            try:
                os.mkdir(base, 0o700, dir_fd=dir_fd)
            except FileExistsError:
                st = lstat_at(dir_fd, base)
                if st is None or not stat.S_ISDIR(st.st_mode):
                    self.replace(dir_fd, base, real)
                    os.mkdir(base, 0o700, dir_fd=dir_fd)
            self.dirs[real] = _DirAttrs(m.mode, m.uid, m.gid, m.mtime_ns, m.xattrs)
            self.created.add(real)
        elif kind == SYMLINK:
            self.symlink(m, dir_fd, base, real)
        elif kind == LINK:
            self.hardlink(m, dir_fd, base, real)
        elif kind == FIFO:
            self.fifo(m, dir_fd, base, real)
        else:  # pragma: no cover - the reader only returns the types above
            raise LayerError("unsupported", f"{m.name!r}: unsupported tar entry type {kind!r}")
        self.mark_upper(real)

    def regular(self, m: Member, reader: TarReader, dir_fd: int, base: str, real: tuple[str, ...]) -> None:
        mode = m.mode & self.file_mask
        try:
            fd = os.open(base, _CREATE_FLAGS, mode, dir_fd=dir_fd)
        except FileExistsError:
            self.replace(dir_fd, base, real)
            fd = os.open(base, _CREATE_FLAGS, mode, dir_fd=dir_fd)
        try:
            if m.size:
                reader.copy_to(fd)
                self.stats.bytes += m.size
            if self.owner and (m.uid, m.gid) != self.default_ids:
                os.fchown(fd, m.uid, m.gid)
            if mode & self.umask:
                os.fchmod(fd, mode)
            if m.xattrs:
                _set_xattrs(fd, m.xattrs)
            os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))
        finally:
            os.close(fd)
        self.stats.files += 1

    def _create_or_replace(self, create: Callable[[], None], dir_fd: int, base: str, real: tuple[str, ...]) -> None:
        """Create first; only on ``EEXIST`` replace what is there (never followed) and create again:
        one syscall in the common case."""
        try:
            create()
        except FileExistsError:
            self.replace(dir_fd, base, real)
            create()

    def symlink(self, m: Member, dir_fd: int, base: str, real: tuple[str, ...]) -> None:
        target = m.linkname
        if not target or "\x00" in target:
            raise LayerError("invalid_link", f"{m.name!r}: symlink with an empty or NUL-containing target")
        if len(os.fsencode(target)) >= PATH_MAX:
            raise LayerError("toolong", f"{m.name!r}: symlink target is too long")
        # The target text is stored verbatim (C2.7); it is only ever interpreted in root.
        self._create_or_replace(lambda: os.symlink(target, base, dir_fd=dir_fd), dir_fd, base, real)
        if self.owner and (m.uid, m.gid) != self.default_ids:
            os.chown(base, m.uid, m.gid, dir_fd=dir_fd, follow_symlinks=False)
        os.utime(base, ns=(m.mtime_ns, m.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)

    def fifo(self, m: Member, dir_fd: int, base: str, real: tuple[str, ...]) -> None:
        mode = m.mode & self.file_mask
        self._create_or_replace(lambda: os.mkfifo(base, mode, dir_fd=dir_fd), dir_fd, base, real)
        if self.owner and (m.uid, m.gid) != self.default_ids:
            os.chown(base, m.uid, m.gid, dir_fd=dir_fd, follow_symlinks=False)
        if mode & self.umask:
            # chmod through an O_PATH|O_NOFOLLOW handle: the FIFO just made, never a link.
            pfd = os.open(base, _PATH_FLAGS, dir_fd=dir_fd)
            try:
                if not stat.S_ISFIFO(os.fstat(pfd).st_mode):
                    raise LayerError("io", f"{m.name!r}: the FIFO was replaced while being created")
                os.chmod(f"/proc/self/fd/{pfd}", mode)
            finally:
                os.close(pfd)
        os.utime(base, ns=(m.mtime_ns, m.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)

    def hardlink(self, m: Member, dir_fd: int, base: str, real: tuple[str, ...]) -> None:
        target = clean_name(m.linkname, what="link target")
        if not target:
            raise LayerError("invalid_link", f"{m.name!r}: hardlink to the root directory")
        # Replace first, as containerd and umoci do: what the entry replaces is gone before the
        # target is looked up (a link to itself, or to a path below what it replaces, is notfound).
        if lstat_at(dir_fd, base) is not None:
            self.replace(dir_fd, base, real)
        # The target is looked up in the tree only (its parent in root, its last component not
        # followed): a host inode can never be linked in (C2.6).
        found = self.tree.parent(target[:-1], create=False)
        if found is None:
            raise LayerError("notfound", f"{m.name!r}: hardlink target {m.linkname!r} does not exist")
        tdir, _ = found
        for attempt in range(2):
            try:
                # follow_symlinks=False: a link to a symlink links the symlink itself.
                os.link(target[-1], base, src_dir_fd=tdir, dst_dir_fd=dir_fd, follow_symlinks=False)
                return
            except FileExistsError:
                if attempt:
                    raise
                # Replace first, then link: a link to itself (or into what it replaces) fails.
                self.replace(dir_fd, base, real)
            except FileNotFoundError:
                raise LayerError("notfound", f"{m.name!r}: hardlink target {m.linkname!r} does not exist") from None
            except PermissionError:
                st = lstat_at(tdir, target[-1])
                if st is not None and stat.S_ISDIR(st.st_mode):
                    raise LayerError("invalid_link", f"{m.name!r}: hardlink to a directory") from None
                raise

    # --- whiteouts -------------------------------------------------------------------------------

    def whiteout(self, parts: tuple[str, ...]) -> None:
        base = parts[-1]
        opaque = base == OPAQUE_WHITEOUT
        victim = base[len(WHITEOUT_PREFIX) :]
        if not opaque and victim in ("", ".", ".."):
            raise LayerError("invalid_whiteout", f"invalid whiteout {'/'.join(parts)!r}")
        found = self.tree.parent(parts[:-1], create=False)
        if found is None:
            return  # whiting out under a missing directory is a no-op and creates nothing
        if not opaque and victim.startswith(WHITEOUT_PREFIX):
            return  # such a name cannot exist in a tree (AUFS metadata, e.g. .wh..wh.plnk): no-op
        if not self.track:
            return  # nothing lower to remove
        dir_fd, real_parent = found
        if opaque:
            self.touch(dir_fd, real_parent)
            self._clear_lower(dir_fd, real_parent)
            return
        real = (*real_parent, victim)
        st = lstat_at(dir_fd, victim)
        if st is None:
            return
        self.touch(dir_fd, real_parent)
        if real not in self.upper:
            self.tree.remove(dir_fd, victim, st)
            self.forget(real, stat.S_ISDIR(st.st_mode))
        elif stat.S_ISDIR(st.st_mode):
            # This layer already wrote below it: remove only what came from lower layers, and
            # make it what it would be had the whiteout come first (an implicit directory).
            sub = os.open(victim, _PATH_FLAGS | os.O_DIRECTORY, dir_fd=dir_fd)
            try:
                self._as_implicit(sub, real)
                self._clear_lower(sub, real)
            finally:
                os.close(sub)

    def _clear_lower(self, top_fd: int, top: tuple[str, ...]) -> None:
        """Remove everything below the directory ``top`` that this layer did not create; descend
        (iteratively) into the directories it did create or pass through."""
        work: list[tuple[int, tuple[str, ...], bool]] = [(top_fd, top, False)]
        try:
            while work:
                dir_fd, real, owned = work.pop()
                try:
                    for name, is_dir in _list_dir_path(dir_fd):
                        child = (*real, name)
                        if child not in self.upper:
                            self.tree.remove(dir_fd, name)
                            self.forget(child, is_dir)
                        elif is_dir:
                            sub = os.open(name, _PATH_FLAGS | os.O_DIRECTORY, dir_fd=dir_fd)
                            work.append((sub, child, True))
                            self._as_implicit(sub, child)
                finally:
                    if owned:
                        os.close(dir_fd)
        finally:
            for fd, _, owned in work:
                if owned:
                    os.close(fd)

    def _as_implicit(self, fd: int, real: tuple[str, ...]) -> None:
        """A lower directory survives a whiteout only because this layer wrote below it before the
        whiteout. Had the whiteout come first (its position must not matter), the directory would
        have been removed and created again implicitly: give it those attributes (0755, our owner,
        the time of this unpack) unless this layer names it."""
        if real in self.created or real in self.dirs:
            return
        self.created.add(real)
        self.touched.pop(real, None)
        os.chmod(f"/proc/self/fd/{fd}", 0o755)  # an O_PATH|O_NOFOLLOW handle on this very inode
        os.chown(f"/proc/self/fd/{fd}", os.geteuid(), os.getegid())
        os.utime(f"/proc/self/fd/{fd}")

    # --- end of layer ----------------------------------------------------------------------------

    def finish(self) -> None:
        """Directory attributes deepest first, after all children exist (a 0000 directory with
        children); then the times of directories the layer changed without naming them."""
        for real in sorted(self.dirs, key=len, reverse=True):
            a = self.dirs[real]
            fd = self.tree.open_real(real)
            if fd is None:
                continue
            try:
                if self.owner:
                    os.fchown(fd, a.uid, a.gid)
                mode = a.mode & 0o7777 & ~_SETID
                if self.state.defer and mode & 0o700 != 0o700:
                    self.state.deferred[real] = mode
                    mode |= 0o700
                else:
                    self.state.deferred.pop(real, None)
                os.fchmod(fd, mode)
                if a.xattrs:
                    _set_xattrs(fd, a.xattrs)
                os.utime(fd, ns=(a.mtime_ns, a.mtime_ns))
            finally:
                os.close(fd)
        for real, times in self.touched.items():
            if real in self.dirs:
                continue
            fd = self.tree.open_real(real)
            if fd is None:
                continue
            try:
                os.utime(fd, ns=times)
            finally:
                os.close(fd)
        self.dirs.clear()
        self.touched.clear()


def _is_empty(dir_fd: int) -> bool:
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        with os.scandir(fd) as it:
            return next(it, None) is None
    finally:
        os.close(fd)


def _list_dir_path(dir_fd: int) -> list[tuple[str, bool]]:
    """(name, is_dir) of a directory given by a (possibly O_PATH) handle."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return _list_dir(fd)
    finally:
        os.close(fd)


def _set_xattrs(fd: int, xattrs: dict[str, bytes]) -> None:
    """Restore ``user.*`` extended attributes; every other namespace is dropped (security.capability
    would grant privileges, trusted.* and ACLs change access) and failures are ignored."""
    for name, value in xattrs.items():
        if name.startswith(_XATTR_NAMESPACES):
            try:
                os.setxattr(fd, name, value)
            except OSError:
                log.debug("ignoring xattr %r that this filesystem refuses", name)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


# --- public entry points ------------------------------------------------------------------------


def apply_layers(
    root: str,
    layers: Iterable[IO[bytes]],
    options: ApplyOptions = ApplyOptions(),
    diff_ids: Sequence[Digest] | None = None,
) -> list[LayerStats]:
    """Apply layer blobs (compressed or not, sniffed) bottom first to the directory ``root``.
    With ``diff_ids`` (one per layer, as an image config lists them), each layer's uncompressed
    stream must hash to its diff ID, else :class:`DiffIDMismatchError` after that layer.

    On error the tree is left half-applied: callers build in a staging directory and discard it
    (see :mod:`imagevol.snapshots`); nothing outside ``root`` is ever touched."""
    blobs = list(layers)
    if diff_ids is not None and len(diff_ids) != len(blobs):
        raise DiffIDMismatchError(f"number of layers and diffIDs don't match: {len(blobs)} != {len(diff_ids)}")
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        state = BuildState()
        stats = []
        for i, blob in enumerate(blobs):
            want = diff_ids[i] if diff_ids is not None else None
            one = apply_layer_fd(root_fd, blob, options, state, diff_algorithm=want.algorithm if want else None)
            if want is not None and one.diff_id != want:
                raise DiffIDMismatchError(f"wrong diff id calculated on extraction {goquote(str(one.diff_id))}")
            stats.append(one)
        state.finish(root_fd)
        return stats
    finally:
        os.close(root_fd)


def apply_layer_fd(
    root_fd: int,
    blob: IO[bytes],
    options: ApplyOptions = ApplyOptions(),
    state: BuildState | None = None,
    *,
    diff_algorithm: str | None = None,
) -> LayerStats:
    """Apply one layer blob below ``root_fd``. Pass one ``state`` to every layer of a build and call
    its ``finish`` after the last (without one, the layer is finished on its own). With
    ``diff_algorithm`` (``sha256``...), ``stats.diff_id`` is the digest of the whole uncompressed
    stream, end-of-archive padding and anything after it included, as containerd computes it."""
    if state is None:
        own = BuildState()
        stats = apply_layer_fd(root_fd, blob, options, own, diff_algorithm=diff_algorithm)
        own.finish(root_fd)
        return stats
    stats = LayerStats()
    tree = Tree(root_fd, max_depth=options.limits.max_depth)
    hasher = hashlib.new(diff_algorithm) if diff_algorithm else None
    pipe = ChunkPipe(blob, options.limits.max_bytes, threaded=options.threaded, hasher=hasher)
    applier: _LayerApplier | None = None
    try:
        reader = TarReader(pipe.read)
        applier = _LayerApplier(tree, options, stats, state)
        applier.run(reader)
        reader.drain()  # the rest of the blob is read too: it is hashed and gzip-checked to its end
    except OSError as exc:
        raise _os_error(exc, applier.current if applier else "") from None
    finally:
        pipe.close()
        tree.close()
    if hasher is not None and diff_algorithm is not None:
        # The pipe has returned its end: the producer hashed every chunk before handing it over.
        stats.diff_id = Digest(diff_algorithm, hasher.hexdigest())
    if stats.skipped_devices:
        log.info("skipped %d device node(s), e.g. %r", len(stats.skipped_devices), stats.skipped_devices[0])
    return stats


def _os_error(exc: OSError, member: str) -> LayerError:
    kind = {
        errno.ENOTDIR: "notdir",
        errno.ELOOP: "loop",
        errno.ENAMETOOLONG: "toolong",
        errno.ENOENT: "notfound",
    }.get(exc.errno or 0, "io")
    if member:
        return LayerEntryError(kind, f"applying layer at {member!r}: {os.strerror(exc.errno or 0)}", member)
    return LayerError(kind, f"applying layer: {os.strerror(exc.errno or 0)}")
