"""One simulated node: content store, snapshots, runtime, kubelet and Pod state under a root dir.

This is the composition root: the only place that builds the runtime side (store, puller,
snapshots, a runtime profile) and hands it to the kubelet side, which sees it only through the CRI
protocols of :mod:`imagevol.cri`.

```
ROOT/content/     OCI image layout (the content store)
ROOT/snapshots/   read-only trees by layer chain (images) or manifest digest (artifacts)
ROOT/runtime/     container records of the runtime
ROOT/pods/        one JSON record per Pod (spec, container states, events): <digest>.json
ROOT/secrets/     Secrets applied to the node (pull secrets): <digest>.json
ROOT/node.json    clock offset, pull backoff
ROOT/metrics.json kubelet metric values
```

Separate processes (CLI invocations) share one node: every mutation of Pod state happens under the
node lock, and everything is written by rename.

A Pod's or Secret's state file is named by the SHA-256 of ``<namespace>/<name>`` (64 hex digits),
never by the name itself: a name reaches the filesystem only as data inside the file, so no name
(253 characters, dots, anything a lookup is asked for) can make a path too long or point anywhere
else. Roots written by earlier versions (``<namespace>_<name>.json``) are migrated on start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from ._text import goquote, strerror
from .api import FeatureGates, Pod, Secret, admit, load_documents, validate_secret
from .api.dump import pod_to_dict
from .api.features import DEFAULT_VERSION
from .api.limits import check_stored_size
from .content.locks import NamedLocks
from .content.pull import ImagePuller, RegistryFactory
from .content.sources.mirrors import RegistriesConfig
from .content.store import DEFAULT_MAX_BLOB_SIZE, ContentStore
from .cri import Keyring
from .errors import ImageVolError, NodeStateError, PodNotFoundError, ValidationError
from .events import WARNING, EventRecorder
from .image_manager import Backoff, ImageManager
from .kubelet import Kubelet, PodRecord
from .metrics import KubeletMetrics
from .oci import Platform
from .runtime import DEFAULT_PROFILE, Runtime, runtime_class
from .trees import subpath as sp
from .trees.snapshots import Snapshots

#: A state file's name: the SHA-256 of ``<namespace>/<name>``.
_STATE_FILE = re.compile(r"[0-9a-f]{64}\.json")

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
        try:
            for sub in ("pods", "secrets", "runtime"):
                os.makedirs(os.path.join(self.root, sub), mode=0o700, exist_ok=True)
            self.locks = NamedLocks(os.path.join(self.root, "locks"))
        except OSError as exc:
            raise NodeStateError(f"cannot use the node state directory (--root): {strerror(exc)}") from None
        self._migrate_legacy_state()
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
            os.path.join(self.root, "runtime"), self.puller, self.snapshots, self.config.subpath_backend
        )

    @property
    def resolver(self) -> ImagePuller:
        """The old name of :attr:`puller`."""
        return self.puller

    # --- clock and persistent node state ----------------------------------------------------------

    def _read_json(self, name: str) -> dict[str, Any]:
        """A state file (relative to the root), ``{}`` if there is none. Raises
        :class:`NodeStateError`, naming the file relative to the root, if it cannot be read."""
        try:
            with open(os.path.join(self.root, name), "rb") as f:
                obj = json.loads(f.read())
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise NodeStateError(f"cannot read node state {name}: {strerror(exc)}") from None
        except (ValueError, RecursionError):
            raise NodeStateError(f"node state {name} is corrupt (not JSON)") from None
        return obj if isinstance(obj, dict) else {}

    def _write_json(self, name: str, obj: Any) -> None:
        path = os.path.join(self.root, name)
        tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(obj, f, indent=1, sort_keys=True)
            os.rename(tmp, path)
        except BaseException:
            # A full or read-only filesystem leaves no half-written temporary file behind.
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

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

    @staticmethod
    def _state_name(kind: str, namespace: str, name: str) -> str:
        """``pods/<hex>.json`` or ``secrets/<hex>.json``: a fixed-length name whatever the object's."""
        digest = hashlib.sha256(f"{namespace}/{name}".encode("utf-8", "surrogatepass")).hexdigest()
        return os.path.join(kind, f"{digest}.json")

    def _migrate_legacy_state(self) -> None:
        """Rename state files of earlier versions (``<namespace>_<name>.json``) to their digest
        names, once, under the node lock. A file that cannot be read is left where it is (and is
        not listed: only digest names are)."""
        for kind in ("pods", "secrets"):
            directory = os.path.join(self.root, kind)
            try:
                names = os.listdir(directory)
            except OSError:
                continue  # unreadable: reported by whatever needs the directory
            if all(_STATE_FILE.fullmatch(f) or not f.endswith(".json") for f in names):
                continue
            with self.locks.hold("node"):
                for fname in os.listdir(directory):
                    if _STATE_FILE.fullmatch(fname) or not fname.endswith(".json"):
                        continue
                    old = os.path.join(kind, fname)
                    try:
                        obj = self._read_json(old)
                        meta = obj["pod"]["metadata"] if kind == "pods" else obj
                        namespace, name = meta.get("namespace") or "default", meta["name"]
                    except (NodeStateError, KeyError, TypeError, AttributeError):
                        continue
                    if not isinstance(namespace, str) or not isinstance(name, str):
                        continue
                    # Write the new name first: a crash in between leaves both, and the next start
                    # rewrites the same content again before removing the old one.
                    self._write_json(self._state_name(kind, namespace, name), obj)
                    os.unlink(os.path.join(self.root, old))

    def put_secret(self, secret: Secret) -> None:
        """Store a Secret (the API server's validation and size limit first)."""
        import base64

        ns = secret.metadata.namespace or "default"
        secret = attrs.evolve(secret, metadata=attrs.evolve(secret.metadata, namespace=ns))
        validate_secret(secret, self.gates.minor)
        obj = {
            "name": secret.metadata.name,
            "namespace": ns,
            "type": secret.type,
            "data": {k: base64.b64encode(v).decode() for k, v in secret.data.items()},
        }
        check_stored_size(obj)
        with self.locks.hold("node"):
            self._write_json(self._state_name("secrets", ns, secret.metadata.name), obj)

    def keyring_for(self, pod: Pod, recorder: EventRecorder | None = None) -> Keyring:
        """The Pod's pull secrets as a keyring, then the node's own credentials (R3.4)."""
        import base64

        from .api.models import ObjectMeta

        found: list[Secret] = []
        missing: list[str] = []
        for name in pod.spec.image_pull_secrets:
            obj = self._read_json(self._state_name("secrets", pod.namespace, name))
            if obj.get("name") != name or obj.get("namespace") != pod.namespace:
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

    def _save(self, record: PodRecord) -> None:
        self._write_json(self._state_name("pods", record.pod.namespace, record.pod.name), record.to_json())

    def _load_record(self, fname: str) -> PodRecord | None:
        """The record in ``fname``; None if there is no such file (deleted meanwhile)."""
        obj = self._read_json(fname)
        if not obj:
            return None
        try:
            return PodRecord.from_json(obj)
        except (ImageVolError, KeyError, TypeError, ValueError, AttributeError):
            raise NodeStateError(f"node state {fname} is corrupt (not a Pod record)") from None

    def get_pod(self, name: str, namespace: str = "default") -> PodRecord:
        record = self._load_record(self._state_name("pods", namespace, name))
        # The file holds the names it stands for: a digest is only a file name, never the identity.
        if record is None or (record.pod.namespace, record.pod.name) != (namespace, name):
            raise PodNotFoundError(f"pods {goquote(name)} not found")
        return record

    def pods(self) -> list[PodRecord]:
        """Every Pod on the node, ordered by namespace and name as ``<namespace>_<name>`` sorts
        (the order of the state files of earlier versions)."""
        directory = os.path.join(self.root, "pods")
        try:
            names = os.listdir(directory)
        except OSError as exc:
            raise NodeStateError(f"cannot list node state pods/: {strerror(exc)}") from None
        records = [self._load_record(os.path.join("pods", f)) for f in names if _STATE_FILE.fullmatch(f)]
        return sorted((r for r in records if r is not None), key=lambda r: f"{r.pod.namespace}_{r.pod.name}")

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
            self._save(record)
        return f"pod/{admitted.metadata.name} created", record

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
            os.unlink(os.path.join(self.root, self._state_name("pods", namespace, name)))
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
