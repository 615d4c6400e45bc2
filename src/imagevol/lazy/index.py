"""The merged index: the tree a full pull would build, from metadata only.

:func:`build_index` applies each layer's entries (from a verified TOC, or from one streaming pass
over a plain layer) bottom first to an in-memory tree, by exactly the layer applier's changeset
rules, so that the tree it ends with is the tree a full pull writes, entry for entry:

* names and per-entry checks are the applier's (:mod:`.rules`), in its order, with its error kinds:
  a stack a full pull refuses is refused here with the same ``LayerError`` kind;
* every parent is resolved *in root* against the tree as it stands, as the applier's walk does:
  symlinks in parents are followed (an absolute target restarts at the root, ``..`` stops there,
  40 follows at most), missing parents are made as 0755 directories, a real path of 4096 bytes or
  one deeper than the depth limit is ``toolong``. This is why the index is built bottom-up: where
  an upper entry lands can depend on a symlink a lower layer made, so no top-down merge can know it;
* whiteouts and opaque markers act on lower layers only, whatever their position in the layer
  (the paths this layer made, and their ancestors, are tracked), and a lower directory that
  survives one only because this layer wrote below it becomes the implicit 0755 directory it
  would be had the whiteout come first;
* anything at a name is replaced, except a directory by a directory, which keeps its children and
  takes the new attributes; duplicates apply in order, the last wins;
* hardlinks are resolved in root against the tree as it stands, must name an existing
  non-directory, and share its inode (so its content, wherever that came from); devices are
  skipped with no side effect; set-id bits are stripped and only ``user.*`` xattrs kept.

Nodes keep where their content comes from (:class:`Source`: layer and entry position) so that a
sub path's files can be fetched by range or extracted from their layer, and an inode number that
groups hardlinks.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import attrs

from .. import _gc
from ..errors import LayerError
from ..oci import Digest
from . import rules
from .toc import Entry

Path = tuple[str, ...]


@attrs.frozen(slots=True)
class Source:
    """Where a node came from: the ``entry``-th entry of layer ``layer`` (bottom layer 0)."""

    layer: int
    entry: int


@attrs.frozen(slots=True)
class Node:
    """One entry of the merged tree, by its real path (``.`` for the root). ``type`` is ``dir``,
    ``reg``, ``symlink`` or ``fifo``; ``mode`` is what the applier sets (no set-id bits; 0o777 for
    a symlink); ``ino`` is shared by hardlinks; ``implicit`` marks a directory no entry named (made
    as a missing parent, or reset by a whiteout), whose owner is the builder's and time unknown."""

    path: str
    type: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int | None
    target: str
    size: int
    digest: Digest | None
    source: Source | None
    ino: int
    xattrs: Mapping[str, bytes] | None = attrs.field(eq=False)
    implicit: bool = False


@attrs.frozen
class IndexLimits:
    """The applier's bounds (``LayerLimits``) and the owner it gives directories it makes."""

    max_entries: int = rules.MAX_ENTRIES
    max_depth: int = rules.MAX_DEPTH
    #: Owner of implicit directories: the builder's (root for a runtime).
    builder_ids: tuple[int, int] = (0, 0)


@attrs.define(eq=False, slots=True)
class _Inode:
    ino: int
    type: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int | None
    target: str = ""
    size: int = 0
    digest: Digest | None = None
    source: Source | None = None
    xattrs: dict[str, bytes] | None = None
    implicit: bool = False
    children: dict[str, _Inode] | None = None


def _enc_len(name: str) -> int:
    return len(name) if name.isascii() else len(os.fsencode(name))


class MergedIndex:
    """The merged tree of an image's layers; read it with :meth:`get`, :meth:`walk`,
    :meth:`hardlinks`. Built by :func:`build_index`."""

    def __init__(self, limits: IndexLimits = IndexLimits()) -> None:
        self.limits = limits
        self._inos = itertools.count(1)
        uid, gid = limits.builder_ids
        self.root = self.new_inode("dir", 0o755, uid, gid, None, implicit=True)
        #: Names of the device entries skipped, as the applier reports them.
        self.skipped_devices: list[str] = []
        self.layers = 0

    def new_inode(
        self,
        type_: str,
        mode: int,
        uid: int,
        gid: int,
        mtime_ns: int | None,
        *,
        target: str = "",
        size: int = 0,
        digest: Digest | None = None,
        source: Source | None = None,
        xattrs: dict[str, bytes] | None = None,
        implicit: bool = False,
    ) -> _Inode:
        """A new inode of the merged index (the next number), with the entry's metadata."""
        children: dict[str, _Inode] | None = {} if type_ == "dir" else None
        return _Inode(
            next(self._inos), type_, mode, uid, gid, mtime_ns, target, size, digest, source, xattrs, implicit, children
        )

    # --- reading -----------------------------------------------------------------------------------

    def get(self, path: str | Path) -> Node | None:
        """The node at the real path ``path`` (``.``/``""``/``()`` for the root; no symlink is
        followed), None if there is none."""
        parts = _parts(path)
        inode = self._lookup(parts)
        return None if inode is None else _node(parts, inode)

    def children(self, path: str | Path) -> list[str]:
        """The names in the directory at the real path ``path`` (empty for a non-directory)."""
        inode = self._lookup(_parts(path))
        return sorted(inode.children) if inode is not None and inode.children is not None else []

    def walk(self, path: str | Path = ()) -> Iterator[Node]:
        """The node at ``path`` and everything below it, parents before children, names sorted."""
        start = _parts(path)
        inode = self._lookup(start)
        if inode is None:
            return
        work: list[tuple[Path, _Inode]] = [(start, inode)]
        while work:
            here, node = work.pop()
            yield _node(here, node)
            if node.children:
                work.extend(((*here, name), node.children[name]) for name in sorted(node.children, reverse=True))

    def hardlinks(self, path: str | Path = ()) -> dict[int, tuple[str, ...]]:
        """Inode number -> the paths below ``path`` that share it, for inodes with two or more."""
        groups: dict[int, list[str]] = {}
        for node in self.walk(path):
            if node.type != "dir":
                groups.setdefault(node.ino, []).append(node.path)
        return {ino: tuple(paths) for ino, paths in groups.items() if len(paths) > 1}

    def _lookup(self, parts: Path) -> _Inode | None:
        inode = self.root
        for name in parts:
            if inode.children is None:
                return None
            nxt = inode.children.get(name)
            if nxt is None:
                return None
            inode = nxt
        return inode

    # --- in-root parent resolution (the applier's walk) ---------------------------------------------

    def _plain_parent(self, parts: Path) -> tuple[_Inode, Path] | None:
        """:meth:`parent`'s answer when every element of ``parts`` is a directory that exists and
        no length or depth limit can apply (nearly every entry of a layer): then nothing is made,
        no symlink is followed and the real path is ``parts`` itself. None otherwise."""
        node = self.root
        for name in parts:
            assert node.children is not None
            child = node.children.get(name)
            if child is None or child.type != "dir":
                return None  # missing, a symlink, a file, or "..": the full walk decides
            node = child
        if len(parts) > self.limits.max_depth or not _short(parts):
            return None
        return node, tuple(parts)

    def parent(
        self, parts: Path, *, create: bool, on_create: Callable[[Path], None] | None = None
    ) -> tuple[_Inode, Path] | None:
        """The directory ``parts`` resolved in root, and its real path. Missing directories are
        made (0755, implicit) when ``create``, else None is returned. A component that is not a
        directory is ``notdir``, the 41st symlink ``loop``, a name over 255 bytes, a real path of
        4096 bytes or more or deeper than the limit ``toolong``."""
        found = self._plain_parent(parts)
        if found is not None:
            return found
        stack: list[tuple[str, _Inode]] = []
        pending = list(reversed(parts))
        follows = 0
        real_len = 0
        shown = "/".join(parts)
        max_depth = self.limits.max_depth
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if stack:  # in root: `..` at the root stays there
                    real_len -= _enc_len(stack.pop()[0]) + 1
                continue
            cur = stack[-1][1] if stack else self.root
            assert cur.children is not None
            if _enc_len(name) > rules.NAME_MAX:
                raise LayerError("toolong", f"{shown[:80]!r}: a name on the way is too long")
            child = cur.children.get(name)
            if child is None:
                if not create:
                    return None
                if len(stack) >= max_depth or real_len + _enc_len(name) + 1 >= rules.PATH_MAX:
                    raise LayerError("toolong", f"{shown[:80]!r}... resolves to a path that is too long")
                if on_create is not None:
                    on_create((*(n for n, _ in stack), name))
                uid, gid = self.limits.builder_ids
                child = cur.children[name] = self.new_inode("dir", 0o755, uid, gid, None, implicit=True)
            if child.type == "dir":
                stack.append((name, child))
                real_len += _enc_len(name) + 1
                if real_len >= rules.PATH_MAX or len(stack) > max_depth:
                    raise LayerError("toolong", f"{shown[:80]!r}... resolves to a path that is too long")
            elif child.type == "symlink":
                follows += 1
                if follows > rules.MAX_SYMLINK_FOLLOWS:
                    raise LayerError("loop", f"too many levels of symbolic links in {shown!r}")
                if child.target.startswith("/"):
                    stack.clear()
                    real_len = 0
                pending.extend(reversed(child.target.split("/")))
            else:
                raise LayerError("notdir", f"{shown!r}: a parent is not a directory")
        return (stack[-1][1] if stack else self.root), tuple(n for n, _ in stack)


def _short(parts: Path) -> bool:
    """Whether ``parts`` is too short for any length rule to apply: a character encodes to at most
    four bytes, so neither a name nor the whole real path can reach its limit."""
    total = sum(map(len, parts)) + len(parts)
    return total <= rules.NAME_MAX // 4 or (4 * total < rules.PATH_MAX and 4 * max(map(len, parts)) <= rules.NAME_MAX)


def _parts(path: str | Path) -> Path:
    if isinstance(path, tuple):
        return path
    return tuple(p for p in path.split("/") if p and p != ".")


def _node(parts: Path, inode: _Inode) -> Node:
    return Node(
        path="/".join(parts) or ".",
        type=inode.type,
        mode=inode.mode,
        uid=inode.uid,
        gid=inode.gid,
        mtime_ns=inode.mtime_ns,
        target=inode.target,
        size=inode.size,
        digest=inode.digest,
        source=inode.source,
        ino=inode.ino,
        xattrs=inode.xattrs,
        implicit=inode.implicit,
    )


# --- building ---------------------------------------------------------------------------------------


def build_index(layers: Sequence[Iterable[Entry]], limits: IndexLimits = IndexLimits()) -> MergedIndex:
    """Apply ``layers`` (bottom first; each the entries of one layer in tar order) to an empty
    index. Raises ``LayerError`` with the kind a full pull of the same layers would raise."""
    index = MergedIndex(limits)
    with _gc.paused():
        for number, entries in enumerate(layers):
            _Layer(index, number).run(entries)
            index.layers += 1
    return index


class _Layer:
    """One layer's changeset applied to the index (the applier's ``ChangesetApplier``, minus the
    file system)."""

    def __init__(self, index: MergedIndex, number: int) -> None:
        self.index = index
        self.number = number
        #: Whiteouts act on lower layers only; with nothing lower there is nothing to track.
        self.track = bool(index.root.children)
        #: Real paths this layer made, and their ancestors: whiteouts never touch them.
        self.upper: set[Path] = set()
        #: Directories this layer named (forgotten when removed): their attributes are final.
        self.named: set[Path] = set()
        #: Directories this layer made or named, or reset to implicit.
        self.created: set[Path] = set()

    def run(self, entries: Iterable[Entry]) -> None:
        limit = self.index.limits.max_entries
        for position, entry in enumerate(entries):
            if position >= limit:
                raise LayerError("too_large", f"layer has more than {limit} entries")
            self.entry(entry, position)

    def mark_upper(self, real: Path) -> None:
        if not self.track:
            return
        if real[:-1] not in self.upper:
            for i in range(len(real)):
                self.upper.add(real[:i])
        self.upper.add(real)

    def forget(self, real: Path, was_dir: bool) -> None:
        self.named.discard(real)
        if was_dir:
            n = len(real)
            self.named.difference_update([p for p in self.named if p[:n] == real])

    def remove(self, parent: _Inode, name: str, real: Path) -> None:
        assert parent.children is not None
        gone = parent.children.pop(name, None)
        if gone is not None:
            self.forget(real, gone.type == "dir")

    # --- one entry ----------------------------------------------------------------------------

    def entry(self, e: Entry, position: int) -> None:
        limits = self.index.limits
        parts = rules.clean_name(e.name)
        rules.check_entry(e.name, parts, uid=e.uid, gid=e.gid, mtime_ns=e.mtime_ns, max_depth=limits.max_depth)
        if not parts:
            if e.type != "dir":
                raise LayerError("invalid_name", f"{e.name!r}: refusing to change the type of the root directory")
            self._set_dir(self.index.root, e)
            return
        victim = rules.whiteout_of(e.name, parts)
        if victim is not None:
            self.whiteout(parts, victim)
            return
        if e.type in ("char", "block"):
            # Skipped without any side effect (C2.8): no parent is made, nothing is replaced.
            self.index.skipped_devices.append(e.name)
            return
        found = self.index.parent(parts[:-1], create=True, on_create=self.created.add)
        assert found is not None
        parent, real_parent = found
        assert parent.children is not None
        base = parts[-1]
        real = (*real_parent, base)
        existing = parent.children.get(base)
        source = Source(self.number, position)
        mode = rules.applied_mode(e.mode)
        if e.type == "dir":
            if existing is None or existing.type != "dir":
                self.remove(parent, base, real)
                existing = parent.children[base] = self.index.new_inode("dir", mode, e.uid, e.gid, e.mtime_ns)
            self._set_dir(existing, e)
            existing.source = source
            self.named.add(real)
            self.created.add(real)
        elif e.type == "hardlink":
            self.hardlink(e, parent, base, real)
        else:
            if e.type == "symlink":
                rules.check_symlink_target(e.name, e.linkname)
            self.remove(parent, base, real)
            inode = self._new_leaf(e, mode, source)
            parent.children[base] = inode
        self.mark_upper(real)

    def _new_leaf(self, e: Entry, mode: int, source: Source) -> _Inode:
        xattrs = rules.kept_xattrs(dict(e.xattrs) if e.xattrs else None)
        if e.type == "symlink":
            return self.index.new_inode("symlink", 0o777, e.uid, e.gid, e.mtime_ns, target=e.linkname, source=source)
        if e.type == "fifo":
            return self.index.new_inode("fifo", mode, e.uid, e.gid, e.mtime_ns, source=source)
        if e.type != "reg":
            raise LayerError("unsupported", f"{e.name!r}: unsupported entry type {e.type!r}")
        return self.index.new_inode(
            "reg", mode, e.uid, e.gid, e.mtime_ns, size=e.size, digest=e.digest, source=source, xattrs=xattrs
        )

    def _set_dir(self, inode: _Inode, e: Entry) -> None:
        inode.mode = rules.applied_mode(e.mode)
        inode.uid, inode.gid, inode.mtime_ns = e.uid, e.gid, e.mtime_ns
        inode.xattrs = rules.kept_xattrs(dict(e.xattrs) if e.xattrs else None)
        inode.implicit = False

    def hardlink(self, e: Entry, parent: _Inode, base: str, real: Path) -> None:
        target = rules.clean_name(e.linkname, what="link target")
        if not target:
            raise LayerError("invalid_link", f"{e.name!r}: hardlink to the root directory")
        # Replace first, as the applier does: a link to itself, or into what it replaces, is notfound.
        self.remove(parent, base, real)
        found = self.index.parent(target[:-1], create=False)
        inode = None
        if found is not None:
            assert found[0].children is not None
            inode = found[0].children.get(target[-1])
        if inode is None:
            raise LayerError("notfound", f"{e.name!r}: hardlink target {e.linkname!r} does not exist")
        if inode.type == "dir":
            raise LayerError("invalid_link", f"{e.name!r}: hardlink to a directory")
        assert parent.children is not None
        parent.children[base] = inode  # the same inode: content, mode and owner are shared

    # --- whiteouts ---------------------------------------------------------------------------------

    def whiteout(self, parts: Path, victim: str) -> None:
        found = self.index.parent(parts[:-1], create=False)
        if found is None:
            return  # whiting out under a missing directory is a no-op and creates nothing
        if victim.startswith(rules.WHITEOUT_PREFIX):
            return  # such a name cannot exist in a tree (AUFS metadata): no-op
        if not self.track:
            return  # nothing lower to remove
        directory, real_parent = found
        assert directory.children is not None
        if not victim:
            self._clear_lower(directory, real_parent)
            return
        real = (*real_parent, victim)
        node = directory.children.get(victim)
        if node is None:
            return
        if real not in self.upper:
            self.remove(directory, victim, real)
        elif node.type == "dir":
            # This layer already wrote below it: remove only what came from lower layers, and
            # make it what it would be had the whiteout come first (an implicit directory).
            self._as_implicit(node, real)
            self._clear_lower(node, real)

    def _clear_lower(self, top: _Inode, top_path: Path) -> None:
        work = [(top, top_path)]
        while work:
            directory, here = work.pop()
            assert directory.children is not None
            for name, child in list(directory.children.items()):
                path = (*here, name)
                if path not in self.upper:
                    self.remove(directory, name, path)
                elif child.type == "dir":
                    work.append((child, path))
                    self._as_implicit(child, path)

    def _as_implicit(self, inode: _Inode, real: Path) -> None:
        if real in self.created or real in self.named:
            return
        self.created.add(real)
        inode.mode = 0o755
        inode.uid, inode.gid = self.index.limits.builder_ids
        inode.mtime_ns = None
        inode.implicit = True
