"""Image GC never removes an image in use (R7.1 to R7.3); the metrics exposition passes promtool."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from imagevol.errors import ImageInUseError
from imagevol.kubelet.image_gc import ImageGC
from imagevol.kubelet.metrics import KubeletMetrics
from imagevol.node import Node
from tests.helpers.clock import FakeClock
from tests.helpers.fixture_node import ctr, make_node, pod, vol
from tests.helpers.peers import free_port, require


@pytest.fixture
def node(node_root: str, fixtures_layout: str) -> Node:
    return make_node(node_root, fixtures_layout, FakeClock())


def _blob_count(node: Node) -> int:
    return len(os.listdir(os.path.join(node.root, "content", "blobs", "sha256")))


def test_gc_removes_unused_images_and_never_one_in_use(node: Node) -> None:
    node.create_pod(pod("uses-v2", [ctr("a", ("v", "/v", "dir"))], [vol("v", "v2")]))
    node.create_pod(pod("uses-kitten", [ctr("a", ("k", "/k", "etc"))], [vol("k", "kitten")]))
    node.delete_pod("uses-kitten")
    blobs_before = _blob_count(node)
    gc = ImageGC(node.runtime, clock=node.now)
    result = gc.collect(capacity=1, high_percent=85, low_percent=80)  # far over the threshold
    assert result.removed == ("fixtures.example/lab:kitten",)
    assert result.kept_in_use == ("fixtures.example/lab:v2",)
    assert [r.reference for r in node.runtime.list_images()] == ["fixtures.example/lab:v2"]
    assert _blob_count(node) < blobs_before
    assert node.store.fsck().clean
    # The mounted image still works.
    status = node.runtime.container_status(node.get_pod("uses-v2").state("a").container_id)
    assert status is not None
    key = node.runtime.snapshot_key(node.puller.image_db.all()[0])
    assert key is not None
    tree = node.snapshots.get(key)
    assert tree is not None
    with open(os.path.join(tree, "dir", "file")) as f:
        assert f.read() == "1\n"


def test_gc_below_the_high_threshold_does_nothing(node: Node) -> None:
    node.create_pod(pod("p", [ctr("a", ("k", "/k", ""))], [vol("k", "kitten")]))
    node.delete_pod("p")
    gc = ImageGC(node.runtime, clock=node.now)
    result = gc.collect(capacity=10**12)
    assert result.removed == ()
    assert len(node.runtime.list_images()) == 1


def test_rmi_of_an_image_in_use_fails_like_crio(node: Node) -> None:
    node.create_pod(pod("p", [ctr("a", ("v", "/v", ""))], [vol("v", "v2")]))
    with pytest.raises(ImageInUseError, match="image is in use by a container"):
        node.runtime.remove_image("fixtures.example/lab:v2")
    assert len(node.runtime.list_images()) == 1
    node.delete_pod("p")
    node.runtime.remove_image("fixtures.example/lab:v2")
    assert node.runtime.list_images() == []
    assert node.snapshots.published() == []


def test_exposition_passes_promtool(node: Node) -> None:
    promtool = require("promtool")
    node.create_pod(pod("ok", [ctr("a", ("v", "/v", ""))], [vol("v", "v2")]))
    node.create_pod(pod("bad", [ctr("a", ("v", "/v", "nope"))], [vol("v", "v2")]))
    text = node.metrics().exposition()
    assert b"kubelet_image_volume_requested_total 2.0" in text
    assert b"# HELP kubelet_image_volume_mounted_errors_total [ALPHA] Number of failed image volume mounts." in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()


@pytest.mark.parametrize(("version", "stability"), [("1.33", "ALPHA"), ("1.35", "BETA")])
def test_stability_follows_the_version(node_root: str, version: str, stability: str) -> None:
    from imagevol.node import NodeConfig

    node = Node(NodeConfig(root=node_root, k8s_version=version, hermetic=True))
    assert f"[{stability}] Number of requested image volumes.".encode() in node.metrics().exposition()


def test_no_image_volume_counters_before_133() -> None:
    text = KubeletMetrics(stability="").exposition()
    assert b"kubelet_image_volume" not in text


def test_serve_metrics_on_loopback(node_root: str) -> None:
    port = free_port()
    env = dict(os.environ, IMAGEVOL_ROOT=node_root)
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagevol.cli", "serve-metrics", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        body = b""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    body = r.read()
                break
            except OSError:
                time.sleep(0.1)
        assert b"kubelet_image_volume_requested_total 0.0" in body
        # Bound to loopback only: nothing listens on the other addresses of the host.
        with socket.socket() as s:
            s.settimeout(1)
            addr = socket.gethostbyname(socket.gethostname())
            if addr != "127.0.0.1" and not addr.startswith("127."):
                assert s.connect_ex((addr, port)) != 0
    finally:
        proc.terminate()
        proc.wait(10)
