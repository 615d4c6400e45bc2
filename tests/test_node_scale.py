"""Node state at scale: a kubelet pass over Pods at rest writes nothing and reads no record, a
changed Pod writes only its own files, and the Pod index (``pod-index.json``) never disagrees with
the records, whatever happened to it (stale after a crash, torn, missing, of another format, or an
indented root written before it existed)."""

from __future__ import annotations

import builtins
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagevol.cli._output import pod_row
from imagevol.kubelet.pod_sync import PodRecord
from imagevol.kubelet.status import list_view, pod_object
from imagevol.node import Node, NodeState
from imagevol.node._index import INDEX_FILE, PodIndex, PodSummary
from imagevol.testing.pods import pod_doc, to_pod, to_yaml
from tests.helpers.clock import FakeClock
from tests.helpers.fixture_node import ctr, make_node, pod, vol

#: Every file under a root: (inode, mtime in ns, size), links not followed.
Snapshot = dict[str, tuple[int, int, int]]


def snapshot(root: str) -> Snapshot:
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            s = os.lstat(path)
            out[os.path.relpath(path, root)] = (s.st_ino, s.st_mtime_ns, s.st_size)
    return out


def changed(before: Snapshot, after: Snapshot) -> set[str]:
    return (set(before) ^ set(after)) | {p for p in set(before) & set(after) if before[p] != after[p]}


def truth(node: Node, namespace: str | None = None) -> list[PodSummary]:
    """What the records say, computed without the index."""
    return [PodSummary.of(r) for r in node.pods(namespace)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def node(node_root: str, fixtures_layout: str, clock: FakeClock) -> Node:
    return make_node(node_root, fixtures_layout, clock)


def running(name: str, namespace: str = "", **spec: Any) -> Any:
    return to_pod(pod_doc(name, [ctr("a", ("v", "/v", "dir"))], [vol("v", "v2")], namespace=namespace, **spec))


def failing(name: str, namespace: str = "") -> Any:
    """A Pod the kubelet retries on every pass: its sub path does not exist."""
    return to_pod(pod_doc(name, [ctr("a", ("v", "/v", "nope"))], [vol("v", "v2")], namespace=namespace))


def unpullable(name: str, namespace: str = "") -> Any:
    """A Pod whose image is missing: ErrImagePull, then ImagePullBackOff while backing off."""
    return to_pod(pod_doc(name, [ctr("a", ("v", "/v", ""))], [vol("v", "no-such-tag")], namespace=namespace))


def record_file(name: str, namespace: str = "default") -> str:
    return NodeState.state_name("pods", namespace, name)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The Pod record files node state opens (an os-level count, not a timer)."""
    opened: list[str] = []
    real_open = builtins.open

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        path = os.fspath(file)
        if isinstance(path, str) and os.sep + "pods" + os.sep in path and path.endswith(".json"):
            opened.append(os.path.basename(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("imagevol.node._state.open", counting_open, raising=False)
    yield opened


# --- a pass at rest -------------------------------------------------------------------------------


def test_a_pass_over_pods_at_rest_writes_nothing_and_reads_no_record(
    node: Node, node_root: str, clock: FakeClock, reads: list[str]
) -> None:
    for i in range(5):
        assert node.create_pod(running(f"p{i}")).settled
    node.sync_pass()  # the index is written once
    before = snapshot(node_root)
    reads.clear()
    clock.advance(3600)  # backoff and ages move on: still nothing to do
    summaries = node.sync_pass()
    assert [s.name for s in summaries] == [f"p{i}" for i in range(5)]
    assert all(s.phase == "Running" and s.settled for s in summaries)
    assert changed(before, snapshot(node_root)) == set()
    assert reads == []  # O(1) per untouched Pod: its record is not even opened
    assert node.pod_summaries() == truth(node)
    assert changed(before, snapshot(node_root)) == set()


def test_a_whole_process_sync_and_get_at_rest_write_nothing(node: Node, node_root: str) -> None:
    for i in range(3):
        node.create_pod(running(f"p{i}"))
    cli = [sys.executable, "-m", "imagevol.cli", "--root", node_root]
    assert subprocess.run([*cli, "sync"], capture_output=True, check=False).returncode == 0
    before = snapshot(node_root)
    for args in (["sync"], ["get", "pods"], ["get", "pods", "-A", "-o", "wide"], ["sync"]):
        done = subprocess.run([*cli, *args], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        assert changed(before, snapshot(node_root)) == set(), args


def test_a_changed_pod_writes_only_its_own_files(node: Node, node_root: str, reads: list[str]) -> None:
    for i in range(3):
        node.create_pod(running(f"p{i}"))
    node.create_pod(failing("retry"))
    node.sync_pass()
    before = snapshot(node_root)
    reads.clear()
    summaries = node.sync_pass()
    assert {s.name: s.settled for s in summaries} == {"p0": True, "p1": True, "p2": True, "retry": False}
    # The retried Pod's record, the metrics its start attempt counted, the index entry, and the image
    # database: the container's image (`debian`, so `:latest` and pullPolicy Always) is pulled again.
    assert changed(before, snapshot(node_root)) == {
        record_file("retry"), "metrics.json", INDEX_FILE, "content/index.json"}  # fmt: skip
    assert set(reads) == {os.path.basename(record_file("retry"))}
    # The pass left the index true to the files: listing now reads and writes nothing.
    before, reads[:] = snapshot(node_root), []
    listed = node.pod_summaries()
    assert changed(before, snapshot(node_root)) == set() and reads == []
    assert listed == truth(node)


def test_a_settled_pod_with_a_missing_pull_secret_still_warns(node: Node) -> None:
    """A settled Pod whose pull secret is missing is synced all the same: the kubelet warns on
    every pass (R3.4)."""
    node.create_pod(running("secret", imagePullSecrets=[{"name": "gone"}]))

    def warnings() -> int:
        record = node.get_pod("secret")
        return sum(e.count for e in record.events if e.reason == "FailedToRetrieveImagePullSecret")

    before = warnings()
    assert before >= 1 and node.get_pod("secret").settled
    node.sync_pass()
    assert warnings() == before + 1
    assert node.pod_summaries() == truth(node)


# --- the index never disagrees with the records ----------------------------------------------------


def _corruptions(valid: bytes) -> dict[str, bytes | None]:
    obj = json.loads(valid)
    other = dict(obj, format=obj["format"] + 1)
    bad_entry = dict(obj, pods={k: [[1, 2], v[1]] for k, v in obj["pods"].items()})
    return {
        "missing": None,
        "torn": valid[: len(valid) // 2],
        "empty": b"",
        "not json": b"\x00\xff garbage",
        "a list": b"[]",
        "another format": json.dumps(other).encode(),
        "bad entries": json.dumps(bad_entry).encode(),
    }


@pytest.mark.parametrize(
    "kind", ["missing", "torn", "empty", "not json", "a list", "another format", "bad entries", "stale"]
)
def test_a_broken_or_stale_index_is_recomputed(node: Node, node_root: str, clock: FakeClock, kind: str) -> None:
    """A crash leaves the old index (stale) or, were a rename not atomic, a torn one: the next
    reader answers from the records and writes a good index again."""
    node.create_pod(running("a"))
    assert node.create_pod(unpullable("b")).state("a").reason == "ErrImagePull"
    node.pod_summaries()
    index_path = os.path.join(node_root, INDEX_FILE)
    with open(index_path, "rb") as f:
        old = f.read()
    node.create_pod(running("c"))  # after the index: a record it does not know
    clock.advance(1)
    assert node.sync_pod("b").state("a").reason == "ImagePullBackOff"  # a record that changed since
    node.delete_pod("a")  # a record that went away
    replacement = old if kind == "stale" else _corruptions(old)[kind]
    if replacement is None:
        os.unlink(index_path)
    else:
        with open(index_path, "wb") as f:
            f.write(replacement)
    assert node.pod_summaries() == truth(node)
    with open(index_path, "rb") as f:
        repaired = PodIndex.parse(json.loads(f.read()))
    assert sorted((s for _, s in repaired.values()), key=lambda s: s.sort_key) == truth(node)
    assert [s.name for s in truth(node)] == ["b", "c"]
    before = snapshot(node_root)
    assert node.pod_summaries() == truth(node)
    assert changed(before, snapshot(node_root)) == set()  # a good index is not written again


def test_a_read_only_index_is_only_a_missed_cache(node: Node, node_root: str) -> None:
    node.create_pod(running("a"))
    os.makedirs(os.path.join(node_root, INDEX_FILE))  # the index cannot be written
    assert node.pod_summaries() == truth(node)
    assert [s.name for s in node.sync_pass()] == ["a"]


def test_a_root_written_before_the_index_loads_and_is_not_rewritten(node: Node, node_root: str) -> None:
    """Earlier versions wrote indented JSON and no index: such a root loads as it is, and a pass
    at rest rewrites none of its files (only the index appears)."""
    node.create_pod(running("a"))
    node.create_pod(running("b"))
    expected = truth(node)
    assert not os.path.exists(os.path.join(node_root, INDEX_FILE))  # only a listing writes it
    for dirpath, _, filenames in os.walk(node_root):
        if os.path.relpath(dirpath, node_root) not in (".", "pods", "secrets"):
            continue
        for name in filenames:
            if name.endswith(".json"):
                path = os.path.join(dirpath, name)
                with open(path) as f:
                    obj = json.load(f)
                with open(path, "w") as f:
                    json.dump(obj, f, indent=1, sort_keys=True)  # the earlier writer's format
    before = snapshot(node_root)
    assert node.pod_summaries() == expected
    assert [s.name for s in node.sync_pass()] == ["a", "b"]
    assert node.metrics().succeeded == 2
    assert changed(before, snapshot(node_root)) == {INDEX_FILE}


# --- a property: random histories ------------------------------------------------------------------

_OPS = st.lists(
    st.tuples(
        st.sampled_from(["run", "fail", "unpullable", "delete", "sync", "sync_pod", "stale", "tear", "advance"]),
        st.sampled_from(["p0", "p1", "p2"]),
        st.sampled_from(["default", "other"]),
    ),
    min_size=1,
    max_size=10,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
def test_the_index_always_says_what_the_records_say(fixtures_layout: str, ops: list[tuple[str, str, str]]) -> None:
    workdir = tempfile.mkdtemp(prefix="imagevol-index-")
    try:
        clock = FakeClock()
        node = make_node(os.path.join(workdir, "node"), fixtures_layout, clock)
        index_path = os.path.join(node.root, INDEX_FILE)
        saved = b""
        for op, name, ns in ops:
            if op in ("run", "fail", "unpullable"):
                if node.state.get_pod(name, ns) is None:
                    node.create_pod({"run": running, "fail": failing, "unpullable": unpullable}[op](name, ns))
            elif op == "delete":
                if node.state.get_pod(name, ns) is not None:
                    node.delete_pod(name, ns)
            elif op == "sync":
                node.sync_pass()
            elif op == "sync_pod":
                if node.state.get_pod(name, ns) is not None:
                    node.sync_pod(name, ns)
            elif op == "stale" and saved:
                with open(index_path, "wb") as f:
                    f.write(saved)  # a crash after records were written, before the index
            elif op == "tear" and os.path.exists(index_path):
                with open(index_path, "r+b") as f:
                    f.truncate(os.path.getsize(index_path) // 3)
            elif op == "advance":
                clock.advance(6)  # half way through a first backoff, or past it
            for namespace in (None, "default", "other"):
                assert node.pod_summaries(namespace) == truth(node, namespace)
            if os.path.exists(index_path):
                with open(index_path, "rb") as f:
                    saved = f.read()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- the list view shows what the whole object shows -----------------------------------------------

_STATES = st.sampled_from(
    [
        ("waiting", "ContainerCreating", ""),
        ("waiting", "ErrImagePull", "boom"),
        ("waiting", "ImagePullBackOff", ""),
        ("waiting", "CreateContainerError", "nope"),
        ("waiting", "PodInitializing", ""),
        ("running", "", ""),
        ("terminated", "Completed", ""),
        ("terminated", "Error", "exit"),
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    inits=st.lists(st.tuples(_STATES, st.booleans(), st.booleans()), max_size=3),
    regular=st.lists(st.tuples(_STATES, st.booleans()), min_size=1, max_size=3),
    syncs=st.integers(0, 2),
    created=st.floats(0, 2e9),
    now=st.floats(0, 2e9),
)
def test_the_list_view_prints_as_the_whole_pod(
    inits: list[Any], regular: list[Any], syncs: int, created: float, now: float
) -> None:
    init_docs = [
        ctr(f"i{i}", **({"restartPolicy": "Always"} if sidecar else {})) for i, (_, sidecar, _) in enumerate(inits)
    ]
    record = PodRecord.new(pod("p", [ctr(f"c{i}") for i in range(len(regular))], [], init_docs), created)
    record.syncs = syncs
    for state, ((kind, reason, message), *rest) in zip(record.containers, [*inits, *regular], strict=True):
        state.state, state.reason, state.message = kind, reason, message
        state.container_id = "abc" if rest[-1] else ""
        state.started_at = created
    for runtime in ("containerd", "crio"):
        whole = pod_object(record, runtime=runtime)
        view = list_view(whole)
        assert list_view(view) == view
        for wide in (False, True):
            assert pod_row(view, now, wide=wide) == pod_row(whole, now, wide=wide)
    assert PodSummary.of(record).view == list_view(pod_object(record))
    assert PodSummary.from_json(json.loads(json.dumps(PodSummary.of(record).to_json()))) == PodSummary.of(record)


def test_applying_pods_at_rest_again_writes_nothing(node: Node, node_root: str, reads: list[str]) -> None:
    """``kubectl apply`` of unchanged Pods: each is read once, none is written, none takes a pass."""
    docs = [pod_doc(f"p{i}", [ctr("a", ("v", "/v", "dir"))], [vol("v", "v2")]) for i in range(3)]
    text = to_yaml(*docs)
    assert [a.action for a in node.apply(text)] == ["created"] * 3
    node.pod_summaries()
    before = snapshot(node_root)
    reads.clear()
    applied = node.apply(text)
    assert [(a.action, a.record.phase if a.record else "") for a in applied] == [("unchanged", "Running")] * 3
    assert changed(before, snapshot(node_root)) == set()
    assert sorted(reads) == sorted(os.path.basename(record_file(f"p{i}")) for i in range(3))
    # One that is not at rest still takes its pass.
    node.create_pod(failing("retry"))
    before = snapshot(node_root)
    node.create_pod(failing("retry"))
    assert record_file("retry") in changed(before, snapshot(node_root))
