"""Deterministic OCI image layouts for demos and tests.

:class:`LayoutBuilder` writes blobs, manifests and indexes into an OCI image layout with fixed
timestamps, gzip mtime 0 and sorted compact JSON, so two builds are byte-identical and digests are
stable. :func:`build_fixtures` writes the project's fixtures (``layers-mix`` has a gzip, a zstd and
an uncompressed layer in one image), among them ``v2``: the content of
``quay.io/crio/artifact:v2`` (an image-format object with one tar+gzip layer holding ``dir/``,
``dir/file`` = ``1\\n`` and ``file`` = ``2\\n``, owned by 1000:100; R10.1), and ``debian``: a
small stand-in for the blog Pod's container image (:func:`build_debian_standin`), a BusyBox
userland with a minimal ``/etc``.

:func:`build_demo_layout` writes the layout ``scripts/demo`` mirrors ``quay.io/crio/artifact`` and
``docker.io/library`` to (``examples/registries.conf``): ``v2`` and the stand-in as
``debian:latest``. Everything is byte-reproducible except the BusyBox binary, which is the host's
(Debian's ``busybox-static``): its digest is whatever that binary hashes to.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import attrs

from ..errors import NoBusyBoxError
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
#: Compression name -> (compress function, layer media type).
COMPRESSORS = {
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
            compress, media_type = COMPRESSORS[layer.compression]
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


#: Where Debian's ``busybox-static`` package installs the binary the stand-in is made of.
HOST_BUSYBOX = "/usr/bin/busybox"
#: The applets linked into ``/bin`` (each a relative symlink to ``busybox``).
BUSYBOX_APPLETS = (
    "[", "ash", "basename", "cat", "chmod", "cp", "cut", "date", "df", "dirname", "du", "echo", "env",
    "false", "find", "grep", "head", "hostname", "id", "kill", "ln", "ls", "mkdir", "mount", "mv", "od",
    "printf", "ps", "pwd", "readlink", "realpath", "rm", "rmdir", "sed", "seq", "sh", "sha256sum",
    "sleep", "sort", "stat", "tail", "tee", "test", "touch", "tr", "true", "uname", "wc", "whoami",
    "xargs",
)  # fmt: skip
#: The stand-in's ``PATH`` (Debian's image sets this one).
STANDIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NO_BUSYBOX = b"#!/bin/sh\n# imagevol: no BusyBox on the host that built this fixture (busybox-static)\nexit 127\n"


def host_busybox(path: str = HOST_BUSYBOX) -> bytes | None:
    """The host's BusyBox binary, or None when there is none."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def debian_standin_entries(busybox: bytes) -> tuple[TarEntry, ...]:
    """The one layer of the stand-in for ``debian``: ``/bin/busybox`` (``busybox``, 0755), its
    applets as symlinks, and a minimal ``/etc`` (``passwd``, ``group``, ``os-release`` saying what
    it is), ``/root``, ``/tmp`` and ``/home``."""
    applets = tuple(TarEntry(f"bin/{name}", "symlink", linkname="busybox") for name in BUSYBOX_APPLETS)
    return (
        _d("bin/"),
        TarEntry("bin/busybox", "file", busybox, mode=0o755),
        *applets,
        _d("etc/"),
        _f("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
        _f("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        _f("etc/hostname", "imagevol\n"),
        _f(
            "etc/os-release",
            'PRETTY_NAME="BusyBox stand-in for Debian (imagevol demo)"\nNAME="BusyBox"\nID=busybox\n'
            'ID_LIKE=debian\nHOME_URL="https://busybox.net/"\n',
        ),
        _d("home/"),
        _d("root/", mode=0o700),
        _d("tmp/", mode=0o1777),
        _d("usr/"),
        _d("usr/bin/"),
    )


def build_debian_standin(builder: LayoutBuilder, busybox: bytes, *tags: str) -> Descriptor:
    """The stand-in for the blog Pod's ``debian`` container image, tagged ``tags``: one gzip layer
    (:func:`debian_standin_entries`) and a config with ``Cmd`` ``["sh"]`` and Debian's ``PATH``."""
    config = {"Env": [f"PATH={STANDIN_PATH}"], "Cmd": ["sh"]}
    desc = builder.add_image([Layer(debian_standin_entries(busybox))], config_extra={"config": config})
    for tag in tags:
        builder.tag(tag, desc)
    return desc


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
    # The container images of the Pods the test kit builds (``debian``, ``busybox``): as the tag
    # ``debian`` and as ``debian:latest`` and ``busybox:latest``, the names a registries.conf
    # mirror with the prefix ``docker.io/library`` looks up. A host without BusyBox gets a
    # placeholder for the binary (the simulator runs no process).
    build_debian_standin(b, host_busybox() or _NO_BUSYBOX, "debian", "debian:latest", "busybox:latest")
    b.save()
    return dict(b.refs)


class DemoImage(NamedTuple):
    """One image of the demo: the reference its Pod names, the registries.conf prefix mirrored to
    the demo's layout, and what builds it into a layout under a reference name."""

    reference: str
    prefix: str
    build: Callable[[LayoutBuilder, str], Descriptor]

    @property
    def ref_name(self) -> str:
        """The layout's ``org.opencontainers.image.ref.name`` a mirror of :attr:`prefix` looks up:
        what remains of the reference after the prefix (``v2``, ``debian:latest``)."""
        return self.reference.removeprefix(self.prefix).lstrip("/:")


def _build_host_debian_standin(builder: LayoutBuilder, ref_name: str) -> Descriptor:
    busybox = host_busybox()
    if busybox is None:
        raise NoBusyBoxError(
            f"cannot build the demo's debian stand-in: no BusyBox at {HOST_BUSYBOX}: install busybox-static"
        )
    return build_debian_standin(builder, busybox, ref_name)


#: The images of the demo (``imagevol demo``, ``scripts/demo``, ``examples/``). The demo's
#: registries.conf mirrors each prefix to the layout, so adding an image to the demo is one line.
DEMO_IMAGES: tuple[DemoImage, ...] = (
    DemoImage("quay.io/crio/artifact:v2", "quay.io/crio/artifact", build_artifact_v2),
    DemoImage("docker.io/library/debian:latest", "docker.io/library", _build_host_debian_standin),
)


def build_demo_layout(path: str) -> dict[str, Descriptor]:
    """The layout the demo mirrors its images to: every image of :data:`DEMO_IMAGES` under its
    :attr:`DemoImage.ref_name` (the ``debian`` stand-in made of the host's BusyBox).

    The layout at ``path`` is replaced only when the new one differs (another BusyBox, say), and
    then whole: it is built next to it and renamed into place, so no stale blob stays and a failed
    build leaves the old one. Raises :class:`NoBusyBoxError` when there is no BusyBox."""
    path = os.path.abspath(path)
    staging = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.new"
    try:
        b = LayoutBuilder(staging)
        for image in DEMO_IMAGES:
            if image.ref_name in b.refs:
                raise ValueError(f"demo image {image.reference} and another one share {image.ref_name!r} in one layout")
            image.build(b, image.ref_name)
        b.save()
        if _same_layout(staging, path):
            return dict(b.refs)
        old = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old"
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, old)
        os.rename(staging, path)
        shutil.rmtree(old, ignore_errors=True)
        return dict(b.refs)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _same_layout(a: str, b: str) -> bool:
    """Two layouts with the same index and the same blob files (deterministic builds: a blob's
    name is its digest, so names are enough)."""
    try:
        with open(os.path.join(a, "index.json"), "rb") as fa, open(os.path.join(b, "index.json"), "rb") as fb:
            if fa.read() != fb.read():
                return False
        return sorted(os.listdir(os.path.join(a, "blobs", "sha256"))) == sorted(
            os.listdir(os.path.join(b, "blobs", "sha256"))
        )
    except FileNotFoundError:
        return False


__all__ = [
    "BUSYBOX_APPLETS",
    "DEMO_IMAGES",
    "FIXED_MTIME",
    "HOST_BUSYBOX",
    "DemoImage",
    "Layer",
    "LayoutBuilder",
    "build_artifact_v2",
    "build_debian_standin",
    "build_demo_layout",
    "build_fixtures",
    "debian_standin_entries",
    "host_busybox",
]
