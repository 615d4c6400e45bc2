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
        ContentError,
        CreateContainerConfigError,
        ImageVolError,
        ImageVolumeMountFailedError,
        InvalidReferenceError,
        LayerError,
        PullError,
        SubPathError,
        ValidationError,
    )
    from .kubelet.events import Event
    from .kubelet.metrics import KubeletMetrics
    from .kubelet.pod_sync import ContainerState, Kubelet, PodRecord
    from .node import Node, NodeConfig
    from .oci import Descriptor, Digest, Index, Manifest, Platform, parse_manifest
    from .oci.reference import Reference, parse, parse_normalized
    from .runtime.base import Runtime
    from .runtime.containerd import ContainerdRuntime, LegacyRuntime
    from .runtime.crio import CrioRuntime
    from .trees.layers import ApplyOptions, LayerLimits, apply_layers
    from .trees.snapshots import Snapshots
    from .trees.subpath import Backend, Policy, Resolved, resolve

_WHERE = {
    ".api.admission": ("admit",),
    ".api.features": ("FeatureGates",),
    ".api.load": ("load_documents",),
    ".api.models": ("Pod",),
    ".content.pull": ("ImagePuller",),
    ".content.sources.mirrors": ("RegistriesConfig",),
    ".content.store": ("ContentStore",),
    ".errors": ("ContentError", "CreateContainerConfigError", "ImageVolError", "ImageVolumeMountFailedError",
                "InvalidReferenceError", "LayerError", "PullError", "SubPathError", "ValidationError"),
    ".kubelet.events": ("Event",),
    ".kubelet.metrics": ("KubeletMetrics",),
    ".kubelet.pod_sync": ("ContainerState", "Kubelet", "PodRecord"),
    ".node._node": ("Node", "NodeConfig"),
    ".oci": ("Descriptor", "Digest", "Index", "Manifest", "Platform", "parse_manifest"),
    ".oci.reference": ("Reference", "parse", "parse_normalized"),
    ".runtime.base": ("Runtime",),
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
    "ApplyOptions",
    "Backend",
    "ContainerState",
    "ContainerdRuntime",
    "ContentError",
    "ContentStore",
    "CreateContainerConfigError",
    "CrioRuntime",
    "Descriptor",
    "Digest",
    "Event",
    "FeatureGates",
    "ImagePuller",
    "ImageVolError",
    "ImageVolumeMountFailedError",
    "Index",
    "InvalidReferenceError",
    "Kubelet",
    "KubeletMetrics",
    "LayerError",
    "LayerLimits",
    "LegacyRuntime",
    "Manifest",
    "Node",
    "NodeConfig",
    "Platform",
    "Pod",
    "PodRecord",
    "Policy",
    "PullError",
    "Reference",
    "RegistriesConfig",
    "Resolved",
    "Resolver",
    "Runtime",
    "Snapshots",
    "SubPathError",
    "ValidationError",
    "__version__",
    "admit",
    "apply_layers",
    "load_documents",
    "parse",
    "parse_manifest",
    "parse_normalized",
    "resolve",
]
