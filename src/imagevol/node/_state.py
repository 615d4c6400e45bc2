"""The node's persistent state: Pods, Secrets, the clock offset, pull backoff and metric values, as
JSON files under the node root.

```
ROOT/pods/        one JSON record per Pod (spec, container states, events): <digest>.json
ROOT/secrets/     Secrets applied to the node (pull secrets): <digest>.json
ROOT/node.json    clock offset, pull backoff
ROOT/metrics.json kubelet metric values
```

Every file is written to a temporary name and renamed, so a reader never sees half a file, and a
full or read-only filesystem leaves no temporary file behind. The caller holds the node lock around
every read-modify-write.

A Pod's or Secret's state file is named by the SHA-256 of ``<namespace>/<name>`` (64 hex digits),
never by the name itself: a name reaches the filesystem only as data inside the file, so no name
(253 characters, dots, anything a lookup is asked for) can make a path too long or point anywhere
else. Roots written by earlier versions (``<namespace>_<name>.json``) are migrated on start.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import uuid
from typing import Any

from .._text import strerror
from ..api.limits import check_stored_size
from ..api.models import ObjectMeta, Secret
from ..content.locks import NamedLocks
from ..errors import ImageVolError, NodeStateError
from ..kubelet.pod_sync import PodRecord

#: A state file's name: the SHA-256 of ``<namespace>/<name>``.
_STATE_FILE = re.compile(r"[0-9a-f]{64}\.json")


class NodeState:
    """The state files under ``root``; ``locks`` holds the node lock the caller takes."""

    def __init__(self, root: str, locks: NamedLocks) -> None:
        self.root = root
        self.locks = locks

    def read_json(self, name: str) -> dict[str, Any]:
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

    def write_json(self, name: str, obj: Any) -> None:
        """Write a state file (relative to the root) by a temporary file and a rename."""
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

    @staticmethod
    def state_name(kind: str, namespace: str, name: str) -> str:
        """``pods/<hex>.json`` or ``secrets/<hex>.json``: a fixed-length name whatever the object's."""
        digest = hashlib.sha256(f"{namespace}/{name}".encode("utf-8", "surrogatepass")).hexdigest()
        return os.path.join(kind, f"{digest}.json")

    def migrate_legacy_state(self) -> None:
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
                        obj = self.read_json(old)
                        meta = obj["pod"]["metadata"] if kind == "pods" else obj
                        namespace, name = meta.get("namespace") or "default", meta["name"]
                    except (NodeStateError, KeyError, TypeError, AttributeError):
                        continue
                    if not isinstance(namespace, str) or not isinstance(name, str):
                        continue
                    # Write the new name first: a crash in between leaves both, and the next start
                    # rewrites the same content again before removing the old one.
                    self.write_json(self.state_name(kind, namespace, name), obj)
                    os.unlink(os.path.join(self.root, old))

    # --- secrets ------------------------------------------------------------------------------

    def put_secret(self, secret: Secret) -> None:
        """Store a validated Secret whose namespace is set (the API server's size limit first)."""
        ns = secret.metadata.namespace
        obj = {
            "name": secret.metadata.name,
            "namespace": ns,
            "type": secret.type,
            "data": {k: base64.b64encode(v).decode() for k, v in secret.data.items()},
        }
        check_stored_size(obj)
        with self.locks.hold("node"):
            self.write_json(self.state_name("secrets", ns, secret.metadata.name), obj)

    def get_secret(self, name: str, namespace: str) -> Secret | None:
        """The Secret stored under ``namespace/name``, None if there is none."""
        obj = self.read_json(self.state_name("secrets", namespace, name))
        if obj.get("name") != name or obj.get("namespace") != namespace:
            return None
        data = {k: base64.b64decode(v) for k, v in obj.get("data", {}).items()}
        return Secret(ObjectMeta(name=name, namespace=namespace), obj.get("type", ""), data)

    def remove_secret(self, name: str, namespace: str) -> bool:
        """Remove the Secret ``namespace/name``; False if there was none. The caller holds the
        node lock."""
        if self.get_secret(name, namespace) is None:
            return False
        os.unlink(os.path.join(self.root, self.state_name("secrets", namespace, name)))
        return True

    # --- pods ---------------------------------------------------------------------------------

    def save_pod(self, record: PodRecord) -> None:
        """Write the Pod's record (the caller holds the node lock)."""
        self.write_json(self.state_name("pods", record.pod.namespace, record.pod.name), record.to_json())

    def _load_pod(self, fname: str) -> PodRecord | None:
        """The record in ``fname``; None if there is no such file (deleted meanwhile)."""
        obj = self.read_json(fname)
        if not obj:
            return None
        try:
            return PodRecord.from_json(obj)
        except (ImageVolError, KeyError, TypeError, ValueError, AttributeError):
            raise NodeStateError(f"node state {fname} is corrupt (not a Pod record)") from None

    def get_pod(self, name: str, namespace: str) -> PodRecord | None:
        """The record of ``namespace/name``, None if there is none."""
        record = self._load_pod(self.state_name("pods", namespace, name))
        # The file holds the names it stands for: a digest is only a file name, never the identity.
        if record is None or (record.pod.namespace, record.pod.name) != (namespace, name):
            return None
        return record

    def pods(self) -> list[PodRecord]:
        """Every Pod on the node, ordered by namespace and name as ``<namespace>_<name>`` sorts
        (the order of the state files of earlier versions)."""
        directory = os.path.join(self.root, "pods")
        try:
            names = os.listdir(directory)
        except OSError as exc:
            raise NodeStateError(f"cannot list node state pods/: {strerror(exc)}") from None
        records = [self._load_pod(os.path.join("pods", f)) for f in names if _STATE_FILE.fullmatch(f)]
        return sorted((r for r in records if r is not None), key=lambda r: f"{r.pod.namespace}_{r.pod.name}")

    def remove_pod(self, name: str, namespace: str) -> None:
        """Remove the state file of the Pod ``namespace/name`` (the caller holds the node lock)."""
        os.unlink(os.path.join(self.root, self.state_name("pods", namespace, name)))
