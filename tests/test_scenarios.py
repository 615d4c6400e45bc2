"""The upstream e2e and runtime scenarios (R10.1 to R10.3) against a real loopback registry.

The fixtures stand in for ``registry.k8s.io/e2e-test-images/kitten`` (``data.json`` naming
``kitten.jpg``, ``etc/os-release`` saying Alpine Linux) and ``quay.io/crio/artifact:v2``; they are
pushed with skopeo and pulled over HTTP from 127.0.0.1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from imagevol.content.sources._client import RetryPolicy
from imagevol.content.sources.registry import RegistryAccess
from imagevol.exec.view import ContainerView
from imagevol.kubelet.pod_sync import PodRecord
from imagevol.node import Node, NodeConfig
from tests.helpers import peers
from tests.helpers.clock import FakeClock
from tests.helpers.pods import make_pod


@pytest.fixture(scope="module")
def reg(fixtures_layout: str) -> Iterator[peers.Registry]:
    with peers.registry() as r:
        peers.skopeo_copy(fixtures_layout, "kitten", r, "e2e-test-images/kitten", "1.0")
        peers.skopeo_copy(fixtures_layout, "v2", r, "crio/artifact", "v2")
        yield r


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def node(node_root: str, clock: FakeClock, request: pytest.FixtureRequest, container_images_conf: str) -> Node:
    runtime = getattr(request, "param", "containerd")
    access = RegistryAccess(plain_http=True, retry=RetryPolicy(attempts=1))
    # The Pods' container image (busybox) comes from the stand-in, offline; volumes from `reg`.
    return Node(
        NodeConfig(
            root=node_root, clock=clock, registry_factory=access, runtime=runtime, registries=container_images_conf
        )
    )


def kitten(reg: peers.Registry) -> str:
    return f"{reg.host}/e2e-test-images/kitten:1.0"


def view(node: Node, record: PodRecord) -> ContainerView:
    state = record.state("c")
    container = node.runtime.container_status(state.container_id)
    assert container is not None
    return ContainerView("c", container.mounts, node.runtime.open_mount)


def test_kitten_whole_volume(node: Node, reg: peers.Registry) -> None:
    record = node.create_pod(make_pod("k", [("volume", kitten(reg), "IfNotPresent")], [("volume", "/volume", "")]))
    assert record.phase == "Running"
    v = view(node, record)
    assert "kitten.jpg" in v.cat("/volume/data.json").decode()
    assert "Alpine Linux" in v.cat("/volume/etc/os-release").decode()


def test_kitten_sub_path_etc(node: Node, reg: peers.Registry) -> None:
    """e2e: subPath etc exposes os-release at the mount root."""
    pod = make_pod("k", [("volume", kitten(reg), "IfNotPresent")], [("volume", "/volume", "etc")])
    record = node.create_pod(pod)
    assert record.phase == "Running"
    v = view(node, record)
    assert v.ls("/volume") == ["os-release"]
    assert "Alpine Linux" in v.cat("/volume/os-release").decode()


@pytest.mark.parametrize("node", ["containerd", "crio"], indirect=True)
def test_non_existing_sub_path_is_create_container_error(node: Node, reg: peers.Registry) -> None:
    pod = make_pod("k", [("volume", kitten(reg), "IfNotPresent")], [("volume", "/volume", "not-existing")])
    record = node.create_pod(pod)
    state = record.state("c")
    assert (state.state, state.reason) == ("waiting", "CreateContainerError")
    assert state.message.startswith("ImageVolumeMountFailed: ")
    assert "not-existing" in state.message


def test_invalid_reference_backs_off(node: Node, clock: FakeClock) -> None:
    """e2e: reference localhost/invalid reaches ImagePullBackOff (nothing listens there)."""
    pod = make_pod("bad", [("volume", "localhost/invalid", "IfNotPresent")], [("volume", "/volume", "")])
    record = node.create_pod(pod)
    assert record.state("c").reason == "ErrImagePull"
    clock.advance(1)
    record = node.sync_pod("bad")
    assert record.state("c").reason == "ImagePullBackOff"
    assert record.status_text == "ImagePullBackOff"


def test_unused_broken_volume_still_runs(node: Node, reg: peers.Registry) -> None:
    pod = make_pod(
        "unused",
        [("volume", kitten(reg), "IfNotPresent"), ("broken", "localhost/invalid", "IfNotPresent")],
        [("volume", "/volume", "")],
    )
    record = node.create_pod(pod)
    assert record.phase == "Running"
    assert record.volumes["broken"].reason == "ErrImagePull"


def test_several_pods_on_one_image_fetch_each_blob_once(node: Node, reg: peers.Registry) -> None:
    before = len(reg.requests())
    for i in range(5):
        pod = make_pod(f"p{i}", [("volume", kitten(reg), "IfNotPresent")], [("volume", "/volume", "etc")])
        assert node.create_pod(pod).phase == "Running"
    blob_gets = [line for line in reg.requests()[before:] if "/blobs/" in line]
    assert len(blob_gets) == 2  # config and the one layer, once each
    assert len(node.snapshots.published()) == 1


def test_pull_policy_always(node: Node, reg: peers.Registry) -> None:
    """Conformance since 1.35: pullPolicy Always. A pass that starts a container asks the registry
    again (R3.11); a pass with nothing to start asks nothing (k/k PR #138655)."""
    pod = make_pod("always", [("volume", kitten(reg), "Always")], [("volume", "/volume", "")])
    record = node.create_pod(pod)
    assert record.phase == "Running"
    assert [e.reason for e in record.events[:2]] == ["Pulling", "Pulled"]
    before = len(reg.requests())
    assert node.sync_pod("always").to_json() == record.to_json()
    assert reg.requests()[before:] == []
    retry = make_pod(
        "retry", [("volume", kitten(reg), "Always")], [("volume", "/volume", ""), ("volume", "/x", "nope")]
    )
    node.create_pod(retry)
    before = len(reg.requests())
    record = node.sync_pod("retry")
    # Always asks the registry again (the manifest), and finds every blob already present.
    asked = reg.requests()[before:]
    assert [line for line in asked if "/manifests/" in line]
    assert not [line for line in asked if "/blobs/" in line]
    assert next(e for e in record.events if e.reason == "Pulling").count == 2


def test_artifact_v2_blog_pod(node: Node, reg: peers.Registry) -> None:
    """The blog's Pod against a registry copy of quay.io/crio/artifact:v2."""
    ref = f"{reg.host}/crio/artifact:v2"
    record = node.create_pod(
        make_pod("image-volume", [("volume", ref, "IfNotPresent")], [("volume", "/volume", "dir")])
    )
    v = view(node, record)
    assert v.cat("/volume/file") == b"1\n"
    assert v.ls("/volume") == ["file"]
    assert os.path.isdir(node.root)
