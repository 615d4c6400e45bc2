"""A pull and a materialisation killed with SIGKILL at random points, then a restart: nothing
partial is visible, recovery removes the debris, the next pull and build complete, and fsck is
clean (issue 7, item 2)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from imagevol.content.sources.registry import RegistryAccess
from imagevol.node import Node, NodeConfig
from imagevol.testing.images import Layer, LayoutBuilder
from imagevol.testing.model import apply_layers_model, listing
from imagevol.testing.tarbuild import TarEntry
from tests.helpers import peers
from tests.helpers.listing import real_listing

REF = "crash.example/big:v1"


def _entries(seed: int) -> list[TarEntry]:
    rng = random.Random(seed)
    out = [TarEntry(f"d{i}/", "dir") for i in range(20)]
    for i in range(600):
        out.append(TarEntry(f"d{i % 20}/f{i}", "file", rng.randbytes(rng.randint(2000, 12000))))
    out.append(TarEntry("big.bin", "file", rng.randbytes(4 * 1024 * 1024)))
    return out


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, dict[str, tuple[object, ...]]]:
    base = str(tmp_path_factory.mktemp("crash"))
    path = os.path.join(base, "layout")
    layers = [_entries(1), _entries(2), _entries(3)]
    b = LayoutBuilder(path)
    b.add_image([Layer(tuple(layer)) for layer in layers], tag="v1")
    b.save()
    conf = os.path.join(base, "registries.conf")
    with open(conf, "w") as f:
        f.write('[[registry]]\nprefix = "crash.example/big"\nlocation = "crash.example/big"\n')
        f.write(f'[[registry.mirror]]\nlocation = "oci-layout:{path}"\n')
    expected: dict[str, tuple[object, ...]] = {
        p: (kind, mode if isinstance(mode, int) else None, payload, group)
        for p, (kind, mode, payload, group) in listing(apply_layers_model(layers)).items()
    }
    return conf, base, expected


_CHILD = textwrap.dedent(
    """
    import sys
    from imagevol.node import Node, NodeConfig
    from imagevol.content.sources.registry import RegistryAccess
    node = Node(NodeConfig(root=sys.argv[1], registries=sys.argv[2], registry_factory=RegistryAccess()))
    node.runtime.pull_image(sys.argv[3])
    record = node.puller.lookup(sys.argv[3])
    manifest = node.puller.manifest_of(record)
    node.snapshots.materialise(node.snapshots.plan(record.manifest_digest, manifest))
    print("done", flush=True)
    """
)


def _run_child(root: str, conf: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, root, conf, REF], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _check_after_restart(root: str, conf: str, expected: dict[str, tuple[object, ...]]) -> None:
    # The restart: recovery runs here.
    node = Node(NodeConfig(root=root, registries=conf, registry_factory=RegistryAccess()))
    ingest = os.path.join(root, "content", "ingest")
    assert not [n for n in os.listdir(ingest) if n.endswith(".part")]
    assert os.listdir(os.path.join(root, "snapshots", ".staging")) == []
    # Whatever is published is complete.
    for key in node.snapshots.published():
        tree = node.snapshots.get(key)
        assert tree is not None
        assert real_listing(tree) == expected
    # The next pull and build complete, and the store is clean.
    node.runtime.pull_image(REF)
    record = node.puller.lookup(REF)
    assert record is not None
    snap = node.snapshots.materialise(node.snapshots.plan(record.manifest_digest, node.puller.manifest_of(record)))
    assert real_listing(snap.path) == expected
    report = node.store.fsck()
    assert report.clean, report


@pytest.fixture(params=["oci-layout", "registry"])
def source(
    request: pytest.FixtureRequest, layout: tuple[str, str, dict[str, tuple[object, ...]]]
) -> Iterator[tuple[str, dict[str, tuple[object, ...]]]]:
    """registries.conf for the big image: the OCI layout as a mirror, or a real registry."""
    conf, base, expected = layout
    if request.param == "oci-layout":
        yield conf, expected
        return
    with peers.registry() as reg:
        peers.skopeo_copy(os.path.join(base, "layout"), "v1", reg, "big", "v1")
        reg_conf = os.path.join(base, f"registry-{reg.port}.conf")
        with open(reg_conf, "w") as f:
            f.write(f'[[registry]]\nprefix = "crash.example/big"\nlocation = "{reg.host}/big"\ninsecure = true\n')
        yield reg_conf, expected


def test_sigkill_at_random_points(source: tuple[str, dict[str, tuple[object, ...]]], tmp_path: object) -> None:
    conf, expected = source
    # How long an uninterrupted run takes, to spread the kills over it.
    probe_root = os.path.join(str(tmp_path), "probe")
    start = time.monotonic()
    child = _run_child(probe_root, conf)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0 and "done" in out, err
    duration = time.monotonic() - start
    rng = random.Random(7)
    kills = 0
    for i in range(8):
        root = os.path.join(str(tmp_path), f"node{i}")
        child = _run_child(root, conf)
        time.sleep(rng.uniform(0.05, duration))
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            kills += 1
        child.communicate(timeout=60)
        _check_after_restart(root, conf, expected)
    assert kills >= 4  # most runs really were interrupted
