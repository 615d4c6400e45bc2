"""Shared helpers for the sub-path, runtime, view and mount tests: an OCI layout with a hostile image
(escaping and absolute links, loops, a FIFO, a file-only layer) and a node that pulls from it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import attrs

from imagevol.node import Node, NodeConfig
from imagevol.oci import ANNOTATION_TITLE, OCI_EMPTY, OCI_LAYER_GZIP
from imagevol.testing.images import ARTIFACT_V2_ENTRIES, Layer, LayoutBuilder, build_artifact_v2
from imagevol.testing.pods import container, image_volume, pod_doc, to_yaml, volume_mount
from imagevol.testing.tarbuild import TarEntry, build_layer, gzip_bytes

REGISTRY = "example.test/vols"


def _d(name: str) -> TarEntry:
    return TarEntry(name, "dir", mode=0o755)


def _f(name: str, data: str, mode: int = 0o644) -> TarEntry:
    return TarEntry(name, "file", data.encode(), mode=mode)


def _l(name: str, target: str) -> TarEntry:
    return TarEntry(name, "symlink", linkname=target)


TRICKY = (
    _d("dir/"),
    _f("dir/file", "1\n"),
    _f("file", "2\n"),
    _d("etc/"),
    _f("etc/os-release", 'NAME="Alpine Linux"\n'),
    _d("bin/"),
    _f("bin/busybox", "#!/bin/sh\necho busybox\n", 0o755),
    _l("bin/sh", "/bin/busybox"),  # containerd's integration case: absolute, would land inside
    _l("abs-etc", "/etc"),  # absolute directory link: escape for containerd, /etc of the image for CRI-O
    _l("up", "../../.."),  # climbs above the root: escape, or the root itself under IN_ROOT
    _l("link-dir", "dir"),  # a relative link that stays inside
    _l("loop", "loop"),
    _d("deep/"),
    _d("deep/a/"),
    _d("deep/a/b/"),
    _f("deep/a/b/leaf", "leaf\n"),
    TarEntry("pipe", "fifo"),
)


def build_layout(path: str) -> None:
    """``tricky`` (the entries above), ``v2`` (quay.io/crio/artifact:v2 content) and ``subpath``
    (the CRI-O artifact with files titled ``subpath/2`` and ``subpath/3``)."""
    builder = LayoutBuilder(path)
    builder.add_image([Layer(TRICKY)], tag="tricky")
    build_artifact_v2(builder, "v2")
    builder.add_artifact(
        [("subpath/2", b"2", "application/octet-stream"), ("subpath/3", b"3", "application/octet-stream")],
        artifact_type="application/x.test.test.test.v1",
        tag="subpath",
    )
    # An artifact whose one layer is a tar (laid out by extraction): dir/file, file, empty/.
    tar = gzip_bytes(build_layer((*ARTIFACT_V2_ENTRIES, _d("empty/"))))
    layer = builder.add_blob(tar, OCI_LAYER_GZIP, {ANNOTATION_TITLE: "content.tar.gz"})
    empty = attrs.evolve(builder.add_blob(b"{}", OCI_EMPTY), data=b"{}")
    builder.add_manifest(empty, [layer], tag="tar-artifact", artifact_type="application/vnd.example.lab+type")
    builder.save()


def write_registries(directory: str, layout: str) -> str:
    path = os.path.join(directory, "registries.conf")
    with open(path, "w") as f:
        f.write(
            f'[[registry]]\nprefix = "{REGISTRY}"\nlocation = "{REGISTRY}"\n\n'
            f'[[registry.mirror]]\nlocation = "oci-layout:{layout}"\n'
        )
    return path


def make_node(root: str, layout_dir: str, runtime: str = "containerd") -> Node:
    registries = write_registries(layout_dir, os.path.join(layout_dir, "layout"))
    return Node(NodeConfig(root=root, registries=registries, runtime=runtime, hermetic=True))


def pod_yaml(
    name: str,
    image: str = f"{REGISTRY}:tricky",
    sub_path: str = "",
    sub_path_expr: str = "",
    env: list[dict[str, object]] | None = None,
    mount_path: str = "/volume",
) -> str:
    mount = volume_mount("vol", mount_path, sub_path, **({"subPathExpr": sub_path_expr} if sub_path_expr else {}))
    fields: dict[str, Any] = {"env": env} if env else {}
    ctr = container("c", mount, **fields)
    return to_yaml(pod_doc(name, [ctr], [image_volume("vol", image)], metadata={"labels": {"app": "demo"}}))


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def walk_inodes(root: str) -> Iterator[tuple[int, int]]:
    """(dev, ino) of the root and of every entry below it, links not followed."""
    st = os.lstat(root)
    yield st.st_dev, st.st_ino
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            yield st.st_dev, st.st_ino
