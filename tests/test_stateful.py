"""A stateful test over store, snapshots and mounts: random pods (pulls and mounts), deletions
(unmounts), image GC and simulated crashes (leftovers of a killed pull and a killed build, then a
restart). Invariants after every step: nothing in use is removed, every published tree equals the
reference model, and the store passes fsck."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from imagevol.kubelet.image_gc import ImageGC
from imagevol.node import Node
from imagevol.testing.images import ARTIFACT_V2_ENTRIES, LAYERS_FIXTURE, build_fixtures, kitten_entries
from imagevol.testing.model import apply_layers_model, listing
from imagevol.trees.snapshots import SnapshotKey
from tests.helpers.clock import FakeClock
from tests.helpers.fixture_node import ctr, make_node, pod, vol
from tests.helpers.listing import real_listing

IMAGES = {
    "v2": [list(ARTIFACT_V2_ENTRIES)],
    "kitten": [list(kitten_entries())],
    "layers": [list(layer.entries) for layer in LAYERS_FIXTURE],
}
SUB_PATHS = {"v2": ["", "dir"], "kitten": ["", "etc"], "layers": ["", "a", "e/deep"]}


def _expected(tag: str) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for path, (kind, mode, payload, group) in listing(apply_layers_model(IMAGES[tag])).items():
        # Published trees carry no write bits.
        stripped = mode & ~0o222 if isinstance(mode, int) else None
        out[path] = (kind, stripped, payload, group)
    return out


EXPECTED = {tag: _expected(tag) for tag in IMAGES}
_LAYOUT = tempfile.mkdtemp(prefix="imagevol-stateful-layout-")
build_fixtures(os.path.join(_LAYOUT, "layout"))


class NodeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.base = tempfile.mkdtemp(prefix="imagevol-stateful-")
        self.clock = FakeClock()
        self.node = self._start()
        self.pods: dict[str, str] = {}  # pod name -> tag it mounts

    def _start(self) -> Node:
        return make_node(os.path.join(self.base, "node"), os.path.join(_LAYOUT, "layout"), self.clock)

    def teardown(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    @rule(tag=st.sampled_from(sorted(IMAGES)), data=st.data())
    def run_pod(self, tag: str, data: st.DataObject) -> None:
        name = f"p{uuid.uuid4().hex[:8]}"
        sub = data.draw(st.sampled_from(SUB_PATHS[tag]))
        record = self.node.create_pod(pod(name, [ctr("c", ("v", "/v", sub))], [vol("v", tag)]))
        assert record.phase == "Running", record.containers
        self.pods[name] = tag

    @rule(data=st.data())
    def delete_pod(self, data: st.DataObject) -> None:
        if not self.pods:
            return
        name = data.draw(st.sampled_from(sorted(self.pods)))
        self.node.delete_pod(name)
        del self.pods[name]

    @rule(force=st.booleans())
    def gc(self, force: bool) -> None:
        ImageGC(self.node.runtime, clock=self.node.now).collect(capacity=1, force=force)

    @rule()
    def crash_and_restart(self) -> None:
        """Leave what a SIGKILLed pull and a SIGKILLed build leave (temporary files of a dead
        process), then start the node again: recovery removes them."""
        dead = _dead_pid()
        ingest = os.path.join(self.node.root, "content", "ingest", f"{'ab' * 32}.{dead}.{uuid.uuid4().hex}.part")
        with open(ingest, "wb") as f:
            f.write(b"partial")
        staging = os.path.join(self.node.root, "snapshots", ".staging", f"{'cd' * 32}.{dead}.{uuid.uuid4().hex}")
        os.makedirs(os.path.join(staging, "half"))
        self.node = self._start()
        assert not os.path.exists(ingest)
        assert not os.path.exists(staging)

    @invariant()
    def mounts_are_intact_and_trees_match_the_model(self) -> None:
        for name, tag in self.pods.items():
            record = self.node.get_pod(name)
            status = self.node.runtime.container_status(record.state("c").container_id)
            assert status is not None
            for mount in status.mounts:
                tree = self.node.snapshots.get(SnapshotKey.parse(mount.snapshot))
                assert tree is not None, f"{tag} removed while mounted by {name}"
                assert real_listing(tree) == EXPECTED[tag]

    @invariant()
    def store_is_consistent(self) -> None:
        report = self.node.store.fsck()
        assert not report.corrupt and not report.missing and not report.orphaned, report


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


NodeMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=15, deadline=None)
TestNodeMachine = NodeMachine.TestCase
