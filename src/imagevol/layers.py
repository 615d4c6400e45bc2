"""Applying OCI layer changesets to a directory, safely (safe-paths.md C2).

Every filesystem call is relative to a directory file descriptor that was reached from the tree's
root fd by :class:`_Tree`, which resolves parents *in root*: symlinks in parent components are
followed, but an absolute target restarts at the tree root and ``..`` stops at it. Nothing is ever
looked up by a host path string, so no entry, however named or linked, can create, remove, chmod,
chown or re-time anything outside the tree. The final component of an entry is never followed: what
is there is replaced (except directory over directory).

The tar stream is only *parsed* by ``tarfile`` (after PAX and GNU long names are decoded); CPython's
extraction and its filters are not used and are not the safety boundary (safe-paths.md D).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import os
import stat
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from typing import IO, Any

import attrs

from ._openat2 import O_PATH
from .errors import LayerError

NAME_MAX = 255
PATH_MAX = 4096
MAX_SYMLINK_FOLLOWS = 40
WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
_SETID = stat.S_ISUID | stat.S_ISGID
_COPY_CHUNK = 1024 * 1024


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


# --- decompression -------------------------------------------------------------------------------

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _CountingReader(io.RawIOBase):
    """Counts bytes read from the decompressed stream and stops at the limit (a bomb)."""

    def __init__(self, inner: IO[bytes], limit: int) -> None:
        self.inner = inner
        self.limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        n = len(data)
        self.count += n
        if self.count > self.limit:
            raise LayerError("too_large", f"layer expands beyond the {self.limit}-byte limit")
        buffer[:n] = data
        return n


def open_layer(blob: IO[bytes], limits: LayerLimits = LayerLimits()) -> IO[bytes]:
    """The uncompressed tar stream of a layer blob. The compression is sniffed from the magic
    bytes, as containerd does, so a mislabelled media type cannot smuggle another format past."""
    head = blob.read(4)
    rest: Any = _Prefixed(head, blob)
    inner: Any
    if head[:2] == _GZIP_MAGIC:
        inner = gzip.GzipFile(fileobj=rest, mode="rb")
    elif head == _ZSTD_MAGIC:
        import zstandard

        inner = zstandard.ZstdDecompressor().stream_reader(rest, read_across_frames=True)
    else:
        inner = rest
    return io.BufferedReader(_CountingReader(inner, limits.max_bytes), buffer_size=_COPY_CHUNK)


class _Prefixed(io.RawIOBase):
    def __init__(self, head: bytes, inner: IO[bytes]) -> None:
        self.head = head
        self.inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.inner.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


# --- names ---------------------------------------------------------------------------------------


def clean_name(name: str, *, what: str = "name") -> tuple[str, ...]:
    """Validate a decoded member name and return its components (C2.1).

    Leading ``/`` and ``.``/empty elements are dropped (names are root-relative); NUL, any ``..``
    element, an element over 255 bytes or a path of 4096 bytes or more are refused."""
    kind = "invalid_name" if what == "name" else "invalid_link"
    if "\x00" in name:
        raise LayerError(kind, f"{what} {name!r} contains NUL")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise LayerError(kind, f"{what} {name!r} contains a '..' element")
    if len(os.fsencode(name)) >= PATH_MAX or any(len(os.fsencode(p)) > NAME_MAX for p in parts):
        raise LayerError("toolong", f"{what} {name[:80]!r}... is too long")
    return parts


# --- the tree -------------------------------------------------------------------------------------


class _Tree:
    """A directory tree addressed only through fds below ``root_fd``.

    ``parent()`` resolves a parent path in root and caches directory fds by the *lexical* path. Any
    operation that removes or replaces an existing entry clears the cache, because a cached
    resolution may have passed through what was just replaced (a symlink turned into a directory,
    or the reverse)."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self._cache: dict[tuple[str, ...], tuple[int, tuple[str, ...]]] = {}
        self._retired: list[int] = []

    def close(self) -> None:
        self.invalidate()
        self.end_entry()

    def invalidate(self) -> None:
        # The fds may still be in use by the entry being applied: close them after it.
        self._retired.extend(fd for fd, _ in self._cache.values())
        self._cache.clear()

    def end_entry(self) -> None:
        for fd in self._retired:
            os.close(fd)
        self._retired.clear()

    def parent(self, parts: tuple[str, ...], *, create: bool) -> tuple[int, tuple[str, ...]] | None:
        """(fd, real path) of the directory ``parts``, resolved in root. Missing directories are
        created (0755) when ``create``; otherwise ``None`` is returned for a missing one. Raises
        ``notdir`` if a component is not a directory and ``loop`` after 40 symlinks."""
        if not parts:
            return self.root_fd, ()
        hit = self._cache.get(parts)
        if hit is not None:
            return hit
        found = self._walk(parts, create=create)
        if found is not None:
            self._cache[parts] = found
        return found

    def _walk(self, parts: tuple[str, ...], *, create: bool) -> tuple[int, tuple[str, ...]] | None:
        # `stack` holds (fd, name) of the directories walked from the root; `..` pops (clamped at
        # the root) and an absolute link target empties it, so it can never point above the root.
        stack: list[tuple[int, str]] = []
        pending = list(reversed(parts))
        follows = 0

        def cur() -> int:
            return stack[-1][0] if stack else self.root_fd

        try:
            while pending:
                name = pending.pop()
                if name in ("", "."):
                    continue
                if name == "..":
                    if stack:
                        os.close(stack.pop()[0])
                    continue
                try:
                    fd = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur())
                except FileNotFoundError:
                    if not create:
                        return None
                    os.mkdir(name, 0o755, dir_fd=cur())
                    fd = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=cur())
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
                    pending.extend(reversed(target.split("/")))
                    continue
                if not stat.S_ISDIR(mode):
                    os.close(fd)
                    raise LayerError("notdir", f"{'/'.join(parts)!r}: a parent is not a directory")
                stack.append((fd, name))
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
        anything on the way is missing or not a directory (it was replaced after being recorded)."""
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.root_fd)
        for name in parts:
            try:
                nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError:
                nxt = -1
            os.close(fd)
            if nxt < 0:
                return None
            fd = nxt
        return fd

    def lstat(self, dir_fd: int, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def remove(self, dir_fd: int, name: str) -> None:
        """Remove ``name`` (recursively for a directory) without following any symlink."""
        st = self.lstat(dir_fd, name)
        if st is None:
            return
        self.invalidate()
        if stat.S_ISDIR(st.st_mode):
            _rmtree_at(dir_fd, name)
        else:
            os.unlink(name, dir_fd=dir_fd)


def _rmtree_at(dir_fd: int, name: str) -> None:
    """Remove a directory tree below ``dir_fd`` using only fd-relative calls. Directories without
    write or search permission (mode 0000 in a layer) are made accessible first."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except PermissionError:
        os.chmod(name, 0o700, dir_fd=dir_fd, follow_symlinks=True)  # it is a directory, not a link
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if os.fstat(fd).st_mode & 0o700 != 0o700:
            os.fchmod(fd, 0o700)
        for entry in os.scandir(fd):
            if entry.is_dir(follow_symlinks=False):
                _rmtree_at(fd, entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def rmtree(path: str) -> None:
    """Remove a tree we own (a snapshot or staging directory), whatever its modes."""
    parent, name = os.path.split(os.path.abspath(path))
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                _rmtree_at(pfd, name)
            else:
                os.unlink(name, dir_fd=pfd)
    finally:
        os.close(pfd)


# --- applying one layer ----------------------------------------------------------------------------


@attrs.define
class _DirAttrs:
    parts: tuple[str, ...]
    mode: int
    uid: int
    gid: int
    mtime: float


class _LayerApplier:
    def __init__(self, tree: _Tree, options: ApplyOptions) -> None:
        self.tree = tree
        self.options = options
        #: Real paths this layer created, and their ancestors: whiteouts never touch them (C2.5).
        self.upper: set[tuple[str, ...]] = set()
        self.dirs: dict[tuple[str, ...], _DirAttrs] = {}
        self.entries = 0

    def forget(self, real: tuple[str, ...]) -> None:
        """``real`` was removed or replaced: its recorded directory attributes no longer apply."""
        n = len(real)
        for key in [k for k in self.dirs if k[:n] == real]:
            del self.dirs[key]

    def mark_upper(self, real: tuple[str, ...]) -> None:
        for i in range(len(real) + 1):
            self.upper.add(real[:i])

    def apply(self, stream: IO[bytes]) -> None:
        try:
            tf = tarfile.open(fileobj=stream, mode="r|", errorlevel=2)  # noqa: SIM115 - closed below
        except tarfile.ReadError as exc:
            raise LayerError("invalid_archive", f"not a tar archive: {exc}") from None
        try:
            for member in _members(tf):
                self.entries += 1
                if self.entries > self.options.limits.max_entries:
                    raise LayerError("too_large", f"layer has more than {self.options.limits.max_entries} entries")
                try:
                    self.apply_member(tf, member)
                finally:
                    self.tree.end_entry()
        finally:
            tf.close()
        self.finish_dirs()

    def apply_member(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        if m.issparse():
            raise LayerError("unsupported", f"{m.name!r}: sparse files are not supported")
        parts = clean_name(m.name)
        if len(parts) > self.options.limits.max_depth:
            raise LayerError("toolong", f"{m.name!r} is nested too deeply")
        base = parts[-1] if parts else ""
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(parts)
            return
        if any(p.startswith(WHITEOUT_PREFIX) for p in parts[:-1]):
            raise LayerError("invalid_name", f"{m.name!r}: a directory name cannot start with '.wh.'")
        if not parts:
            if not m.isdir():
                raise LayerError("invalid_name", f"{m.name!r}: refusing to change the type of the root directory")
            self.dirs[()] = _DirAttrs((), m.mode, m.uid, m.gid, m.mtime)
            return
        if m.ischr() or m.isblk():
            return  # devices are skipped without any side effect (C2.8)
        found = self.tree.parent(parts[:-1], create=True)
        assert found is not None
        dir_fd, real_parent = found
        real = (*real_parent, base)
        existing = self.tree.lstat(dir_fd, base)
        if m.isdir():
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                self.tree.remove(dir_fd, base)
                self.forget(real)
                existing = None
            if existing is None:
                os.mkdir(base, 0o700, dir_fd=dir_fd)
            self.dirs[real] = _DirAttrs(real, m.mode, m.uid, m.gid, m.mtime)
            self.mark_upper(real)
            return
        if m.islnk():
            self.hardlink(m, dir_fd, base, real, existing)
            return
        if existing is not None:
            self.tree.remove(dir_fd, base)
            self.forget(real)
        if m.issym():
            if not m.linkname:
                raise LayerError("invalid_link", f"{m.name!r}: symlink with an empty target")
            os.symlink(m.linkname, base, dir_fd=dir_fd)
            self._own(dir_fd, base, m, follow=False)
            os.utime(base, ns=(int(m.mtime * 1e9),) * 2, dir_fd=dir_fd, follow_symlinks=False)
        elif m.isfifo():
            os.mkfifo(base, m.mode & 0o777, dir_fd=dir_fd)
            self._own(dir_fd, base, m, follow=False)
            os.chmod(base, _mode(m.mode), dir_fd=dir_fd, follow_symlinks=True)  # a fifo, just made
            os.utime(base, ns=(int(m.mtime * 1e9),) * 2, dir_fd=dir_fd, follow_symlinks=False)
        elif m.isreg():
            fd = os.open(
                base,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
            try:
                src = tf.extractfile(m)
                if src is not None:
                    _copy(src, fd, m.size)
                if self.options.preserve_owner:
                    os.fchown(fd, m.uid, m.gid)
                os.fchmod(fd, _mode(m.mode))
                os.utime(fd, ns=(int(m.mtime * 1e9),) * 2)
            finally:
                os.close(fd)
        else:
            raise LayerError("unsupported", f"{m.name!r}: unsupported tar entry type {m.type!r}")
        self.mark_upper(real)

    def _own(self, dir_fd: int, name: str, m: tarfile.TarInfo, *, follow: bool) -> None:
        if self.options.preserve_owner:
            os.chown(name, m.uid, m.gid, dir_fd=dir_fd, follow_symlinks=follow)

    def hardlink(
        self,
        m: tarfile.TarInfo,
        dir_fd: int,
        base: str,
        real: tuple[str, ...],
        existing: os.stat_result | None,
    ) -> None:
        target = clean_name(m.linkname, what="link target")
        if not target:
            raise LayerError("invalid_link", f"{m.name!r}: hardlink to the root directory")
        if existing is not None:
            self.tree.remove(dir_fd, base)
            self.forget(real)
        found = self.tree.parent(target[:-1], create=False)
        if found is None:
            raise LayerError("notfound", f"{m.name!r}: hardlink target {m.linkname!r} does not exist")
        tdir, _ = found
        st = self.tree.lstat(tdir, target[-1])
        if st is None:
            raise LayerError("notfound", f"{m.name!r}: hardlink target {m.linkname!r} does not exist")
        if stat.S_ISDIR(st.st_mode):
            raise LayerError("invalid_link", f"{m.name!r}: hardlink to a directory")
        # follow_symlinks=False: a link to a symlink links the symlink itself (never its target).
        os.link(target[-1], base, src_dir_fd=tdir, dst_dir_fd=dir_fd, follow_symlinks=False)
        self.mark_upper(real)

    def whiteout(self, parts: tuple[str, ...]) -> None:
        base = parts[-1]
        if any(p.startswith(WHITEOUT_PREFIX) for p in parts[:-1]):
            raise LayerError("invalid_name", f"{'/'.join(parts)!r}: a directory name cannot start with '.wh.'")
        opaque = base == OPAQUE_WHITEOUT
        victim = base[len(WHITEOUT_PREFIX) :]
        if not opaque and (not victim or victim in (".", "..") or "/" in victim):
            raise LayerError("invalid_whiteout", f"invalid whiteout {'/'.join(parts)!r}")
        if not opaque and victim.startswith(WHITEOUT_PREFIX):
            raise LayerError("invalid_whiteout", f"invalid whiteout {'/'.join(parts)!r}")
        found = self.tree.parent(parts[:-1], create=False)
        if found is None:
            return  # whiting out under a missing directory is a no-op and creates nothing
        dir_fd, real_parent = found
        if opaque:
            self._clear_lower(dir_fd, real_parent)
            return
        real = (*real_parent, victim)
        st = self.tree.lstat(dir_fd, victim)
        if st is None:
            return
        if real not in self.upper:
            self.tree.remove(dir_fd, victim)
            self.forget(real)
        elif stat.S_ISDIR(st.st_mode):
            # This layer already wrote below it: remove only what came from lower layers.
            sub = os.open(victim, O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                self._clear_lower(sub, real)
            finally:
                os.close(sub)

    def _clear_lower(self, dir_fd: int, real: tuple[str, ...]) -> None:
        """Remove every child of the directory ``real`` that this layer did not create."""
        names = _list_dir(dir_fd)
        for name, is_dir in names:
            child = (*real, name)
            if child not in self.upper:
                self.tree.remove(dir_fd, name)
                self.forget(child)
            elif is_dir:
                sub = os.open(name, O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                try:
                    self._clear_lower(sub, child)
                finally:
                    os.close(sub)

    def finish_dirs(self) -> None:
        """Apply directory attributes deepest first, after all children exist (C2.9)."""
        for attrs_ in sorted(self.dirs.values(), key=lambda d: len(d.parts), reverse=True):
            fd = self.tree.open_real(attrs_.parts)
            if fd is None:
                continue
            try:
                if self.options.preserve_owner:
                    os.fchown(fd, attrs_.uid, attrs_.gid)
                os.fchmod(fd, _mode(attrs_.mode))
                os.utime(fd, ns=(int(attrs_.mtime * 1e9),) * 2)
            finally:
                os.close(fd)
        self.dirs.clear()


def _list_dir(dir_fd: int) -> list[tuple[str, bool]]:
    """(name, is_dir) of the entries of a directory given by a (possibly O_PATH) handle."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        with os.scandir(fd) as it:
            return [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    finally:
        os.close(fd)


def _mode(mode: int) -> int:
    """Permissions kept, set-uid and set-gid stripped (C2.9); the sticky bit stays."""
    return mode & 0o7777 & ~_SETID


def _copy(src: IO[bytes], fd: int, size: int) -> None:
    remaining = size
    while remaining > 0:
        chunk = src.read(min(_COPY_CHUNK, remaining))
        if not chunk:
            raise LayerError("invalid_archive", "unexpected end of layer data")
        write_all(fd, chunk)
        remaining -= len(chunk)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _members(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while True:
        try:
            member = tf.next()
        except tarfile.TarError as exc:
            raise LayerError("invalid_archive", f"corrupt tar stream: {exc}") from None
        except (EOFError, OSError, zlib.error) as exc:
            raise LayerError("invalid_archive", f"corrupt layer stream: {exc}") from None
        if member is None:
            return
        yield member


# --- public entry points ------------------------------------------------------------------------


def apply_layers(root: str, layers: Iterable[IO[bytes]], options: ApplyOptions = ApplyOptions()) -> None:
    """Apply layer blobs (compressed or not, sniffed) bottom first to the directory ``root``.

    On error the tree is left half-applied: callers build in a staging directory and discard it
    (see :mod:`imagevol.snapshots`); nothing outside ``root`` is ever touched."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for blob in layers:
            apply_layer_fd(root_fd, blob, options)
    finally:
        os.close(root_fd)


def apply_layer_fd(root_fd: int, blob: IO[bytes], options: ApplyOptions = ApplyOptions()) -> None:
    """Apply one layer blob below ``root_fd``."""
    tree = _Tree(root_fd)
    try:
        stream = open_layer(blob, options.limits)
        try:
            _LayerApplier(tree, options).apply(stream)
        except OSError as exc:
            raise _os_error(exc) from None
    finally:
        tree.close()


def _os_error(exc: OSError) -> LayerError:
    kind = {
        errno.ENOTDIR: "notdir",
        errno.ELOOP: "loop",
        errno.ENAMETOOLONG: "toolong",
        errno.ENOENT: "notfound",
    }.get(exc.errno or 0, "io")
    return LayerError(kind, f"applying layer: {os.strerror(exc.errno or 0)}")
