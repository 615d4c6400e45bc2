"""Kubernetes API objects as the API server sees them: decoding, defaulting, field dropping and
validation, per Kubernetes version and feature gates."""

from __future__ import annotations

from .defaults import default_pod, default_pull_policy, drop_disabled_fields
from .features import DEFAULT_VERSION, SUPPORTED_VERSIONS, FeatureGates
from .load import load_documents, pod_from_dict, secret_from_dict
from .models import (
    Container,
    EnvVar,
    ImageVolumeSource,
    ObjectFieldSelector,
    ObjectMeta,
    Pod,
    PodSpec,
    Secret,
    Volume,
    VolumeMount,
)
from .validation import validate_pod

__all__ = [
    "DEFAULT_VERSION",
    "SUPPORTED_VERSIONS",
    "Container",
    "EnvVar",
    "FeatureGates",
    "ImageVolumeSource",
    "ObjectFieldSelector",
    "ObjectMeta",
    "Pod",
    "PodSpec",
    "Secret",
    "Volume",
    "VolumeMount",
    "admit",
    "default_pod",
    "default_pull_policy",
    "drop_disabled_fields",
    "load_documents",
    "pod_from_dict",
    "secret_from_dict",
    "validate_pod",
]


def admit(pod: Pod, gates: FeatureGates, old: Pod | None = None) -> Pod:
    """What the API server does to a Pod on create: default (decode time), drop disabled fields
    (R2.8), validate. Returns the stored object or raises ``ValidationError``."""
    pod = default_pod(pod, gates)
    pod = drop_disabled_fields(pod, gates, old)
    validate_pod(pod, gates)
    return pod
