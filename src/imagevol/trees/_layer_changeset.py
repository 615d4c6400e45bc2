"""The rules of one OCI layer changeset (C2 in docs/security.md): names, the entry dispatch, whiteouts
and opaque directories, and what a layer keeps of lower layers.

Why nothing can be written outside the root:

* Every parent is a directory fd from :class:`imagevol._layer_tree.Tree`, resolved in root (an
  absolute symlink target restarts at the root, ``..`` never climbs above it). No host path string
  is ever built, so no member name, symlink or hardlink can reach, create, remove, chmod, chown or
  re-time anything outside.
* The final component is never followed: files are created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` (which
  fails on any existing name, symlink included), directories with ``mkdirat``, links with
  ``symlinkat``/``linkat`` (no ``AT_SYMLINK_FOLLOW``); metadata is restored through the entry's own
  fd or handle, or with ``AT_SYMLINK_NOFOLLOW`` (:mod:`imagevol._layer_metadata`).
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

import os
import stat

import attrs

from ..errors import LayerError
from ..lazy.rules import OPAQUE_WHITEOUT, WHITEOUT_PREFIX, clean_name
from ..oci import Digest
from ._inroot import CREATE_NEW, PATH_ENTRY, PATH_MAX, lstat_at, umask
from ._layer_metadata import SETID, WRITE_BITS, BuildState, restore
from ._layer_primitives import create_or_replace, is_empty, list_dir_path
from ._layer_tree import Tree
from ._tarstream import BLK, CHR, DIR, FIFO, LINK, REG, SYMLINK, Member, TarReader

_MAX_ID = 2**32 - 2  # (uid_t)-1 means "leave unchanged" to chown(2): never a real owner
_MAX_TIME_NS = 2**63 - 1


class LayerEntryError(LayerError):
    """A :class:`LayerError` raised while applying one member; ``member`` is its decoded name."""

    def __init__(self, kind: str, message: str, member: str) -> None:
        super().__init__(kind, message)
        self.member = member


@attrs.define
class LayerStats:
    """What applying one layer did."""

    entries: int = 0
    files: int = 0
    bytes: int = 0
    skipped_devices: list[str] = attrs.field(factory=list)
    #: Digest of the whole uncompressed stream (when asked for): the layer's diff ID.
    diff_id: Digest | None = None


# --- names ---------------------------------------------------------------------------------------


# ``clean_name`` and the whiteout names are the lazy index's too (:mod:`imagevol.lazy.rules`): one
# definition, so a lazily built tree refuses exactly what this applier refuses.


# --- applying one layer ---------------------------------------------------------------------------


@attrs.define
class _DirAttrs:
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: dict[str, bytes] | None = None


class ChangesetApplier:
    """Applies the members of one layer to a :class:`Tree`, in order; :meth:`run` to the end."""

    def __init__(
        self,
        tree: Tree,
        stats: LayerStats,
        state: BuildState,
        *,
        preserve_owner: bool,
        strip_write_bits: bool,
        max_entries: int,
        max_depth: int,
    ) -> None:
        self.tree = tree
        self.stats = stats
        self.state = state
        self.max_entries = max_entries
        self.max_depth = max_depth
        self.umask = umask()
        self.owner = preserve_owner
        # chown of a new file is skipped when it would not change anything: it is created with our
        # euid and egid unless a set-gid directory hands down its group, and no directory below the
        # root is set-gid (every directory mode applied here has set-id stripped).
        root_st = os.fstat(tree.root_fd)
        self.default_ids = None if root_st.st_mode & stat.S_ISGID else (os.geteuid(), os.getegid())
        self.file_mask = 0o7777 & ~SETID & ~(WRITE_BITS if strip_write_bits else 0)
        #: Whiteouts act on lower layers only (C2.5). When the tree was empty before this layer
        #: there is nothing lower, so they remove nothing and ``upper`` need not be tracked.
        self.track = not is_empty(tree.root_fd)
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

    def _owner(self, m: Member) -> tuple[int, int] | None:
        """The owner to give a new entry, None when ``chown`` would change nothing."""
        if self.owner and (m.uid, m.gid) != self.default_ids:
            return m.uid, m.gid
        return None

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
        max_entries = self.max_entries
        stats = self.stats
        entry = self.entry
        next_member = reader.next
        tree = self.tree
        retired = tree.retired
        m: Member | None = None
        try:
            while (m := next_member()) is not None:
                stats.entries += 1
                if stats.entries > max_entries:
                    raise LayerError("too_large", f"layer has more than {max_entries} entries")
                try:
                    entry(m, reader)
                except LayerEntryError:
                    raise
                except LayerError as exc:
                    raise LayerEntryError(exc.kind, str(exc), m.name) from None
                finally:
                    if retired:
                        tree.end_entry()
        except BaseException:
            # The member being applied, or the last one read when reading the next one failed.
            self.current = m.name if m is not None else ""
            raise
        self.current = ""
        self.finish()

    def entry(self, m: Member, reader: TarReader) -> None:
        parts = clean_name(m.name)
        if len(parts) > self.max_depth:
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
        if real_parent not in self.touched:
            self.touch(dir_fd, real_parent)
        if kind == REG:
            self.regular(m, reader, dir_fd, base, real_parent)
            if self.track:
                self.mark_upper((*real_parent, base))
            return
        real = (*real_parent, base)
        if kind == DIR:
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
        if self.track:
            self.mark_upper(real)

    def regular(self, m: Member, reader: TarReader, dir_fd: int, base: str, real_parent: tuple[str, ...]) -> None:
        mode = m.mode & self.file_mask
        # create_or_replace, written out: this is the hot path (one call per file of the layer).
        try:
            fd = os.open(base, CREATE_NEW, mode, dir_fd=dir_fd)
        except FileExistsError:
            self.replace(dir_fd, base, (*real_parent, base))
            fd = os.open(base, CREATE_NEW, mode, dir_fd=dir_fd)
        try:
            if m.size:
                reader.copy_to(fd)
                self.stats.bytes += m.size
            owner = None
            if self.owner:  # _owner(), written out
                ids = (m.uid, m.gid)
                if ids != self.default_ids:
                    owner = ids
            if owner is None and not m.xattrs and not mode & self.umask:
                # Nothing but the times to set: what restore() would do, without its dispatch.
                os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))
            else:
                restore(
                    fd,
                    owner=owner,
                    mode=mode if mode & self.umask else None,  # else created with exactly this mode
                    xattrs=m.xattrs,
                    times=(m.mtime_ns, m.mtime_ns),
                )
        finally:
            os.close(fd)
        self.stats.files += 1

    def symlink(self, m: Member, dir_fd: int, base: str, real: tuple[str, ...]) -> None:
        target = m.linkname
        if not target or "\x00" in target:
            raise LayerError("invalid_link", f"{m.name!r}: symlink with an empty or NUL-containing target")
        if len(os.fsencode(target)) >= PATH_MAX:
            raise LayerError("toolong", f"{m.name!r}: symlink target is too long")
        # The target text is stored verbatim (C2.7); it is only ever interpreted in root.
        create_or_replace(lambda: os.symlink(target, base, dir_fd=dir_fd), lambda: self.replace(dir_fd, base, real))
        restore((dir_fd, base), owner=self._owner(m), times=(m.mtime_ns, m.mtime_ns))

    def fifo(self, m: Member, dir_fd: int, base: str, real: tuple[str, ...]) -> None:
        mode = m.mode & self.file_mask
        create_or_replace(lambda: os.mkfifo(base, mode, dir_fd=dir_fd), lambda: self.replace(dir_fd, base, real))
        # The rest goes through an O_PATH|O_NOFOLLOW handle on the FIFO just made, never a link.
        pfd = os.open(base, PATH_ENTRY, dir_fd=dir_fd)
        try:
            if not stat.S_ISFIFO(os.fstat(pfd).st_mode):
                raise LayerError("io", f"{m.name!r}: the FIFO was replaced while being created")
            restore(
                f"/proc/self/fd/{pfd}",
                owner=self._owner(m),
                mode=mode if mode & self.umask else None,
                times=(m.mtime_ns, m.mtime_ns),
            )
        finally:
            os.close(pfd)

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
            sub = os.open(victim, PATH_ENTRY | os.O_DIRECTORY, dir_fd=dir_fd)
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
                    for name, is_dir in list_dir_path(dir_fd):
                        child = (*real, name)
                        if child not in self.upper:
                            self.tree.remove(dir_fd, name)
                            self.forget(child, is_dir)
                        elif is_dir:
                            sub = os.open(name, PATH_ENTRY | os.O_DIRECTORY, dir_fd=dir_fd)
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
        # ``fd`` is an O_PATH|O_NOFOLLOW handle: through its magic link, this very inode.
        restore(f"/proc/self/fd/{fd}", owner=(os.geteuid(), os.getegid()), mode=0o755, times=None)

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
                mode = a.mode & 0o7777 & ~SETID
                if self.state.defer and mode & 0o700 != 0o700:
                    self.state.deferred[real] = mode
                    mode |= 0o700
                else:
                    self.state.deferred.pop(real, None)
                owner = (a.uid, a.gid) if self.owner else None
                restore(fd, owner=owner, mode=mode, xattrs=a.xattrs, times=(a.mtime_ns, a.mtime_ns))
            finally:
                os.close(fd)
        for real, times in self.touched.items():
            if real in self.dirs:
                continue
            fd = self.tree.open_real(real)
            if fd is None:
                continue
            try:
                restore(fd, times=times)
            finally:
                os.close(fd)
        self.dirs.clear()
        self.touched.clear()
