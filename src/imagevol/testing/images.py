"""Deterministic OCI image layouts for demos and tests.

:class:`LayoutBuilder` writes blobs, manifests and indexes into an OCI image layout with fixed
timestamps, gzip mtime 0 and sorted compact JSON, so two builds are byte-identical and digests are
stable. :func:`build_fixtures` writes the project's fixtures (``layers-mix`` has a gzip, a zstd and
an uncompressed layer in one image), among them ``v2``: the content of
``quay.io/crio/artifact:v2`` (an image-format object with one tar+gzip layer holding ``dir/``,
``dir/file`` = ``1\\n`` and ``file`` = ``2\\n``, owned by 1000:100; R10.1).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import attrs

from ..oci import (
    ANNOTATION_REF_NAME,
    ANNOTATION_TITLE,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    Digest,
    Platform,
    canonical_json,
)
from .tarbuild import FIXED_MTIME, TarEntry, build_layer, gzip_bytes, zstd_bytes

_CREATED = "2023-11-14T22:13:20Z"  # FIXED_MTIME
_COMPRESS = {
    "gzip": (gzip_bytes, OCI_LAYER_GZIP),
    "zstd": (zstd_bytes, OCI_LAYER_ZSTD),
    "none": (lambda b: b, OCI_LAYER),
}


@attrs.frozen
class Layer:
    """A layer of a test image: its tar entries and compression (``gzip``, ``zstd``, ``none``)."""

    entries: tuple[TarEntry, ...]
    compression: str = "gzip"


class LayoutBuilder:
    """Writes an OCI image layout at ``path``; call :meth:`save` to write ``index.json``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.refs: dict[str, Descriptor] = {}
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')

    def add_blob(self, data: bytes, media_type: str, annotations: Mapping[str, str] | None = None) -> Descriptor:
        """Write a blob; return its descriptor."""
        digest = Digest.of(data)
        with open(os.path.join(self.path, "blobs", "sha256", digest.hex), "wb") as f:
            f.write(data)
        return Descriptor(media_type, digest, len(data), dict(annotations or {}))

    def add_image(
        self,
        layers: Sequence[Layer],
        *,
        platform: Platform | None = None,
        tag: str = "",
        config_extra: Mapping[str, object] | None = None,
    ) -> Descriptor:
        """An image of ``layers`` with a minimal config for ``platform``, tagged ``tag`` if given."""
        platform = platform or Platform("linux", "amd64")
        descs = []
        diff_ids = []
        for layer in layers:
            tar = build_layer(layer.entries)
            diff_ids.append(str(Digest.of(tar)))
            compress, media_type = _COMPRESS[layer.compression]
            descs.append(self.add_blob(compress(tar), media_type))
        config: dict[str, object] = {
            "architecture": platform.architecture,
            "os": platform.os,
            "created": _CREATED,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        if platform.variant:
            config["variant"] = platform.variant
        config.update(config_extra or {})
        cfg = self.add_blob(canonical_json(config), OCI_CONFIG)
        return self.add_manifest(cfg, descs, tag=tag)

    def add_manifest(
        self, config: Descriptor, layers: Sequence[Descriptor], *, tag: str = "", artifact_type: str = ""
    ) -> Descriptor:
        """A manifest of ``config`` and ``layers`` (an artifact with ``artifact_type``)."""
        doc: dict[str, object] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.to_json(),
            "layers": [d.to_json() for d in layers],
        }
        if artifact_type:
            doc["artifactType"] = artifact_type
        if config.data is not None:
            import base64

            doc["config"] = {**config.to_json(), "data": base64.b64encode(config.data).decode()}
        desc = self.add_blob(canonical_json(doc), OCI_MANIFEST)
        desc = attrs.evolve(desc, artifact_type=artifact_type)
        if tag:
            self.tag(tag, desc)
        return desc

    def add_artifact(self, files: Sequence[tuple[str, bytes, str]], *, artifact_type: str, tag: str = "") -> Descriptor:
        """An ORAS-style artifact: empty config, one blob per file titled by its name."""
        empty = self.add_blob(b"{}", OCI_EMPTY)
        empty = attrs.evolve(empty, data=b"{}")
        layers = [self.add_blob(data, media_type, {ANNOTATION_TITLE: name}) for name, data, media_type in files]
        return self.add_manifest(empty, layers, tag=tag, artifact_type=artifact_type)

    def add_index(self, manifests: Sequence[tuple[Descriptor, Platform]], *, tag: str = "") -> Descriptor:
        """An index of ``manifests``, one per platform."""
        entries = [attrs.evolve(d, platform=p).to_json() for d, p in manifests]
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        desc = self.add_blob(canonical_json(doc), OCI_INDEX)
        if tag:
            self.tag(tag, desc)
        return desc

    def tag(self, name: str, desc: Descriptor) -> None:
        """Tag ``desc`` as ``name`` in the layout's ``index.json``."""
        self.refs[name] = desc

    def save(self) -> None:
        """Write ``index.json`` with every tag."""
        manifests = []
        for name in sorted(self.refs):
            d = self.refs[name]
            manifests.append(attrs.evolve(d, annotations={**d.annotations, ANNOTATION_REF_NAME: name}).to_json())
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        with open(os.path.join(self.path, "index.json"), "wb") as f:
            f.write(canonical_json(index))


def _d(name: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> TarEntry:
    return TarEntry(name, "dir", mode=mode, uid=uid, gid=gid)


def _f(name: str, data: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> TarEntry:
    return TarEntry(name, "file", data.encode(), mode=mode, uid=uid, gid=gid)


ARTIFACT_V2_ENTRIES = (
    _d("dir/", uid=1000, gid=100),
    _f("dir/file", "1\n", uid=1000, gid=100),
    _f("file", "2\n", uid=1000, gid=100),
)

LAYERS_FIXTURE = (
    Layer((_d("a/"), _d("b/"), _d("b/sub/"), _d("bin/"), _d("etc/"), _f("a/keep.txt", "keep\n"),
           _f("a/gone.txt", "gone\n"), _f("b/x.txt", "x\n"), _f("b/sub/y.txt", "y\n"),
           TarEntry("a/hard", "hardlink", linkname="a/keep.txt"),
           TarEntry("link", "symlink", linkname="a/keep.txt"),
           _f("bin/tool", "#!/bin/sh\necho tool\n", mode=0o755), _f("etc/conf", "v1\n"))),
    Layer((_f("a/.wh.gone.txt", ""), _f("b/.wh..wh..opq", ""), _f("b/z.txt", "z\n"), _d("c/"),
           _f("c/new.txt", "new\n"), _f("etc/conf", "v2\n"))),
    Layer((_f(".wh.link", ""), _d("d/", mode=0o700), _f("e/deep/nested/file.txt", "deep\n", mode=0o600)),
          compression="none"),
)  # fmt: skip


def kitten_entries() -> tuple[TarEntry, ...]:
    """Stand-in for ``registry.k8s.io/e2e-test-images/kitten`` (R10.3)."""
    return (
        _f("data.json", '{"image": "kitten.jpg", "description": "a kitten"}\n'),
        _d("etc/"),
        _f(
            "etc/os-release",
            'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.19.0\nPRETTY_NAME="Alpine Linux v3.19"\n',
        ),
        _f("kitten.jpg", "not really a jpeg\n"),
    )


def build_artifact_v2(builder: LayoutBuilder, tag: str = "v2") -> Descriptor:
    """The content of ``quay.io/crio/artifact:v2``."""
    return builder.add_image([Layer(ARTIFACT_V2_ENTRIES)], tag=tag)


def build_fixtures(path: str) -> dict[str, Descriptor]:
    """Write every fixture of the project into an OCI layout at ``path``; return them by tag."""
    b = LayoutBuilder(path)
    build_artifact_v2(b, "v2")
    build_artifact_v2(b, "artifact-image")
    b.add_image(LAYERS_FIXTURE, tag="layers")
    b.add_image([attrs.evolve(LAYERS_FIXTURE[0], compression="zstd")], tag="layers-zstd")
    # One image mixing all three layer compressions: gzip, zstd, uncompressed.
    mixed = (LAYERS_FIXTURE[0], attrs.evolve(LAYERS_FIXTURE[1], compression="zstd"), LAYERS_FIXTURE[2])
    b.add_image(mixed, tag="layers-mix")
    amd = b.add_image([Layer((_f("arch", "amd64\n"),))], platform=Platform("linux", "amd64"))
    arm = b.add_image([Layer((_f("arch", "arm64\n"),))], platform=Platform("linux", "arm64", "v8"))
    b.add_index([(amd, Platform("linux", "amd64")), (arm, Platform("linux", "arm64", "v8"))], tag="multi")
    b.add_artifact(
        [("dir/file", b"1\n", "application/octet-stream"), ("file", b"2\n", "application/octet-stream")],
        artifact_type="application/vnd.example.lab+type",
        tag="artifact-raw",
    )
    tar = b.add_blob(gzip_bytes(build_layer(ARTIFACT_V2_ENTRIES)), OCI_LAYER_GZIP, {ANNOTATION_TITLE: "content.tar.gz"})
    empty = attrs.evolve(b.add_blob(b"{}", OCI_EMPTY), data=b"{}")
    b.add_manifest(empty, [tar], tag="artifact-tar", artifact_type="application/vnd.example.lab+type")
    b.add_artifact(
        [("subpath/2", b"2", "application/octet-stream"), ("subpath/3", b"3", "application/octet-stream")],
        artifact_type="application/x.test.test.test.v1",
        tag="artifact-subpath",
    )
    b.add_image([Layer(kitten_entries())], tag="kitten")
    b.save()
    return dict(b.refs)


#: The images of the demo (``imagevol demo``, ``scripts/demo``): each reference and what builds its
#: content into a layout under the reference's tag. The demo's registries.conf mirrors each
#: repository to the layout, so adding an image to the demo is one line here.
DEMO_IMAGES: dict[str, Callable[[LayoutBuilder, str], Descriptor]] = {
    "quay.io/crio/artifact:v2": build_artifact_v2,
}


def build_demo_layout(path: str) -> Descriptor:
    """The layout the README's demo mirrors its images from: every image of :data:`DEMO_IMAGES`,
    tagged with its reference's tag. Returns the first one's descriptor."""
    b = LayoutBuilder(path)
    built = []
    for reference, build in DEMO_IMAGES.items():
        tag = reference.rpartition(":")[2]
        if tag in b.refs:
            raise ValueError(f"demo images {reference} and another one share the tag {tag!r} in one layout")
        built.append(build(b, tag))
    b.save()
    return built[0]


__all__ = [
    "DEMO_IMAGES",
    "FIXED_MTIME",
    "Layer",
    "LayoutBuilder",
    "build_artifact_v2",
    "build_demo_layout",
    "build_fixtures",
]
