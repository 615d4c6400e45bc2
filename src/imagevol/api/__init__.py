"""The Kubernetes API as the API server sees it: the slice of core/v1 image volumes touch
(:mod:`~imagevol.api.models`), bounded YAML/JSON decoding (:mod:`~imagevol.api.bounded_yaml`,
:mod:`~imagevol.api.load`, :mod:`~imagevol.api.limits`), encoding (:mod:`~imagevol.api.dump`),
defaulting and field dropping (:mod:`~imagevol.api.defaults`), validation
(:mod:`~imagevol.api.validation`), admission (:mod:`~imagevol.api.admission`), per Kubernetes
version and feature gates (:mod:`~imagevol.api.features`).

Pure values and functions: the package imports only :mod:`imagevol.oci` (image references),
:mod:`imagevol.errors` and text helpers. Names are exported lazily, so importing one module of the
package does not load the YAML decoder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._exports import lazy_exports

if TYPE_CHECKING:
    from .admission import ADMISSION_PLUGINS, admit, always_pull_images
    from .constants import DEFAULT_VERSION, SUPPORTED_VERSIONS
    from .defaults import default_pod, default_pull_policy, drop_disabled_fields
    from .features import FeatureGates
    from .load import decode_documents, load_documents, pod_from_dict, secret_from_dict
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
    from .validation import generate_name, validate_pod, validate_secret

_WHERE = {
    ".admission": ("ADMISSION_PLUGINS", "admit", "always_pull_images"),
    ".defaults": ("default_pod", "default_pull_policy", "drop_disabled_fields"),
    ".constants": ("DEFAULT_VERSION", "SUPPORTED_VERSIONS"),
    ".features": ("FeatureGates",),
    ".load": ("decode_documents", "load_documents", "pod_from_dict", "secret_from_dict"),
    ".models": ("Container", "EnvVar", "ImageVolumeSource", "ObjectFieldSelector", "ObjectMeta", "Pod", "PodSpec",
                "Secret", "Volume", "VolumeMount"),
    ".validation": ("generate_name", "validate_pod", "validate_secret"),
}  # fmt: skip

__getattr__, __dir__ = lazy_exports(globals(), {name: module for module, names in _WHERE.items() for name in names})

__all__ = [
    "ADMISSION_PLUGINS",
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
    "always_pull_images",
    "decode_documents",
    "default_pod",
    "default_pull_policy",
    "drop_disabled_fields",
    "generate_name",
    "load_documents",
    "pod_from_dict",
    "secret_from_dict",
    "validate_pod",
    "validate_secret",
]
