"""Hypothesis strategies for image-volume testing, public so users can drive their own suites.

* :func:`references` — valid image references (optionally with tag and/or digest).
* :func:`pods` — Pod documents (dicts, built with :mod:`imagevol.testing.pods`) with image volumes,
  mounts and sub paths.
* :func:`hostile_layer_stacks` — the hostile-layer-stack generator: :class:`LayerStack` values of one
  to three layers (gzip or plain) with whiteouts, opaque markers, symlinks (escaping ones too),
  hardlinks, FIFOs, type changes, owners, 0000 and set-id modes over a tiny name space, so that
  entries collide often; :func:`layer_entries` draws one member, :func:`layer_stacks` gives the
  same stacks as plain lists of :class:`TarEntry`.
* :func:`trees` and :func:`sub_paths` — directory trees in the vector format and sub paths to
  resolve in them, symlink loops and escapes included.

Pair them with :mod:`imagevol.testing.model` (the reference model) to check an implementation.
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import strategies as st

from .pods import container, image_volume, pod_doc, volume_mount
from .tarbuild import FIXED_MTIME, TarEntry, build_layer, gzip_bytes

# --- references -----------------------------------------------------------------------------------

_component = st.from_regex(r"[a-z0-9]{1,6}([._-][a-z0-9]{1,4})?", fullmatch=True)
_domain = st.sampled_from(["", "docker.io", "quay.io", "registry.example:5000", "localhost:5000", "127.0.0.1:5000"])
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}", fullmatch=True)
_hex64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


@st.composite
def references(draw: st.DrawFn, *, tags: bool = True, digests: bool = True) -> str:
    """A reference the distribution grammar accepts, e.g. ``quay.io/a/b:v1@sha256:...``."""
    domain = draw(_domain)
    path = "/".join(draw(st.lists(_component, min_size=1, max_size=3)))
    ref = f"{domain}/{path}" if domain else path
    if tags and draw(st.booleans()):
        ref += ":" + draw(_tag)
    if digests and draw(st.booleans()):
        ref += "@sha256:" + draw(_hex64)
    return ref


# --- pods -------------------------------------------------------------------------------------------

_names = st.from_regex(r"[a-z]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
_safe_sub_paths = st.lists(st.sampled_from(["dir", "etc", "a", "b", ".", "x y"]), max_size=3).map("/".join)


@st.composite
def pods(draw: st.DrawFn, *, reference: st.SearchStrategy[str] | None = None) -> dict[str, Any]:
    """A valid Pod document with one to three image volumes mounted by one or two containers."""
    volume_names = draw(st.lists(_names, min_size=1, max_size=3, unique=True))
    ref_strategy = reference if reference is not None else references()
    volumes = [
        image_volume(v, draw(ref_strategy), draw(st.sampled_from(["Always", "IfNotPresent", "Never"])))
        for v in volume_names
    ]
    containers = []
    for cname in draw(st.lists(_names, min_size=1, max_size=2, unique=True)):
        mounts = [
            volume_mount(v, f"/mnt/{v}/{i}", draw(_safe_sub_paths))
            for i, v in enumerate(draw(st.lists(st.sampled_from(volume_names), max_size=3)))
        ]
        containers.append(container(cname, *mounts))
    return pod_doc(draw(_names), containers, volumes)


# --- layers ------------------------------------------------------------------------------------------

#: A deliberately tiny alphabet: entries of different layers collide, so type changes in every
#: direction, whiteouts of what lower layers made, symlinked parents and hardlink chains are common.
LAYER_NAMES = ("a", "b", "c")
_MTIMES = (FIXED_MTIME, FIXED_MTIME + 86400, 1000000000)
_IDS = (0, 1000)

#: Member paths over :data:`LAYER_NAMES`, one to three levels deep.
layer_paths = st.lists(st.sampled_from(LAYER_NAMES), min_size=1, max_size=3).map("/".join)
_parents = st.one_of(st.just(""), layer_paths)
#: Symlink targets: paths of the tree, and relative, absolute, dangling and climbing ones.
_targets = st.one_of(
    layer_paths,
    st.sampled_from(["../a", "../../..", "..", "/", "/a", "/b/c", "/etc", "zz", ".", "a/../b", "/../../c", "b/"]),
)
_file_modes = st.sampled_from([0o644, 0o755, 0o600, 0o444, 0o000, 0o4755, 0o2755, 0o1755, 0o666])
_dir_modes = st.sampled_from([0o755, 0o700, 0o000, 0o555, 0o1777, 0o2775])
_owners = st.tuples(st.sampled_from(_IDS), st.sampled_from(_IDS))


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


@st.composite
def layer_entries(draw: st.DrawFn, known: list[str] | None = None, setid_dirs: bool = True) -> TarEntry:
    """One hostile member: a file, directory, symlink, hardlink, FIFO, whiteout or opaque marker,
    with owners, times and modes (0000 and set-id ones too). ``known`` holds the names drawn so
    far: a hardlink mostly points at one of them. ``setid_dirs=False`` leaves set-id bits off
    directories (a peer that keeps them differs from imagevol there on purpose)."""
    kind = draw(st.sampled_from(["file", "file", "dir", "dir", "symlink", "hardlink", "whiteout", "opaque", "fifo"]))
    uid, gid = draw(_owners)
    mtime = draw(st.sampled_from(_MTIMES))
    name = draw(layer_paths)
    if kind == "file":
        data = draw(st.sampled_from([b"", b"x", b"hello\n", b"y" * 700]))
        return TarEntry(name, "file", data, mode=draw(_file_modes), uid=uid, gid=gid, mtime=mtime)
    if kind == "dir":
        modes = _dir_modes if setid_dirs else _dir_modes.filter(lambda m: not m & 0o6000)
        return TarEntry(name + "/", "dir", mode=draw(modes), uid=uid, gid=gid, mtime=mtime)
    if kind == "symlink":
        return TarEntry(name, "symlink", linkname=draw(_targets), uid=uid, gid=gid, mtime=mtime)
    if kind == "hardlink":
        target = draw(st.sampled_from(known)) if known and draw(st.integers(0, 3)) else draw(layer_paths)
        return TarEntry(name, "hardlink", linkname=target, uid=uid, gid=gid, mtime=mtime)
    if kind == "fifo":
        return TarEntry(name, "fifo", mode=draw(st.sampled_from([0o644, 0o600])), uid=uid, gid=gid, mtime=mtime)
    parent = draw(_parents)
    if kind == "whiteout":
        return TarEntry(_join(parent, ".wh." + draw(st.sampled_from(LAYER_NAMES))), "file", mtime=mtime)
    return TarEntry(_join(parent, ".wh..wh..opq"), "file", mtime=mtime)


@attrs.frozen
class LayerStack:
    """Layers of entries, bottom first, each compressed with gzip or not."""

    layers: tuple[tuple[TarEntry, ...], ...]
    gzip: tuple[bool, ...]

    def blobs(self) -> list[bytes]:
        """The layer blobs, as a registry would serve them."""
        out = []
        for entries, gz in zip(self.layers, self.gzip, strict=True):
            tar = build_layer(entries)
            out.append(gzip_bytes(tar) if gz else tar)
        return out

    def describe(self) -> str:
        """One line per entry, for a failure message."""
        lines = []
        for i, entries in enumerate(self.layers):
            lines.append(f"layer {i} ({'gzip' if self.gzip[i] else 'tar'}):")
            for e in entries:
                extra = f" -> {e.linkname}" if e.linkname else ""
                lines.append(f"  {e.type} {e.name}{extra} mode={e.mode and oct(e.mode)} {e.uid}:{e.gid}")
        return "\n".join(lines)


@st.composite
def hostile_layer_stacks(
    draw: st.DrawFn, max_layers: int = 3, max_entries: int = 8, setid_dirs: bool = True
) -> LayerStack:
    """One to ``max_layers`` layers of up to ``max_entries`` :func:`layer_entries` each."""
    n = draw(st.integers(1, max_layers))
    known: list[str] = []
    layers = []
    for _ in range(n):
        entries = []
        for _ in range(draw(st.integers(0, max_entries))):
            e = draw(layer_entries(known, setid_dirs))
            if e.type in ("file", "symlink", "fifo"):
                known.append(e.name)
            entries.append(e)
        layers.append(tuple(entries))
    gz = tuple(draw(st.booleans()) for _ in range(n))
    return LayerStack(tuple(layers), gz)


def layer_stacks(max_layers: int = 3, max_entries: int = 8) -> st.SearchStrategy[list[list[TarEntry]]]:
    """The stacks of :func:`hostile_layer_stacks` as plain lists of entries (uncompressed)."""
    return hostile_layer_stacks(max_layers, max_entries).map(lambda s: [list(layer) for layer in s.layers])


def tar_entries() -> st.SearchStrategy[TarEntry]:
    """One hostile member (:func:`layer_entries`)."""
    return layer_entries()


# --- trees and sub paths -------------------------------------------------------------------------------

_TREE_NAMES = ["a", "b", "c", "l", "m"]
_TREE_TARGETS = [
    "a",
    "b",
    "a/b",
    "..",
    "../..",
    "/",
    "/a",
    "/etc",
    "l",
    "m",
    ".",
    "./a//b/",
    "missing",
    "a/f",
    "a/f/",
    "l/x",
]


@st.composite
def trees(draw: st.DrawFn, max_entries: int = 10) -> list[tuple[str, str, str]]:
    """(path, type, data-or-target) triples in creation order, parents before children."""
    out: list[tuple[str, str, str]] = []
    dirs = [""]
    used: set[str] = set()
    for _ in range(draw(st.integers(0, max_entries))):
        parent = draw(st.sampled_from(dirs))
        name = draw(st.sampled_from([*_TREE_NAMES, "f"]))
        path = f"{parent}/{name}" if parent else name
        if path in used:
            continue
        used.add(path)
        kind = draw(st.sampled_from(["dir", "dir", "file", "symlink", "symlink"]))
        if kind == "dir":
            dirs.append(path)
            out.append((path, "dir", ""))
        elif kind == "file":
            out.append((path, "file", "data"))
        else:
            out.append((path, "symlink", draw(st.sampled_from(_TREE_TARGETS))))
    return out


def sub_paths() -> st.SearchStrategy[str]:
    """Sub paths over the names :func:`trees` uses, with ``.``, empty and trailing elements."""
    element = st.sampled_from([*_TREE_NAMES, "f", ".", "", "missing"])
    return st.lists(element, min_size=1, max_size=5).map("/".join)
