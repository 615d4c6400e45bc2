"""Sub paths resolved on the merged index, and what must be written for the result to be served.

:func:`resolve` is the fd-based resolver's walk over the index instead of a directory tree: the
same string rules first, then one component at a time from the root, ``..`` popping a directory,
symlink text spliced in front of what is left, the final component followed (Kubernetes
semantics), 40 follows at most. The two policies:

* ``BENEATH`` (containerd, kubelet): an absolute link, or ``..`` at the root, is an ``escape``;
* ``IN_ROOT`` (CRI-O, libpathrs): an absolute link restarts at the root, ``..`` stops there.

Outcomes and error kinds (invalid, escape, notfound, notdir, loop, toolong, denied) are the
fd-based resolver's on the fully applied tree, and errors are worded the same way. The walk never
leaves the index, so it cannot reach the host whatever the links say; after materialisation the
fd-based resolver runs again on the partial tree as a second gate.

:func:`closure` lists what a partial tree needs so that this second resolution takes the same
path and the container sees the same subtree: every directory and symlink the walk passed (with
their ancestors), the resolved entry and, for a directory, everything below it, and the hardlink
groups among them. Content of every regular file comes from its inode's source, wherever that is
(a hardlink target outside the subtree included). Symlinks inside the subtree stay as written: the
container resolves them in its own view.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable

import attrs

from . import rules
from .index import MergedIndex, Node, Path


class Policy(enum.StrEnum):
    """How absolute symlinks and ``..`` at the root are treated (values as the resolver's)."""

    BENEATH = "beneath"
    IN_ROOT = "in_root"


@attrs.frozen
class Follower:
    """Who resolves, for the two checks that depend on it. The default is root, as a runtime
    runs: root searches every directory. ``owns_everything``: a tree built without root, where
    every entry belongs to the follower, so a directory needs its owner ``x`` bit to be searched.
    ``protected_symlinks``: the kernel's ``fs.protected_symlinks`` (a trailing symlink in a sticky
    world-writable directory is followed only if the follower or the directory's owner owns it)."""

    uid: int = 0
    owns_everything: bool = False
    protected_symlinks: bool = False

    @classmethod
    def current(cls, *, owners_preserved: bool | None = None) -> Follower:
        """This process, on a tree it built (owners are preserved only when it is root)."""
        uid = os.geteuid()
        preserved = uid == 0 if owners_preserved is None else owners_preserved
        try:
            with open("/proc/sys/fs/protected_symlinks") as f:
                protected = f.read().strip() not in ("", "0")
        except OSError:
            protected = False
        return cls(uid, owns_everything=not preserved, protected_symlinks=protected)


@attrs.frozen
class Resolution:
    """A resolved sub path: the entry's real path (``.`` for the root), its node, and the real
    paths of every directory and symlink the walk passed through, in order."""

    path: str
    node: Node
    visited: tuple[str, ...]


def _enc_len(name: str) -> int:
    return len(name) if name.isascii() else len(os.fsencode(name))


def _search_denied(directory: Node, follower: Follower) -> bool:
    if follower.uid == 0:
        return False
    if follower.owns_everything or directory.uid == follower.uid:
        return not directory.mode & 0o100
    return not directory.mode & 0o001


def _may_follow(directory: Node, link: Node, follower: Follower) -> bool:
    if link.uid == follower.uid or follower.owns_everything:
        return True
    sticky_public = 0o1000 | 0o002
    return (directory.mode & sticky_public) != sticky_public or directory.uid == link.uid


def resolve(
    index: MergedIndex, sub_path: str, policy: Policy | str = Policy.BENEATH, *, follower: Follower = Follower()
) -> Resolution:
    """Resolve ``sub_path`` on ``index`` as the fd-based resolver would on the applied tree.
    Raises ``SubPathError`` with the same kind; the empty path is the root."""
    policy = Policy(policy)
    rules.validate_sub_path(sub_path)
    shown = sub_path
    stack: list[str] = []
    visited: dict[str, None] = {".": None}
    pending: list[str] = list(reversed((sub_path or ".").split("/")))
    follows = 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            if stack:
                stack.pop()
            elif policy is Policy.BENEATH:
                raise rules.subpath_error("escape", shown)
            continue
        here: Path = tuple(stack)
        directory = index.get(here)
        assert directory is not None and directory.type == "dir"
        if _search_denied(directory, follower):
            raise rules.subpath_error("denied", shown)
        if _enc_len(name) > rules.NAME_MAX:
            raise rules.subpath_error("toolong", shown)
        node = index.get((*here, name))
        if node is None:
            raise rules.subpath_error("notfound", shown)
        if node.type == "dir":
            stack.append(name)
            visited[node.path] = None
        elif node.type == "symlink":
            # Checks in the kernel's order: budget, protected_symlinks (trailing links only),
            # then the target itself.
            follows += 1
            if follows > rules.MAX_SYMLINK_FOLLOWS:
                raise rules.subpath_error("loop", shown)
            trailing = not any(pending)
            if trailing and follower.protected_symlinks and not _may_follow(directory, node, follower):
                raise rules.subpath_error("denied", shown)
            if not node.target:
                raise rules.subpath_error("notfound", shown)
            visited[node.path] = None
            if node.target.startswith("/"):
                if policy is Policy.BENEATH:
                    raise rules.subpath_error("escape", shown)
                stack.clear()
            pending.extend(reversed(node.target.split("/")))
        else:
            # Anything after a non-directory (`file/`, `file/.`, `file/x`) is notdir.
            if pending:
                raise rules.subpath_error("notdir", shown)
            return Resolution(node.path, node, tuple(visited))
    final = index.get(tuple(stack))
    assert final is not None
    return Resolution(final.path, final, tuple(visited))


@attrs.frozen
class Closure:
    """What to materialise for a resolution. ``nodes``: parents before children; ``payloads``:
    one regular file per inode whose content must be fetched (non-empty ones); ``hardlinks``: the
    groups of ``nodes`` paths that share an inode (two or more)."""

    root: str
    nodes: tuple[Node, ...]
    payloads: tuple[Node, ...]
    hardlinks: tuple[tuple[str, ...], ...]


def _ancestors(path: str) -> Iterable[str]:
    if path == ".":
        return []
    parts = path.split("/")
    return ["/".join(parts[:i]) or "." for i in range(len(parts))]


def closure(index: MergedIndex, resolution: Resolution) -> Closure:
    """The entries a partial tree needs for ``resolution`` (see the module docstring)."""
    chosen: dict[str, Node] = {}

    def add(node: Node) -> None:
        for up in _ancestors(node.path):
            if up not in chosen:
                found = index.get(up)
                assert found is not None
                chosen[up] = found
        chosen[node.path] = node

    for path in resolution.visited:
        node = index.get(path)
        assert node is not None
        add(node)
    if resolution.node.type == "dir":
        for node in index.walk(resolution.path):
            add(node)
    else:
        add(resolution.node)
    nodes = sorted(chosen.values(), key=lambda n: () if n.path == "." else tuple(n.path.split("/")))
    groups: dict[int, list[str]] = {}
    payloads: dict[int, Node] = {}
    for node in nodes:
        if node.type != "dir":
            groups.setdefault(node.ino, []).append(node.path)
        if node.type == "reg" and node.size and node.ino not in payloads:
            payloads[node.ino] = node
    links = tuple(tuple(paths) for paths in groups.values() if len(paths) > 1)
    return Closure(resolution.path, tuple(nodes), tuple(payloads.values()), links)
