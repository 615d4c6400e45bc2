"""Lazy mode through the real node: what a container sees of a sub path served from a partial tree
equals what it sees in full mode, for zstd:chunked, eStargz and plain layers, under both runtime
profiles; only the TOCs and the needed files are read; every lazy failure falls back to the full
pull and says why."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagevol.testing import strategies
from imagevol.testing.images import Layer, LayoutBuilder
from imagevol.testing.lazy_layers import LazyLayer, add_lazy_image
from imagevol.testing.tarbuild import TarEntry
from tests.helpers.clock import FakeClock
from tests.helpers.fixture_node import make_node
from tests.helpers.layerkit import D, F, H, S, W
from tests.helpers.lazy import layer_of, mount, mount_status, vector_entries, write_layout
from tests.helpers.paths import VECTORS

FORMATS = ("zstd:chunked", "estargz", "gzip")
PROFILES = ("containerd", "crio")


@pytest.fixture
def tmp() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="imagevol-lazy-node-") as d:
        yield d


def compare(tmp: str, layers: Sequence[LazyLayer | Layer], sub_paths: Sequence[str], profile: str) -> list[str]:
    """Mount every sub path on a full node and on a lazy node of ``profile``; the outcomes must
    be equal. Returns the lazy mounts' ``lazy`` notes."""
    layout = os.path.join(tmp, "layout")
    write_layout(layout, layers)
    clock = FakeClock()
    full = make_node(os.path.join(tmp, "full"), layout, clock, runtime=profile)
    lazy = make_node(os.path.join(tmp, "lazy"), layout, clock, runtime=profile, lazy="toc")
    notes = []
    for i, sub_path in enumerate(sub_paths):
        want = mount(full, sub_path, f"p{i}")
        got = mount(lazy, sub_path, f"p{i}")
        assert got == want, (sub_path, profile)
        if got[0] == "running":
            notes.append(mount_status(lazy, f"p{i}").lazy)
    return notes


# --- one image, by hand ---------------------------------------------------------------------------------

BASE = [
    D("data"),
    D("data/models"),
    F("data/models/small.bin", b"s" * 10_000),
    F("data/models/big.bin", bytes(range(256)) * 4000),
    D("data/other"),
    F("data/other/huge.bin", b"h" * 200_000),
    F("outside.txt", b"the target of a hardlink inside the sub path"),
    S("data/models/link", "../other/huge.bin"),
    S("shortcut", "data/models"),
]
TOP = [
    D("data/models"),
    H("data/models/hard", "outside.txt"),
    F("data/models/.wh.big.bin", b""),
    F("data/models/new.txt", b"from the upper layer"),
]


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("bottom", FORMATS)
@pytest.mark.parametrize("top", FORMATS)
def test_a_sub_path_is_served_from_a_partial_tree_equal_to_the_full_one(
    tmp: str, profile: str, bottom: str, top: str
) -> None:
    layers = [layer_of(BASE, bottom), layer_of(TOP, top)]
    notes = compare(
        tmp, layers, ["data/models", "shortcut", "data/models/link", "missing", "data/models/new.txt"], profile
    )
    assert all(n.startswith("partial tree") for n in notes), notes


@pytest.mark.parametrize("fmt", ["zstd:chunked", "estargz"])
def test_only_the_tocs_and_the_needed_files_are_read(tmp: str, fmt: str) -> None:
    layers = [layer_of(BASE, fmt), layer_of(TOP, fmt)]
    layout = os.path.join(tmp, "layout")
    write_layout(layout, layers)
    node = make_node(os.path.join(tmp, "lazy"), layout, FakeClock(), lazy="toc")
    state, message, seen = mount(node, "data/models")
    assert state == "running", message
    assert seen is not None and seen["small.bin"][2] == b"s" * 10_000
    fetched = node.runtime.lazy.state()["fetched_bytes"]
    total = sum(len(layer.blob) for layer in layers if isinstance(layer, LazyLayer))
    # The TOCs and three small files, not the 200 kB file next to them nor the whited-out one.
    assert fetched < total // 2, (fetched, total)
    # Layers left in the registry are not in the content store.
    assert not any(node.store.has(layer.descriptor().digest) for layer in layers if isinstance(layer, LazyLayer))
    status = mount_status(node)
    assert status.trust == "toc-verified" if fmt == "zstd:chunked" else "toc-pinned"
    # The whole volume of the same image needs every byte: the rest is pulled, the full tree built.
    state, message, whole = mount(node, "", "whole")
    assert state == "running", message
    assert whole is not None and whole["data/other/huge.bin"][2] == b"h" * 200_000
    assert mount_status(node, "whole").trust == "verified"


# --- generated stacks --------------------------------------------------------------------------------------

_COMPONENTS = ["a", "b", "c", "d", "x", ".", ""]
sub_path_st = st.lists(st.sampled_from(_COMPONENTS), min_size=1, max_size=3).map("/".join)


@pytest.mark.parametrize("profile", PROFILES)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    layers=strategies.layer_stacks(max_layers=3, max_entries=8),
    formats=st.lists(st.sampled_from(FORMATS), min_size=3, max_size=3),
    sub_paths=st.lists(sub_path_st, min_size=1, max_size=3),
)
def test_generated_stacks_look_the_same_lazily(
    profile: str, layers: list[list[TarEntry]], formats: list[str], sub_paths: list[str]
) -> None:
    with tempfile.TemporaryDirectory(prefix="imagevol-lazy-prop-") as tmp:
        built = [layer_of(entries, fmt) for entries, fmt in zip(layers, formats, strict=False)]
        compare(tmp, built, [*sub_paths, "a"], profile)


@pytest.mark.parametrize("profile", PROFILES)
def test_a_sub_path_naming_a_fifo_looks_the_same_lazily(tmp: str, profile: str) -> None:
    """A FIFO is shown (type and mode), never opened: opening one would wait for a writer forever
    (the generated stacks above found it). CRI-O mounts it, from a partial tree; containerd
    refuses a sub path that is not a directory, on both nodes."""
    fifo = TarEntry("a", type="fifo", mode=0o644)
    notes = compare(tmp, [layer_of([F("b", b"x"), fifo], "zstd:chunked")], ["a"], profile)
    assert notes == (["partial tree of 1 layer(s)"] if profile == "crio" else [])


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(
    "top",
    [[W("a/.wh..wh..opq")], [W("a/.wh.a"), W("a/.wh.b")], [W("a/b/.wh..wh..opq")]],
    ids=["opaque", "whiteouts", "nested-opaque"],
)
def test_a_directory_only_lower_files_made_looks_the_same_lazily_once_emptied(
    tmp: str, profile: str, top: list[TarEntry]
) -> None:
    """``a`` (and ``a/b``) exist only as the parents of a lower layer's files, and an upper layer
    empties them: the full tree keeps them as empty implicit directories, and so must a partial
    tree, though nothing in its closure lies below them (the generated stacks above found it)."""
    lower = layer_of([F("a/a", b"x"), F("a/b/c", b"y")], "zstd:chunked")
    compare(tmp, [lower, layer_of(top, "zstd:chunked")], ["a", "a/b", "."], profile)


def _open_under(directory: str) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed since
            continue
        if target.startswith(directory + "/"):
            found.append(target)
    return found


@pytest.mark.parametrize("profile", PROFILES)
def test_a_lazy_node_keeps_no_layer_blob_open(tmp: str, profile: str) -> None:
    """The lazy pull reads each TOC by range and the mount fetches its files by range from the OCI
    layout; both close the layout's blob files when they are done (a node that kept them open ran
    out of descriptors after enough images)."""
    layers = [layer_of(BASE, "zstd:chunked"), layer_of(TOP, "estargz")]
    layout = os.path.join(tmp, "layout")
    write_layout(layout, layers)
    node = make_node(os.path.join(tmp, "lazy"), layout, FakeClock(), runtime=profile, lazy="toc")
    state, message, view = mount(node, "data/models", "p0")
    assert state == "running", message
    assert view is not None and view["new.txt"][2] == b"from the upper layer"
    assert _open_under(layout) == []


# --- every sub-path vector ---------------------------------------------------------------------------------


def _vectors() -> list[dict[str, Any]]:
    with open(os.path.join(VECTORS, "subpath.json")) as f:
        vectors: list[dict[str, Any]] = json.load(f)
    return vectors


@pytest.mark.parametrize("profile", PROFILES)
def test_every_sub_path_vector_resolves_the_same_lazily(tmp: str, profile: str) -> None:
    """Each vector's tree is one image (its layer in turn zstd:chunked, eStargz, gzip); a lazy node
    answers every vector's sub path exactly as the full node does: the same refusal, or the same
    view."""
    vectors = _vectors()
    layout = os.path.join(tmp, "layout")
    builder = LayoutBuilder(layout)
    for i, vector in enumerate(vectors):
        add_lazy_image(builder, [layer_of(vector_entries(vector["tree"]), FORMATS[i % 3])], tag=f"v{i}")
    builder.save()
    clock = FakeClock()
    full = make_node(os.path.join(tmp, "full"), layout, clock, runtime=profile)
    lazy = make_node(os.path.join(tmp, "lazy"), layout, clock, runtime=profile, lazy="toc")
    served = 0
    for i, vector in enumerate(vectors):
        want = mount(full, vector["subpath"], f"p{i}", tag=f"v{i}")
        got = mount(lazy, vector["subpath"], f"p{i}", tag=f"v{i}")
        assert got == want, (vector["id"], profile)
        if got[0] == "running" and mount_status(lazy, f"p{i}").lazy.startswith("partial tree"):
            served += 1
    # Not a vacuous comparison: many vectors are served from partial trees.
    assert served >= 10, served
