"""Lazy sub paths on the runtime side: which layers a pull leaves in the registry, and mounts that
build only what their sub path needs (``--lazy toc`` and ``--lazy toc+complete``).

* **Pull.** The kubelet pulls as always (policy, events, metrics unchanged). In lazy mode the
  runtime's pull fetches the manifest and the config, and for every layer that announces a table
  of contents (zstd:chunked, eStargz) only that TOC, verified against the digest the manifest pins
  (and against its tar-split where there is one) and kept in the lazy cache; such layers are left
  in the registry. A layer whose TOC cannot be used (no TOC, an unsupported dialect, a digest that
  does not match, a registry that ignores ``Range``) is pulled whole, and why is noted.
* **Mount.** A mount with a sub path (not the whole volume, and not on the legacy profile, which
  ignores sub paths) gets a partial tree (:mod:`imagevol.trees.partial`) built from the TOCs and the
  stored blobs, with the byte ranges of the files it needs fetched from wherever the image was
  pulled (mirrors first), with the credentials that pulled it.
* **Fallback.** Any failure of all that (a digest, a format, a range answer, the network, a
  credential) falls back to the full pull: the missing layers are fetched whole and the full tree
  is built as without lazy mode, so the mount succeeds or fails on its own merits. Why is recorded
  on the mount (``MountStatus.lazy``, shown by ``describe pod``) and counted
  (``imagevol_lazy_fallbacks_total``). A sub path the full tree would refuse is refused as it would
  be there (the index resolves exactly as the tree resolver does): that is no lazy failure.

Credentials: a pull in this process leaves its keyring here; a later process uses those of the
node's credentials (its own and the stored pull secrets) whose fingerprints the image record says
pulled it. That gives a mount nothing a full pull would not have given it: the bytes are those of
an image the node already pulled, pinned by digest.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .. import lazy
from .._tempname import nonce
from ..content.image_db import ImageRecord
from ..content.pull import ImagePuller
from ..content.ranges import ByteRange, RangedReader
from ..content.sources.base import Source
from ..cri import Keyring, MountStatus
from ..errors import ContentError, ImageVolError, LayerError, LazyFormatError, LazyUnsupportedError, PullError
from ..lazy.cache import LayerCache
from ..oci import Descriptor, Digest, Manifest
from ..trees.partial import (
    REVOKED,
    TOC_PINNED,
    TOC_VERIFIED,
    VERIFIED,
    Label,
    LayerSource,
    PartialResult,
    PartialTrees,
    tar_members,
)
from ..trees.snapshots import PARTIAL, SnapshotKey, Snapshots

OFF = "off"
TOC = "toc"
TOC_COMPLETE = "toc+complete"
MODES = (OFF, TOC, TOC_COMPLETE)

if TYPE_CHECKING:
    from prometheus_client.core import Metric


def reason_kind(exc: BaseException) -> str:
    """The ``reason`` label of a fallback: the lazy rule that refused (``digest``, ``range``,
    ``unsupported``, ``invalid_toc``, ``mismatch``...), ``layer`` for a layer the applier's rules
    refuse, ``fetch`` for the network or a registry, ``local`` for this node."""
    if isinstance(exc, LazyFormatError):
        return exc.kind
    if isinstance(exc, LayerError):
        return "layer"
    if isinstance(exc, PullError):
        return "fetch"
    return "local"


class LazyMounts:
    """The lazy mode of one runtime: ``mode`` is one of :data:`MODES`."""

    def __init__(
        self,
        mode: str,
        puller: ImagePuller,
        snapshots: Snapshots,
        state_file: str,
        *,
        keychain: Callable[[], Keyring] | None = None,
        keyrings: dict[str, Keyring] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown lazy mode {mode!r}: choose from {', '.join(MODES)}")
        self.mode = mode
        self.puller = puller
        self.snapshots = snapshots
        self.keychain = keychain
        store = puller.store
        self.cache = LayerCache(os.path.join(store.root, "lazy"))
        self.partial = PartialTrees(snapshots, self.cache)
        #: The counters, notes and pending completions of the lazy mode (JSON), kept by the node.
        self._state = state_file
        #: Keyrings of the pulls made by this process, by image record name: the runtime's own
        #: mapping, which its pulls fill without loading this module.
        self.keyrings: dict[str, Keyring] = {} if keyrings is None else keyrings
        #: TOCs verified by this process, by layer (a pull's are used again by its mounts: the
        #: check against the tar-split is the costly part, and the bytes are the same).
        #: Keyed by blob and annotations: another manifest may pin another TOC for the same blob.
        self._tocs: dict[tuple[Digest, str], lazy.LayerToc] = {}
        if self.enabled:
            if not store.is_local:
                self.mode = OFF  # partial trees read their payloads from local files
            else:
                puller.defer_layers = self.defer

    @property
    def enabled(self) -> bool:
        return self.mode != OFF

    # --- pull -----------------------------------------------------------------------------------

    def defer(self, source: Source, manifest: Manifest) -> set[Digest]:
        """The layers of ``manifest`` a pull leaves in the registry: those whose TOC was fetched
        and verified now. Others are pulled whole (and why is noted)."""
        deferred: set[Digest] = set()
        for desc in manifest.layers:
            if self.puller.store.has(desc.digest):
                continue
            try:
                if lazy.toc_format(desc) is None:
                    continue
                inner = source.ranged_reader(desc, on_fetch=self.count_fetched)
                try:
                    self._read_toc(desc, self.cache.reader(desc.digest, inner, desc.size))
                finally:
                    _close_reader(inner)  # a mount opens its own: a node keeps no blob open
            except ImageVolError as exc:
                self.note(desc.digest, exc)
                continue
            deferred.add(desc.digest)
        return deferred

    # --- mount ------------------------------------------------------------------------------------

    def mount(
        self,
        record: ImageRecord,
        manifest: Manifest,
        diff_ids: Sequence[Digest],
        image: SnapshotKey,
        sub_path: str,
        policy: lazy.Policy,
        holder: str,
    ) -> PartialResult:
        """The leased partial tree of ``sub_path``. Raises ``SubPathError`` for a sub path the
        full tree refuses too, any other error for a lazy failure (the caller falls back)."""
        with contextlib.ExitStack() as stack:
            remote = _Remote(self, record, stack)
            layers = []
            for desc, diff_id in zip(manifest.layers, diff_ids, strict=True):
                if self.puller.store.has(desc.digest):
                    layers.append(LayerSource(desc, diff_id))
                    continue
                if lazy.toc_format(desc) is None:
                    raise LazyUnsupportedError(f"layer {desc.digest} has no table of contents and was not pulled")
                reader = self.cache.reader(desc.digest, remote.reader(desc), desc.size)
                toc = self._read_toc(desc, reader)
                layers.append(LayerSource(desc, diff_id, toc, reader))
            return self.partial.acquire(image, layers, sub_path, policy, holder)

    def _read_toc(self, desc: Descriptor, reader: RangedReader) -> lazy.LayerToc:
        key = (desc.digest, json.dumps(dict(desc.annotations or {}), sort_keys=True))
        toc = self._tocs.get(key)
        if toc is None:
            toc = lazy.read_layer_toc(desc, reader, members=tar_members)
            self._tocs[key] = toc
        return toc

    def missing_layers(self, manifest: Manifest) -> list[Descriptor]:
        return [d for d in manifest.layers if not self.puller.store.has(d.digest)]

    def fetch_missing(self, record: ImageRecord, manifest: Manifest) -> None:
        """Pull the layers a lazy pull left in the registry (the full-pull fallback)."""
        missing = self.missing_layers(manifest)
        if missing:
            self.puller.fetch_blobs(record, missing, self.keyring_for(record))

    def live(self, status: MountStatus) -> MountStatus:
        """A mount's status as of now: a partial tree's trust can change after the mount
        (``toc+complete`` upgrades it to ``verified``, or revokes it)."""
        try:
            key = SnapshotKey.parse(status.snapshot)
        except ImageVolError:
            return status
        label = self.partial.label(key) if key.kind == PARTIAL else None
        if label is None:
            return status
        note = status.lazy if label.trust != REVOKED else f"revoked: {label.reason}"
        return attrs.evolve(status, trust=label.trust, lazy=note)

    # --- completion (toc+complete) -------------------------------------------------------------

    def complete_all(self) -> list[tuple[SnapshotKey, Label]]:
        """:meth:`complete` over every image of the node (a no-op unless ``toc+complete``)."""
        if self.mode != TOC_COMPLETE:
            return []
        targets = []
        for record in self.puller.image_db.all():
            if record.artifact:
                continue
            try:
                manifest = self.puller.manifest_of(record)
                plan = self.snapshots.plan(record.manifest_digest, manifest)
            except ImageVolError:
                continue
            targets.append(Target(record, manifest, tuple(plan.diff_ids), plan.key))
        return self.complete(targets)

    def check_not_revoked(self, status: MountStatus) -> None:
        """Refuse to open a mount whose lazily built tree a completion revoked: the container
        loses the view rather than keep reading content proven wrong."""
        live = self.live(status)
        if live.trust == REVOKED:
            raise ImageVolError(
                f"the image volume mounted at {status.container_path} was revoked: "
                f"{live.lazy.removeprefix('revoked: ')}"
            )

    def complete(self, targets: Sequence[Target]) -> list[tuple[SnapshotKey, Label]]:
        """``toc+complete``: fetch every layer a partial tree of ``targets`` was built from by its
        TOC, verify it (blob digest on ingest; the TOC against the whole tar, member by member;
        the diff ID), then label the tree ``verified``, or ``revoked`` with the reason. A fetch
        that fails proves nothing either way: the tree keeps its label and the next pass tries
        again. One completion at a time per node (a lock; a second caller returns at once).
        Returns the trees whose label changed."""
        if self.mode != TOC_COMPLETE:
            return []
        changed: list[tuple[SnapshotKey, Label]] = []
        with self.snapshots.locks.hold("lazy-complete", blocking=False) as mine:
            if not mine:
                return []
            by_image = {str(t.image): t for t in targets}
            for key, label in sorted(self.partial.labelled().items(), key=lambda kv: kv[0].name):
                target = by_image.get(label.image)
                if label.trust in (VERIFIED, REVOKED) or target is None:
                    continue
                try:
                    reason = self._check_tree(target, label)
                except ImageVolError as exc:
                    self._note_pending(key, exc)
                    continue
                if reason:
                    new = attrs.evolve(label, trust=REVOKED, reason=reason)
                else:
                    new = attrs.evolve(label, trust=VERIFIED)
                self.partial.set_label(key, new)
                self._forget_pending(key)
                self._count_completion(REVOKED if reason else VERIFIED)
                changed.append((key, new))
        return changed

    def _check_tree(self, target: Target, label: Label) -> str:
        """Why the tree of ``label`` is wrong ("" when every TOC layer proved right). Raises for a
        layer that could not be fetched."""
        wanted = set(label.toc_layers)
        for desc, diff_id in zip(target.manifest.layers, target.diff_ids, strict=True):
            if str(desc.digest) in wanted:
                reason = self._check_layer(target.record, desc, diff_id)
                if reason:
                    return reason
        return ""

    def _check_layer(self, record: ImageRecord, desc: Descriptor, diff_id: Digest) -> str:
        # By blob and diff ID: another image's config may name another diff ID for the same blob.
        mark = f"{desc.digest} {diff_id}"
        known = self.state().get("checked", {}).get(mark)
        if isinstance(known, str):
            return known
        # The blob digest: the store ingests nothing that does not hash to it (raises otherwise;
        # a registry serving wrong bytes proves nothing about the TOC).
        self.puller.fetch_blobs(record, [desc], self.keyring_for(record))
        reason = ""
        try:
            self.partial.check_blob(desc, diff_id)
        except (LazyFormatError, LayerError, ContentError) as exc:
            reason = f"layer {desc.digest}: {_reason(exc)}"
        self._update(lambda s: s.setdefault("checked", {}).__setitem__(mark, reason))
        return reason

    def _note_pending(self, key: SnapshotKey, exc: BaseException) -> None:
        """Why the completion of ``key`` could not finish on this pass (retried on the next)."""
        self._update(lambda s: s.setdefault("pending", {}).__setitem__(key.name, _reason(exc)))

    def _forget_pending(self, key: SnapshotKey) -> None:
        def forget(s: dict[str, Any]) -> None:
            s.get("pending", {}).pop(key.name, None)

        self._update(forget)

    def _count_completion(self, result: str) -> None:
        def bump(s: dict[str, Any]) -> None:
            counts = s.setdefault("completions", {})
            counts[result] = int(counts.get(result, 0)) + 1

        self._update(bump)

    # --- credentials --------------------------------------------------------------------------

    def keyring_for(self, record: ImageRecord) -> Keyring:
        """The keyring of this process's pull of ``record``, else the node's credentials whose
        fingerprints pulled it."""
        own = self.keyrings.get(record.name)
        if own is not None:
            return own
        if self.keychain is None:
            return Keyring()
        proven = set(record.auth)
        return Keyring(tuple((h, c) for h, c in self.keychain().entries if c.fingerprint() in proven))

    # --- counters and notes (imagevol metrics) ------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """The ``imagevol_lazy_*`` families (docs/metrics.md): bytes fetched by range, fallbacks
        by reason, completions by result, and the partial trees published now by trust level."""
        # Imported here: only metrics exposition needs prometheus-client, never a pull or a mount.
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        state = self.state()
        fetched = CounterMetricFamily(
            "imagevol_lazy_fetched_bytes",
            "Bytes fetched by range for lazy sub paths (tables of contents and file payloads).",
        )
        fetched.add_metric([], float(state.get("fetched_bytes", 0)))
        yield fetched
        fallbacks = CounterMetricFamily(
            "imagevol_lazy_fallbacks",
            "Lazy mounts and layers that fell back to a full pull, by reason.",
            labels=["reason"],
        )
        for reason, n in sorted(state.get("fallbacks", {}).items()):
            fallbacks.add_metric([reason], float(n))
        yield fallbacks
        completions = CounterMetricFamily(
            "imagevol_lazy_completions",
            "Background completions of lazily built trees, by result (verified or revoked).",
            labels=["result"],
        )
        for result, n in sorted(state.get("completions", {}).items()):
            completions.add_metric([result], float(n))
        yield completions
        trees = GaugeMetricFamily("imagevol_lazy_trees", "Partial trees published, by trust level.", labels=["trust"])
        counts: dict[str, int] = dict.fromkeys((VERIFIED, TOC_VERIFIED, TOC_PINNED, REVOKED), 0)
        for label in self.partial.labelled().values():
            counts[label.trust] = counts.get(label.trust, 0) + 1
        for trust, n in sorted(counts.items()):
            trees.add_metric([trust], float(n))
        yield trees

    def count_fetched(self, n: int) -> None:
        self._update(lambda s: s.__setitem__("fetched_bytes", int(s.get("fetched_bytes", 0)) + n))

    def count_fallback(self, exc: BaseException) -> None:
        kind = reason_kind(exc)

        def bump(s: dict[str, Any]) -> None:
            counts = s.setdefault("fallbacks", {})
            counts[kind] = int(counts.get(kind, 0)) + 1

        self._update(bump)

    def note(self, layer: Digest, exc: BaseException) -> None:
        """Remember why ``layer`` was pulled whole (shown on mounts of images that have it)."""
        self._update(lambda s: s.setdefault("notes", {}).__setitem__(str(layer), _reason(exc)))
        self.count_fallback(exc)

    def notes(self, manifest: Manifest) -> list[str]:
        notes = self.state().get("notes", {})
        return [
            f"layer {d.digest} pulled whole: {notes[str(d.digest)]}" for d in manifest.layers if str(d.digest) in notes
        ]

    def state(self) -> dict[str, Any]:
        try:
            with open(self._state) as f:
                obj = json.load(f)
        except (FileNotFoundError, ValueError):
            return {}
        return obj if isinstance(obj, dict) else {}

    def _update(self, change: Callable[[dict[str, Any]], None]) -> None:
        with self.snapshots.locks.hold("lazy-state"):
            state = self.state()
            change(state)
            tmp = f"{self._state}.{os.getpid()}.{nonce()}.tmp"
            try:
                with open(tmp, "w") as f:
                    json.dump(state, f, sort_keys=True)
                os.rename(tmp, self._state)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


@attrs.frozen
class Target:
    """An image a completion may check partial trees of: its record, manifest, the diff IDs its
    config names, and the key of its full tree (what a partial tree's label names)."""

    record: ImageRecord
    manifest: Manifest
    diff_ids: tuple[Digest, ...]
    image: SnapshotKey


class FullTreeExistsError(ImageVolError):
    """The image's full tree is already built: a mount uses it (a sub path of a verified tree
    costs nothing), and no reason is recorded."""


def one_line(exc: BaseException) -> str:
    return str(exc).replace("\n", " ")[:300]


def _reason(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0][:300]


class _Remote:
    """Byte ranges of an image's layers from the first source (in pull order) that has them,
    opened only when a range is not in the cache."""

    def __init__(self, lazy_mounts: LazyMounts, record: ImageRecord, stack: contextlib.ExitStack) -> None:
        self.owner = lazy_mounts
        self.record = record
        self.stack = stack
        self._sources: Generator[Source, None, None] | None = None
        self._current: Source | None = None

    def reader(self, desc: Descriptor) -> RangedReader:
        return _OnDemand(self, desc)

    def open(self, desc: Descriptor) -> RangedReader:
        errors = []
        if self._sources is None:
            self._sources = self.stack.enter_context(
                contextlib.closing(self.owner.puller.sources_for(self.record, self.owner.keyring_for(self.record)))
            )
            self._current = next(self._sources, None)
        while self._current is not None:
            try:
                reader = self._current.ranged_reader(desc, on_fetch=self.owner.count_fetched)
                self.stack.callback(_close_reader, reader)  # closed with the mount's sources
                check = getattr(reader, "check", None)
                if check is not None:
                    check()
                return reader
            except ImageVolError as exc:
                errors.append(str(exc))
                self._current = next(self._sources, None)
        raise PullError(f"no source serves {desc.digest} by range: {'; '.join(errors) or 'no source configured'}")


def _close_reader(reader: RangedReader) -> None:
    """Close a source's ranged reader if it holds something (a layout's blob file does)."""
    close = getattr(reader, "close", None)
    if close is not None:
        close()


class _OnDemand:
    """A reader that finds its source on its first read."""

    def __init__(self, remote: _Remote, desc: Descriptor) -> None:
        self.remote = remote
        self.desc = desc
        self._inner: RangedReader | None = None

    @property
    def size(self) -> int:
        return self.desc.size

    def read_ranges(self, ranges: Sequence[ByteRange]) -> list[bytes]:
        if self._inner is None:
            self._inner = self.remote.open(self.desc)
        return self._inner.read_ranges(ranges)
