"""A Pod and its events as the API server returns them: the one place that turns what the node
knows (:class:`~imagevol.kubelet.pod_sync.PodRecord`) into the core/v1 JSON shape that
``kubectl get pod -o yaml`` and ``kubectl get events -o json`` print, so that ``jq`` and ``yq``
scripts written against a real cluster read imagevol's output unchanged.

The status follows the kubelet's ``generateAPIPodStatus`` and ``convertToAPIContainerStatuses``:
the five Pod conditions, one container status per container (init containers in spec order,
regular ones by name, as the kubelet sorts them), the state as ``waiting``, ``running`` or
``terminated``, and ``volumeMounts`` for containers the runtime created. Where upstream keeps times
imagevol does not record (when a condition last changed), the closest recorded time stands in: the
Pod's creation, or the start of the container that completed the condition.

A container run for real (``--run-containers``) adds its exit code, finish time, restart count and
the state of its previous instance (``lastState``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..api.dump import pod_to_dict
from .events import Event
from .pod_sync import ContainerState, PodRecord

#: The node's name as the kubelet reports it (``spec.nodeName``, an event's ``source.host``).
NODE_NAME = "imagevol-node"
#: ``--runtime`` profile names to the scheme of a container ID (``containerd://<id>``).
_ID_SCHEMES = {"crio": "cri-o", "legacy": "containerd"}


def timestamp(seconds: float) -> str | None:
    """``metav1.Time`` as JSON: RFC 3339 in UTC to the second; ``None`` for an unknown time (0)."""
    if not seconds:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _condition(kind: str, ok: bool, since: float, reason: str = "", message: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": kind,
        "status": "True" if ok else "False",
        "lastProbeTime": None,
        "lastTransitionTime": timestamp(since),
    }
    if not ok and reason:
        out["reason"], out["message"] = reason, message
    return out


def _names(states: list[ContainerState]) -> str:
    """A Go ``%s`` of a string slice: ``[a b]``."""
    return "[" + " ".join(s.name for s in states) + "]"


def _conditions(record: PodRecord) -> list[dict[str, Any]]:
    created = record.created_at
    inits = [s for s in record.containers if s.kind == "initContainers"]
    regular = [s for s in record.containers if s.kind == "containers"]
    # A sidecar (restartable init container) initialises by starting; the others by completing.
    incomplete = [s for s in inits if not (s.state == "running" if s.sidecar else s.done)]
    unready = [s for s in regular + [s for s in inits if s.sidecar] if s.state != "running"]
    initialized_at = max((s.started_at for s in inits), default=created) or created
    ready_at = max((s.started_at for s in regular), default=created) or created
    ready = [
        "ContainersNotReady",
        f"containers with unready status: {_names(unready)}",
    ]
    return [
        _condition("PodReadyToStartContainers", record.syncs > 0, created),
        _condition(
            "Initialized",
            not incomplete,
            initialized_at if not incomplete else created,
            "ContainersNotInitialized",
            f"containers with incomplete status: {_names(incomplete)}",
        ),
        _condition("Ready", not unready, ready_at if not unready else created, *ready),
        _condition("ContainersReady", not unready, ready_at if not unready else created, *ready),
        _condition("PodScheduled", True, created),
    ]


def _state(state: ContainerState, container_id: str) -> dict[str, Any]:
    if state.state == "running":
        return {"running": {"startedAt": timestamp(state.started_at)}}
    if state.state == "terminated":
        # A simulated container terminates as it starts (no finish time recorded); one run for
        # real (--run-containers) has its exit code and finish time from the runtime.
        done: dict[str, Any] = {
            "exitCode": state.exit_code if state.finished_at else (0 if state.reason == "Completed" else 1),
            "reason": state.reason,
            "startedAt": timestamp(state.started_at),
            "finishedAt": timestamp(state.finished_at or state.started_at),
        }
        if state.message:
            done["message"] = state.message
        if container_id:
            done["containerID"] = container_id
        return {"terminated": done}
    waiting: dict[str, Any] = {"reason": state.reason}
    if state.message:
        waiting["message"] = state.message
    return {"waiting": waiting}


def _last_state(state: ContainerState) -> dict[str, Any]:
    """``lastState``: the instance that ended before this one, as far as the record knows it (a
    container waiting to be restarted after it exited)."""
    if not state.previous_id or not state.finished_at or state.state == "terminated":
        return {}
    return {
        "terminated": {
            "exitCode": state.exit_code,
            "reason": "Completed" if state.exit_code == 0 else "Error",
            "finishedAt": timestamp(state.finished_at),
        }
    }


def _mounts(record: PodRecord, state: ContainerState) -> list[dict[str, Any]]:
    """``VolumeMountStatus`` per mount of the container's spec: read-only as the spec says, the
    recursive read-only mode of a read-only mount, and for an image volume the exact image mounted
    as the kubelet recorded it when it created the container (``ImageVolumeWithDigest`` only)."""
    recorded = {
        v["mountPath"]: v["volumeStatus"]["image"]["imageRef"]
        for v in state.volume_mounts
        if "image" in v.get("volumeStatus", {})
    }
    group = record.pod.spec.init_containers if state.kind == "initContainers" else record.pod.spec.containers
    spec = next((c for c in group if c.name == state.name), None)
    out: list[dict[str, Any]] = []
    for m in spec.volume_mounts if spec is not None else ():
        mount: dict[str, Any] = {"name": m.name, "mountPath": m.mount_path, "readOnly": m.read_only}
        if m.read_only:
            mount["recursiveReadOnly"] = "Enabled" if m.recursive_read_only in ("Enabled", "IfPossible") else "Disabled"
        ref = recorded.get(m.mount_path)
        if ref:
            mount["volumeStatus"] = {"image": {"imageRef": ref}}
        out.append(mount)
    return out


def _container_status(record: PodRecord, state: ContainerState, runtime: str) -> dict[str, Any]:
    group = record.pod.spec.init_containers if state.kind == "initContainers" else record.pod.spec.containers
    image = next((c.image for c in group if c.name == state.name), "")
    container_id = f"{_ID_SCHEMES.get(runtime, runtime)}://{state.container_id}" if state.container_id else ""
    out: dict[str, Any] = {
        "name": state.name,
        "image": state.image or image,
        "imageID": state.image_id,
        "ready": state.state == "running" or (state.kind == "initContainers" and state.done),
        "started": state.state == "running",
        "restartCount": state.restart_count,
        "state": _state(state, container_id),
        "lastState": _last_state(state),
    }
    if container_id:
        out["containerID"] = container_id
        out["volumeMounts"] = _mounts(record, state)
    return out


def pod_status(record: PodRecord, *, runtime: str = "containerd") -> dict[str, Any]:
    """``status`` of the Pod: phase, conditions, start time, container statuses.

    ``runtime`` is the ``--runtime`` profile (the scheme of container IDs)."""
    out: dict[str, Any] = {
        "phase": record.phase,
        "conditions": _conditions(record),
        "qosClass": "BestEffort",
        "startTime": timestamp(record.created_at),
    }
    inits = [s for s in record.containers if s.kind == "initContainers"]
    regular = sorted((s for s in record.containers if s.kind == "containers"), key=lambda s: s.name)
    if inits:
        out["initContainerStatuses"] = [_container_status(record, s, runtime) for s in inits]
    out["containerStatuses"] = [_container_status(record, s, runtime) for s in regular]
    return out


def pod_object(
    record: PodRecord,
    *,
    node_name: str = NODE_NAME,
    runtime: str = "containerd",
) -> dict[str, Any]:
    """The Pod as ``kubectl get pod NAME -o json`` prints it: ``apiVersion``, ``kind``, metadata
    with ``uid``, ``namespace`` and ``creationTimestamp``, the spec as admitted (defaults included,
    bound to ``node_name``) and :func:`pod_status`."""
    obj = pod_to_dict(record.pod)
    obj["metadata"] = {**obj["metadata"], "namespace": record.pod.namespace}
    obj["metadata"]["creationTimestamp"] = timestamp(record.created_at)
    obj["spec"] = {**obj["spec"], "nodeName": record.pod.spec.node_name or node_name}
    obj["status"] = pod_status(record, runtime=runtime)
    return obj


def list_view(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a Pod object (:func:`pod_object`) that a list of Pods shows: kubectl's
    ``printPod`` columns, ``-o wide`` and ``-o name`` included. It leaves out what depends on the
    runtime profile (container IDs, mounts), so one view serves every ``--runtime``. The node's
    Pod index stores it; a change here must bump the index's format."""
    meta, spec, status = obj["metadata"], obj.get("spec", {}), obj.get("status", {})

    def statuses(key: str) -> list[dict[str, Any]]:
        out = []
        for c in status.get(key, ()):
            state = {k: {f: v for f, v in s.items() if f != "containerID"} for k, s in c.get("state", {}).items()}
            out.append({f: c[f] for f in ("name", "ready", "started", "restartCount") if f in c} | {"state": state})
        return out

    view: dict[str, Any] = {
        "metadata": {f: meta[f] for f in ("name", "namespace", "creationTimestamp") if f in meta},
        "spec": {
            "initContainers": [
                {f: c[f] for f in ("name", "restartPolicy") if f in c} for c in spec.get("initContainers", ())
            ],
            "containers": [{"name": c.get("name", "")} for c in spec.get("containers", ())],
        },
        "status": {f: status[f] for f in ("phase", "reason", "podIPs", "nominatedNodeName") if f in status},
    }
    for f in ("nodeName", "readinessGates"):
        if f in spec:
            view["spec"][f] = spec[f]
    for key in ("initContainerStatuses", "containerStatuses"):
        if key in status:
            view["status"][key] = statuses(key)
    return view


def event_name(event: Event, record: PodRecord) -> str:
    """``<pod>.<hex>`` as client-go names events (the hex of the first time in nanoseconds; here
    plus the event's position, so events recorded within one tick of a fake clock stay apart)."""
    position = next((i for i, e in enumerate(record.events) if e == event), 0)
    return f"{record.pod.name}.{int(event.first_timestamp * 1e9) + position:x}"


def event_object(event: Event, record: PodRecord, *, node_name: str = NODE_NAME) -> dict[str, Any]:
    """One ``v1 Event`` about the Pod (``involvedObject.fieldPath`` names a container)."""
    pod = record.pod
    involved: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "namespace": pod.namespace}
    if pod.uid:
        involved["uid"] = pod.uid
    if event.field_path:
        involved["fieldPath"] = event.field_path
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": event_name(event, record),
            "namespace": pod.namespace,
            "creationTimestamp": timestamp(event.first_timestamp),
        },
        "involvedObject": involved,
        "type": event.type,
        "reason": event.reason,
        "message": event.message,
        "source": {"component": event.source, "host": node_name},
        "firstTimestamp": timestamp(event.first_timestamp),
        "lastTimestamp": timestamp(event.last_timestamp),
        "count": event.count,
        "eventTime": None,
        "reportingComponent": event.source,
        "reportingInstance": node_name,
    }
