"""Artifacts laid out as CRI-O does (R9.10) and image/artifact classification (R9.1)."""

from __future__ import annotations

import io
import os
import stat

import pytest

from imagevol.content.store import ContentStore
from imagevol.errors import LayerError
from imagevol.oci import (
    ANNOTATION_MODEL_FILEPATH,
    ANNOTATION_TITLE,
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Digest,
    Manifest,
)
from imagevol.testing.images import ARTIFACT_V2_ENTRIES
from imagevol.testing.tarbuild import build_layer, gzip_bytes
from imagevol.trees.artifacts import lay_out_artifact
from imagevol.trees.snapshots import Snapshots, plan_for
from tests.helpers.layerkit import D, F, S, Sandbox

TAR_V2 = gzip_bytes(build_layer(ARTIFACT_V2_ENTRIES))


def _desc(data: bytes, media_type: str, title: str = "", key: str = ANNOTATION_TITLE) -> Descriptor:
    return Descriptor(media_type, Digest.of(data), len(data), {key: title} if title else {})


def _manifest(*layers: Descriptor, config: str = OCI_EMPTY, artifact_type: str = "") -> Manifest:
    cfg = _desc(b"{}", config)
    return Manifest(OCI_MANIFEST, cfg, tuple(layers), artifact_type=artifact_type)


# --- classification (R9.1) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("media_type", "config", "artifact_type", "image"),
    [
        (OCI_MANIFEST, OCI_CONFIG, "", True),
        (OCI_MANIFEST, "", "", True),
        (DOCKER_MANIFEST, DOCKER_CONFIG, "", True),
        (OCI_MANIFEST, OCI_CONFIG, "application/vnd.example+type", False),
        (OCI_MANIFEST, OCI_EMPTY, "", False),
        (OCI_MANIFEST, "application/vnd.unknown.config.v1+json", "", False),
        (OCI_MANIFEST, "application/vnd.cncf.helm.config.v1+json", "", False),
    ],
)
def test_image_or_artifact(media_type: str, config: str, artifact_type: str, image: bool) -> None:
    m = Manifest(media_type, _desc(b"{}", config), (), artifact_type=artifact_type)
    assert m.is_image is image


# --- layout ----------------------------------------------------------------------------------------


@pytest.fixture
def box(tmp_path: object) -> Sandbox:
    return Sandbox.make(str(tmp_path))


def _lay_out(box: Sandbox, blobs: dict[Descriptor, bytes], manifest: Manifest) -> list[str]:
    root_fd = os.open(box.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return lay_out_artifact(root_fd, manifest, lambda d: io.BytesIO(blobs[d]))
    finally:
        os.close(root_fd)
        box.check_outside()


def test_raw_blobs_become_titled_files_without_exec_bits(box: Sandbox) -> None:
    script = b"#!/bin/sh\necho hi\n"
    layers = {
        _desc(script, "application/x-sh", "bin/run.sh"): script,
        _desc(b"2", "application/octet-stream", "/abs/two"): b"2",
        _desc(b"m", "application/octet-stream", "models/m.bin", ANNOTATION_MODEL_FILEPATH): b"m",
        _desc(b"none", "application/octet-stream"): b"none",
    }
    warnings = _lay_out(box, layers, _manifest(*layers))
    assert box.names() == ["abs", "abs/two", "bin", "bin/run.sh", "models", "models/m.bin"]
    assert box.read("bin/run.sh") == script.decode()
    # The blob files of CRI-O's artifact store are 0644: never executable, and the mount is what
    # makes them read-only.
    assert box.mode("bin/run.sh") == 0o644 and box.mode("bin") == 0o755
    assert len(warnings) == 1 and "no org.opencontainers.image.title" in warnings[0]


@pytest.mark.parametrize("media_type", [OCI_LAYER, OCI_LAYER_GZIP, "application/vnd.oci.image.layer.v1.tar+zstd"])
def test_tar_typed_layers_are_files_never_extracted(box: Sandbox, media_type: str) -> None:
    """What ``oras push`` of a directory makes: a tar-typed layer titled like the directory. CRI-O
    binds the blob as that file; nothing of the tar appears, its symlinks least of all."""
    tar = build_layer([S("out", "../../../../etc"), F("etc/passwd", "tree"), D("dir"), F("dir/file", "1\n")])
    blob = gzip_bytes(tar) if "gzip" in media_type else tar
    layers = {_desc(blob, media_type, "content"): blob, _desc(b"1", "text/plain", "out/passwd"): b"1"}
    assert _lay_out(box, layers, _manifest(*layers)) == []
    assert box.names() == ["content", "out", "out/passwd"]
    with open(box.path("content"), "rb") as f:
        assert f.read() == blob
    assert box.kind("out") == "dir" and box.read("out/passwd") == "1"


def test_model_file_path_when_there_is_no_title(box: Sandbox) -> None:
    layers = {
        _desc(
            b"w", "application/vnd.cncf.model.weight.v1.raw", "weights/model.safetensors", ANNOTATION_MODEL_FILEPATH
        ): b"w",
        Descriptor(
            "text/plain", Digest.of(b"t"), 1, {ANNOTATION_TITLE: "README", ANNOTATION_MODEL_FILEPATH: "x"}
        ): b"t",
    }
    _lay_out(box, layers, _manifest(*layers))
    assert box.names() == ["README", "weights", "weights/model.safetensors"]


@pytest.mark.parametrize("title", ["../escape", "a/../../b", "/", ".", "a\x00b"])
def test_titles_never_escape(box: Sandbox, title: str) -> None:
    layers = {_desc(b"x", "application/octet-stream", title): b"x"}
    with pytest.raises(LayerError):
        _lay_out(box, layers, _manifest(*layers))
    assert box.names() == []


def test_later_title_replaces_earlier(box: Sandbox) -> None:
    layers = {
        _desc(b"old", "application/octet-stream", "f"): b"old",
        _desc(b"new", "text/plain", "f"): b"new",
    }
    _lay_out(box, layers, _manifest(*layers))
    assert box.read("f") == "new"


def test_title_under_a_file_is_notdir(box: Sandbox) -> None:
    layers = {
        _desc(b"a", "application/octet-stream", "a"): b"a",
        _desc(b"b", "application/octet-stream", "a/b"): b"b",
    }
    with pytest.raises(LayerError) as info:
        _lay_out(box, layers, _manifest(*layers))
    assert info.value.kind == "notdir"


# --- fixtures through snapshots ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "tree"),
    [
        ("artifact-raw", {"dir": None, "dir/file": "1\n", "file": "2\n"}),
        ("artifact-tar", {"content.tar.gz": TAR_V2}),
        ("artifact-subpath", {"subpath": None, "subpath/2": "2", "subpath/3": "3"}),
    ],
)
def test_artifact_fixtures(
    fixtures_layout: str, tmp_path: object, tag: str, tree: dict[str, str | bytes | None]
) -> None:
    store = ContentStore(fixtures_layout)
    desc = store.refs()[tag]
    manifest = store.read_manifest(desc)
    assert isinstance(manifest, Manifest) and not manifest.is_image
    snap = Snapshots(f"{tmp_path}/snaps", store).materialise(plan_for(store, desc.digest, manifest))
    assert snap.artifact
    got: dict[str, str | bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(snap.path):
        for n in dirnames:
            got[os.path.relpath(os.path.join(dirpath, n), snap.path)] = None
        for n in filenames:
            full = os.path.join(dirpath, n)
            with open(full, "rb") as f:
                data = f.read()
            got[os.path.relpath(full, snap.path)] = data if data.startswith(b"\x1f\x8b") else data.decode()
            assert stat.S_IMODE(os.stat(full).st_mode) == 0o644  # the blob files' mode, never executable
    assert got == tree
    assert stat.S_IMODE(os.stat(snap.path).st_mode) == 0o755
