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
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from .._text import goquote, strerror
from ..api.features import FeatureGates
from ..content.locks import NamedLocks
from ..content.pull import ImagePuller
from ..content.sources.mirrors import RegistriesConfig
from ..content.store import ContentStore
from ..cri import Keyring
from ..errors import (
    ImageVolError,
    NodeStateError,
    PodNotFoundError,
    SecretNotFoundError,
    ValidationError,
)
from ..kubelet.events import WARNING, EventRecorder
from ..kubelet.image_manager import Backoff, ImageManager
from ..kubelet.metrics import KubeletMetrics
from ..runtime.base import Runtime
from ..runtime.profiles import runtime_class
from ._config import NodeConfig
from ._state import NodeState

if TYPE_CHECKING:
    # Imported where they are used: a node that only pulls (``imagevol pull``) needs neither the
    # API server's admission and decoding nor the kubelet's Pod sync, nor the trees of the
    # snapshotter, and never loads them (docs/pulling.md, "Start-up").
    from ..api.models import Pod, Secret
    from ..kubelet.pod_sync import Kubelet, PodRecord
    from ..trees.snapshots import Snapshots
    from ._index import PodIndex, PodSummary

#: The API's default ``terminationGracePeriodSeconds``.
DEFAULT_GRACE = 30.0


@attrs.frozen
class Applied:
    """What applying one object did, in ``kubectl apply``'s words: ``created``, ``configured`` or
    ``unchanged``; ``record`` is the Pod's record after its first kubelet sync (None for a
    Secret). ``str()`` is kubectl's line, ``pod/NAME created``."""

    kind: str
    name: str
    namespace: str
    action: str
    record: PodRecord | None = None

    @property
    def resource(self) -> str:
        """``pod/NAME`` or ``secret/NAME`` (kubectl's ``-o name``)."""
        return f"{self.kind.lower()}/{self.name}"

    def __str__(self) -> str:
        return f"{self.resource} {self.action}"


class Node:
    """One simulated node under ``config.root``: the API server's admission, the kubelet and a
    container runtime, with state shared by every ``Node`` (and CLI invocation) on the same root.
    A node holds no open files between calls; ``with Node(config) as node:`` reads well and closes
    nothing that a later ``Node`` on the same root needs.

    Building a node starts its snapshotter, which removes what a crashed tree build left behind;
    ``snapshots_on_demand=True`` starts it at the first use of a tree instead (still before any
    tree is read or built), for a caller that may never use one: ``imagevol pull`` only fills the
    content store, and so loads nothing of the trees."""

    def __init__(self, config: NodeConfig | None = None, *, snapshots_on_demand: bool = False) -> None:
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
        factory = self.config.registry_factory
        if factory is None and not self.config.hermetic:
            from ..content.sources.deferred import DeferredRegistryAccess

            factory = DeferredRegistryAccess()
        self.puller = ImagePuller(self.store, registries, platform=self.config.platform, registry_factory=factory)
        self.runtime: Runtime = runtime_class(self.config.runtime)(
            os.path.join(self.root, "runtime"),
            self.puller,
            self._make_snapshots,
            self.config.subpath_backend,
            run_containers=self.config.run_containers,
            lazy=self.config.lazy,
            keychain=self.keychain,
        )
        if not snapshots_on_demand:
            _ = self.snapshots

    @property
    def snapshots(self) -> Snapshots:
        """The node's trees (the snapshotter): made when the node is built, or on first use (by
        this node or its runtime) with ``snapshots_on_demand``. Making them recovers what an
        interrupted build left behind, before any tree is read or built."""
        return self.runtime.snapshots

    def _make_snapshots(self) -> Snapshots:
        from ..trees.snapshots import Snapshots

        return Snapshots(os.path.join(self.root, "snapshots"), self.store)

    def __enter__(self) -> Node:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop reporting pull progress. Every lock and file is opened per operation and closed
        before it returns, so nothing else is left open."""
        self.puller.progress = None

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
        """Move the node's clock ``seconds`` ahead (pull backoff expires; persisted in the root)."""
        with self.locks.hold("node"):
            state = self.state.read_json("node.json")
            state["clock_offset"] = float(state.get("clock_offset", 0.0)) + seconds
            self.state.write_json("node.json", state)

    def metrics(self) -> KubeletMetrics:
        """The kubelet's metric values as persisted under the root (and imagevol's lazy-mode
        families when lazy mode is or was on)."""
        metrics = KubeletMetrics.from_json(
            self.state.read_json("metrics.json"), self.gates.image_volume_metrics_stability
        )
        if self.runtime.lazy_in_use and (self.runtime.lazy.enabled or self.runtime.lazy.state()):
            metrics.collectors = (self.runtime.lazy.collect,)
        return metrics

    @contextlib.contextmanager
    def _session(self) -> Iterator[Kubelet]:
        """A kubelet bound to the persisted backoff and metrics, saved back afterwards."""
        from ..kubelet.pod_sync import Kubelet
        from ..kubelet.restarts import container_backoff

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
                lifecycle=self.runtime if self.config.run_containers else None,
                container_backoff=container_backoff(Backoff.from_json(state.get("container_backoff", {}))),
            )
            yield kubelet
            state = self.state.read_json("node.json")
            state["backoff"] = backoff.to_json()
            state["container_backoff"] = kubelet.container_backoff.to_json()
            # Each is written only when its bytes change: a session that did nothing writes nothing.
            self.state.write_json("node.json", state)
            self.state.write_json("metrics.json", metrics.to_json())

    # --- secrets ------------------------------------------------------------------------------

    def put_secret(self, secret: Secret) -> None:
        """Store a Secret (the API server's validation and size limit first)."""
        from ..api.validation import validate_secret

        ns = secret.metadata.namespace or "default"
        secret = attrs.evolve(secret, metadata=attrs.evolve(secret.metadata, namespace=ns))
        validate_secret(secret, self.gates.minor)
        self.state.put_secret(secret)

    def delete_secret(self, name: str, namespace: str = "default") -> None:
        """Remove a stored Secret; :class:`~imagevol.errors.SecretNotFoundError` if there is none."""
        with self.locks.hold("node"):
            if not self.state.remove_secret(name, namespace):
                raise SecretNotFoundError(f"secrets {goquote(name)} not found")

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
        """The record of the Pod ``namespace/name``; :class:`PodNotFoundError` if there is none."""
        record = self.state.get_pod(name, namespace)
        if record is None:
            raise PodNotFoundError(f"pods {goquote(name)} not found")
        return record

    def pods(self, namespace: str | None = None) -> list[PodRecord]:
        """The Pods of ``namespace`` (every Pod on the node when None), ordered by namespace and
        name."""
        records = self.state.pods()
        return records if namespace is None else [r for r in records if r.pod.namespace == namespace]

    def pod_summaries(self, namespace: str | None = None) -> list[PodSummary]:
        """What ``get pods`` lists: a :class:`PodSummary` of each Pod of ``namespace`` (every Pod
        when None), in the order of :meth:`pods`, from the node's Pod index (one file, checked
        against the records; a Pod whose record changed since is read again)."""
        index = self.state.pod_index()
        self.state.save_index(index)
        return index.summaries(namespace)

    def apply(self, text: str | bytes) -> list[Applied]:
        """Apply a YAML or JSON request body of Pods and Secrets (bounded as the API server bounds
        it, ``api.load_documents``): Secrets first, so that a Pod's pull secret is there when the
        kubelet first syncs it, then Pods, admitted (API server) and synced once (kubelet).
        Every document is decoded and checked before the first is applied; the first failure
        raises. The CLI's ``apply`` reports each document on its own instead."""
        from ..api.load import load_documents
        from ..api.models import Pod, Secret

        docs = list(load_documents(text))
        for doc in docs:
            check_apply_name(doc)
        ordered = [d for d in docs if isinstance(d, Secret)] + [d for d in docs if isinstance(d, Pod)]
        return [self.apply_object(doc) for doc in ordered]

    def apply_object(self, obj: Pod | Secret) -> Applied:
        """Apply one decoded object as ``kubectl apply`` would: a Secret is stored
        (``created``, ``configured`` or ``unchanged``), a Pod created and synced, or, when a Pod of
        that name exists with the same spec, synced again (``unchanged``)."""
        from ..api.models import Secret

        check_apply_name(obj)
        ns = obj.metadata.namespace or "default"
        if isinstance(obj, Secret):
            before = self.state.get_secret(obj.metadata.name, ns)
            self.put_secret(obj)
            after = self.state.get_secret(obj.metadata.name, ns)
            action = "created" if before is None else "unchanged" if before == after else "configured"
            return Applied("Secret", obj.metadata.name, ns, action)
        record, existed = self._create_pod(obj)
        return Applied("Pod", record.pod.name, record.pod.namespace, "unchanged" if existed else "created", record)

    def create_pod(self, pod: Pod) -> PodRecord:
        """Admit ``pod`` (defaulting, validation, a generated name for ``generateName``) and run
        one kubelet sync of it; return its record. A Pod of that name with the same spec is
        synced again instead; one with another spec is refused, as the API server refuses an
        update of a Pod's spec."""
        return self._create_pod(pod)[0]

    def _create_pod(self, pod: Pod) -> tuple[PodRecord, bool]:
        """:meth:`create_pod`, and whether the Pod existed already."""
        ns = pod.metadata.namespace or "default"
        with contextlib.suppress(PodNotFoundError):
            if not pod.metadata.name:
                raise PodNotFoundError("")  # generateName: always a new Pod
            existing = self.get_pod(pod.metadata.name, ns)
            if _same_spec(existing.pod, pod):
                if existing.settled and not self._missing_pull_secrets(ns, existing.pod.spec.image_pull_secrets):
                    # Applied again at rest: the kubelet's pass would do nothing (see sync_pass),
                    # so neither the lock nor a write is needed.
                    return existing, True
                return self.sync_pod(pod.metadata.name, ns), True
            raise ValidationError(
                "Pod",
                pod.metadata.name,
                [
                    "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`, "
                    "... (delete the Pod first: imagevol delete pod NAME)"
                ],
            )
        from ..api.admission import admit
        from ..api.dump import pod_to_dict
        from ..api.limits import check_stored_size
        from ..kubelet.pod_sync import PodRecord

        admitted = admit(pod, self.gates, admission_plugins=self.config.admission_plugins)
        check_stored_size(pod_to_dict(admitted))  # before anything is pulled, stored or run
        with self._session() as kubelet:
            record = PodRecord.new(admitted, self.now())
            keyring = self.keyring_for(admitted, EventRecorder(record.events, clock=self.now))
            kubelet.sync_pod(record, keyring)
            self.state.save_pod(record)
        return record, False

    def pod_object(self, record: PodRecord) -> dict[str, Any]:
        """The Pod as the API server returns it, status included (``kubectl get pod -o json``):
        container IDs carry this node's runtime, and with the kubelet's ``ImageVolumeWithDigest``
        gate on, each image-volume mount reports the exact image it shows."""
        from ..kubelet.status import NODE_NAME, pod_object

        return pod_object(record, node_name=NODE_NAME, runtime=self.runtime.name)

    def event_objects(self, record: PodRecord) -> list[dict[str, Any]]:
        """The Pod's events as ``v1 Event`` objects (``kubectl get events -o json``)."""
        from ..kubelet.status import NODE_NAME, event_object

        return [event_object(e, record, node_name=NODE_NAME) for e in record.events]

    def sync_pod(self, name: str, namespace: str = "default") -> PodRecord:
        """One kubelet sync of a stored Pod (retries, pulls per policy and backoff); its record."""
        return self._sync_pod(name, namespace, None)

    def _sync_pod(self, name: str, namespace: str, index: PodIndex | None) -> PodRecord:
        with self._session() as kubelet:
            record = self.get_pod(name, namespace)
            keyring = self.keyring_for(record.pod, EventRecorder(record.events, clock=self.now))
            kubelet.sync_pod(record, keyring)
            self.state.save_pod(record, index)
            return record

    def sync(self) -> list[PodRecord]:
        """One kubelet pass over every Pod on the node; every record afterwards."""
        self.sync_pass()
        return self.pods()

    def sync_pass(self) -> list[PodSummary]:
        """One kubelet pass over every Pod on the node; every Pod's summary afterwards. A settled
        Pod (every container started, every pull secret there) is neither read nor written: the
        kubelet would do nothing for it (k/k PR #138655), so a pass over a node at rest writes
        nothing. Containers that run for real are looked at on every pass (they may have exited).
        With ``lazy="toc+complete"`` the pass ends with the completion of lazily built trees
        (docs/lazy.md): the rest of their layers fetched and verified, each tree labelled
        ``verified`` or revoked."""
        index = self.state.pod_index()
        for summary in index.summaries():
            if (
                summary.settled
                and not self.config.run_containers
                and not self._missing_pull_secrets(summary.namespace, summary.pull_secrets)
            ):
                continue
            # Deleted since the index was read: nothing to sync.
            with contextlib.suppress(PodNotFoundError):
                self._sync_pod(summary.name, summary.namespace, index)
        self.state.save_index(index)
        self.runtime.complete_lazy()
        return index.summaries()

    def _missing_pull_secrets(self, namespace: str, names: Iterable[str]) -> bool:
        """Whether a pull secret of a Pod is missing: a pass then records
        ``FailedToRetrieveImagePullSecret`` (R3.4), whatever else it does."""
        return any(self.state.get_secret(n, namespace) is None for n in names)

    def delete_pod(self, name: str, namespace: str = "default", grace: float | None = None) -> PodRecord:
        """Remove the Pod and its containers; running ones are stopped first (SIGTERM, ``grace``
        seconds, default the API's 30 s ``terminationGracePeriodSeconds``, then SIGKILL)."""
        with self.locks.hold("node"):
            record = self.get_pod(name, namespace)
            for state in record.containers:
                for container_id in (state.container_id, state.previous_id):
                    if container_id:
                        self.runtime.stop_container(container_id, DEFAULT_GRACE if grace is None else grace)
                        self.runtime.remove_container(container_id)
            self.state.remove_pod(name, namespace)
            return record


def check_apply_name(obj: Pod | Secret) -> None:
    """``kubectl apply`` reconciles by name: an object with only ``generateName`` is refused
    before anything is sent."""
    if not obj.metadata.name and obj.metadata.generate_name:
        raise ImageVolError(f"from {obj.metadata.generate_name}: cannot use generate name with apply")


def _same_spec(a: Pod, b: Pod) -> bool:
    from ..api.dump import pod_to_dict

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
