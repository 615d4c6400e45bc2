"""API server behaviour: decoding, defaulting (R2.1, R2.1a), field dropping (R2.8), validation
(R1.3, R2.2 to R2.7) and version/gate profiles (R0.1, R0.4)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagevol.api import FeatureGates, admit, default_pull_policy, load_documents, pod_from_dict
from imagevol.api.dump import pod_to_dict
from imagevol.api.models import Pod
from imagevol.errors import ValidationError
from imagevol.testing.pods import container as build_container
from imagevol.testing.pods import image_volume
from imagevol.testing.pods import pod_doc as build_pod

GATES_ON = FeatureGates.for_version("1.33", "ImageVolume=true")


def pod_doc(
    mounts: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    **container: Any,
) -> dict[str, Any]:
    c = build_container("c", **{"volumeMounts": mounts if mounts is not None else [], **container})
    return build_pod(
        "p",
        [c],
        volumes if volumes is not None else [image_volume("v", "quay.io/x/y:v1", "IfNotPresent")],
    )


def errors_of(doc: dict[str, Any], gates: FeatureGates = GATES_ON) -> list[str]:
    try:
        admit(pod_from_dict(doc), gates)
    except ValidationError as exc:
        return exc.errors
    return []


# --- R2.1 / R2.1a defaulting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "policy"),
    [
        ("busybox", "Always"),  # no tag, no digest: tag latest
        ("quay.io/x/y", "Always"),
        ("busybox:latest", "Always"),
        ("busybox:1.36", "IfNotPresent"),
        ("busybox@sha256:" + "a" * 64, "IfNotPresent"),  # digest only: tag empty
        ("busybox:latest@sha256:" + "a" * 64, "Always"),  # tag and digest: tag latest
        ("busybox:v1@sha256:" + "a" * 64, "IfNotPresent"),
        ("Not A Reference!", "IfNotPresent"),  # unparseable: error ignored, tag empty
        ("UPPER/case:v1", "IfNotPresent"),
        ("localhost:5000/x", "Always"),
    ],
)
def test_default_pull_policy_follows_parse_image_name(reference: str, policy: str) -> None:
    assert default_pull_policy(reference) == policy


@given(
    st.from_regex(r"[a-z][a-z0-9]{0,8}(/[a-z][a-z0-9]{0,8}){0,2}", fullmatch=True),
    st.sampled_from(["", ":latest", ":v1", ":1.2"]),
)
def test_default_pull_policy_property(name: str, tag: str) -> None:
    expected = "Always" if tag in ("", ":latest") else "IfNotPresent"
    assert default_pull_policy(name + tag) == expected


def test_pull_policy_is_defaulted_only_when_the_gate_is_on() -> None:
    doc = pod_doc(volumes=[{"name": "v", "image": {"reference": "busybox"}}])
    pod = admit(pod_from_dict(doc), GATES_ON)
    assert pod.spec.volumes[0].image is not None
    assert pod.spec.volumes[0].image.pull_policy == "Always"
    assert pod.metadata.namespace == "default" and pod.metadata.uid


# --- R2.8 field dropping -----------------------------------------------------------------------------


def test_gate_off_silently_drops_image_volumes_and_their_mounts() -> None:
    doc = pod_doc(mounts=[{"name": "v", "mountPath": "/v"}, {"name": "e", "mountPath": "/e"}])
    doc["spec"]["volumes"].append({"name": "e", "emptyDir": {}})
    doc["spec"]["initContainers"] = [{"name": "i", "image": "x", "volumeMounts": [{"name": "v", "mountPath": "/v"}]}]
    gates = FeatureGates.for_version("1.33", "ImageVolume=false")
    pod = admit(pod_from_dict(doc), gates)
    assert [v.name for v in pod.spec.volumes] == ["e"]
    assert [m.name for m in pod.spec.containers[0].volume_mounts] == ["e"]
    assert pod.spec.init_containers[0].volume_mounts == ()


def test_gate_off_keeps_fields_when_the_old_object_used_them() -> None:
    gates = FeatureGates.for_version("1.33", "ImageVolume=false")
    old = pod_from_dict(pod_doc(mounts=[{"name": "v", "mountPath": "/v"}]))
    from imagevol.api import drop_disabled_fields

    kept = drop_disabled_fields(old, gates, old=old)
    assert kept.spec.volumes[0].image is not None


def test_gate_off_even_invalid_image_volume_is_dropped_without_error() -> None:
    doc = pod_doc(
        mounts=[{"name": "v", "mountPath": "/v", "subPath": "x"}],
        volumes=[{"name": "v", "image": {"reference": "", "pullPolicy": "Bogus"}}],
    )
    assert errors_of(doc, FeatureGates.for_version("1.33", "ImageVolume=false")) == []


# --- validation wording and field paths ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mount", "expected"),
    [
        (
            {"subPath": "/etc"},
            ['spec.containers[0].volumeMounts.subPath: Invalid value: "/etc": must be a relative path'],
        ),
        ({"subPath": ".."}, ["spec.containers[0].volumeMounts.subPath: Invalid value: \"..\": must not contain '..'"]),
        (
            {"subPath": "/a/../b"},
            [
                'spec.containers[0].volumeMounts.subPath: Invalid value: "/a/../b": must be a relative path',
                "spec.containers[0].volumeMounts.subPath: Invalid value: \"/a/../b\": must not contain '..'",
            ],
        ),
        ({"subPath": "..a/b.."}, []),
        ({"subPath": "./x/."}, []),
        (
            {"subPathExpr": "$(X)/.."},
            ["spec.containers[0].volumeMounts.subPathExpr: Invalid value: \"$(X)/..\": must not contain '..'"],
        ),
        (
            {"subPath": "a", "subPathExpr": "b"},
            [
                'spec.containers[0].volumeMounts[0].subPathExpr: Invalid value: "b": '
                "subPathExpr and subPath are mutually exclusive"
            ],
        ),
        (
            {"mountPropagation": "Sideways"},
            [
                'spec.containers[0].volumeMounts.mountPropagation: Unsupported value: "Sideways": '
                'supported values: "Bidirectional", "HostToContainer", "None"'
            ],
        ),
        (
            {"mountPropagation": "Bidirectional"},
            [
                "spec.containers[0].volumeMounts.mountPropagation: Forbidden: "
                "Bidirectional mount propagation is available only to privileged containers"
            ],
        ),
        (
            {"recursiveReadOnly": "Enabled"},
            [
                "spec.containers[0].volumeMounts[0].recursiveReadOnly: Forbidden: "
                "may only be specified when readOnly is true"
            ],
        ),
        ({"recursiveReadOnly": "Enabled", "readOnly": True}, []),
    ],
)
def test_mount_validation(mount: dict[str, Any], expected: list[str]) -> None:
    m = {"name": "v", "mountPath": "/v", **mount}
    assert errors_of(pod_doc(mounts=[m])) == expected


def test_read_only_is_not_required_for_image_volumes() -> None:
    """R2.4: no readOnly rule; the kubelet forces read-only instead."""
    assert errors_of(pod_doc(mounts=[{"name": "v", "mountPath": "/v", "readOnly": False}])) == []


def test_mount_name_and_path_rules() -> None:
    mounts = [
        {"name": "missing", "mountPath": "/a"},
        {"name": "v", "mountPath": ""},
        {"name": "v", "mountPath": "/a"},
    ]
    assert errors_of(pod_doc(mounts=mounts)) == [
        'spec.containers[0].volumeMounts[0].name: Not found: "missing"',
        "spec.containers[0].volumeMounts[1].mountPath: Required value",
        'spec.containers[0].volumeMounts[2].mountPath: Invalid value: "/a": must be unique',
    ]


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ({"reference": "", "pullPolicy": "Always"}, ["spec.volumes[0].image.reference: Required value"]),
        (
            {"reference": "x", "pullPolicy": "Sometimes"},
            [
                'spec.volumes[0].image.pullPolicy: Unsupported value: "Sometimes": '
                'supported values: "Always", "IfNotPresent", "Never"'
            ],
        ),
        ({"reference": "x", "pullPolicy": "Never"}, []),
    ],
)
def test_image_volume_source_validation(image: dict[str, str], expected: list[str]) -> None:
    assert errors_of(pod_doc(volumes=[{"name": "v", "image": image}])) == expected


def test_empty_reference_is_allowed_in_templates() -> None:
    """R2.2: only Pods require the reference (workload templates may leave it empty)."""
    from imagevol.api.validation import validate_pod

    pod = pod_from_dict(pod_doc(volumes=[{"name": "v", "image": {"reference": "", "pullPolicy": "Always"}}]))
    validate_pod(pod, GATES_ON, is_pod=False)


def test_more_than_one_volume_type() -> None:
    vol = {"name": "v", "image": {"reference": "x", "pullPolicy": "Always"}, "emptyDir": {}}
    assert errors_of(pod_doc(volumes=[vol])) == [
        "spec.volumes[0].image: Forbidden: may not specify more than 1 volume type"
    ]


@pytest.mark.parametrize(
    ("version", "allowed"), [("1.31", False), ("1.32", False), ("1.33", True), ("1.35", True), ("1.36", True)]
)
def test_sub_path_on_image_volumes_by_version(version: str, allowed: bool) -> None:
    """R0.4/R2.6: before 1.33 the API server refuses sub paths on image volumes."""
    gates = FeatureGates.for_version(version, "ImageVolume=true")
    errors = errors_of(pod_doc(mounts=[{"name": "v", "mountPath": "/v", "subPath": "dir"}]), gates)
    if allowed:
        assert errors == []
    else:
        assert errors == [
            'spec.containers[0].volumeMounts[0].subPath: Invalid value: "dir": not allowed in image volume sources'
        ]


def test_error_message_aggregates_like_the_api_server() -> None:
    doc = pod_doc(volumes=[{"name": "v", "image": {"reference": "", "pullPolicy": "X"}}])
    with pytest.raises(ValidationError) as info:
        admit(pod_from_dict(doc), GATES_ON)
    assert str(info.value) == (
        'Pod "p" is invalid: [spec.volumes[0].image.reference: Required value, '
        'spec.volumes[0].image.pullPolicy: Unsupported value: "X": supported values: "Always", "IfNotPresent", "Never"]'
    )


def test_decoding_reports_wrong_types_with_the_field_path() -> None:
    doc = pod_doc(mounts=[{"name": "v", "mountPath": 7}])
    with pytest.raises(ValidationError) as info:
        pod_from_dict(doc)
    assert "spec.containers[0].volumeMounts[0].mountPath" in str(info.value)


def test_documents_and_round_trip() -> None:
    text = """
apiVersion: v1
kind: Secret
metadata: {name: s}
type: kubernetes.io/dockerconfigjson
stringData: {.dockerconfigjson: '{"auths": {}}'}
---
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers: [{name: c, image: x, env: [{name: A, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]}]
  volumes: [{name: v, image: {reference: r}}]
"""
    docs = list(load_documents(text))
    assert [type(d).__name__ for d in docs] == ["Secret", "Pod"]
    pod = docs[1]
    assert isinstance(pod, Pod)
    assert pod_from_dict(pod_to_dict(pod)) == pod


# --- R0.1 gates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "enabled", "stage"),
    [
        ("1.31", False, "Alpha"),
        ("1.33", False, "Beta"),
        ("1.34", False, "Beta"),
        ("1.35", True, "Beta"),
        ("1.36", True, "GA"),
    ],
)
def test_image_volume_gate_defaults(version: str, enabled: bool, stage: str) -> None:
    gates = FeatureGates.for_version(version)
    assert gates.enabled("ImageVolume") is enabled
    assert gates.stage("ImageVolume") == stage


def test_ga_gate_is_locked() -> None:
    with pytest.raises(ValueError, match="cannot set feature gate ImageVolume to false, feature is locked to true"):
        FeatureGates.for_version("1.36", "ImageVolume=false")
    assert FeatureGates.for_version("1.36", "ImageVolume=true").enabled("ImageVolume")


def test_unknown_gates_and_versions_are_refused() -> None:
    with pytest.raises(ValueError, match="unrecognized feature gate: Nope"):
        FeatureGates.for_version("1.33", "Nope=true")
    with pytest.raises(ValueError, match="unrecognized feature gate: ImageVolumeWithDigest"):
        FeatureGates.for_version("1.33", "ImageVolumeWithDigest=true")  # added in 1.35
    with pytest.raises(ValueError, match="not simulated"):
        FeatureGates.for_version("1.29")


@pytest.mark.parametrize(
    ("field_path", "expected"),
    [
        ("metadata.name", []),
        ("metadata.labels['app']", []),
        ("status.podIP", []),
        (
            "metadata.foo",
            [
                'spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: Invalid value: "metadata.foo": '
                "error converting fieldPath: field label not supported: metadata.foo"
            ],
        ),
        (
            "status.phase",
            [
                'spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: Unsupported value: "status.phase": '
                'supported values: "metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName", '
                '"spec.serviceAccountName", "status.hostIP", "status.hostIPs", "status.podIP", "status.podIPs"'
            ],
        ),
    ],
)
def test_env_field_paths_are_validated(field_path: str, expected: list[str]) -> None:
    env = [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": field_path}}}]
    assert errors_of(pod_doc(env=env)) == expected


def test_always_pull_images_admission_plugin() -> None:
    """R3.12: the plugin forces pullPolicy Always on image volumes (and containers)."""
    doc = pod_doc(volumes=[{"name": "v", "image": {"reference": "x:v1", "pullPolicy": "Never"}}])
    pod = admit(pod_from_dict(doc), GATES_ON, admission_plugins=("AlwaysPullImages",))
    assert pod.spec.volumes[0].image is not None and pod.spec.volumes[0].image.pull_policy == "Always"
    assert pod.spec.containers[0].image_pull_policy == "Always"
    with pytest.raises(ValueError, match="unknown admission plugin"):
        admit(pod_from_dict(doc), GATES_ON, admission_plugins=("NoSuchPlugin",))
