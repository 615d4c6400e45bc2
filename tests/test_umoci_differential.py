"""Differential test against the real ``umoci raw unpack`` (docs/security.md, "Deliberate differences
from umoci raw unpack").

Both unpack the same layer stacks (the project fixtures, and Hypothesis-generated hostile stacks,
gzip and plain: umoci has no zstd); canonical listings (type, mode, uid:gid, mtime, content hash,
link target, hardlink groups) must be equal. The only differences allowed are the deliberate ones
of docs/security.md, each folded here in one named place:

* set-id bits: umoci keeps them, imagevol strips them (C2.9);
* a directory that umoci changes after applying its entry (an implicit subdirectory created in it,
  lower entries removed below it by an opaque whiteout) keeps umoci's "now" time; imagevol applies
  directory attributes after the layer's last entry, so it has the entry's time;
* a whiteout under a non-directory parent: umoci ignores it, imagevol reports ``notdir`` (C2.3);
* a lower directory that survives a later whiteout only because the layer wrote below it first:
  umoci keeps its lower attributes, imagevol gives it those of an implicit directory (0755, root,
  now), as if the whiteout had come first;
* when umoci fails (hardlink to a missing file or a directory, a file parent, a symlink loop),
  imagevol must fail too.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile

import attrs
import pytest
from hypothesis import HealthCheck, given, settings

from imagevol.content.store import ContentStore
from imagevol.errors import LayerError
from imagevol.oci import Manifest
from imagevol.testing.listing import Item, listing, render
from imagevol.testing.strategies import LayerStack, hostile_layer_stacks
from imagevol.trees.layers import LayerEntryError, apply_layers
from imagevol.trees.snapshots import Snapshots, plan_for
from tests.helpers.peers import require
from tests.helpers.umoci import Outcome, now_ns, run_imagevol, run_umoci

pytestmark = pytest.mark.peers

UMOCI_IMAGE_TAGS = ("layers", "v2", "artifact-image", "kitten")


def _fold(ours: dict[str, Item], theirs: dict[str, Item], since_ns: int) -> tuple[dict[str, Item], dict[str, Item]]:
    a: dict[str, Item] = {}
    b: dict[str, Item] = {}
    for path in set(ours) | set(theirs):
        x, y = ours.get(path), theirs.get(path)
        if y is not None:
            y = attrs.evolve(y, mode=y.mode & ~0o6000)  # umoci keeps set-id bits
            if y.mtime_ns >= since_ns:
                y = attrs.evolve(y, mtime_ns=-1)  # "now"
        if x is not None and x.mtime_ns >= since_ns:
            x = attrs.evolve(x, mtime_ns=-1)
        if x is not None and y is not None and x.type == "dir" and y.mtime_ns == -1:
            x = attrs.evolve(x, mtime_ns=-1)  # umoci changed the directory after its entry
        if (
            x is not None
            and y is not None
            and x.type == y.type == "dir"
            and (x.mode, x.uid, x.gid, x.mtime_ns) == (0o755, os.geteuid(), os.getegid(), -1)
        ):
            # A lower directory kept only because the layer wrote below it before a whiteout:
            # imagevol makes it the implicit directory it would be had the whiteout come first.
            y = attrs.evolve(y, mode=x.mode, uid=x.uid, gid=x.gid, mtime_ns=-1)
        if x is not None:
            a[path] = x
        if y is not None:
            b[path] = y
    return a, b


def assert_same(ours: dict[str, Item], theirs: dict[str, Item], since_ns: int, context: str = "") -> None:
    a, b = _fold(ours, theirs, since_ns)
    if a != b:
        pytest.fail(f"imagevol and umoci differ{context}:\n--- imagevol\n{render(a)}\n--- umoci\n{render(b)}")


# --- fixtures --------------------------------------------------------------------------------------


def _umoci_unpack(layout: str, tag: str, rootfs: str) -> None:
    umoci = require("umoci")
    old = os.umask(0o022)
    try:
        subprocess.run(
            [umoci, "raw", "unpack", "--image", f"{layout}:{tag}", rootfs], check=True, capture_output=True, timeout=60
        )
    finally:
        os.umask(old)


@pytest.mark.parametrize("tag", UMOCI_IMAGE_TAGS)
def test_published_trees_keep_the_modes_umoci_gives(fixtures_layout: str, tag: str, tmp_path: object) -> None:
    """The tree a node publishes (what every mount shares) is the unpacked image, modes included:
    a 0644 file is 0644, a 0755 tool 0755, as umoci unpacks them. Read-only is the mounts' job."""
    since = now_ns()
    theirs_root = os.path.join(str(tmp_path), "umoci")
    _umoci_unpack(fixtures_layout, tag, theirs_root)
    store = ContentStore(fixtures_layout)
    desc = store.refs()[tag]
    manifest = store.read_manifest(desc)
    assert isinstance(manifest, Manifest)
    snap = Snapshots(os.path.join(str(tmp_path), "snaps"), store).materialise(plan_for(store, desc.digest, manifest))
    ours, theirs = listing(snap.path), listing(theirs_root)
    assert any(item.mode & 0o222 for item in ours.values()), "the fixture has no writable entry to compare"
    assert_same(ours, theirs, since, f" on the published tree of {tag}")


@pytest.mark.parametrize("tag", UMOCI_IMAGE_TAGS)
def test_fixtures_match_umoci(fixtures_layout: str, tag: str, tmp_path: object) -> None:
    umoci = require("umoci")
    since = now_ns()
    base = str(tmp_path)
    theirs_root = os.path.join(base, "umoci")
    old = os.umask(0o022)
    try:
        subprocess.run(
            [umoci, "raw", "unpack", "--image", f"{fixtures_layout}:{tag}", theirs_root],
            check=True,
            capture_output=True,
            timeout=60,
        )
    finally:
        os.umask(old)
    store = ContentStore(fixtures_layout)
    manifest = store.read_manifest(store.refs()[tag])
    assert isinstance(manifest, Manifest)
    ours_root = os.path.join(base, "ours")
    os.makedirs(ours_root)
    apply_layers(ours_root, [store.open_blob(layer.digest) for layer in manifest.layers])
    ours, theirs = listing(ours_root), listing(theirs_root)
    assert ours, "the fixture unpacked to nothing"
    assert_same(ours, theirs, since, f" on fixture {tag}")


def test_fixture_layers_oracle_tree(fixtures_layout: str, tmp_path: object) -> None:
    """The tree umoci raw unpack 0.4.7 produced from this image, recorded (names, types, modes, owners,
    hashes)."""
    store = ContentStore(fixtures_layout)
    manifest = store.read_manifest(store.refs()["layers"])
    assert isinstance(manifest, Manifest)
    root = os.path.join(str(tmp_path), "r")
    os.makedirs(root)
    apply_layers(root, [store.open_blob(layer.digest) for layer in manifest.layers])
    got = {
        p: (i.type, f"{i.mode:04o}", f"{i.uid}:{i.gid}", i.sha256[:16], i.hardlink_of) for p, i in listing(root).items()
    }
    assert got["a/keep.txt"] == ("file", "0644", "0:0", "f660a7996deacfbc", "a/hard")
    assert got["d"][:2] == ("dir", "0700")
    assert got["e/deep/nested/file.txt"][:3] == ("file", "0600", "0:0")
    assert got["etc/conf"][3] == "81db67b6a5702b9b"
    assert sorted(got) == sorted(
        [
            "a",
            "a/hard",
            "a/keep.txt",
            "b",
            "b/z.txt",
            "bin",
            "bin/tool",
            "c",
            "c/new.txt",
            "d",
            "e",
            "e/deep",
            "e/deep/nested",
            "e/deep/nested/file.txt",
            "etc",
            "etc/conf",
        ]
    )


# --- generated stacks ------------------------------------------------------------------------------


def _compare(stack: LayerStack, umoci: str) -> str:
    """'' when the outcomes agree (up to the documented differences), else a description."""
    base = tempfile.mkdtemp(prefix="imagevol-diff-")
    try:
        since = now_ns()
        ours = _ours(stack, os.path.join(base, "ours"))
        theirs = run_umoci(umoci, stack, base)
        if not ours.error and not theirs.error:
            a, b = _fold(ours.items, theirs.items, since)
            return "" if a == b else f"trees differ:\n--- imagevol\n{render(a)}\n--- umoci\n{render(b)}"
        if ours.error and theirs.error:
            return ""
        if theirs.error:
            return f"umoci failed ({theirs.error}) but imagevol succeeded"
        if ours.error.startswith("notdir whiteout:"):
            return ""  # documented: a whiteout under a non-directory
        return f"imagevol failed ({ours.error}) but umoci succeeded"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _ours(stack: LayerStack, root: str) -> Outcome:
    os.makedirs(root)
    try:
        apply_layers(root, [io.BytesIO(b) for b in stack.blobs()])
    except LayerEntryError as exc:
        whiteout = os.path.basename(exc.member.rstrip("/")).startswith(".wh.")
        return Outcome(f"{exc.kind}{' whiteout' if whiteout else ''}: {exc}", {})
    except LayerError as exc:
        return Outcome(f"{exc.kind}: {exc}", {})
    return Outcome("", listing(root))


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], deadline=None)
@given(stack=hostile_layer_stacks(setid_dirs=False))
def test_generated_stacks_match_umoci(stack: LayerStack) -> None:
    umoci = require("umoci")
    problem = _compare(stack, umoci)
    if problem:
        pytest.fail(f"{problem}\nstack:\n{stack.describe()}")


# --- documented differences, shown explicitly ----------------------------------------------------


def _both(stack: LayerStack) -> tuple[Outcome, Outcome]:
    umoci = require("umoci")
    base = tempfile.mkdtemp(prefix="imagevol-diff-")
    try:
        return run_imagevol(stack, os.path.join(base, "ours")), run_umoci(umoci, stack, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _stack(*layers: list[object]) -> LayerStack:
    return LayerStack(tuple(tuple(layer) for layer in layers), (False,) * len(layers))  # type: ignore[arg-type]


def test_difference_setid_bits() -> None:
    from tests.helpers.layerkit import F

    ours, theirs = _both(_stack([F("suid", "x", 0o4755)]))
    assert ours.items["suid"].mode == 0o755 and theirs.items["suid"].mode == 0o4755


def test_difference_dotdot_names() -> None:
    from tests.helpers.layerkit import F, H

    ours, theirs = _both(_stack([F("../../escape", "x")]))
    assert ours.error == "invalid_name" and list(theirs.items) == ["escape"]  # umoci clamps
    ours, theirs = _both(_stack([F("f", "x"), H("h", "../../f")]))
    assert ours.error == "invalid_link" and not theirs.error


def test_difference_whiteout_prefixed_directory() -> None:
    from tests.helpers.layerkit import F

    ours, theirs = _both(_stack([F(".wh.d/f", "x")]))
    assert ours.error == "invalid_name" and ".wh.d/f" in theirs.items


def test_difference_whiteout_under_a_file() -> None:
    from tests.helpers.layerkit import F, W

    ours, theirs = _both(_stack([F("f", "x")], [W("f/.wh.y")]))
    assert ours.error == "notdir" and list(theirs.items) == ["f"]


def test_difference_devices() -> None:
    from imagevol.testing.tarbuild import TarEntry
    from tests.helpers.layerkit import F

    ours, theirs = _both(_stack([F("keep", "x")], [TarEntry("keep", "chardev", devmajor=1, devminor=3)]))
    assert ours.items["keep"].type == "file"  # skipped: nothing replaced
    assert theirs.items["keep"].type == "chardev"  # umoci as root makes the node
