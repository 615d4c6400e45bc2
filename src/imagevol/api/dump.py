"""Encoding API values back into the Kubernetes JSON shape (for node state and ``-o yaml``)."""

from __future__ import annotations

from typing import Any

from .models import Container, EnvVar, Pod, Volume, VolumeMount


def _drop_empty(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v not in (None, "", [], {}, False)}


def _mount(m: VolumeMount) -> dict[str, Any]:
    return _drop_empty(
        {
            "name": m.name,
            "mountPath": m.mount_path,
            "subPath": m.sub_path,
            "subPathExpr": m.sub_path_expr,
            "readOnly": m.read_only,
            "mountPropagation": m.mount_propagation,
            "recursiveReadOnly": m.recursive_read_only,
        }
    )


def _env(e: EnvVar) -> dict[str, Any]:
    out: dict[str, Any] = {"name": e.name}
    if e.value:
        out["value"] = e.value
    if e.field_ref is not None:
        out["valueFrom"] = {"fieldRef": {"apiVersion": e.field_ref.api_version, "fieldPath": e.field_ref.field_path}}
    elif e.unsupported_source:
        out["valueFrom"] = {e.unsupported_source: {}}
    return out


def _container(c: Container) -> dict[str, Any]:
    out = _drop_empty(
        {
            "name": c.name,
            "image": c.image,
            "command": list(c.command),
            "args": list(c.args),
            "env": [_env(e) for e in c.env],
            "volumeMounts": [_mount(m) for m in c.volume_mounts],
            "imagePullPolicy": c.image_pull_policy,
            "restartPolicy": c.restart_policy,
        }
    )
    if c.privileged:
        out["securityContext"] = {"privileged": True}
    return out


def _volume(v: Volume) -> dict[str, Any]:
    out: dict[str, Any] = {"name": v.name}
    if v.image is not None:
        out["image"] = _drop_empty({"reference": v.image.reference, "pullPolicy": v.image.pull_policy})
    for other in v.other_sources:
        out[other] = {}
    return out


def pod_to_dict(pod: Pod) -> dict[str, Any]:
    """The Pod in the Kubernetes JSON shape (empty fields left out), as node state stores it."""
    meta = _drop_empty(
        {
            "name": pod.metadata.name,
            "namespace": pod.metadata.namespace,
            "uid": pod.metadata.uid,
            "generateName": pod.metadata.generate_name,
            "labels": dict(pod.metadata.labels),
            "annotations": dict(pod.metadata.annotations),
        }
    )
    spec = _drop_empty(
        {
            "containers": [_container(c) for c in pod.spec.containers],
            "initContainers": [_container(c) for c in pod.spec.init_containers],
            "ephemeralContainers": [_container(c) for c in pod.spec.ephemeral_containers],
            "volumes": [_volume(v) for v in pod.spec.volumes],
            "imagePullSecrets": [{"name": s} for s in pod.spec.image_pull_secrets],
            "restartPolicy": pod.spec.restart_policy,
            "nodeName": pod.spec.node_name,
            "serviceAccountName": pod.spec.service_account_name,
        }
    )
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
