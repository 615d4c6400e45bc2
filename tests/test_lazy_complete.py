"""Lazy trust through the real node: a lazily built tree is ``toc-verified`` (never ``verified``) in
the mount status, ``describe pod`` and the imagevol metrics; ``toc+complete`` proves it on the next
sync (blob digest, TOC against the whole tar, diff ID) or revokes it, and a revoked tree is never
read again; hostile or broken TOCs are refused and fall back to the full pull, which decides."""

from __future__ import annotations

import io
import os
import subprocess
import tempfile
from collections.abc import Iterator

import attrs
import pytest

from imagevol.cli import main
from imagevol.errors import ImageVolError
from imagevol.node import Node
from imagevol.testing.images import Layer
from imagevol.testing.lazy_layers import LazyLayer
from imagevol.testing.tarbuild import TarEntry
from tests.helpers.clock import FakeClock
from tests.helpers.fixture_node import make_node
from tests.helpers.layerkit import D, F, S
from tests.helpers.lazy import layer_of, mount, mount_status, write_layout
from tests.helpers.peers import require

ENTRIES = [
    D("app"),
    D("app/conf"),
    F("app/conf/settings.ini", b"[main]\nanswer = 42\n"),
    S("app/conf/current", "settings.ini"),
    D("app/data"),
    F("app/data/blob.bin", bytes(range(256)) * 2000),
]


@pytest.fixture
def tmp() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="imagevol-lazy-complete-") as d:
        yield d


def lazy_node(tmp: str, layers: list[LazyLayer | Layer], mode: str = "toc+complete", name: str = "lazy") -> Node:
    layout = os.path.join(tmp, "layout")
    if not os.path.exists(layout):
        write_layout(layout, layers)
    return make_node(os.path.join(tmp, name), layout, FakeClock(), lazy=mode)


def cli(node: Node, *args: str) -> tuple[int, str]:
    root = node.config.root
    assert root is not None
    out = io.StringIO()
    code = main(["--root", root, "--registries", root + ".registries.conf", "--lazy", node.config.lazy, *args], out=out)
    return code, out.getvalue()


def tree_dirs(node: Node) -> set[str]:
    root = os.path.join(node.root, "snapshots")
    return {n for n in os.listdir(root) if not n.startswith(".")}


# --- trust labels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["zstd:chunked", "estargz"])
def test_completion_upgrades_a_lazy_tree_to_verified(tmp: str, fmt: str) -> None:
    layer = layer_of(ENTRIES, fmt)
    assert isinstance(layer, LazyLayer)
    node = lazy_node(tmp, [layer])
    state, message, seen = mount(node, "app/conf")
    assert state == "running", message
    assert seen is not None and seen["settings.ini"][2] == b"[main]\nanswer = 42\n"
    before = mount_status(node)
    assert before.trust in ("toc-verified", "toc-pinned")
    assert before.lazy.startswith("partial tree")
    assert not node.store.has(layer.descriptor().digest)
    code, out = cli(node, "describe", "pod", "p")
    assert code == 0 and f"Trust:      {before.trust}" in out and "Lazy:       partial tree" in out
    text = node.metrics().exposition().decode()
    assert f'imagevol_lazy_trees{{trust="{before.trust}"}} 1.0' in text
    assert 'imagevol_lazy_trees{trust="verified"} 0.0' in text

    node.sync()

    # The whole blob is in the store now, proven by its digest, its diff ID and the tar's members.
    assert node.store.has(layer.descriptor().digest)
    after = mount_status(node)
    assert after.trust == "verified"
    # The container still sees the same tree through the same handle.
    assert mount(node, "app/conf", "p2")[2] == seen
    text = node.metrics().exposition().decode()
    assert 'imagevol_lazy_completions_total{result="verified"} 1.0' in text
    # p2's tree is another one, keyed by the stored blob's diff ID rather than its TOC: verified too.
    assert 'imagevol_lazy_trees{trust="verified"} 2.0' in text
    code, out = cli(node, "describe", "pod", "p")
    assert "Trust:      verified" in out
    # A second pass has nothing left to do.
    assert node.runtime.complete_lazy() == []


def test_toc_mode_never_completes(tmp: str) -> None:
    layer = layer_of(ENTRIES, "zstd:chunked")
    assert isinstance(layer, LazyLayer)
    node = lazy_node(tmp, [layer], mode="toc")
    assert mount(node, "app/conf")[0] == "running"
    node.sync()
    assert mount_status(node).trust == "toc-verified"
    assert not node.store.has(layer.descriptor().digest)


def _lying_config(layer: LazyLayer) -> LazyLayer:
    """The same blob and TOC, but the image config names the diff ID of another tar: every byte a
    lazy mount reads checks out against the TOC, the layer as a whole is not what the image says."""
    return attrs.evolve(layer, tar=layer.tar + b"\0" * 512)


@pytest.mark.parametrize("fmt", ["zstd:chunked", "estargz"])
def test_completion_revokes_a_tree_whose_layer_is_not_what_the_config_says(
    tmp: str, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    real = layer_of(ENTRIES, fmt)
    assert isinstance(real, LazyLayer)
    layer = _lying_config(real)
    full = lazy_node(tmp, [layer], mode="off", name="full")
    full_state, full_message, _ = mount(full, "app/conf")
    assert full_state != "running" and "diff id" in full_message
    node = lazy_node(tmp, [layer])
    state, message, _ = mount(node, "app/conf")
    assert state == "running", message
    assert mount_status(node).trust != "verified"
    trees = tree_dirs(node)
    assert len(trees) == 1 and next(iter(trees)).startswith("partial-")

    changed = node.runtime.complete_lazy()

    assert [label.trust for _, label in changed] == ["revoked"]
    status = mount_status(node)
    assert status.trust == "revoked" and "diff id" in status.lazy
    # The container loses its view: the runtime refuses to open the mount again.
    with pytest.raises(ImageVolError, match="was revoked"):
        node.runtime.open_mount(status)
    capsys.readouterr()
    code, out = cli(node, "exec", "p", "--", "ls", "/v")
    assert code != 0 and out == ""
    assert "error: the image volume mounted at /v was revoked: layer sha256:" in capsys.readouterr().err
    code, out = cli(node, "describe", "pod", "p")
    assert "Trust:      revoked" in out and "Lazy:       revoked: layer sha256:" in out
    assert "/" + node.root not in out
    assert 'imagevol_lazy_completions_total{result="revoked"} 1.0' in node.metrics().exposition().decode()
    # A new Pod is never served from the revoked tree: the full pull decides, and fails as it
    # does without lazy mode.
    again = mount(node, "app/conf", "p2")
    assert again[:2] == (full_state, full_message)
    # Released, the revoked tree is removed with the next garbage collection.
    node.delete_pod("p")
    node.delete_pod("p2")
    node.runtime.garbage_collect()
    assert not any(t.startswith("partial-") for t in tree_dirs(node))


# --- hostile and broken TOCs fall back ----------------------------------------------------------------------


def _tampered_annotation(layer: LazyLayer) -> LazyLayer:
    annotations = dict(layer.annotations)
    for key in annotations:
        if key.endswith("manifest-checksum") or key.endswith("toc.digest"):
            annotations[key] = "sha256:" + "0" * 64
    return attrs.evolve(layer, annotations=annotations)


@pytest.mark.parametrize("fmt", ["zstd:chunked", "estargz"])
def test_a_toc_that_does_not_match_its_pinned_digest_falls_back_to_the_full_pull(tmp: str, fmt: str) -> None:
    real = layer_of(ENTRIES, fmt)
    assert isinstance(real, LazyLayer)
    layer = _tampered_annotation(real)
    full = lazy_node(tmp, [layer], mode="off", name="full")
    node = lazy_node(tmp, [layer], mode="toc")
    want = mount(full, "app/conf")
    assert want[0] == "running"
    assert mount(node, "app/conf") == want
    status = mount_status(node)
    # The layer was pulled whole (and the tree built from the verified blob): fully trusted.
    assert node.store.has(layer.descriptor().digest)
    assert status.trust == "verified"
    assert "pulled whole" in status.lazy and "digest" in status.lazy.lower()
    text = node.metrics().exposition().decode()
    assert 'imagevol_lazy_fallbacks_total{reason="digest"} 1.0' in text


HOSTILE = [
    [D("app"), F("app/ok", b"ok"), TarEntry("../escape", "file", b"owned", mode=0o644)],
    [D("app"), F("app/ok", b"ok"), TarEntry("app/../../escape", "file", b"owned", mode=0o644)],
    [D("app"), F("app/ok", b"ok"), TarEntry("/abs/escape", "file", b"owned", mode=0o644)],
    [D("app"), S("app/link", "/"), TarEntry("app/link/escape", "file", b"owned", mode=0o644)],
    [D("app"), F("app/ok", b"ok"), TarEntry("app/.wh..wh..opq/x", "file", b"", mode=0o644)],
]


@pytest.mark.parametrize("fmt", ["zstd:chunked", "estargz"])
@pytest.mark.parametrize("entries", HOSTILE, ids=lambda e: e[-1].name)
def test_hostile_toc_entries_are_refused_and_the_full_pull_decides(tmp: str, fmt: str, entries: list[TarEntry]) -> None:
    layer = layer_of(entries, fmt)
    full = lazy_node(tmp, [layer], mode="off", name="full")
    node = lazy_node(tmp, [layer], mode="toc")
    want = mount(full, "app")
    got = mount(node, "app")
    assert got == want
    # Nothing was written outside any root: not next to the nodes, not at the filesystem root.
    for base in (tmp, os.path.join(tmp, "lazy"), os.path.join(tmp, "lazy", "snapshots"), "/abs"):
        assert not os.path.exists(os.path.join(base, "escape"))
    if got[0] != "running":
        # The lazy attempt never fails a mount of its own: the message is the full pull's, and the
        # refused TOC is counted and noted.
        assert got[1] == want[1]
        state = node.runtime.lazy.state()
        assert state["fallbacks"] and any("TOC entry" in n for n in state["notes"].values())


# --- metrics ------------------------------------------------------------------------------------------------


def test_the_lazy_metrics_pass_promtool(tmp: str) -> None:
    promtool = require("promtool")
    node = lazy_node(tmp, [layer_of(ENTRIES, "zstd:chunked"), layer_of([D("x")], "estargz")])
    assert mount(node, "app/conf")[0] == "running"
    node.sync()
    text = node.metrics().exposition()
    for family in (b"imagevol_lazy_fetched_bytes_total", b"imagevol_lazy_trees", b"imagevol_lazy_completions_total"):
        assert family in text
    assert b"kubelet_image_volume_requested_total 1.0" in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()


def test_an_off_node_exposes_no_lazy_metrics(tmp: str) -> None:
    node = lazy_node(tmp, [layer_of(ENTRIES, "zstd:chunked")], mode="off")
    assert mount(node, "app/conf")[0] == "running"
    assert b"imagevol_lazy" not in node.metrics().exposition()
    assert mount_status(node).trust == "verified" and mount_status(node).lazy == ""


def test_a_completion_that_cannot_fetch_keeps_the_label_and_tries_again(tmp: str) -> None:
    layer = layer_of(ENTRIES, "zstd:chunked")
    assert isinstance(layer, LazyLayer)
    node = lazy_node(tmp, [layer])
    assert mount(node, "app/conf")[0] == "running"
    blob = os.path.join(tmp, "layout", "blobs", "sha256", layer.descriptor().digest.hex)
    os.rename(blob, blob + ".away")
    node.sync()
    # Nothing proven either way: still toc-verified, and why it is pending is kept.
    assert mount_status(node).trust == "toc-verified"
    assert list(node.runtime.lazy.state()["pending"].values())
    assert "imagevol_lazy_completions_total{" not in node.metrics().exposition().decode()
    os.rename(blob + ".away", blob)
    node.sync()
    assert mount_status(node).trust == "verified"
    assert node.runtime.lazy.state()["pending"] == {}
