"""The node: the composition root that builds one simulated node under a root directory
(:class:`Node` in :mod:`~imagevol.node._node`, built from a :class:`NodeConfig` of
:mod:`~imagevol.node._config`) and the node's persistent Pod and Secret state
(:mod:`~imagevol.node._state`), with the Pod index that lists it cheaply (:mod:`~imagevol.node._index`,
:class:`PodSummary`).

Only this package builds the runtime side (content store, puller, snapshots, a runtime profile) and
hands the runtime to the kubelet side; it may import every package below it (kubelet, exec,
runtime, trees, content, cri, api, oci, errors). Above it are only the CLI and the test kit.
``Node``, ``NodeConfig``, ``Applied`` and ``PodSummary`` are exported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._exports import lazy_exports
from ._defaults import DEFAULT_FEATURE_GATES, default_root

if TYPE_CHECKING:
    from ._config import NodeConfig
    from ._index import PodSummary
    from ._node import Applied, Node
    from ._state import NodeState

__getattr__, __dir__ = lazy_exports(
    globals(),
    {"Applied": "._node", "Node": "._node", "NodeConfig": "._config", "NodeState": "._state", "PodSummary": "._index"},
)

__all__ = ["DEFAULT_FEATURE_GATES", "Applied", "Node", "NodeConfig", "NodeState", "PodSummary", "default_root"]
