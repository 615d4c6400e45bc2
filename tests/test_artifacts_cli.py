"""ORAS-style OCI artifacts end to end through the CLI against the loopback registry: CRI-O binds each
layer blob as the file its title (else ``org.cncf.model.filepath``) names, whatever its media type
(a tar-typed layer is the tar file, never extracted), skips a layer with neither annotation, filters
sub paths by prefix; containerd refuses every artifact (R9.1, R9.10, R9.11, R9.18).

The artifacts are built as ``oras push`` builds them (empty config, ``artifactType``, one titled
layer per file) into an OCI layout and copied to the registry with skopeo, digests preserved."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from imagevol.cli import main
from imagevol.kubelet.pod_sync import PodRecord
from imagevol.node import Node, NodeConfig
from imagevol.oci import ANNOTATION_MODEL_FILEPATH, ANNOTATION_TITLE, OCI_EMPTY, OCI_LAYER, OCI_LAYER_GZIP
from imagevol.testing.images import LayoutBuilder, build_debian_standin, host_busybox
from imagevol.testing.pods import container, image_volume, pod_doc, to_yaml
from imagevol.testing.tarbuild import build_layer, gzip_bytes
from tests.helpers import peers
from tests.helpers.layerkit import D, F, S

pytestmark = pytest.mark.peers

#: A directory pushed by ``oras push dir.tar``-style tooling: hostile inside, harmless as a file.
TAR = build_layer([D("dir"), F("dir/file", "1\n"), S("escape", "../../../../etc"), F("escape/passwd", "x")])
SCRIPT = b"#!/bin/sh\necho hi\n"
ORAS_TYPE = "application/vnd.example.oras+type"


def _build(path: str) -> None:
    b = LayoutBuilder(path)
    empty = b.add_blob(b"{}", OCI_EMPTY)
    empty = attrs.evolve(empty, data=b"{}")
    layers = [
        b.add_blob(TAR, OCI_LAYER, {ANNOTATION_TITLE: "tree.tar"}),
        b.add_blob(gzip_bytes(TAR), OCI_LAYER_GZIP, {ANNOTATION_TITLE: "tree.tar.gz"}),
        b.add_blob(SCRIPT, "application/octet-stream", {ANNOTATION_TITLE: "bin/run.sh"}),
        b.add_blob(b"w", "application/vnd.cncf.model.weight.v1.raw", {ANNOTATION_MODEL_FILEPATH: "models/w.bin"}),
        b.add_blob(b"anonymous", "application/octet-stream"),  # neither annotation: not mountable
        b.add_blob(b"2", "text/plain", {ANNOTATION_TITLE: "sub/deeper/2"}),
    ]
    b.add_manifest(empty, layers, tag="oras", artifact_type=ORAS_TYPE)
    build_debian_standin(b, host_busybox() or b"#!/bin/sh\nexit 127\n", "debian")
    b.save()


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[peers.Registry]:
    layout = str(tmp_path_factory.mktemp("oras") / "layout")
    _build(layout)
    with peers.registry() as r:
        peers.push_fixtures(layout, r, ("oras", "debian"))
        yield r


class _Cli:
    def __init__(self, root: str, conf: str, runtime: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.root, self.conf, self.runtime, self.capsys = root, conf, runtime, capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        out = io.StringIO()
        code = main(["--root", self.root, "--registries", self.conf, "--runtime", self.runtime, *args], out=out)
        return code, out.getvalue(), self.capsys.readouterr().err

    def start(self, tmp_path: Any, name: str, reg: peers.Registry, sub_path: str = "") -> PodRecord:
        doc = pod_doc(
            name,
            [container("c", ("v", "/volume", sub_path), image=f"{reg.host}/lab/debian:v1")],
            [image_volume("v", f"{reg.host}/lab/oras:v1")],
        )
        path = os.path.join(str(tmp_path), f"{name}.yaml")
        with open(path, "w") as f:
            f.write(to_yaml(doc))
        self("apply", "-f", path)
        return Node(NodeConfig(root=self.root)).get_pod(name)


def _conf(reg: peers.Registry, tmp_path: Any) -> str:
    path = os.path.join(str(tmp_path), "registries.conf")
    with open(path, "w") as f:
        f.write(f'[[registry]]\nlocation = "{reg.host}"\ninsecure = true\n')
    return path


@pytest.fixture
def crio(node_root: str, reg: peers.Registry, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> _Cli:
    return _Cli(node_root, _conf(reg, tmp_path), "crio", capsys)


def test_crio_binds_every_titled_blob_as_a_file(crio: _Cli, reg: peers.Registry, tmp_path: Any) -> None:
    record = crio.start(tmp_path, "whole", reg)
    assert record.state("c").state == "running", record.state("c").message
    assert crio("exec", "whole", "--", "ls", "/volume")[1].split() == [
        "bin",
        "models",
        "sub",
        "tree.tar",
        "tree.tar.gz",
    ]
    # The tar-typed layers are the tar files as pulled: nothing of them was extracted, so their
    # link out of the tree exists nowhere.
    code, out, _ = crio("exec", "whole", "--", "cat", "/volume/tree.tar")
    assert code == 0 and out.encode("latin-1", "replace")[:3] == TAR[:3]
    assert crio("exec", "whole", "--", "ls", "/volume/escape")[0] != 0
    assert crio("exec", "whole", "--", "cat", "/volume/bin/run.sh")[1] == SCRIPT.decode()
    assert crio("exec", "whole", "--", "cat", "/volume/models/w.bin")[1] == "w"
    assert crio("exec", "whole", "--", "cat", "/volume/sub/deeper/2")[1] == "2"
    # Blob files are 0644 as in CRI-O's artifact store: never executable; read-only is the mount's.
    assert "Access: (0644/-rw-r--r--)" in crio("exec", "whole", "--", "stat", "/volume/bin/run.sh")[1]
    # Exactly one file per named blob, on the node too: the anonymous layer left nothing.
    snapshots = Node(NodeConfig(root=crio.root)).snapshots
    [key] = snapshots.published()
    tree = snapshots.path(key)
    found = sorted(os.path.relpath(os.path.join(d, n), tree) for d, _, ns in os.walk(tree) for n in ns)
    assert found == ["bin/run.sh", "models/w.bin", "sub/deeper/2", "tree.tar", "tree.tar.gz"]
    with open(os.path.join(tree, "tree.tar.gz"), "rb") as f:
        assert f.read() == gzip_bytes(TAR)


@pytest.mark.parametrize(
    ("sub_path", "listing"),
    [("sub", ["deeper"]), ("sub/deeper", ["2"]), ("./bin/", ["run.sh"]), ("models", ["w.bin"])],
)
def test_crio_sub_path_prefix_hits(
    crio: _Cli, reg: peers.Registry, tmp_path: Any, sub_path: str, listing: list[str]
) -> None:
    record = crio.start(tmp_path, "hit", reg, sub_path)
    assert record.state("c").state == "running", record.state("c").message
    assert crio("exec", "hit", "--", "ls", "/volume")[1].split() == listing


@pytest.mark.parametrize("sub_path", ["tree.tar", "bin/run.sh", "su", "dir", "escape", "nope"])
def test_crio_sub_path_prefix_misses(crio: _Cli, reg: peers.Registry, tmp_path: Any, sub_path: str) -> None:
    """A file name, a partial name, or a directory inside a tar-typed blob matches no
    ``<prefix>/``: CRI-O's message, and the container is never created."""
    record = crio.start(tmp_path, "miss", reg, sub_path)
    state = record.state("c")
    assert (state.state, state.reason) == ("waiting", "CreateContainerError")
    assert f'sub path "{sub_path}" does not exist in OCI artifact volume "sha256:' in state.message
    assert Node(NodeConfig(root=crio.root)).runtime.list_containers() == []
    # What the events say carries no host path.
    assert all(crio.root not in e.message for e in record.events)


@pytest.mark.parametrize("runtime", ["containerd", "legacy"])
def test_containerd_refuses_the_artifact(
    node_root: str, reg: peers.Registry, tmp_path: Any, capsys: pytest.CaptureFixture[str], runtime: str
) -> None:
    cli = _Cli(node_root, _conf(reg, tmp_path), runtime, capsys)
    record = cli.start(tmp_path, "refused", reg)
    state = record.state("c")
    assert (state.state, state.reason) == ("waiting", "CreateContainerError")
    assert "failed to get diff IDs for image volume" in state.message
    node = Node(NodeConfig(root=node_root))
    assert node.runtime.list_containers() == [] and node.snapshots.published() == []
