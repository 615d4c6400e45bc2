"""What a pull builds of the node, and what it leaves to the first command that needs it.

``imagevol pull`` fills the content store and the image records only: its node starts the
snapshotter (the trees, their crash recovery) on first use, so the pull never loads the layer
applier, and the next command that mounts the image builds its tree as ever. The runtime keeps the
credentials each pull of the process used (a lazy mount fetches the rest of an image with them)
without loading the lazy mode. The modules a pull imports are counted in test_startup_budget.py.
"""

from __future__ import annotations

import io
import os

import pytest

from imagevol.cli import main
from imagevol.cri import Credentials, Keyring
from imagevol.node import Node, NodeConfig
from tests.helpers.clock import FakeClock
from tests.helpers.fixture_node import PREFIX, container_image_registries, ctr, layout_digest, pod, vol

REF = f"{PREFIX}:v2"


@pytest.fixture
def conf(fixtures_layout: str, tmp_path: pytest.TempPathFactory) -> str:
    """registries.conf: the fixtures from their OCI layout, the Pods' container images too."""
    path = os.path.join(str(tmp_path), "registries.conf")
    with open(path, "w") as f:
        f.write(f'[[registry]]\nprefix = "{PREFIX}"\nlocation = "{PREFIX}"\n')
        f.write(f'[[registry.mirror]]\nlocation = "oci-layout:{fixtures_layout}"\n')
        f.write(container_image_registries())
    return path


def _debris(root: str) -> str:
    """What a tree build killed half-way leaves: its staging directory, with a file in it."""
    path = os.path.join(root, "snapshots", ".staging", f"chain-{'a' * 64}.99999.0123abcd")
    os.makedirs(os.path.join(path, "etc"))
    with open(os.path.join(path, "etc", "passwd"), "w") as f:
        f.write("half a tree\n")
    return path


def test_a_pull_makes_no_tree_and_the_next_command_mounts_the_image(
    conf: str, fixtures_layout: str, node_root: str
) -> None:
    out = io.StringIO()
    assert main(["--root", node_root, "--registries", conf, "pull", REF], out=out) == 0
    assert out.getvalue() == layout_digest(fixtures_layout, "v2") + "\n"
    assert sorted(os.listdir(node_root)) == ["content", "locks", "pods", "runtime", "secrets"]
    # The next node starts its snapshotter when built, and mounts the pulled image from its tree.
    node = Node(NodeConfig(root=node_root, registries=conf, clock=FakeClock(), hermetic=True))
    record = node.create_pod(pod("p", [ctr("c", ("v", "/v", ""))], [vol("v", "v2", "Never")]))
    assert [s.state for s in record.containers] == ["running"]
    assert [e.message for e in record.events if e.reason == "Pulled"][:1] == [
        f'Container image "{REF}" already present on machine'
    ]
    assert len(node.snapshots.published()) == 1


@pytest.mark.parametrize("on_demand", [False, True])
def test_the_snapshotter_recovers_before_its_first_tree(node_root: str, on_demand: bool) -> None:
    Node(NodeConfig(root=node_root, hermetic=True))
    debris = _debris(node_root)
    node = Node(NodeConfig(root=node_root, hermetic=True), snapshots_on_demand=on_demand)
    # Built on demand, the node has not touched the trees yet; built as usual, it recovered them.
    assert os.path.isdir(debris) is on_demand
    assert node.snapshots.published() == []  # the first use starts the snapshotter: recovery first
    assert not os.path.exists(debris)
    assert os.listdir(os.path.join(node_root, "snapshots", ".staging")) == []
    assert node.runtime.snapshots is node.snapshots


def test_a_pull_records_its_keyring_for_the_lazy_mode_without_loading_it(conf: str, node_root: str) -> None:
    node = Node(NodeConfig(root=node_root, registries=conf, hermetic=True), snapshots_on_demand=True)
    keyring = Keyring(((PREFIX.split("/")[0], Credentials.parse("alice:s3cret")),))
    node.runtime.pull_image(REF, keyring)
    # Neither the lazy mode nor the trees were made (cached properties not yet computed).
    assert "lazy" not in vars(node.runtime) and "snapshots" not in vars(node.runtime)
    record = node.puller.lookup(REF)
    assert record is not None and node.runtime.keyrings == {record.name: keyring}
    # The lazy mode, made later in the process, fetches with the credentials that pulled.
    assert node.runtime.lazy.keyrings is node.runtime.keyrings
    assert node.runtime.lazy.keyring_for(record) == keyring
    node.runtime.pull_image(REF)  # pulled again without credentials: anonymous from now on
    assert node.runtime.lazy.keyring_for(record) == Keyring()
