"""A pure, in-memory reference model of layer application and sub-path resolution.

It states the rules C1 and C2 of docs/requirements.md as plainly as possible, with no file
descriptors, no caches and no speed tricks, so that property tests can hold the real implementation
(:mod:`imagevol.trees.layers`, :mod:`imagevol.trees.subpath`) against it. Users can do the same in their own
suites: generate layer stacks with :mod:`imagevol.testing.strategies`, apply them with both, compare
:func:`listing` outputs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import attrs

from .tarbuild import TarEntry

NAME_MAX = 255
PATH_MAX = 4096
MAX_FOLLOWS = 40
_SETID = 0o6000

Path = tuple[str, ...]


class ModelError(Exception):
    """The model's verdict that a stack or a sub path is refused; ``kind`` as in the vectors."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@attrs.define
class Inode:
    """An inode of the model tree: its type, data or target, and children."""

    type: str  # dir | file | symlink | fifo
    data: bytes = b""
    target: str = ""
    mode: int = 0o755
    ino: int = 0


@attrs.define
class MemTree:
    """Paths (tuples of names) to inodes; the root is ``()`` and always a directory."""

    entries: dict[Path, Inode] = attrs.field(factory=lambda: {(): Inode("dir", mode=0o755)})
    _inos: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))

    def new(self, type_: str, **kw: object) -> Inode:
        """A new inode of ``type_``."""
        return Inode(type_, ino=next(self._inos), **kw)  # type: ignore[arg-type]

    def children(self, path: Path) -> list[Path]:
        """The paths directly below ``path``."""
        n = len(path)
        return [p for p in self.entries if len(p) == n + 1 and p[:n] == path]

    def remove(self, path: Path) -> None:
        """Remove ``path`` and everything below it."""
        n = len(path)
        for p in [p for p in self.entries if p[:n] == path]:
            del self.entries[p]


def _clean(name: str, kind: str) -> Path:
    if "\x00" in name:
        raise ModelError(kind)
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ModelError(kind)
    if len(name.encode("utf-8", "surrogateescape")) >= PATH_MAX or any(
        len(p.encode("utf-8", "surrogateescape")) > NAME_MAX for p in parts
    ):
        raise ModelError("toolong")
    return parts


def _resolve_dir(tree: MemTree, parts: Path, *, create: bool, followed: set[Path] | None = None) -> Path | None:
    """In-root resolution of a parent directory: links followed, absolute targets restart at the
    root, ``..`` is clamped at the root, 40 follows at most. The real paths of the links followed
    are added to ``followed`` when given."""
    cur: list[str] = []
    pending = list(reversed(parts))
    follows = 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            if cur:
                cur.pop()
            continue
        here = (*cur, name)
        node = tree.entries.get(here)
        if node is None:
            if not create:
                return None
            tree.entries[here] = tree.new("dir", mode=0o755)
            cur.append(name)
            continue
        if node.type == "symlink":
            follows += 1
            if follows > MAX_FOLLOWS:
                raise ModelError("loop")
            if followed is not None:
                followed.add(here)
            if node.target.startswith("/"):
                cur = []
            pending.extend(reversed(node.target.split("/")))
            continue
        if node.type != "dir":
            raise ModelError("notdir")
        cur.append(name)
    return tuple(cur)


def writes_through_whited_out_links(tree: MemTree, layer: Sequence[TarEntry]) -> bool:
    """True when an entry of ``layer`` reaches its parent through a symlink of ``tree`` (the lower
    layers) that the same layer whites out, explicitly or with an opaque marker. Only then does
    the position of a whiteout in a layer change the result: entries before it were written where
    the link pointed, entries after it where the link was."""
    followed: set[Path] = set()
    removed: set[Path] = set()
    cleared: set[Path] = set()
    for e in layer:
        try:
            parts = _clean(e.name, "invalid_name")
            parent = _resolve_dir(tree, parts[:-1], create=False, followed=followed)
        except ModelError:
            continue
        if not parts or parent is None:
            continue
        if parts[-1] == ".wh..wh..opq":
            cleared.add(parent)
        elif parts[-1].startswith(".wh."):
            removed.add((*parent, parts[-1][4:]))
    return any(link in removed or link[:-1] in cleared for link in followed)


def apply_layers_model(layers: Sequence[Sequence[TarEntry]]) -> MemTree:
    """Apply layers (bottom first) to an empty tree by the rules; raise ``ModelError`` on refusal."""
    tree = MemTree()
    for layer in layers:
        _apply_layer(tree, layer)
    return tree


def _apply_layer(tree: MemTree, entries: Iterable[TarEntry]) -> None:
    upper: set[Path] = set()
    declared: set[Path] = set()  # paths an entry of this layer named explicitly

    def mark(path: Path) -> None:
        for i in range(len(path) + 1):
            upper.add(path[:i])

    def clear_lower(directory: Path) -> None:
        for child in tree.children(directory):
            if child not in upper:
                tree.remove(child)
            elif tree.entries[child].type == "dir":
                clear_lower(child)
                if child not in declared:
                    # Kept only because this layer wrote below it: with the whiteout first it would
                    # have been removed and recreated implicitly, so it is a plain 0755 directory.
                    tree.entries[child].mode = 0o755

    for e in entries:
        name = e.pax.get("path", e.name) if e.pax else e.name
        parts = _clean(name, "invalid_name")
        base = parts[-1] if parts else ""
        if any(p.startswith(".wh.") for p in parts[:-1]):
            raise ModelError("invalid_name")
        if base.startswith(".wh."):
            opaque = base == ".wh..wh..opq"
            victim = base[4:]
            if not opaque and victim in ("", ".", ".."):
                raise ModelError("invalid_whiteout")
            parent = _resolve_dir(tree, parts[:-1], create=False)
            if parent is None or (not opaque and victim.startswith(".wh.")):
                # Nothing to white out under a missing directory; `.wh..wh.*` names are AUFS
                # metadata that cannot exist in a tree: no-ops.
                continue
            if opaque:
                clear_lower(parent)
                continue
            real = (*parent, victim)
            if real not in tree.entries:
                continue
            if real not in upper:
                tree.remove(real)
            elif tree.entries[real].type == "dir":
                clear_lower(real)
                if real not in declared:
                    # The position of a whiteout never matters: as if it had come first, the lower
                    # directory is gone and what this layer wrote below it recreated it plainly.
                    tree.entries[real].mode = 0o755
            continue
        if not parts:
            if e.type != "dir":
                raise ModelError("invalid_name")
            tree.entries[()].mode = _mode(e, "dir")
            continue
        if e.type in ("chardev", "blockdev"):
            continue
        parent = _resolve_dir(tree, parts[:-1], create=True)
        assert parent is not None
        real = (*parent, base)
        existing = tree.entries.get(real)
        if e.type == "dir":
            if existing is not None and existing.type != "dir":
                tree.remove(real)
                existing = None
            if existing is None:
                tree.entries[real] = tree.new("dir")
            tree.entries[real].mode = _mode(e, "dir")
            declared.add(real)
            mark(real)
            continue
        if e.type == "hardlink":
            target = _clean(e.pax.get("linkpath", e.linkname) if e.pax else e.linkname, "invalid_link")
            if not target:
                raise ModelError("invalid_link")
            if existing is not None:
                tree.remove(real)
            tparent = _resolve_dir(tree, target[:-1], create=False)
            if tparent is None:
                raise ModelError("notfound")
            inode = tree.entries.get((*tparent, target[-1]))
            if inode is None:
                raise ModelError("notfound")
            if inode.type == "dir":
                raise ModelError("invalid_link")
            tree.entries[real] = inode  # the same object: a hard link
            declared.add(real)
            mark(real)
            continue
        if existing is not None:
            tree.remove(real)
        if e.type == "symlink":
            if not e.linkname:
                raise ModelError("invalid_link")
            tree.entries[real] = tree.new("symlink", target=e.linkname, mode=0o777)
        elif e.type == "fifo":
            tree.entries[real] = tree.new("fifo", mode=_mode(e, "fifo"))
        elif e.type == "file":
            tree.entries[real] = tree.new("file", data=e.data, mode=_mode(e, "file"))
        else:
            raise ModelError("unsupported")
        declared.add(real)
        mark(real)


def _mode(e: TarEntry, kind: str) -> int:
    mode = e.mode if e.mode is not None else (0o755 if kind == "dir" else 0o644)
    return mode & 0o7777 & ~_SETID


def listing(tree: MemTree) -> dict[str, tuple[object, ...]]:
    """Canonical listing: path -> (type, mode, data or target, hardlink group)."""
    groups: dict[int, list[str]] = {}
    for path, inode in tree.entries.items():
        if path and inode.type != "dir":
            groups.setdefault(id(inode), []).append("/".join(path))
    out: dict[str, tuple[object, ...]] = {}
    for path, inode in sorted(tree.entries.items()):
        if not path:
            continue
        key = "/".join(path)
        payload: object = inode.data if inode.type == "file" else inode.target
        mode = None if inode.type == "symlink" else inode.mode
        group = tuple(sorted(groups.get(id(inode), []))) if inode.type != "dir" else ()
        out[key] = (inode.type, mode, payload, group if len(group) > 1 else ())
    return out


# --- sub paths ------------------------------------------------------------------------------------


def resolve_model(tree: MemTree, sub_path: str, policy: str = "beneath") -> str:
    """Resolve ``sub_path`` in ``tree`` by C1: returns the real path (``.`` for the root) or raises
    ``ModelError`` (invalid, escape, notfound, notdir, loop, toolong). ``policy`` is ``beneath``
    (escapes are errors) or ``in_root`` (absolute links re-rooted, ``..`` clamped)."""
    if "\x00" in sub_path or sub_path.startswith("/") or ".." in sub_path.split("/"):
        raise ModelError("invalid")
    raw = sub_path.encode("utf-8", "surrogateescape")
    if len(raw) >= PATH_MAX or any(len(p.encode("utf-8", "surrogateescape")) > NAME_MAX for p in sub_path.split("/")):
        raise ModelError("toolong")
    cur: list[str] = []
    pending = list(reversed(sub_path.split("/")))
    follows = 0
    at_file = False
    while pending:
        name = pending.pop()
        if at_file:
            raise ModelError("notdir")
        if name in ("", "."):
            continue
        if name == "..":
            if not cur:
                if policy == "beneath":
                    raise ModelError("escape")
                continue
            cur.pop()
            continue
        node = tree.entries.get((*cur, name))
        if node is None:
            raise ModelError("notfound")
        if node.type == "symlink":
            follows += 1
            if follows > MAX_FOLLOWS:
                raise ModelError("loop")
            if not node.target:
                raise ModelError("notfound")
            if node.target.startswith("/"):
                if policy == "beneath":
                    raise ModelError("escape")
                cur = []
            pending.extend(reversed(node.target.split("/")))
            continue
        cur.append(name)
        if node.type != "dir":
            at_file = True
    return "/".join(cur) or "."


def tree_from_entries(entries: Sequence[tuple[str, str, str]]) -> MemTree:
    """A tree from (path, type, data-or-target) triples, created in order (vector format)."""
    tree = MemTree()
    for path, type_, payload in entries:
        parts = tuple(path.split("/"))
        if type_ == "dir":
            tree.entries[parts] = tree.new("dir")
        elif type_ == "symlink":
            tree.entries[parts] = tree.new("symlink", target=payload, mode=0o777)
        else:
            tree.entries[parts] = tree.new("file", data=payload.encode(), mode=0o644)
    return tree
