"""How a node is built (:class:`NodeConfig`): its root, where it pulls from, its runtime profile,
Kubernetes version and feature gates, each value checked before anything is created under the
root. A module of its own: the CLI builds one for every command that needs a node, and checking it
loads nothing of what only some commands use (the admission plugins' module is loaded only when a
plugin is named)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from ..api.constants import DEFAULT_VERSION
from ..api.features import FeatureGates
from ..content.pull import RegistryFactory
from ..content.store import DEFAULT_MAX_BLOB_SIZE
from ..cri import Keyring
from ..errors import ConfigError
from ..kubelet.metrics import METRICS_MODES
from ..oci import Platform
from ..runtime import DEFAULT_PROFILE, PROFILE_NAMES
from ..trees import subpath as sp
from ._defaults import DEFAULT_FEATURE_GATES, default_root


def _as_tuple(value: Iterable[str]) -> tuple[str, ...]:
    # ``tuple`` itself would do, but attrs reads a converter's signature, and the signature of a
    # builtin is parsed from its text (a tenth of what building the node's modules costs).
    return tuple(value)


@attrs.frozen
class NodeConfig:
    """How a :class:`Node` is built: its root directory, where it pulls from, its runtime profile,
    Kubernetes version and feature gates. Values are checked when the configuration is built
    (:class:`~imagevol.errors.ConfigError`), before anything is created under the root.

    A node pulls from registries over the network, as the CLI's does, through ``registry_factory``
    (``RegistryAccess()`` when not given); ``hermetic=True`` keeps it offline: only OCI layouts
    (``oci-layout:`` locations in ``registries``) are read, and a pull that would need a registry
    fails with ``no registry access configured``."""

    root: str = attrs.field(factory=default_root)
    registries: str | None = None
    runtime: str = DEFAULT_PROFILE
    #: Run the Pods' containers on the OCI runtime (runc, as root) instead of simulating them.
    run_containers: bool = False
    k8s_version: str = DEFAULT_VERSION
    feature_gates: str = DEFAULT_FEATURE_GATES
    #: The kubelet's gates, when they differ from the API server's (R0.3, R5.8).
    kubelet_feature_gates: str | None = None
    metrics_mode: str = "upstream"
    #: Mutating admission plugins of the API server (``AlwaysPullImages``, R3.12).
    admission_plugins: tuple[str, ...] = attrs.field(default=(), converter=_as_tuple)
    platform: Platform | None = None
    clock: Callable[[], float] | None = None
    #: How the node reaches registries; ``None`` means ``RegistryAccess()`` unless ``hermetic``.
    registry_factory: RegistryFactory | None = None
    #: Never reach a registry: pull from OCI layouts only (tests, offline demos).
    hermetic: bool = False
    subpath_backend: sp.Backend = sp.Backend.AUTO
    #: Credentials the node itself has (like a kubelet credential provider), tried after the
    #: Pod's pull secrets.
    node_keyring: Keyring = attrs.field(factory=Keyring)
    #: An fsspec filesystem for the content store (local disk when None).
    content_fs: Any = None
    content_root: str | None = None
    #: The largest blob the content store accepts, in bytes.
    max_blob_size: int = DEFAULT_MAX_BLOB_SIZE
    #: Lazy sub paths (docs/lazy.md): ``off`` (what every runtime does), ``toc`` (mount a sub path
    #: from a partial tree, fetching only its bytes where layers have a table of contents), or
    #: ``toc+complete`` (the same, then the rest is fetched and verified in the background).
    lazy: str = "off"

    def __attrs_post_init__(self) -> None:
        problems = []
        if not isinstance(self.root, str | os.PathLike) or not os.fspath(self.root):
            problems.append("root must be a directory path")
        if self.runtime not in PROFILE_NAMES:
            problems.append(f"unknown runtime profile {self.runtime!r} (known: {', '.join(PROFILE_NAMES)})")
        if self.metrics_mode not in METRICS_MODES:
            problems.append(f"unknown metrics mode {self.metrics_mode!r} (known: {', '.join(METRICS_MODES)})")
        if self.admission_plugins:
            # The admission plugins' module (with the API defaults and validation) only when some
            # are named: a node without any does not load it to check an empty list.
            from ..api.admission import ADMISSION_PLUGINS

            unknown = sorted(set(self.admission_plugins) - set(ADMISSION_PLUGINS))
        else:
            unknown = []
        if unknown:
            problems.append(
                f"unknown admission plugin(s): {', '.join(unknown)} (known: {', '.join(ADMISSION_PLUGINS)})"
            )
        if isinstance(self.max_blob_size, bool) or not isinstance(self.max_blob_size, int) or self.max_blob_size <= 0:
            problems.append(f"max_blob_size must be a positive number of bytes, not {self.max_blob_size!r}")
        if self.platform is not None and not isinstance(self.platform, Platform):
            problems.append(f"platform must be a Platform (Platform.parse('linux/amd64')), not {self.platform!r}")
        if not isinstance(self.subpath_backend, sp.Backend):
            problems.append(f"subpath_backend must be a Backend, not {self.subpath_backend!r}")
        if self.hermetic and self.registry_factory is not None:
            problems.append("a hermetic node takes no registry_factory")
        try:
            # The gates depend on the version: both are parsed together, as the node will.
            FeatureGates.for_version(self.k8s_version, self.feature_gates)
            if self.kubelet_feature_gates is not None:
                FeatureGates.for_version(self.k8s_version, self.kubelet_feature_gates)
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise ConfigError("; ".join(problems))
