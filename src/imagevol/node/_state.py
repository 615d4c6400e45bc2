"""The node's persistent state: Pods, Secrets, the clock offset, pull backoff and metric values, as
JSON files under the node root.

```
ROOT/pods/        one JSON record per Pod (spec, container states, events): <digest>.json
ROOT/secrets/     Secrets applied to the node (pull secrets): <digest>.json
ROOT/node.json    clock offset, pull backoff
ROOT/metrics.json kubelet metric values
ROOT/pod-index.json  a summary of every Pod record, checked against them on every read (_index.py)
```

Every file is written to a temporary name and renamed, so a reader never sees half a file, and a
full or read-only filesystem leaves no temporary file behind; a file whose content would not change
is not written at all (a sync with nothing to do writes nothing). Files are compact JSON with sorted
keys; any JSON loads, so roots written by earlier versions (indented) load as they are. The caller
holds the node lock around every read-modify-write.

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
from typing import TYPE_CHECKING, Any

from .. import _gc
from .._tempname import nonce
from .._text import strerror
from ..content.locks import NamedLocks
from ..errors import ImageVolError, NodeStateError

if TYPE_CHECKING:
    # Imported by the methods that read or write Pods and Secrets: the node's clock, backoff and
    # metric files (all a pull reads) need neither the API's objects nor the kubelet's records.
    from ..api.models import Secret
    from ..kubelet.pod_sync import PodRecord
    from ._index import PodIndex, Signature

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
        loaded = self._read(name)
        return {} if loaded is None else _decode(name, loaded[0])

    def _read(self, name: str) -> tuple[bytes, os.stat_result] | None:
        """A state file's bytes and the status of the file they came from; None if there is none."""
        try:
            with open(os.path.join(self.root, name), "rb") as f:
                return f.read(), os.fstat(f.fileno())
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise NodeStateError(f"cannot read node state {name}: {strerror(exc)}") from None

    def write_json(self, name: str, obj: Any) -> bool:
        """Write a state file (relative to the root) by a temporary file and a rename, unless it
        holds these bytes already; whether it was written."""
        return self._write(name, _encode(obj))[1]

    def _write(self, name: str, data: bytes) -> tuple[os.stat_result, bool]:
        """Write ``data`` to the state file ``name`` unless it holds them already: the status of
        the file that holds them now, and whether it was written."""
        path = os.path.join(self.root, name)
        with contextlib.suppress(OSError), open(path, "rb") as f:
            if f.read(len(data) + 1) == data:
                return os.fstat(f.fileno()), False
        tmp = f"{path}.{os.getpid()}.{nonce()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()  # the status below must be that of the whole file, not of a buffer
                # A rename keeps the inode and its modification time: the status is the file's.
                st = os.fstat(f.fileno())
            os.rename(tmp, path)
        except BaseException:
            # A full or read-only filesystem leaves no half-written temporary file behind.
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return st, True

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
        from ..api.limits import check_stored_size

        check_stored_size(obj)
        with self.locks.hold("node"):
            self.write_json(self.state_name("secrets", ns, secret.metadata.name), obj)

    def get_secret(self, name: str, namespace: str) -> Secret | None:
        """The Secret stored under ``namespace/name``, None if there is none."""
        from ..api.models import ObjectMeta, Secret

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

    def secrets(self) -> list[Secret]:
        """Every stored Secret (unreadable files are skipped)."""
        from ..api.models import ObjectMeta, Secret

        out = []
        for fname in sorted(os.listdir(os.path.join(self.root, "secrets"))):
            if not _STATE_FILE.fullmatch(fname):
                continue
            try:
                obj = self.read_json(os.path.join("secrets", fname))
                data = {k: base64.b64decode(v) for k, v in obj.get("data", {}).items()}
                meta = ObjectMeta(name=str(obj["name"]), namespace=str(obj["namespace"]))
            except (NodeStateError, KeyError, ValueError, TypeError, AttributeError):
                continue
            out.append(Secret(meta, str(obj.get("type", "")), data))
        return out

    # --- pods ---------------------------------------------------------------------------------

    def save_pod(self, record: PodRecord, index: PodIndex | None = None) -> bool:
        """Write the Pod's record unless the file holds it already (the caller holds the node
        lock); whether it was written. ``index`` learns the record's summary."""
        from ._index import PodSummary, signature

        fname = self.state_name("pods", record.pod.namespace, record.pod.name)
        st, written = self._write(fname, _encode(record.to_json()))
        if index is not None:
            key, sig = os.path.basename(fname), signature(st)
            known = index.entries.get(key)
            if known is None or known[0] != sig:
                index.put(key, sig, PodSummary.of(record))
        return written

    def _load_pod(self, fname: str) -> PodRecord | None:
        """The record in ``fname``; None if there is no such file (deleted meanwhile)."""
        loaded = self._load_pod_signed(fname)
        return None if loaded is None else loaded[0]

    def _load_pod_signed(self, fname: str) -> tuple[PodRecord, Signature] | None:
        """The record in ``fname`` and the signature of the file it came from."""
        from ..kubelet.pod_sync import PodRecord
        from ._index import signature

        loaded = self._read(fname)
        if loaded is None:
            return None
        obj = _decode(fname, loaded[0])
        if not obj:
            return None
        try:
            return PodRecord.from_json(obj), signature(loaded[1])
        except (ImageVolError, KeyError, TypeError, ValueError, AttributeError):
            raise NodeStateError(f"node state {fname} is corrupt (not a Pod record)") from None

    def get_pod(self, name: str, namespace: str) -> PodRecord | None:
        """The record of ``namespace/name``, None if there is none."""
        record = self._load_pod(self.state_name("pods", namespace, name))
        # The file holds the names it stands for: a digest is only a file name, never the identity.
        if record is None or (record.pod.namespace, record.pod.name) != (namespace, name):
            return None
        return record

    def _pod_files(self) -> list[os.DirEntry[str]]:
        directory = os.path.join(self.root, "pods")
        try:
            with os.scandir(directory) as entries:
                return [e for e in entries if _STATE_FILE.fullmatch(e.name)]
        except OSError as exc:
            raise NodeStateError(f"cannot list node state pods/: {strerror(exc)}") from None

    def pods(self) -> list[PodRecord]:
        """Every Pod on the node, ordered by namespace and name as ``<namespace>_<name>`` sorts
        (the order of the state files of earlier versions)."""
        records = [self._load_pod(os.path.join("pods", e.name)) for e in self._pod_files()]
        return sorted((r for r in records if r is not None), key=lambda r: f"{r.pod.namespace}_{r.pod.name}")

    def pod_index(self) -> PodIndex:
        """The Pod index, checked against every record file: an entry whose file changed, appeared
        or went away is recomputed from the record (``dirty`` then says so). Costs one ``stat``
        per Pod and one read per changed Pod."""
        # Tens of thousands of small containers are built here and none becomes garbage: the
        # cyclic collector's passes over them would cost more than the parse itself.
        with _gc.paused():
            return self._pod_index()

    def _pod_index(self) -> PodIndex:
        from ._index import PodIndex, PodSummary, signature

        cached = PodIndex.parse(self._read_index())
        entries = {}
        for entry in self._pod_files():
            try:
                sig = signature(entry.stat())
            except FileNotFoundError:
                continue  # removed meanwhile
            except OSError as exc:
                raise NodeStateError(f"cannot read node state pods/{entry.name}: {strerror(exc)}") from None
            known = cached.get(entry.name)
            if known is not None and known[0] == sig:
                entries[entry.name] = known
                continue
            loaded = self._load_pod_signed(os.path.join("pods", entry.name))
            if loaded is not None:
                entries[entry.name] = (loaded[1], PodSummary.of(loaded[0]))
        return PodIndex(entries, dirty=entries != cached)

    def _read_index(self) -> Any:
        """The index file's content; None when it is missing, unreadable or torn (then rebuilt)."""
        from ._index import INDEX_FILE

        try:
            loaded = self._read(INDEX_FILE)
            return None if loaded is None else json.loads(loaded[0])
        except (NodeStateError, ValueError, RecursionError):
            return None

    def save_index(self, index: PodIndex) -> None:
        """Write the index if it changed. Best effort: the index is a cache that every reader
        checks, so a full or read-only disk only means the next reader recomputes it."""
        from ._index import INDEX_FILE

        if not index.dirty:
            return
        with contextlib.suppress(OSError):
            self._write(INDEX_FILE, _encode(index.to_json()))
            index.dirty = False

    def remove_pod(self, name: str, namespace: str) -> None:
        """Remove the state file of the Pod ``namespace/name`` (the caller holds the node lock)."""
        os.unlink(os.path.join(self.root, self.state_name("pods", namespace, name)))


def _encode(obj: Any) -> bytes:
    """Compact JSON with sorted keys: the same state gives the same bytes, so an unchanged file is
    recognised by comparing them; and without ``indent`` the encoder is the C one."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _decode(name: str, data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        raise NodeStateError(f"node state {name} is corrupt (not JSON)") from None
    return obj if isinstance(obj, dict) else {}
