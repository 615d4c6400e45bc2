"""Hypothesis strategies for image-volume testing, public so users can drive their own suites.

* :func:`references` — valid image references (optionally with tag and/or digest).
* :func:`pods` — Pod documents (dicts) with image volumes, mounts and sub paths.
* :func:`layer_stacks` — stacks of tar layers (lists of :class:`TarEntry`) with whiteouts, opaque
  markers, symlinks (escaping ones too), hardlinks and type changes over a small name space, so
  that entries collide often.
* :func:`trees` and :func:`sub_paths` — directory trees in the vector format and sub paths to
  resolve in them, symlink loops and escapes included.

Pair them with :mod:`imagevol.testing.model` (the reference model) to check an implementation.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from .tarbuild import TarEntry

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
        {
            "name": v,
            "image": {
                "reference": draw(ref_strategy),
                "pullPolicy": draw(st.sampled_from(["Always", "IfNotPresent", "Never"])),
            },
        }
        for v in volume_names
    ]
    containers = []
    for cname in draw(st.lists(_names, min_size=1, max_size=2, unique=True)):
        mounts = []
        for i, v in enumerate(draw(st.lists(st.sampled_from(volume_names), max_size=3))):
            m: dict[str, Any] = {"name": v, "mountPath": f"/mnt/{v}/{i}"}
            sub = draw(_safe_sub_paths)
            if sub:
                m["subPath"] = sub
            mounts.append(m)
        containers.append({"name": cname, "image": "debian", "volumeMounts": mounts})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": draw(_names)},
        "spec": {"containers": containers, "volumes": volumes},
    }


# --- layers ------------------------------------------------------------------------------------------

#: A deliberately small name space: collisions, type changes and whiteouts of lower entries are
#: what the rules are about.
_NAMES = ["a", "b", "c", "a/x", "a/y", "b/x", "c/d", "c/d/e", "a/x/z"]
_LINK_TARGETS = ["a", "b", "../a", "/a", "/", "..", "../../..", "a/x", "c/d", "missing", "/etc", "b/../c"]
_MODES = [0o755, 0o700, 0o644, 0o600, 0o777, 0o4755, 0o2755, 0o1777, 0o000, 0o444]


@st.composite
def tar_entries(draw: st.DrawFn) -> TarEntry:
    name = draw(st.sampled_from(_NAMES))
    kind = draw(st.sampled_from(["file", "file", "dir", "symlink", "hardlink", "whiteout", "opaque", "fifo"]))
    if kind == "whiteout":
        parent, _, base = name.rpartition("/")
        return TarEntry(f"{parent}/.wh.{base}" if parent else f".wh.{base}")
    if kind == "opaque":
        parent = name.rpartition("/")[0] or name
        return TarEntry(f"{parent}/.wh..wh..opq")
    mode = draw(st.sampled_from(_MODES))
    if kind == "symlink":
        return TarEntry(name, "symlink", linkname=draw(st.sampled_from(_LINK_TARGETS)))
    if kind == "hardlink":
        return TarEntry(name, "hardlink", linkname=draw(st.sampled_from(_NAMES)))
    if kind == "dir":
        return TarEntry(name + "/", "dir", mode=mode)
    if kind == "fifo":
        return TarEntry(name, "fifo", mode=mode & 0o777)
    return TarEntry(name, "file", draw(st.binary(max_size=8)), mode=mode)


def layer_stacks(max_layers: int = 3, max_entries: int = 8) -> st.SearchStrategy[list[list[TarEntry]]]:
    """One to ``max_layers`` layers of up to ``max_entries`` entries each."""
    return st.lists(st.lists(tar_entries(), max_size=max_entries), min_size=1, max_size=max_layers)


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
