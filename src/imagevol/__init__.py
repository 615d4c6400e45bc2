"""imagevol: simulate the Kubernetes kubelet and container runtime for image volumes (KEP-4639).

The public API re-exported here is the one users import; each name lives in a module of its own.
"""

from __future__ import annotations

from .api import FeatureGates, Pod, admit, load_documents
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
from .events import Event
from .kubelet import ContainerState, Kubelet, PodRecord
from .metrics import KubeletMetrics
from .node import Node, NodeConfig
from .oci import Descriptor, Digest, Index, Manifest, Platform, parse_manifest
from .oci.reference import Reference, parse, parse_normalized
from .runtime import ContainerdRuntime, CrioRuntime, LegacyRuntime, Runtime
from .trees.layers import ApplyOptions, LayerLimits, apply_layers
from .trees.snapshots import Snapshots
from .trees.subpath import Backend, Policy, Resolved, resolve

__version__ = "0.1.0"

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
