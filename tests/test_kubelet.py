"""Kubelet fidelity on a real node (content store, snapshots, runtime) fed from the project's OCI
fixtures through an ``oci-layout:`` mirror: sync order, failure timing, retries and backoff,
metrics accounting (R3.x, R4.x, R5.x, R6.3, R6.4, R11.x)."""

from __future__ import annotations

from typing import Any

import pytest

from imagevol.api.models import Pod
from imagevol.node import Node
from tests.helpers.clock import FakeClock
from tests.helpers.fixture_node import PREFIX, ctr, make_node, pod, vol


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def node(node_root: str, fixtures_layout: str, clock: FakeClock) -> Node:
    return make_node(node_root, fixtures_layout, clock)


def reasons(record: Any) -> list[str]:
    return [e.reason for e in record.events]


def _volume_pulls(record: Any) -> list[Any]:
    """Pull events of image volumes (against the Pod: no field path; R5.2)."""
    return [e for e in record.events if e.reason in ("Pulling", "Pulled") and not e.field_path]


def metric_values(node: Node) -> tuple[int, int, int]:
    m = node.metrics()
    return m.requested, m.succeeded, m.errors


def test_pulls_happen_in_spec_order_before_any_container(node: Node) -> None:
    p = pod("order", [ctr("a", ("k", "/k", "")), ctr("b", ("v", "/v", "dir"))], [vol("k", "kitten"), vol("v", "v2")])
    record = node.create_pod(p)
    messages = [e.message for e in record.events]
    assert messages[0] == f'Pulling image "{PREFIX}:kitten"'
    assert messages[1].startswith(f'Successfully pulled image "{PREFIX}:kitten"')
    assert messages[2] == f'Pulling image "{PREFIX}:v2"'
    # Each container pulls its own image when it is started (debian: Always), then starts.
    started = ["Pulling", "Pulled", "Created", "Started"]
    assert reasons(record)[4:] == started + started
    # Volume pull events belong to the Pod (R5.2), container events (its image's pull included)
    # to the container.
    assert [e.field_path for e in record.events[:4]] == ["", "", "", ""]
    assert {e.field_path for e in record.events[4:8]} == {"spec.containers{a}"}
    assert {e.field_path for e in record.events[8:]} == {"spec.containers{b}"}
    assert record.phase == "Running"


def test_unused_broken_volume_leaves_the_pod_running(node: Node) -> None:
    """R3.9: the failed pull is recorded but only containers that mount it fail."""
    p = pod("unused", [ctr("a", ("v", "/v", ""))], [vol("v", "v2"), vol("broken", "does-not-exist")])
    record = node.create_pod(p)
    assert record.phase == "Running"
    assert "Failed" in reasons(record)  # the pull failure event is still there
    assert record.volumes["broken"].reason == "ErrImagePull"


def test_failure_surfaces_on_each_container_that_mounts_the_volume(node: Node) -> None:
    p = pod(
        "two",
        [ctr("a", ("broken", "/b", "")), ctr("b", ("v", "/v", "")), ctr("c", ("broken", "/b", ""), ("v", "/v", ""))],
        [vol("v", "v2"), vol("broken", "nope")],
    )
    record = node.create_pod(p)
    states = {s.name: (s.state, s.reason) for s in record.containers}
    assert states == {"a": ("waiting", "ErrImagePull"), "b": ("running", ""), "c": ("waiting", "ErrImagePull")}
    per_container = [(e.field_path, e.message) for e in record.events if e.message == "Error: ErrImagePull"]
    assert per_container == [
        ("spec.containers{a}", "Error: ErrImagePull"),
        ("spec.containers{c}", "Error: ErrImagePull"),
    ]


def test_init_container_failure_blocks_the_pod(node: Node) -> None:
    """R5.7: a non-restartable init container that cannot start blocks the regular containers."""
    p = pod(
        "init",
        [ctr("main", ("v", "/v", ""))],
        [vol("v", "v2"), vol("broken", "nope")],
        init=[ctr("setup", ("broken", "/b", ""))],
    )
    record = node.create_pod(p)
    assert record.state("setup").reason == "ErrImagePull"
    assert record.state("main").state == "waiting" and record.state("main").container_id == ""
    assert record.status_text == "Init:ErrImagePull"
    assert "Created" not in reasons(record)


def test_sidecar_init_container_failure_does_not_block(node: Node) -> None:
    sidecar = ctr("side", ("broken", "/b", ""), restartPolicy="Always")
    p = pod("side", [ctr("main", ("v", "/v", ""))], [vol("v", "v2"), vol("broken", "nope")], init=[sidecar])
    record = node.create_pod(p)
    assert record.state("side").reason == "ErrImagePull"
    assert record.state("main").state == "running"


def test_init_container_completes_then_containers_start(node: Node) -> None:
    p = pod("init-ok", [ctr("main", ("v", "/v", ""))], [vol("v", "v2")], init=[ctr("setup", ("v", "/v", "dir"))])
    record = node.create_pod(p)
    assert (record.state("setup").state, record.state("setup").reason) == ("terminated", "Completed")
    assert record.state("main").state == "running"


def test_one_volume_several_sub_paths_and_one_image_in_two_volumes(node: Node) -> None:
    """R3.10, R11.2, R11.3: two pulls (the second finds the image present), one shared snapshot,
    each container its own sub path."""
    p = pod(
        "shared",
        [ctr("a", ("v", "/v", "dir")), ctr("b", ("v", "/v", ""), ("w", "/w", "dir"))],
        [vol("v", "v2"), vol("w", "v2")],
    )
    record = node.create_pod(p)
    assert record.phase == "Running"
    assert [e.reason for e in record.events[:3]] == ["Pulling", "Pulled", "Pulled"]
    assert record.events[2].message == f'Container image "{PREFIX}:v2" already present on machine'
    mounts = {s.name: node.runtime.container_status(s.container_id).mounts for s in record.containers}  # type: ignore[union-attr]
    assert [m.real_path for m in mounts["a"]] == ["dir"]
    assert [m.real_path for m in mounts["b"]] == [".", "dir"]
    assert len({m.snapshot for ms in mounts.values() for m in ms}) == 1
    assert len(node.snapshots.published()) == 1


def test_pull_backoff_and_retries_on_later_syncs(node: Node, clock: FakeClock) -> None:
    """R3.6, R5.6: 10 s doubling; ImagePullBackOff while backing off; retried after."""
    p = pod("retry", [ctr("a", ("broken", "/b", ""))], [vol("broken", "nope")])
    record = node.create_pod(p)
    assert record.state("a").reason == "ErrImagePull"
    clock.advance(5)
    record = node.sync_pod("retry")
    assert record.state("a").reason == "ImagePullBackOff"
    assert record.events[-2].message == f'Back-off pulling image "{PREFIX}:nope"'
    clock.advance(6)  # 11 s after the failure: the 10 s backoff is over
    record = node.sync_pod("retry")
    assert record.state("a").reason == "ErrImagePull"
    clock.advance(15)  # now 20 s of backoff
    assert node.sync_pod("retry").state("a").reason == "ImagePullBackOff"
    clock.advance(6)
    assert node.sync_pod("retry").state("a").reason == "ErrImagePull"
    pulls = [e for e in record.events if e.reason == "Pulling"]
    assert pulls[0].count == 2  # aggregated like the event correlator


def test_always_pulls_on_every_pass_that_starts_a_container(node: Node) -> None:
    """R3.11: every pass with a container to start resolves the image volumes again, so Always
    re-issues a pull each time (here container b keeps failing on a missing sub path)."""
    p = pod("always", [ctr("a", ("v", "/v", "")), ctr("b", ("v", "/w", "nope"))], [vol("v", "v2", "Always")])
    node.create_pod(p)
    record = node.sync_pod("always")
    pulling = next(e for e in record.events if e.message == f'Pulling image "{PREFIX}:v2"')
    assert pulling.count == 2
    assert record.state("a").state == "running"
    assert record.state("b").reason == "CreateContainerError"


@pytest.mark.parametrize("policy", ["Always", "IfNotPresent", "Never"])
def test_a_steady_state_pass_pulls_and_records_nothing(node: Node, clock: FakeClock, policy: str) -> None:
    """k/k PR #138655 (TestSyncPodNoEventsInSteadyState): with every container started, a pass
    stops before the image volumes: no pull, no event, no metric, the record unchanged."""
    node.create_pod(pod("first", [ctr("a", ("v", "/v", ""))], [vol("v", "v2")]))  # makes Never find it
    record = node.create_pod(pod("steady", [ctr("a", ("v", "/v", ""))], [vol("v", "v2", policy)]))
    assert record.settled
    before, metrics = record.to_json(), metric_values(node)
    clock.advance(60)
    for _ in range(3):
        after = node.sync_pod("steady")
    assert after.to_json() == before
    assert node.get_pod("steady").to_json() == before
    assert metric_values(node) == metrics


def test_never_uses_what_is_present(node: Node) -> None:
    node.create_pod(pod("first", [ctr("a", ("v", "/v", ""))], [vol("v", "v2")]))
    record = node.create_pod(pod("never", [ctr("a", ("v", "/v", ""))], [vol("v", "v2", "Never")]))
    assert record.phase == "Running"
    assert record.events[0].message == f'Container image "{PREFIX}:v2" already present on machine'


# --- metrics (R6.3, R6.4) -------------------------------------------------------------------------


def _expr_pod(name: str) -> Pod:
    c = ctr("a")
    c["volumeMounts"] = [{"name": "v", "mountPath": "/v", "subPathExpr": "$(MISSING)"}]
    return pod(name, [c], [vol("v", "v2")])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # success +1/+1; pull failure: nothing; mount failure: error; config error: upstream counts
        # a success (the PR #138460 over-count), fixed counts nothing.
        ("upstream", (3, 2, 1)),
        ("fixed", (2, 1, 1)),
    ],
)
def test_metrics_accounting(
    node_root: str, fixtures_layout: str, clock: FakeClock, mode: str, expected: tuple[int, int, int]
) -> None:
    node = make_node(node_root, fixtures_layout, clock, metrics_mode=mode)
    node.create_pod(pod("ok", [ctr("a", ("v", "/v", "dir"))], [vol("v", "v2")]))
    node.create_pod(pod("pullfail", [ctr("a", ("b", "/b", ""))], [vol("b", "nope")]))
    node.create_pod(pod("mountfail", [ctr("a", ("v", "/v", "nope"))], [vol("v", "v2")]))
    record = node.create_pod(_expr_pod("configfail"))
    assert record.state("a").reason == "CreateContainerConfigError"
    assert record.state("a").message == "missing value for MISSING"
    assert metric_values(node) == expected


def test_metrics_count_per_mount_per_attempt(node: Node) -> None:
    p = pod("retries", [ctr("a", ("v", "/x", "nope"), ("v", "/y", ""))], [vol("v", "v2")])
    node.create_pod(p)
    node.sync_pod("retries")
    # Two mounts of the image volume, two start attempts: requested 4; the runtime failed both.
    assert metric_values(node) == (4, 0, 4)


def test_kubelet_gate_off_with_the_api_accepting(node_root: str, fixtures_layout: str, clock: FakeClock) -> None:
    """R5.8: no pull; the runtime gets a mount without host path or image and refuses it."""
    node = make_node(node_root, fixtures_layout, clock, kubelet_feature_gates="ImageVolume=false")
    record = node.create_pod(pod("gateoff", [ctr("a", ("v", "/v", ""))], [vol("v", "v2")]))
    assert _volume_pulls(record) == []
    assert record.state("a").reason == "CreateContainerError"
    assert "host path is not set" in record.state("a").message
    assert metric_values(node) == (0, 0, 0)


def test_api_gate_off_drops_the_volume_and_the_pod_runs(node_root: str, fixtures_layout: str, clock: FakeClock) -> None:
    node = make_node(node_root, fixtures_layout, clock, feature_gates="ImageVolume=false")
    record = node.create_pod(pod("dropped", [ctr("a", ("v", "/v", ""))], [vol("v", "v2")]))
    assert record.pod.spec.volumes == ()
    assert record.phase == "Running"
    assert _volume_pulls(record) == []


def test_sub_path_expr_from_downward_api(node: Node) -> None:
    c = ctr("a", env=[{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}])
    c["volumeMounts"] = [{"name": "v", "mountPath": "/v", "subPathExpr": "$(POD_NAME)"}]
    record = node.create_pod(pod("dir", [c], [vol("v", "v2")]))
    assert record.phase == "Running"
    status = node.runtime.container_status(record.state("a").container_id)
    assert status is not None and status.mounts[0].real_path == "dir"


def test_state_survives_a_new_node_object(node_root: str, fixtures_layout: str, clock: FakeClock) -> None:
    node = make_node(node_root, fixtures_layout, clock)
    node.create_pod(pod("persist", [ctr("a", ("v", "/v", "nope"))], [vol("v", "v2")]))
    record = make_node(node_root, fixtures_layout, clock).sync_pod("persist")
    assert record.state("a").attempts == 2
    assert metric_values(make_node(node_root, fixtures_layout, clock)) == (2, 0, 2)
