"""Hypothesis strategies for hostile layer stacks, and helpers to apply them with imagevol and umoci.

Names come from a tiny alphabet so that entries of different layers collide: type changes in every
direction, whiteouts of what lower layers made, symlinked parents (escaping ones included), hardlink
chains, opaque markers before and after new entries, 0000 directories.
"""

from __future__ import annotations

import io
import os
import subprocess
import time

import attrs
from hypothesis import strategies as st

from imagevol.errors import LayerError
from imagevol.testing.images import Layer, LayoutBuilder
from imagevol.testing.listing import Item, listing
from imagevol.testing.tarbuild import FIXED_MTIME, TarEntry, build_layer, gzip_bytes
from imagevol.trees.layers import ApplyOptions, apply_layers

NAMES = ("a", "b", "c")
MTIMES = (FIXED_MTIME, FIXED_MTIME + 86400, 1000000000)
IDS = (0, 1000)

path_st = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
dir_st = st.one_of(st.just(""), path_st)
target_st = st.one_of(
    path_st,
    st.sampled_from(["../a", "../../..", "/", "/a", "/b/c", "zz", ".", "a/../b", "/../../c", "b/"]),
)
file_mode_st = st.sampled_from([0o644, 0o755, 0o600, 0o444, 0o000, 0o4755, 0o2755, 0o1755, 0o666])
dir_mode_st = st.sampled_from([0o755, 0o700, 0o000, 0o555, 0o1777, 0o2775])
owner_st = st.tuples(st.sampled_from(IDS), st.sampled_from(IDS))


def _join(d: str, name: str) -> str:
    return f"{d}/{name}" if d else name


@st.composite
def entry_st(draw: st.DrawFn, known: list[str] | None = None, setid_dirs: bool = True) -> TarEntry:
    """One member. ``known`` holds names drawn so far: hardlinks mostly point at one of them."""
    kind = draw(st.sampled_from(["file", "file", "dir", "dir", "symlink", "hardlink", "whiteout", "opaque", "fifo"]))
    uid, gid = draw(owner_st)
    mtime = draw(st.sampled_from(MTIMES))
    name = draw(path_st)
    if kind == "file":
        data = draw(st.sampled_from([b"", b"x", b"hello\n", b"y" * 700]))
        return TarEntry(name, "file", data, mode=draw(file_mode_st), uid=uid, gid=gid, mtime=mtime)
    if kind == "dir":
        modes = dir_mode_st if setid_dirs else dir_mode_st.filter(lambda m: not m & 0o6000)
        return TarEntry(name + "/", "dir", mode=draw(modes), uid=uid, gid=gid, mtime=mtime)
    if kind == "symlink":
        return TarEntry(name, "symlink", linkname=draw(target_st), uid=uid, gid=gid, mtime=mtime)
    if kind == "hardlink":
        target = draw(st.sampled_from(known)) if known and draw(st.integers(0, 3)) else draw(path_st)
        return TarEntry(name, "hardlink", linkname=target, uid=uid, gid=gid, mtime=mtime)
    if kind == "fifo":
        return TarEntry(name, "fifo", mode=draw(st.sampled_from([0o644, 0o600])), uid=uid, gid=gid, mtime=mtime)
    parent = draw(dir_st)
    if kind == "whiteout":
        return TarEntry(_join(parent, ".wh." + draw(st.sampled_from(NAMES))), "file", mtime=mtime)
    return TarEntry(_join(parent, ".wh..wh..opq"), "file", mtime=mtime)


@attrs.frozen
class Stack:
    layers: tuple[tuple[TarEntry, ...], ...]
    gzip: tuple[bool, ...]

    def blobs(self) -> list[bytes]:
        out = []
        for entries, gz in zip(self.layers, self.gzip, strict=True):
            tar = build_layer(entries)
            out.append(gzip_bytes(tar) if gz else tar)
        return out

    def describe(self) -> str:
        lines = []
        for i, entries in enumerate(self.layers):
            lines.append(f"layer {i} ({'gzip' if self.gzip[i] else 'tar'}):")
            for e in entries:
                extra = f" -> {e.linkname}" if e.linkname else ""
                lines.append(f"  {e.type} {e.name}{extra} mode={e.mode and oct(e.mode)} {e.uid}:{e.gid}")
        return "\n".join(lines)


@st.composite
def stack_st(draw: st.DrawFn, max_layers: int = 3, max_entries: int = 8, setid_dirs: bool = True) -> Stack:
    n = draw(st.integers(1, max_layers))
    known: list[str] = []
    layers = []
    for _ in range(n):
        entries = []
        for _ in range(draw(st.integers(0, max_entries))):
            e = draw(entry_st(known, setid_dirs))
            if e.type in ("file", "symlink", "fifo"):
                known.append(e.name)
            entries.append(e)
        layers.append(tuple(entries))
    gz = tuple(draw(st.booleans()) for _ in range(n))
    return Stack(tuple(layers), gz)


# --- running both sides ------------------------------------------------------------------------------


@attrs.frozen
class Outcome:
    error: str  # "" on success, else our LayerError kind or umoci's message
    items: dict[str, Item]


def run_imagevol(stack: Stack, root: str, options: ApplyOptions | None = None) -> Outcome:
    os.makedirs(root)
    try:
        apply_layers(root, [io.BytesIO(b) for b in stack.blobs()], options or ApplyOptions())
    except LayerError as exc:
        return Outcome(exc.kind, {})
    return Outcome("", listing(root))


def run_umoci(umoci: str, stack: Stack, workdir: str) -> Outcome:
    """``umoci raw unpack`` of the stack (as root it keeps owners; umask 022 as a shell has)."""
    layout = os.path.join(workdir, "layout")
    b = LayoutBuilder(layout)
    b.add_image(
        [Layer(entries, "gzip" if gz else "none") for entries, gz in zip(stack.layers, stack.gzip, strict=True)],
        tag="t",
    )
    b.save()
    rootfs = os.path.join(workdir, "rootfs")
    old = os.umask(0o022)
    try:
        proc = subprocess.run(
            [umoci, "--log", "error", "raw", "unpack", "--image", f"{layout}:t", rootfs],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.umask(old)
    if proc.returncode != 0:
        return Outcome(proc.stderr.strip() or f"exit {proc.returncode}", {})
    return Outcome("", listing(rootfs))


def normalise(items: dict[str, Item], *, since_ns: int, peer: bool) -> dict[str, Item]:
    """Fold the differences that are deliberate (docs/security.md) or time-dependent:

    * a time at or after ``since_ns`` is "now" (directories created implicitly, or changed after
      their entry, carry the time of the unpack on both sides);
    * the peer keeps set-uid/set-gid bits, imagevol strips them (C2.9).
    """
    out = {}
    for path, item in items.items():
        mtime = -1 if item.mtime_ns >= since_ns else item.mtime_ns
        mode = item.mode & ~0o6000 if peer else item.mode
        out[path] = attrs.evolve(item, mtime_ns=mtime, mode=mode)
    return out


def now_ns() -> int:
    return time.time_ns() - 2_000_000_000
