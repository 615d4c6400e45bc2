"""The Pod index: one file, ``ROOT/pod-index.json``, that summarises every Pod record, so that
``get pods`` and a kubelet pass over 5,000 Pods read one file instead of 5,000.

An entry holds what a list of Pods shows (:func:`~imagevol.kubelet.status.list_view`), the Pod's
phase, whether a kubelet pass has anything to do for it (:attr:`PodRecord.settled`) and its pull
secrets' names. The index is a cache, never the truth: every entry carries the signature of the
record file it was computed from (inode, size, modification time; a record is only ever replaced
by a rename, never modified in place), and whoever reads the index stats every record file first.
An entry whose file changed, appeared or went away is recomputed from the record itself, so a
crash between a record and the index, a torn or missing index, an index of another format, or two
processes writing the index at once cost time, never a wrong answer. That is also why the index
is written without the node lock: each writer renames a whole file that was true at some moment,
and the next reader checks it again.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..kubelet.pod_sync import PodRecord
from ..kubelet.status import list_view, pod_object

#: The index's file, relative to the node root.
INDEX_FILE = "pod-index.json"
#: Bumped whenever an entry's meaning changes (what ``list_view`` keeps, a new field): an index of
#: another format is ignored and rebuilt from the records.
FORMAT = 1

#: A record file's signature: ``(st_ino, st_size, st_mtime_ns)``.
Signature = tuple[int, int, int]


def signature(st: Any) -> Signature:
    """The signature of a record file from its ``os.stat_result``."""
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@attrs.frozen
class PodSummary:
    """What the node's index says about one Pod: enough to list it (``view``, a Pod object cut
    to what ``kubectl get pods`` shows) and to know whether a kubelet pass would touch it."""

    namespace: str
    name: str
    phase: str
    #: Every container started: a pass has nothing to do (unless a pull secret is missing).
    settled: bool
    pull_secrets: tuple[str, ...]
    view: dict[str, Any] = attrs.field(repr=False)

    @classmethod
    def of(cls, record: PodRecord) -> PodSummary:
        """The summary of ``record``."""
        pod = record.pod
        view = list_view(pod_object(record))
        return cls(pod.namespace, pod.name, record.phase, record.settled, tuple(pod.spec.image_pull_secrets), view)

    @property
    def sort_key(self) -> str:
        """The order of :meth:`NodeState.pods`: ``<namespace>_<name>``."""
        return f"{self.namespace}_{self.name}"

    def to_json(self) -> list[Any]:
        """The summary as the index stores it (a list: 5,000 of them are parsed per listing)."""
        return [self.namespace, self.name, self.phase, self.settled, list(self.pull_secrets), self.view]

    @classmethod
    def from_json(cls, obj: Any) -> PodSummary | None:
        """The summary :meth:`to_json` stored; None if ``obj`` does not have its shape."""
        if not isinstance(obj, list) or len(obj) != 6:
            return None
        namespace, name, phase, settled, secrets, view = obj
        if not (isinstance(namespace, str) and isinstance(name, str) and isinstance(phase, str)):
            return None
        if not isinstance(settled, bool) or not isinstance(secrets, list) or not isinstance(view, dict):
            return None
        if not all(isinstance(s, str) for s in secrets):
            return None
        meta = view.get("metadata")
        if not isinstance(meta, dict) or meta.get("name") != name or meta.get("namespace") != namespace:
            return None
        return cls(namespace, name, phase, settled, tuple(secrets), view)


class PodIndex:
    """The entries of the index by record file name, each with the signature it was computed
    from; ``dirty`` when they differ from what the file on disk holds."""

    def __init__(self, entries: dict[str, tuple[Signature, PodSummary]], *, dirty: bool = False) -> None:
        self.entries = entries
        self.dirty = dirty

    def put(self, fname: str, sig: Signature, summary: PodSummary) -> None:
        """Record that the file ``fname`` (with ``sig``) holds the Pod ``summary`` describes."""
        if self.entries.get(fname) != (sig, summary):
            self.entries[fname] = (sig, summary)
            self.dirty = True

    def summaries(self, namespace: str | None = None) -> list[PodSummary]:
        """The Pods of ``namespace`` (every Pod when None), in the order of ``NodeState.pods``."""
        out = [s for _, s in self.entries.values() if namespace is None or s.namespace == namespace]
        return sorted(out, key=lambda s: s.sort_key)

    def to_json(self) -> dict[str, Any]:
        """The index file's content."""
        return {
            "format": FORMAT,
            "pods": {f: [list(sig), s.to_json()] for f, (sig, s) in sorted(self.entries.items())},
        }

    @staticmethod
    def parse(obj: Any) -> dict[str, tuple[Signature, PodSummary]]:
        """The well-formed entries of an index file's content (of this format); nothing else."""
        if not isinstance(obj, dict) or obj.get("format") != FORMAT or not isinstance(obj.get("pods"), dict):
            return {}
        out: dict[str, tuple[Signature, PodSummary]] = {}
        for fname, entry in obj["pods"].items():
            if not isinstance(entry, list) or len(entry) != 2:
                continue
            sig, summary = entry[0], PodSummary.from_json(entry[1])
            if summary is None or not isinstance(sig, list) or len(sig) != 3:
                continue
            if not all(isinstance(n, int) and not isinstance(n, bool) for n in sig):
                continue
            out[fname] = ((sig[0], sig[1], sig[2]), summary)
        return out
