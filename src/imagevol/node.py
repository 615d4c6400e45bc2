"""One simulated node: content store, snapshots, runtime, kubelet and Pod state under a root dir.

```
ROOT/content/     OCI image layout (the content store)
ROOT/snapshots/   read-only trees by layer chain (images) or manifest digest (artifacts)
ROOT/runtime/     container records of the runtime
ROOT/pods/        one JSON record per Pod (spec, container states, events)
ROOT/secrets/     Secrets applied to the node (pull secrets)
ROOT/node.json    clock offset, pull backoff
ROOT/metrics.json kubelet metric values
```

Separate processes (CLI invocations) share one node: every mutation of Pod state happens under the
node lock, and everything is written by rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from . import subpath as sp
from .api import FeatureGates, Pod, Secret, admit, load_documents
from .api.features import DEFAULT_VERSION
from .errors import PodNotFoundError, ValidationError
from .events import WARNING, EventRecorder
from .image_manager import Backoff, ImageManager
from .kubelet import Kubelet, PodRecord
from .locks import NamedLocks
from .metrics import KubeletMetrics
from .oci import Platform
from .resolver import RegistryFactory, Resolver
from .runtime import DEFAULT_PROFILE, Runtime, runtime_class
from .snapshots import Snapshots
from .sources.auth import Keyring
from .sources.mirrors import RegistriesConfig
from .store import DEFAULT_MAX_BLOB_SIZE, ContentStore

#: The CLI's default gates: a 1.33 node with image volumes enabled, as in the 1.33 announcement
#: (upstream's 1.33 default is off, R0.1; pass ``--feature-gates ImageVolume=false`` to see R2.8).
DEFAULT_FEATURE_GATES = "ImageVolume=true"


def default_root() -> str:
    """``$IMAGEVOL_ROOT``, else ``$XDG_DATA_HOME/imagevol``, else ``~/.local/share/imagevol``."""
    if os.environ.get("IMAGEVOL_ROOT"):
        return os.environ["IMAGEVOL_ROOT"]
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "imagevol")


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


class Node:
    def __init__(self, config: NodeConfig | None = None) -> None:
        self.config = config or NodeConfig()
        self.root = os.path.abspath(self.config.root)
        for sub in ("pods", "secrets", "runtime"):
            os.makedirs(os.path.join(self.root, sub), mode=0o700, exist_ok=True)
        self.locks = NamedLocks(os.path.join(self.root, "locks"))
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
        self.resolver = Resolver(
            self.store,
            registries,
            platform=self.config.platform,
            registry_factory=self.config.registry_factory,
        )
        self.snapshots = Snapshots(os.path.join(self.root, "snapshots"), self.store)
        self.runtime: Runtime = runtime_class(self.config.runtime)(
            os.path.join(self.root, "runtime"), self.resolver, self.snapshots, self.config.subpath_backend
        )

    # --- clock and persistent node state ----------------------------------------------------------

    def _read_json(self, name: str) -> dict[str, Any]:
        try:
            with open(os.path.join(self.root, name)) as f:
                obj = json.load(f)
        except FileNotFoundError:
            return {}
        return obj if isinstance(obj, dict) else {}

    def _write_json(self, name: str, obj: Any) -> None:
        path = os.path.join(self.root, name)
        tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
        os.rename(tmp, path)

    def now(self) -> float:
        """The node's clock: the injected one, else wall time plus the offset ``advance`` adds."""
        if self.config.clock is not None:
            return self.config.clock()
        return time.time() + float(self._read_json("node.json").get("clock_offset", 0.0))

    def advance(self, seconds: float) -> None:
        with self.locks.hold("node"):
            state = self._read_json("node.json")
            state["clock_offset"] = float(state.get("clock_offset", 0.0)) + seconds
            self._write_json("node.json", state)

    def metrics(self) -> KubeletMetrics:
        return KubeletMetrics.from_json(self._read_json("metrics.json"), self.gates.image_volume_metrics_stability)

    @contextlib.contextmanager
    def _session(self) -> Iterator[Kubelet]:
        """A kubelet bound to the persisted backoff and metrics, saved back afterwards."""
        with self.locks.hold("node"):
            state = self._read_json("node.json")
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
            state = self._read_json("node.json")
            state["backoff"] = backoff.to_json()
            self._write_json("node.json", state)
            self._write_json("metrics.json", metrics.to_json())

    # --- secrets ------------------------------------------------------------------------------

    def put_secret(self, secret: Secret) -> None:
        import base64

        ns = secret.metadata.namespace or "default"
        obj = {
            "name": secret.metadata.name,
            "namespace": ns,
            "type": secret.type,
            "data": {k: base64.b64encode(v).decode() for k, v in secret.data.items()},
        }
        self._write_json(os.path.join("secrets", f"{ns}_{secret.metadata.name}.json"), obj)

    def keyring_for(self, pod: Pod, recorder: EventRecorder | None = None) -> Keyring:
        """The Pod's pull secrets as a keyring, then the node's own credentials (R3.4)."""
        import base64

        from .api.models import ObjectMeta

        found: list[Secret] = []
        missing: list[str] = []
        for name in pod.spec.image_pull_secrets:
            obj = self._read_json(os.path.join("secrets", f"{pod.namespace}_{name}.json"))
            if not obj:
                missing.append(name)
                continue
            data = {k: base64.b64decode(v) for k, v in obj.get("data", {}).items()}
            found.append(Secret(ObjectMeta(name=name, namespace=pod.namespace), obj.get("type", ""), data))
        if missing and recorder is not None:
            recorder.record(
                WARNING,
                "FailedToRetrieveImagePullSecret",
                f"Unable to retrieve some image pull secrets ({', '.join(missing)}); attempting to pull "
                "the image may not succeed.",
            )
        return Keyring.from_secrets(found).merged(self.config.node_keyring)

    # --- pods ---------------------------------------------------------------------------------

    def _pod_path(self, namespace: str, name: str) -> str:
        return os.path.join(self.root, "pods", f"{namespace}_{name}.json")

    def _save(self, record: PodRecord) -> None:
        self._write_json(
            os.path.relpath(self._pod_path(record.pod.namespace, record.pod.name), self.root),
            record.to_json(),
        )

    def get_pod(self, name: str, namespace: str = "default") -> PodRecord:
        try:
            with open(self._pod_path(namespace, name)) as f:
                return PodRecord.from_json(json.load(f))
        except FileNotFoundError:
            raise PodNotFoundError(f'pods "{name}" not found') from None

    def pods(self) -> list[PodRecord]:
        out = []
        for fname in sorted(os.listdir(os.path.join(self.root, "pods"))):
            if fname.endswith(".json"):
                with open(os.path.join(self.root, "pods", fname)) as f:
                    out.append(PodRecord.from_json(json.load(f)))
        return out

    def apply(self, text: str) -> list[tuple[str, PodRecord | None]]:
        """Apply a YAML text of Pods and Secrets: Secrets are stored, Pods admitted (API server)
        and synced once (kubelet). Returns (what happened, record) per object."""
        docs = list(load_documents(text))
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
        with self._session() as kubelet:
            record = PodRecord.new(admitted, self.now())
            keyring = self.keyring_for(admitted, EventRecorder(record.events, clock=self.now))
            kubelet.sync_pod(record, keyring)
            self._save(record)
        return f"pod/{pod.metadata.name} created", record

    def sync_pod(self, name: str, namespace: str = "default") -> PodRecord:
        with self._session() as kubelet:
            record = self.get_pod(name, namespace)
            keyring = self.keyring_for(record.pod, EventRecorder(record.events, clock=self.now))
            kubelet.sync_pod(record, keyring)
            self._save(record)
            return record

    def sync(self) -> list[PodRecord]:
        """One kubelet pass over every Pod on the node."""
        return [self.sync_pod(r.pod.name, r.pod.namespace) for r in self.pods()]

    def delete_pod(self, name: str, namespace: str = "default") -> PodRecord:
        with self.locks.hold("node"):
            record = self.get_pod(name, namespace)
            for state in record.containers:
                if state.container_id:
                    self.runtime.remove_container(state.container_id)
            os.unlink(self._pod_path(namespace, name))
            return record


def _same_spec(a: Pod, b: Pod) -> bool:
    from .api.dump import pod_to_dict

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
