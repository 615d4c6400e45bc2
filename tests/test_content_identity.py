"""Content identity (containerd's model): one image can never change what another image's Pods see.

* Each layer's uncompressed stream is hashed while it is applied and must equal the config's
  ``rootfs.diff_ids`` entry ("wrong diff id calculated on extraction"); a wrong count fails the pull.
* Image trees are keyed by the ChainID of their layers: identical chains share one tree, and a tree
  under a chain key holds exactly the layers that chain names.
* The runtime mounts the record the Pod's own reference names, never "the first record with this
  image ID".
* A descriptor that lies about its size or digest fails the pull of *its* image, with an error that
  names that image and the blob ("size mismatch", "digest mismatch"), never another image and never
  "the content store is corrupt".

Every test asserts on what Pods see (through the exec view) and on the node's ``snapshots/``
directory, not only on the exception. Images come from OCI layouts and from the real loopback
registry (pushed with skopeo).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagevol.content.sources._client import RetryPolicy
from imagevol.content.sources.registry import RegistryAccess
from imagevol.content.store import ContentStore
from imagevol.errors import (
    DiffIDMismatchError,
    DigestMismatchError,
    ImageVolError,
    ManifestError,
    SizeMismatchError,
)
from imagevol.exec.view import ContainerView
from imagevol.kubelet.image_gc import ImageGC
from imagevol.kubelet.pod_sync import PodRecord
from imagevol.node import Node, NodeConfig
from imagevol.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    Descriptor,
    Digest,
    Manifest,
    canonical_json,
    chain_id,
    chain_ids,
    parse_diff_ids,
    parse_manifest,
)
from imagevol.testing.images import Layer, LayoutBuilder
from imagevol.testing.tarbuild import TarEntry, build_layer, gzip_bytes, zstd_bytes
from imagevol.trees._decompress import MODES
from imagevol.trees.layers import ApplyOptions, apply_layers
from imagevol.trees.snapshots import SnapshotKey, Snapshots, plan_for
from tests.helpers import peers
from tests.helpers.clock import FakeClock
from tests.helpers.fixture_node import PREFIX, make_node
from tests.helpers.pods import make_pod

GOOD = (TarEntry("d/", "dir"), TarEntry("d/g", "file", b"g\n"), TarEntry("f", "file", b"good\n"))
GOOD_TOP = (TarEntry("top", "file", b"top\n"),)
EVIL = (TarEntry("f", "file", b"evil\n"), TarEntry("planted", "file", b"evil\n"))
OTHER = (TarEntry("f", "file", b"other\n"),)
_COMPRESS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "gzip": (gzip_bytes, OCI_LAYER_GZIP),
    "zstd": (zstd_bytes, OCI_LAYER_ZSTD),
    "none": (bytes, OCI_LAYER),
}


# --- building images --------------------------------------------------------------------------------


def _manifest(layout: str, desc: Descriptor) -> Manifest:
    with open(os.path.join(layout, "blobs", desc.digest.algorithm, desc.digest.hex), "rb") as f:
        doc = parse_manifest(f.read())
    assert isinstance(doc, Manifest)
    return doc


def _layer(b: LayoutBuilder, entries: Sequence[TarEntry], compression: str = "gzip") -> Descriptor:
    compress, media_type = _COMPRESS[compression]
    return b.add_blob(compress(build_layer(entries)), media_type)


def _config(b: LayoutBuilder, diff_ids: Sequence[object], **extra: object) -> Descriptor:
    doc = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": list(diff_ids)}}
    return b.add_blob(canonical_json({**doc, **extra}), OCI_CONFIG)


def _diff_id(entries: Sequence[TarEntry]) -> str:
    return str(Digest.of(build_layer(entries)))


def twins_layout(path: str) -> dict[str, Descriptor]:
    """``z-good``: two gzip layers. ``recompressed``: the same config and the same tars, zstd and
    uncompressed (an honest twin). ``a-evil``: the same config, other layers (a liar; its name sorts
    first, which is what "the first record with this image ID" used to pick). ``relabelled``:
    another config (an extra env) naming the same diff IDs: the same chain. ``other``: another
    image altogether."""
    b = LayoutBuilder(path)
    good = b.add_image([Layer(GOOD), Layer(GOOD_TOP)], tag="z-good")
    config = _manifest(path, good).config
    b.add_manifest(config, [_layer(b, GOOD, "zstd"), _layer(b, GOOD_TOP, "none")], tag="recompressed")
    b.add_manifest(config, [_layer(b, EVIL), _layer(b, GOOD_TOP)], tag="a-evil")
    relabelled = _config(b, [_diff_id(GOOD), _diff_id(GOOD_TOP)], config={"Env": ["X=1"]})
    b.add_manifest(relabelled, [_layer(b, GOOD), _layer(b, GOOD_TOP)], tag="relabelled")
    b.add_image([Layer(OTHER)], tag="other")
    b.save()
    return dict(b.refs)


def _trees(node: Node) -> list[str]:
    """The published trees under ``snapshots/`` (dot entries are staging, leases and locks)."""
    return sorted(n for n in os.listdir(node.snapshots.root) if not n.startswith("."))


def _staging(node: Node) -> list[str]:
    return os.listdir(os.path.join(node.snapshots.root, ".staging"))


def _all_file_bytes(root: str) -> list[bytes]:
    out = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full) and os.path.isfile(full):
                with open(full, "rb") as f:
                    out.append(f.read())
    return out


def _view(node: Node, record: PodRecord) -> ContainerView:
    container = node.runtime.container_status(record.state("c").container_id)
    assert container is not None
    return ContainerView("c", container.mounts, node.runtime.open_mount)


def _start(node: Node, name: str, ref: str, policy: str = "IfNotPresent") -> PodRecord:
    record = node.create_pod(make_pod(name, [("volume", ref, policy)], [("volume", "/volume", "")]))
    return record


def _volume_images(node: Node) -> list[Any]:
    """The node's images but the Pods' container image (docker.io/library/busybox, the fixtures'
    stand-in)."""
    return [i for i in node.runtime.list_images() if not i.reference.startswith("docker.io/library/")]


def _no_evil_anywhere(node: Node) -> None:
    assert not any(b"evil" in data for data in _all_file_bytes(node.snapshots.root))


# --- the real loopback registry ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("twins") / "layout")
    twins_layout(path)
    return path


@pytest.fixture(scope="module")
def reg(twins: str) -> Iterator[peers.Registry]:
    with peers.registry() as r:
        for tag in ("z-good", "recompressed", "a-evil", "relabelled", "other"):
            peers.skopeo_copy(twins, tag, r, f"ident/{tag}")
        yield r


def _ref(reg: peers.Registry, tag: str) -> str:
    return f"{reg.host}/ident/{tag}:v1"


@pytest.fixture
def node(node_root: str, container_images_conf: str) -> Node:
    access = RegistryAccess(plain_http=True, retry=RetryPolicy(attempts=1))
    return Node(
        NodeConfig(root=node_root, clock=FakeClock(), registry_factory=access, registries=container_images_conf)
    )


@pytest.mark.parametrize("pull_order", ["good-first", "evil-first"])
@pytest.mark.parametrize("mount_order", ["good-first", "evil-first"])
def test_a_lying_twin_never_shows_its_files(node: Node, reg: peers.Registry, pull_order: str, mount_order: str) -> None:
    """Two images with one config (one image ID), the second shipping other layers. Whatever the
    order of pulls and mounts, the honest image's Pods see its files; the liar's Pods either fail
    with containerd's wording (when its own layers would have to build the tree) or see what its
    config names, the honest tree: never its own layers' bytes."""
    good, evil = _ref(reg, "z-good"), _ref(reg, "a-evil")
    for ref in (good, evil) if pull_order == "good-first" else (evil, good):
        node.runtime.pull_image(ref)
    [id_good] = {r.id for r in node.runtime.list_images() if r.reference == good}
    assert {r.id for r in node.runtime.list_images()} == {id_good}  # one image ID, two images

    if mount_order == "evil-first":
        liar = _start(node, "evil", evil)
        state = liar.state("c")
        assert (state.state, state.reason) == ("waiting", "CreateContainerError")
        want = f'ImageVolumeMountFailed: failed to unpack image volume "{evil}": '
        assert state.message.startswith(want + 'wrong diff id calculated on extraction "sha256:')
        assert good not in state.message and "corrupt" not in state.message
        assert _trees(node) == [] and _staging(node) == []  # nothing published, no debris

    honest = _start(node, "good", good)
    assert honest.phase == "Running"
    v = _view(node, honest)
    assert v.cat("/volume/f") == b"good\n" and v.cat("/volume/top") == b"top\n"
    assert v.ls("/volume") == ["d", "f", "top"]
    [mount] = node.runtime.container_status(honest.state("c").container_id).mounts  # type: ignore[union-attr]
    assert mount.image_id == id_good and mount.image_ref.startswith(f"{reg.host}/ident/z-good@sha256:")

    # The liar's Pod (new, or the failed one retried) now finds the tree its config names.
    liar = node.sync_pod("evil") if mount_order == "evil-first" else _start(node, "evil", evil)
    assert liar.phase == "Running"
    lv = _view(node, liar)
    assert lv.cat("/volume/f") == b"good\n" and lv.ls("/volume") == ["d", "f", "top"]
    assert len(_trees(node)) == 1
    _no_evil_anywhere(node)
    # And the honest Pod still sees its own files.
    assert _view(node, node.get_pod("good")).cat("/volume/f") == b"good\n"


def test_honest_twins_share_one_tree_and_rmi_keeps_it_for_the_other(node: Node, reg: peers.Registry) -> None:
    """Same config, same tars, other compressions: one chain, one tree. Removing one image keeps
    the tree the other still names; removing both removes it."""
    good, twin = _ref(reg, "z-good"), _ref(reg, "recompressed")
    a, b = _start(node, "a", good), _start(node, "b", twin)
    assert a.phase == b.phase == "Running"
    assert _view(node, a).cat("/volume/d/g") == _view(node, b).cat("/volume/d/g") == b"g\n"
    [tree] = _trees(node)
    assert tree.startswith("chain-sha256-")
    node.delete_pod("a")
    node.delete_pod("b")
    node.runtime.remove_image(good)
    assert _trees(node) == [tree]  # the twin names the same chain
    c = _start(node, "c", twin)
    assert c.phase == "Running" and _view(node, c).cat("/volume/f") == b"good\n"
    node.delete_pod("c")
    node.runtime.remove_image(twin)
    assert _trees(node) == [] and _staging(node) == []


def test_rmi_of_the_honest_twin_does_not_let_the_liar_build(node: Node, reg: peers.Registry) -> None:
    """Once the honest image and its tree are gone, the liar's own layers must build the tree,
    and they do not match its config: its Pod fails, and nothing is published."""
    good, evil = _ref(reg, "z-good"), _ref(reg, "a-evil")
    node.create_pod(make_pod("g", [("volume", good, "IfNotPresent")], [("volume", "/volume", "")]))
    node.runtime.pull_image(evil)
    node.delete_pod("g")
    node.runtime.remove_image(good)
    # The liar has the same chain: its record keeps the tree (what its config names).
    assert len(_trees(node)) == 1
    node.runtime.remove_image(evil)
    assert _trees(node) == []
    node.runtime.pull_image(evil)
    liar = _start(node, "evil", evil)
    assert liar.state("c").reason == "CreateContainerError"
    assert "wrong diff id calculated on extraction" in liar.state("c").message
    assert _trees(node) == [] and _staging(node) == []


def test_identical_chains_share_a_tree_and_other_chains_do_not(node: Node, reg: peers.Registry) -> None:
    refs = [_ref(reg, t) for t in ("z-good", "relabelled", "recompressed", "other")]
    records = [_start(node, f"p{i}", ref) for i, ref in enumerate(refs)]
    assert all(r.phase == "Running" for r in records)
    ids = {r.id for r in _volume_images(node)}
    assert len(ids) == 3  # three configs...
    assert len(_trees(node)) == 2  # ...two chains
    snaps = {node.runtime.container_status(r.state("c").container_id).mounts[0].snapshot for r in records}  # type: ignore[union-attr]
    assert len(snaps) == 2
    assert _view(node, records[3]).cat("/volume/f") == b"other\n"
    assert _view(node, records[1]).cat("/volume/f") == b"good\n"


def test_a_retagged_reference_keeps_old_mounts_and_new_pods_get_the_new_image(
    node: Node, reg: peers.Registry, twins: str
) -> None:
    """``app:v1`` first names one image, then another (re-pushed). A running Pod keeps its tree
    (leased); a new Pod with pullPolicy Always sees the new image; the old tree goes once unused.
    Re-pointing the tag at the liar then gives new Pods what the liar's config names."""
    app = f"{reg.host}/ident/app:v1"
    peers.skopeo_copy(twins, "other", reg, "ident/app")
    old = _start(node, "old", app, "Always")
    assert _view(node, old).cat("/volume/f") == b"other\n"
    peers.skopeo_copy(twins, "z-good", reg, "ident/app")
    new = _start(node, "new", app, "Always")
    assert _view(node, new).cat("/volume/f") == b"good\n"
    assert _view(node, node.get_pod("old")).cat("/volume/f") == b"other\n"  # its lease holds
    assert len(_trees(node)) == 2
    ImageGC(node.runtime, clock=node.now).collect(capacity=10**15)  # nothing to free: prune only
    assert len(_trees(node)) == 2  # the old tree is still mounted
    node.delete_pod("old")
    node.runtime.prune_snapshots()
    assert len(_trees(node)) == 1
    peers.skopeo_copy(twins, "a-evil", reg, "ident/app")
    liar = _start(node, "liar", app, "Always")
    assert _view(node, liar).cat("/volume/f") == b"good\n"
    _no_evil_anywhere(node)


# --- diff IDs that lie (OCI layouts) ------------------------------------------------------------------


def _lying_layout(path: str) -> dict[str, str]:
    """Images whose configs lie about their layers, by tag: the expected failure."""
    b = LayoutBuilder(path)
    good, top = _layer(b, GOOD), _layer(b, GOOD_TOP)
    real = [_diff_id(GOOD), _diff_id(GOOD_TOP)]
    wrong = _diff_id(EVIL)
    b.add_manifest(_config(b, [wrong, real[1]]), [good, top], tag="first-wrong")
    b.add_manifest(_config(b, [real[0], wrong]), [good, top], tag="last-wrong")
    # The compressed digest where the uncompressed one belongs (a classic image-building bug).
    b.add_manifest(_config(b, [str(good.digest), real[1]]), [good, top], tag="compressed-digest")
    b.add_manifest(_config(b, real[:1]), [good, top], tag="too-few")
    b.add_manifest(_config(b, [*real, wrong]), [good, top], tag="too-many")
    b.add_manifest(_config(b, []), [good], tag="none")
    b.add_image([Layer(GOOD), Layer(GOOD_TOP)], tag="honest")
    b.save()
    return {
        "first-wrong": "wrong diff id",
        "last-wrong": "wrong diff id",
        "compressed-digest": "wrong diff id",
        "too-few": "number of layers and diffIDs don't match: 2 != 1",
        "too-many": "number of layers and diffIDs don't match: 2 != 3",
        "none": "number of layers and diffIDs don't match: 1 != 0",
    }


@pytest.mark.parametrize("tag", ["first-wrong", "last-wrong", "compressed-digest", "too-few", "too-many", "none"])
def test_a_config_whose_diff_ids_lie_fails_and_leaves_nothing(node_root: str, tmp_path: object, tag: str) -> None:
    layout = f"{tmp_path}/lying"
    expected = _lying_layout(layout)[tag]
    node = make_node(node_root, layout, FakeClock())
    ref = f"{PREFIX}:{tag}"
    record = _start(node, "p", ref)
    state = record.state("c")
    if "number of layers" in expected:
        # Counted at pull time, before any layer is fetched: the pull fails, nothing is recorded.
        assert (state.state, state.reason) == ("waiting", "ErrImagePull")
        assert state.message.startswith(f'failed to pull and unpack image "{ref}": ')
        assert expected in state.message
        assert _volume_images(node) == []
    else:
        assert (state.state, state.reason) == ("waiting", "CreateContainerError")
        want = f'ImageVolumeMountFailed: failed to unpack image volume "{ref}": '
        assert state.message.startswith(want + 'wrong diff id calculated on extraction "sha256:')
        layer = 1 if tag in ("first-wrong", "compressed-digest") else 2
        assert f"for layer {layer} of 2 (sha256:" in state.message
    assert _trees(node) == [] and _staging(node) == []
    assert node.snapshots.published() == []
    # The honest image on the same node is unaffected.
    ok = _start(node, "ok", f"{PREFIX}:honest")
    assert ok.phase == "Running" and _view(node, ok).cat("/volume/top") == b"top\n"
    assert len(_trees(node)) == 1


def test_the_cli_pull_of_a_config_with_too_few_diff_ids_names_the_image(
    node_root: str, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from imagevol.cli import main

    layout = f"{tmp_path}/lying"
    _lying_layout(layout)
    conf = make_node(node_root, layout, FakeClock()).config.registries
    assert conf is not None
    ref = f"{PREFIX}:too-few"
    assert main(["--root", node_root, "--registries", conf, "pull", ref]) == 1
    err = capsys.readouterr().err
    assert f'failed to pull and unpack image "{ref}": number of layers and diffIDs don\'t match: 2 != 1' in err
    assert "Traceback" not in err and node_root not in err


# --- descriptors that lie about size or digest ------------------------------------------------------------


def _descriptor_liars(path: str) -> dict[str, Descriptor]:
    """``z-good`` is honest. Each other image's manifest has one lying descriptor:
    ``config-size``/``layer-size``: a blob ``z-good`` already brought, with another size;
    ``fresh-size``: a blob nobody has, with another size; ``fresh-digest``: a blob whose bytes do
    not hash to its digest (the layout serves other bytes under that name)."""
    b = LayoutBuilder(path)
    good = b.add_image([Layer(GOOD), Layer(GOOD_TOP)], tag="z-good")
    m = _manifest(path, good)
    b.add_manifest(attrs.evolve(m.config, size=m.config.size + 7), list(m.layers), tag="config-size")
    b.add_manifest(m.config, [attrs.evolve(m.layers[0], size=m.layers[0].size - 3), m.layers[1]], tag="layer-size")
    other = _layer(b, OTHER)
    b.add_manifest(_config(b, [_diff_id(OTHER)]), [attrs.evolve(other, size=other.size + 1)], tag="fresh-size")
    swapped = _layer(b, OTHER, "none")
    with open(os.path.join(path, "blobs", "sha256", swapped.digest.hex), "r+b") as f:
        f.write(b"X")  # same size, other bytes
    b.add_manifest(_config(b, [_diff_id(OTHER)]), [swapped], tag="fresh-digest")
    b.save()
    return {"config": m.config, "layer": m.layers[0], "other": other, "swapped": swapped}


@pytest.mark.parametrize(
    ("tag", "what", "blob", "error"),
    [
        ("config-size", "size mismatch for config", "config", SizeMismatchError),
        ("layer-size", "size mismatch for layer", "layer", SizeMismatchError),
        ("fresh-size", "size mismatch for layer", "other", SizeMismatchError),
        ("fresh-digest", "digest mismatch for layer", "swapped", DigestMismatchError),
    ],
)
def test_a_lying_descriptor_fails_its_own_image_and_names_it(
    node_root: str, tmp_path: object, tag: str, what: str, blob: str, error: type[Exception]
) -> None:
    layout = f"{tmp_path}/liars"
    blobs = _descriptor_liars(layout)
    node = make_node(node_root, layout, FakeClock())
    good = f"{PREFIX}:z-good"
    first = _start(node, "good", good)
    assert first.phase == "Running"
    liar = f"{PREFIX}:{tag}"
    with pytest.raises(error) as info:
        node.runtime.pull_image(liar)
    text = str(info.value)
    assert text.startswith(f'failed to pull and unpack image "{liar}": {what} {blobs[blob].digest}: ')
    assert good not in text and "corrupt" not in text
    # Its image is not recorded, nothing of it was published, and the honest image is untouched.
    assert [r.reference for r in _volume_images(node)] == [good]
    assert len(_trees(node)) == 1 and _staging(node) == []
    assert not [n for n in os.listdir(os.path.join(node.store.root, "ingest")) if n.endswith(".part")]
    assert _view(node, node.get_pod("good")).cat("/volume/f") == b"good\n"
    second = _start(node, "again", good)
    assert second.phase == "Running" and _view(node, second).cat("/volume/top") == b"top\n"
    # A Pod of the liar reports the same error, naming the liar.
    record = _start(node, "liar", liar)
    assert record.state("c").reason == "ErrImagePull"
    assert record.state("c").message == text


def test_a_manifest_descriptor_that_lies_about_its_size_names_the_image(node_root: str, tmp_path: object) -> None:
    layout = f"{tmp_path}/index"
    b = LayoutBuilder(layout)
    good = b.add_image([Layer(GOOD)])
    b.tag("short", attrs.evolve(good, size=good.size - 1))
    b.save()
    node = make_node(node_root, layout, FakeClock())
    with pytest.raises(SizeMismatchError) as info:
        node.runtime.pull_image(f"{PREFIX}:short")
    assert str(info.value).startswith(f'failed to pull and unpack image "{PREFIX}:short": ')
    assert f"size mismatch for manifest {good.digest}" in str(info.value)


def test_a_registry_serving_other_bytes_for_a_layer_is_a_digest_mismatch_of_that_image(
    node_root: str, twins: str, container_images_conf: str
) -> None:
    """The registry's stored blob is swapped for bytes of the same size: the pull fails naming the
    image and the layer, and the honest twin pulled from elsewhere is untouched."""
    with peers.registry() as r:
        peers.skopeo_copy(twins, "other", r, "ident/tampered")
        m = _manifest(twins, _layout_ref(twins, "other"))
        path = r.blob_data_path(m.layers[0].digest.hex)
        with open(path, "r+b") as f:
            data = f.read()
            f.seek(0)
            f.write(bytes([data[0] ^ 1]) + data[1:])
        access = RegistryAccess(plain_http=True, retry=RetryPolicy(attempts=1))
        node = Node(
            NodeConfig(root=node_root, clock=FakeClock(), registry_factory=access, registries=container_images_conf)
        )
        ref = f"{r.host}/ident/tampered:v1"
        record = _start(node, "p", ref)
        state = record.state("c")
        assert state.reason == "ErrImagePull"
        assert state.message.startswith(
            f'failed to pull and unpack image "{ref}": digest mismatch for layer {m.layers[0].digest}: '
        )
        assert _volume_images(node) == [] and _trees(node) == []


def _layout_ref(layout: str, tag: str) -> Descriptor:
    with open(os.path.join(layout, "index.json"), "rb") as f:
        index = parse_manifest(f.read())
    assert not isinstance(index, Manifest)
    return next(d for d in index.manifests if d.annotations.get("org.opencontainers.image.ref.name") == tag)


# --- trees at the key they name ---------------------------------------------------------------------------


def test_an_image_without_layers_has_the_empty_chain(node_root: str, tmp_path: object) -> None:
    layout = f"{tmp_path}/empty"
    b = LayoutBuilder(layout)
    b.add_image([], tag="empty")
    b.add_image([], tag="empty2", config_extra={"config": {"Env": ["A=1"]}})
    b.save()
    node = make_node(node_root, layout, FakeClock())
    one, two = _start(node, "one", f"{PREFIX}:empty"), _start(node, "two", f"{PREFIX}:empty2")
    assert one.phase == two.phase == "Running"
    assert _view(node, one).ls("/volume") == []
    assert _trees(node) == ["chain-empty"]


def test_an_artifact_tree_is_keyed_by_its_manifest_digest(node_root: str, fixtures_layout: str) -> None:
    node = make_node(node_root, fixtures_layout, FakeClock(), runtime="crio")
    record = _start(node, "a", f"{PREFIX}:artifact-raw")
    assert record.phase == "Running"
    [image] = [r for r in node.puller.image_db.all() if r.name.startswith(PREFIX)]
    assert _trees(node) == [f"manifest-sha256-{image.manifest_digest.hex}"]
    assert _view(node, record).cat("/volume/dir/file") == b"1\n"


def test_an_image_tree_is_keyed_by_its_chain_id(node_root: str, fixtures_layout: str) -> None:
    node = make_node(node_root, fixtures_layout, FakeClock())
    _start(node, "p", f"{PREFIX}:layers-mix")
    [image] = [r for r in node.puller.image_db.all() if r.name.startswith(PREFIX)]
    manifest = node.puller.manifest_of(image)
    diff_ids = node.puller.diff_ids(manifest)
    top = chain_id(diff_ids)
    assert top is not None
    assert _trees(node) == [f"chain-sha256-{top.hex}"]
    assert node.runtime.snapshot_key(image) == SnapshotKey("chain", top)


def test_trees_of_an_earlier_version_are_debris_unless_leased(node_root: str, fixtures_layout: str) -> None:
    """An earlier version named trees by manifest digest (a bare hex name). They are never used
    for new mounts; an unleased one is removed at the next start, a leased one stays (its
    container's mount keeps working) until released."""
    node = make_node(node_root, fixtures_layout, FakeClock())
    root = node.snapshots.root
    unleased, leased = "1" * 64, "2" * 64
    for name in (unleased, leased):
        os.makedirs(os.path.join(root, name, "x"))
    node.snapshots.lease(SnapshotKey.parse("sha256:" + leased), "old-container")
    again = make_node(node_root, fixtures_layout, FakeClock())
    assert _trees(again) == [leased]
    assert again.snapshots.get(SnapshotKey.parse("sha256:" + leased)) is not None
    record = _start(again, "p", f"{PREFIX}:v2")
    assert record.phase == "Running" and len(_trees(again)) == 2
    again.snapshots.release(SnapshotKey.parse("sha256:" + leased), "old-container")
    again.runtime.prune_snapshots()
    assert [t for t in _trees(again) if not t.startswith("chain-")] == []


@pytest.mark.parametrize(
    "text", ["../x", "chain-sha256-" + "a" * 63, "chain-md5-" + "a" * 32, "manifest-sha256-../../etc", "", "chain-"]
)
def test_snapshot_keys_that_do_not_parse(text: str) -> None:
    with pytest.raises(ImageVolError):
        SnapshotKey.parse(text)


# --- the diff ID itself -----------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
@pytest.mark.parametrize("mode", MODES)
def test_the_diff_id_is_the_digest_of_the_whole_uncompressed_stream(
    tmp_path: object, compression: str, mode: str
) -> None:
    tar = build_layer(GOOD) + b"\0" * 4096 + b"after the end marker"  # read (and hashed) to the end
    compress, _ = _COMPRESS[compression]
    path = f"{tmp_path}/blob"
    with open(path, "wb") as f:
        f.write(compress(tar))
    for algorithm in ("sha256", "sha512"):
        root = f"{tmp_path}/{algorithm}"
        os.mkdir(root)
        with open(path, "rb") as f:
            [stats] = apply_layers(root, [f], ApplyOptions(decompress=mode), [Digest.of(tar, algorithm)])
        assert stats.diff_id == Digest.of(tar, algorithm)
    os.mkdir(f"{tmp_path}/bad")
    with open(path, "rb") as f, pytest.raises(DiffIDMismatchError, match="wrong diff id calculated on extraction"):
        apply_layers(f"{tmp_path}/bad", [f], ApplyOptions(decompress=mode), [Digest.of(build_layer(GOOD))])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (b"[]", "not a JSON object"),
        (b"{", "unmarshal image config"),
        (b'{"rootfs": []}', "rootfs must be an object"),
        (b'{"rootfs": {"type": "zfs", "diff_ids": []}}', "unknown rootfs type"),
        (b'{"rootfs": {"type": "layers", "diff_ids": "sha256:x"}}', "must be a list"),
        (b'{"rootfs": {"type": "layers", "diff_ids": [1]}}', "is not a digest string"),
        (b'{"rootfs": {"type": "layers", "diff_ids": ["sha256:abc"]}}', "invalid sha256 digest"),
        (b'{"rootfs": {"type": "layers", "diff_ids": ["md5:' + b"0" * 32 + b'"]}}', "unsupported digest algorithm"),
    ],
)
def test_configs_that_do_not_parse(config: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_diff_ids(config)


def test_a_config_without_rootfs_has_no_diff_ids() -> None:
    assert parse_diff_ids(b"{}") == ()
    assert parse_diff_ids(b'{"rootfs": {"type": "layers"}}') == ()


def _spec_chain_id(diff_ids: Sequence[str]) -> str:
    """The image spec's definition, written out: ChainID(L0) = DiffID(L0);
    ChainID(L0|...|Ln) = Digest(ChainID(L0|...|Ln-1) + " " + DiffID(Ln))."""
    if len(diff_ids) == 1:
        return diff_ids[0]
    return "sha256:" + hashlib.sha256(f"{_spec_chain_id(diff_ids[:-1])} {diff_ids[-1]}".encode()).hexdigest()


_DIFF_IDS = st.lists(
    st.one_of(
        st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex()),
        st.binary(min_size=64, max_size=64).map(lambda b: "sha512:" + b.hex()),
    ),
    min_size=1,
    max_size=8,
)


@given(_DIFF_IDS)
def test_chain_ids_follow_the_image_spec(diff_ids: list[str]) -> None:
    digests = [Digest.parse(d) for d in diff_ids]
    got = chain_ids(digests)
    assert [str(c) for c in got] == [_spec_chain_id(diff_ids[: i + 1]) for i in range(len(diff_ids))]
    assert chain_id(digests) == got[-1]
    # Reference values from the image spec's worked example shape: order matters, prefixes differ.
    if len(set(diff_ids)) > 1:
        assert chain_id(list(reversed(digests))) != got[-1] or diff_ids == list(reversed(diff_ids))


def test_the_empty_chain() -> None:
    assert chain_id([]) is None and chain_ids([]) == []
    assert SnapshotKey.for_chain(()).name == "chain-empty"


_CONTENTS = st.sampled_from([b"a\n", b"b\n", b""])
_LAYER = st.tuples(
    st.lists(
        st.tuples(st.sampled_from(["x", "y", "d/z"]), _CONTENTS), min_size=1, max_size=3, unique_by=lambda t: t[0]
    ),
    st.sampled_from(["gzip", "zstd", "none"]),
)
_IMAGE = st.lists(_LAYER, min_size=0, max_size=3)


def _entries(files: list[tuple[str, bytes]]) -> tuple[TarEntry, ...]:
    dirs = sorted({name.rsplit("/", 1)[0] + "/" for name, _ in files if "/" in name})
    return (*(TarEntry(d, "dir") for d in dirs), *(TarEntry(n, "file", data) for n, data in files))


def _build(b: LayoutBuilder, image: list[Any], lie: bool = False) -> Descriptor:
    layers = [_layer(b, _entries(files), compression) for files, compression in image]
    diff_ids = [_diff_id(_entries(files)) for files, _ in image]
    if lie and diff_ids:
        diff_ids[-1] = _diff_id((TarEntry("lie", "file", b"!"),))
    return b.add_manifest(_config(b, diff_ids), layers)


def _listing(root: str) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            out[os.path.relpath(os.path.join(dirpath, n), root)] = None
        for n in filenames:
            with open(os.path.join(dirpath, n), "rb") as f:
                out[os.path.relpath(os.path.join(dirpath, n), root)] = f.read()
    return out


def _model(image: list[Any]) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for files, _ in image:
        for name, data in files:
            if "/" in name:
                out[name.rsplit("/", 1)[0]] = None
            out[name] = data
    return out


@settings(max_examples=25)
@given(_IMAGE, _IMAGE, st.booleans())
def test_random_pairs_share_a_tree_exactly_when_their_chains_match(
    tmp_path_factory: pytest.TempPathFactory, first: list[Any], second: list[Any], lie: bool
) -> None:
    """Two random images on one node: equal chains give one tree, different chains two; each
    image's tree is its own layers applied (compression never matters); a config that lies about
    the last layer fails to build, publishes nothing, and does not disturb the other's tree."""
    base = str(tmp_path_factory.mktemp("pairs"))
    b = LayoutBuilder(f"{base}/layout")
    d1, d2 = _build(b, first), _build(b, second, lie)
    b.save()
    store = ContentStore(f"{base}/layout")
    snaps = Snapshots(f"{base}/snaps", store)
    p1 = plan_for(store, d1.digest, store.read_manifest(d1))  # type: ignore[arg-type]
    p2 = plan_for(store, d2.digest, store.read_manifest(d2))  # type: ignore[arg-type]
    same_chain = [_diff_id(_entries(f)) for f, _ in first] == [str(d) for d in p2.diff_ids]
    assert (p1.key == p2.key) == same_chain
    t1 = snaps.materialise(p1)
    assert _listing(t1.path) == _model(first)
    if lie and second:
        if same_chain:
            # The lying config names the first image's chain: it gets that tree, never its layers.
            assert snaps.materialise(p2).path == t1.path
        else:
            with pytest.raises(DiffIDMismatchError):
                snaps.materialise(p2)
            assert snaps.get(p2.key) is None
        assert os.listdir(f"{base}/snaps/.staging") == []
    else:
        t2 = snaps.materialise(p2)
        assert _listing(t2.path) == _model(second)
        assert (t1.path == t2.path) == same_chain
    assert _listing(t1.path) == _model(first)
    assert len(snaps.published()) == (1 if same_chain or (lie and second) else 2)


def test_embedded_config_data_that_lies_is_a_mismatch_of_that_image(node_root: str, tmp_path: object) -> None:
    layout = f"{tmp_path}/embedded"
    b = LayoutBuilder(layout)
    layer = _layer(b, GOOD)
    config = _config(b, [_diff_id(GOOD)])
    raw = canonical_json({"rootfs": {"type": "layers", "diff_ids": [_diff_id(EVIL)]}})
    b.add_manifest(attrs.evolve(config, data=raw), [layer], tag="embedded")
    b.save()
    node = make_node(node_root, layout, FakeClock())
    with pytest.raises(ImageVolError) as info:
        node.runtime.pull_image(f"{PREFIX}:embedded")
    assert str(info.value).startswith(f'failed to pull and unpack image "{PREFIX}:embedded": ')
    assert f"mismatch for config {config.digest}" in str(info.value)
    assert _volume_images(node) == [] and _trees(node) == []


def test_a_config_over_the_limit_is_refused_before_anything_is_fetched(node_root: str, tmp_path: object) -> None:
    layout = f"{tmp_path}/big"
    b = LayoutBuilder(layout)
    layer = _layer(b, GOOD)
    config = _config(b, [_diff_id(GOOD)])
    big = attrs.evolve(config, size=4 * 1024 * 1024 + 1)
    b.add_manifest(big, [layer], tag="big")
    b.save()
    node = make_node(node_root, layout, FakeClock())
    with pytest.raises(SizeMismatchError, match="exceeds the 4194304-byte limit"):
        node.runtime.pull_image(f"{PREFIX}:big")
    assert not node.store.has(config.digest) and not node.store.has(layer.digest)
