"""The kubelet side of the CRI boundary: pod sync (:mod:`~imagevol.kubelet.pod_sync`: ``Kubelet``,
``PodRecord``, ``ContainerState``), the image manager (pull policy, backoff, KEP-2535), image
garbage collection, the container environment and ``subPathExpr`` (:mod:`~imagevol.kubelet._envvars`),
the kubelet metrics and events.

It reaches a runtime only through the protocols of :mod:`imagevol.cri`, as the real kubelet reaches
containerd or CRI-O only through the CRI: it may import :mod:`imagevol.cri`, :mod:`imagevol.api`,
:mod:`imagevol.oci`, :mod:`imagevol.errors` and text helpers, never the runtime, the content store
or the trees (an import-linter contract says so). The pod-sync names are exported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._exports import lazy_exports

if TYPE_CHECKING:
    from .metrics import METRICS_MODES
    from .pod_sync import ContainerState, Kubelet, PodRecord, VolumeResult

__getattr__, __dir__ = lazy_exports(
    globals(),
    {"METRICS_MODES": ".metrics"}
    | {name: ".pod_sync" for name in ("ContainerState", "Kubelet", "PodRecord", "VolumeResult")},
)

__all__ = ["METRICS_MODES", "ContainerState", "Kubelet", "PodRecord", "VolumeResult"]
