"""One simulated node: content store, snapshots, runtime, kubelet and Pod state under a root dir.

This is the composition root: the only place that builds the runtime side (store, puller,
snapshots, a runtime profile) and hands it to the kubelet side, which sees it only through the CRI
protocols of :mod:`imagevol.cri`. What the node keeps on disk, and how, is
:mod:`imagevol.node._state`.

Separate processes (CLI invocations) share one node: every mutation of Pod state happens under the
node lock, and everything is written by rename.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from .._text import goquote, strerror
from ..api.admission import admit
from ..api.dump import pod_to_dict
from ..api.features import DEFAULT_VERSION, FeatureGates
from ..api.limits import check_stored_size
from ..api.load import load_documents
from ..api.models import Pod, Secret
from ..api.validation import validate_secret
from ..content.locks import NamedLocks
from ..content.pull import ImagePuller, RegistryFactory
from ..content.sources.mirrors import RegistriesConfig
from ..content.store import DEFAULT_MAX_BLOB_SIZE, ContentStore
from ..cri import Keyring
from ..errors import ImageVolError, NodeStateError, PodNotFoundError, ValidationError
from ..kubelet.events import WARNING, EventRecorder
from ..kubelet.image_manager import Backoff, ImageManager
from ..kubelet.metrics import KubeletMetrics
from ..kubelet.pod_sync import Kubelet, PodRecord
from ..oci import Platform
from ..runtime import DEFAULT_PROFILE
from ..runtime.base import Runtime
from ..runtime.profiles import runtime_class
from ..trees import subpath as sp
from ..trees.snapshots import Snapshots
from ._defaults import DEFAULT_FEATURE_GATES, default_root
from ._state import NodeState


@attrs.frozen
class NodeConfig:
    root: str = attrs.field(factory=default_root)
    registries: str | None = None
    runtime: str = DEFAULT_PROFILE
    k8s_version: str = DEFAULT_VERSION
    feature_gates: str = DEFAULT_FEATURE_GATES
    #: The kubelet's gates, when they differ from the API server's (R0.3, R5.8).
    kubelet_feature_gates: str | None = None
    metrics_mode: str = "upstream"
    #: Mutating admission plugins of the API server (``AlwaysPullImages``, R3.12).
    admission_plugins: tuple[str, ...] = ()
    platform: Platform | None = None
    clock: Callable[[], float] | None = None
    registry_factory: RegistryFactory | None = None
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


class Node:
    def __init__(self, config: NodeConfig | None = None) -> None:
        self.config = config or NodeConfig()
        self.root = os.path.abspath(self.config.root)
        try:
            for sub in ("pods", "secrets", "runtime"):
                os.makedirs(os.path.join(self.root, sub), mode=0o700, exist_ok=True)
            self.locks = NamedLocks(os.path.join(self.root, "locks"))
        except OSError as exc:
            raise NodeStateError(f"cannot use the node state directory (--root): {strerror(exc)}") from None
        self.state = NodeState(self.root, self.locks)
        self.state.migrate_legacy_state()
        self.gates = FeatureGates.for_version(self.config.k8s_version, self.config.feature_gates)
        kubelet_spec = self.config.kubelet_feature_gates
        self.kubelet_gates = (
            self.gates if kubelet_spec is None else FeatureGates.for_version(self.config.k8s_version, kubelet_spec)
        )
        content_root = self.config.content_root or os.path.join(self.root, "content")
        self.store = ContentStore(
            content_root,
            self.config.content_fs,
            lock_dir=os.path.join(self.root, "locks", "content"),
            max_blob_size=self.config.max_blob_size,
        )
        registries = RegistriesConfig.load(self.config.registries) if self.config.registries else None
        self.puller = ImagePuller(
            self.store,
            registries,
            platform=self.config.platform,
            registry_factory=self.config.registry_factory,
        )
        self.snapshots = Snapshots(os.path.join(self.root, "snapshots"), self.store)
        self.runtime: Runtime = runtime_class(self.config.runtime)(
            os.path.join(self.root, "runtime"),
            self.puller,
            self.snapshots,
            self.config.subpath_backend,
            lazy=self.config.lazy,
            keychain=self.keychain,
        )

    @property
    def resolver(self) -> ImagePuller:
        """The old name of :attr:`puller`."""
        return self.puller

    # --- clock and persistent node state ----------------------------------------------------------

    def now(self) -> float:
        """The node's clock: the injected one, else wall time plus the offset ``advance`` adds."""
        if self.config.clock is not None:
            return self.config.clock()
        return time.time() + float(self.state.read_json("node.json").get("clock_offset", 0.0))

    def advance(self, seconds: float) -> None:
        with self.locks.hold("node"):
            state = self.state.read_json("node.json")
            state["clock_offset"] = float(state.get("clock_offset", 0.0)) + seconds
            self.state.write_json("node.json", state)

    def metrics(self) -> KubeletMetrics:
        metrics = KubeletMetrics.from_json(
            self.state.read_json("metrics.json"), self.gates.image_volume_metrics_stability
        )
        if self.runtime.lazy.enabled or self.runtime.lazy.state():
            metrics.collectors = (self.runtime.lazy.collect,)
        return metrics

    @contextlib.contextmanager
    def _session(self) -> Iterator[Kubelet]:
        """A kubelet bound to the persisted backoff and metrics, saved back afterwards."""
        with self.locks.hold("node"):
            state = self.state.read_json("node.json")
            backoff = Backoff.from_json(state.get("backoff", {}))
            metrics = self.metrics()
            manager = ImageManager(
                self.runtime,
                backoff,
                metrics,
                clock=self.now,
                ensure_secret_pulled_images=self.kubelet_gates.enabled("KubeletEnsureSecretPulledImages"),
            )
            kubelet = Kubelet(
                self.runtime,
                manager,
                metrics,
                self.kubelet_gates,
                clock=self.now,
                metrics_mode=self.config.metrics_mode,
            )
            yield kubelet
            state = self.state.read_json("node.json")
            state["backoff"] = backoff.to_json()
            self.state.write_json("node.json", state)
            self.state.write_json("metrics.json", metrics.to_json())

    # --- secrets ------------------------------------------------------------------------------

    def put_secret(self, secret: Secret) -> None:
        """Store a Secret (the API server's validation and size limit first)."""
        ns = secret.metadata.namespace or "default"
        secret = attrs.evolve(secret, metadata=attrs.evolve(secret.metadata, namespace=ns))
        validate_secret(secret, self.gates.minor)
        self.state.put_secret(secret)

    def keychain(self) -> Keyring:
        """Every credential the node holds: its own, then those of the stored pull secrets. The
        runtime picks from it only those that pulled an image (a lazy mount fetching the rest of
        an image in a later process)."""
        return Keyring.from_secrets(self.state.secrets()).merged(self.config.node_keyring)

    def keyring_for(self, pod: Pod, recorder: EventRecorder | None = None) -> Keyring:
        """The Pod's pull secrets as a keyring, then the node's own credentials (R3.4)."""
        found: list[Secret] = []
        missing: list[str] = []
        for name in pod.spec.image_pull_secrets:
            secret = self.state.get_secret(name, pod.namespace)
            if secret is None:
                missing.append(name)
            else:
                found.append(secret)
        if missing and recorder is not None:
            recorder.record(
                WARNING,
                "FailedToRetrieveImagePullSecret",
                f"Unable to retrieve some image pull secrets ({', '.join(missing)}); attempting to pull "
                "the image may not succeed.",
            )
        return Keyring.from_secrets(found).merged(self.config.node_keyring)

    # --- pods ---------------------------------------------------------------------------------

    def get_pod(self, name: str, namespace: str = "default") -> PodRecord:
        record = self.state.get_pod(name, namespace)
        if record is None:
            raise PodNotFoundError(f"pods {goquote(name)} not found")
        return record

    def pods(self) -> list[PodRecord]:
        """Every Pod on the node, ordered by namespace and name."""
        return self.state.pods()

    def apply(self, text: str | bytes) -> list[tuple[str, PodRecord | None]]:
        """Apply a YAML or JSON request body of Pods and Secrets (bounded as the API server bounds
        it, ``api.load_documents``): Secrets are stored, Pods admitted (API server) and synced
        once (kubelet). Returns (what happened, record) per object."""
        docs = list(load_documents(text))
        for doc in docs:
            if not doc.metadata.name and doc.metadata.generate_name:
                # kubectl apply needs a name to reconcile; it refuses before sending anything.
                raise ImageVolError(f"from {doc.metadata.generate_name}: cannot use generate name with apply")
        out: list[tuple[str, PodRecord | None]] = []
        for doc in docs:
            if isinstance(doc, Secret):
                self.put_secret(doc)
                out.append((f"secret/{doc.metadata.name} configured", None))
        for doc in docs:
            if isinstance(doc, Pod):
                out.append(self.create_pod(doc))
        return out

    def create_pod(self, pod: Pod) -> tuple[str, PodRecord]:
        ns = pod.metadata.namespace or "default"
        with contextlib.suppress(PodNotFoundError):
            if not pod.metadata.name:
                raise PodNotFoundError("")  # generateName: always a new Pod
            existing = self.get_pod(pod.metadata.name, ns)
            if _same_spec(existing.pod, pod):
                return f"pod/{pod.metadata.name} unchanged", self.sync_pod(pod.metadata.name, ns)
            raise ValidationError(
                "Pod",
                pod.metadata.name,
                [
                    "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`, "
                    "... (delete the Pod first: imagevol delete pod NAME)"
                ],
            )
        admitted = admit(pod, self.gates, admission_plugins=self.config.admission_plugins)
        check_stored_size(pod_to_dict(admitted))  # before anything is pulled, stored or run
        with self._session() as kubelet:
            record = PodRecord.new(admitted, self.now())
            keyring = self.keyring_for(admitted, EventRecorder(record.events, clock=self.now))
            kubelet.sync_pod(record, keyring)
            self.state.save_pod(record)
        return f"pod/{admitted.metadata.name} created", record

    def sync_pod(self, name: str, namespace: str = "default") -> PodRecord:
        with self._session() as kubelet:
            record = self.get_pod(name, namespace)
            keyring = self.keyring_for(record.pod, EventRecorder(record.events, clock=self.now))
            kubelet.sync_pod(record, keyring)
            self.state.save_pod(record)
            return record

    def sync(self) -> list[PodRecord]:
        """One kubelet pass over every Pod on the node; then, with ``lazy="toc+complete"``, the
        completion of lazily built trees (docs/lazy.md): the rest of their layers fetched and
        verified, each tree labelled ``verified`` or revoked."""
        records = [self.sync_pod(r.pod.name, r.pod.namespace) for r in self.pods()]
        self.runtime.complete_lazy()
        return records

    def delete_pod(self, name: str, namespace: str = "default") -> PodRecord:
        with self.locks.hold("node"):
            record = self.get_pod(name, namespace)
            for state in record.containers:
                if state.container_id:
                    self.runtime.remove_container(state.container_id)
            self.state.remove_pod(name, namespace)
            return record


def _same_spec(a: Pod, b: Pod) -> bool:
    da, db = pod_to_dict(a)["spec"], pod_to_dict(b)["spec"]
    return bool(da == db) or _defaults_only(da, db)


def _defaults_only(stored: dict[str, Any], new: dict[str, Any]) -> bool:
    """The stored spec is the new one plus defaulted fields (pull policies, restartPolicy)."""

    def strip(d: Any) -> Any:
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if k not in ("pullPolicy", "imagePullPolicy", "restartPolicy")}
        if isinstance(d, list):
            return [strip(x) for x in d]
        return d

    return bool(strip(stored) == strip(new))
