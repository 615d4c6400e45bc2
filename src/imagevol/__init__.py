"""imagevol: simulate the Kubernetes kubelet and container runtime for image volumes (KEP-4639).

The public API users import is re-exported here, lazily (PEP 562): each name lives in a module of
its own and is imported on first use, so ``import imagevol.cli`` does not load the registry stack
or the tree code. The packages below are layered (docs/architecture.md): ``cli`` on top, then
``testing``, ``node``, ``kubelet`` | ``exec`` | ``runtime``, ``trees``, ``content``, ``cri``,
``api``, ``oci`` and ``errors``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._exports import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api.admission import admit
    from .api.features import FeatureGates
    from .api.load import load_documents
    from .api.models import Pod
    from .content.pull import ImagePuller
    from .content.pull import ImagePuller as Resolver
    from .content.sources.mirrors import RegistriesConfig
    from .content.store import ContentStore
    from .errors import (
        AuthenticationError,
        BlobNotFoundError,
        BlockedRegistryError,
        ConfigError,
        ContentError,
        CreateContainerConfigError,
        CreateContainerError,
        DecodeError,
        DiffIDMismatchError,
        DigestMismatchError,
        ImageInUseError,
        ImageNotFoundError,
        ImageVolError,
        ImageVolumeMountFailedError,
        InvalidReferenceError,
        LayerError,
        LazyDigestError,
        LazyFormatError,
        LazyUnsupportedError,
        ManifestError,
        NoBusyBoxError,
        NodeStateError,
        PlatformError,
        PodNotFoundError,
        PullError,
        RegistryUnavailableError,
        RequestEntityTooLargeError,
        SecretNotFoundError,
        SizeMismatchError,
        StorageTooLargeError,
        SubPathError,
        ValidationError,
    )
    from .exec.view import CommandFailedError, ViewError
    from .kubelet.events import Event
    from .kubelet.metrics import KubeletMetrics
    from .kubelet.pod_sync import ContainerState, Kubelet, PodRecord
    from .node import Applied, Node, NodeConfig
    from .oci import Descriptor, Digest, Index, Manifest, Platform, parse_manifest
    from .oci.reference import Reference, parse, parse_normalized
    from .runtime.base import Runtime
    from .runtime.containerd import ContainerdRuntime, LegacyRuntime
    from .runtime.crio import CrioRuntime
    from .testing.model import ModelError
    from .trees.layers import ApplyOptions, LayerLimits, apply_layers
    from .trees.snapshots import Snapshots
    from .trees.subpath import Backend, Policy, Resolved, resolve

#: Every exception of :mod:`imagevol.errors` (each one is importable from ``imagevol``).
ERRORS = (
    "AuthenticationError",
    "BlobNotFoundError",
    "BlockedRegistryError",
    "ConfigError",
    "ContentError",
    "CreateContainerConfigError",
    "CreateContainerError",
    "DecodeError",
    "DiffIDMismatchError",
    "DigestMismatchError",
    "ImageInUseError",
    "ImageNotFoundError",
    "ImageVolError",
    "ImageVolumeMountFailedError",
    "InvalidReferenceError",
    "LayerError",
    "LazyDigestError",
    "LazyFormatError",
    "LazyUnsupportedError",
    "ManifestError",
    "NoBusyBoxError",
    "NodeStateError",
    "PlatformError",
    "PodNotFoundError",
    "PullError",
    "RegistryUnavailableError",
    "RequestEntityTooLargeError",
    "SecretNotFoundError",
    "SizeMismatchError",
    "StorageTooLargeError",
    "SubPathError",
    "ValidationError",
)

_WHERE = {
    ".api.admission": ("admit",),
    ".api.features": ("FeatureGates",),
    ".api.load": ("load_documents",),
    ".api.models": ("Pod",),
    ".content.pull": ("ImagePuller",),
    ".content.sources.mirrors": ("RegistriesConfig",),
    ".content.store": ("ContentStore",),
    ".errors": ERRORS,
    ".exec.view": ("CommandFailedError", "ViewError"),
    ".kubelet.events": ("Event",),
    ".kubelet.metrics": ("KubeletMetrics",),
    ".kubelet.pod_sync": ("ContainerState", "Kubelet", "PodRecord"),
    ".node._node": ("Applied", "Node", "NodeConfig"),
    ".oci": ("Descriptor", "Digest", "Index", "Manifest", "Platform", "parse_manifest"),
    ".oci.reference": ("Reference", "parse", "parse_normalized"),
    ".runtime.base": ("Runtime",),
    ".testing.model": ("ModelError",),
    ".runtime.containerd": ("ContainerdRuntime", "LegacyRuntime"),
    ".runtime.crio": ("CrioRuntime",),
    ".trees.layers": ("ApplyOptions", "LayerLimits", "apply_layers"),
    ".trees.snapshots": ("Snapshots",),
    ".trees.subpath": ("Backend", "Policy", "Resolved", "resolve"),
}  # fmt: skip

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        **{name: module for module, names in _WHERE.items() for name in names},
        # The puller's old name.
        "Resolver": ".content.pull:ImagePuller",
    },
)

__all__ = [
    "Applied",
    "ApplyOptions",
    "AuthenticationError",
    "Backend",
    "BlobNotFoundError",
    "BlockedRegistryError",
    "CommandFailedError",
    "ConfigError",
    "ContainerState",
    "ContainerdRuntime",
    "ContentError",
    "ContentStore",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrioRuntime",
    "DecodeError",
    "Descriptor",
    "DiffIDMismatchError",
    "Digest",
    "DigestMismatchError",
    "Event",
    "FeatureGates",
    "ImageInUseError",
    "ImageNotFoundError",
    "ImagePuller",
    "ImageVolError",
    "ImageVolumeMountFailedError",
    "Index",
    "InvalidReferenceError",
    "Kubelet",
    "KubeletMetrics",
    "LayerError",
    "LayerLimits",
    "LazyDigestError",
    "LazyFormatError",
    "LazyUnsupportedError",
    "LegacyRuntime",
    "Manifest",
    "ManifestError",
    "ModelError",
    "NoBusyBoxError",
    "Node",
    "NodeConfig",
    "NodeStateError",
    "Platform",
    "PlatformError",
    "Pod",
    "PodNotFoundError",
    "PodRecord",
    "Policy",
    "PullError",
    "Reference",
    "RegistriesConfig",
    "RegistryUnavailableError",
    "RequestEntityTooLargeError",
    "Resolved",
    "Resolver",
    "Runtime",
    "SecretNotFoundError",
    "SizeMismatchError",
    "Snapshots",
    "StorageTooLargeError",
    "SubPathError",
    "ValidationError",
    "ViewError",
    "__version__",
    "admit",
    "apply_layers",
    "load_documents",
    "parse",
    "parse_manifest",
    "parse_normalized",
    "resolve",
]
