"""Partial trees: only what one sub path of an image needs, written from the merged index.

A lazy mount (:mod:`imagevol.runtime._lazy`) hands :meth:`PartialTrees.acquire` the image's layers,
each either a verified table of contents with a reader of its blob's ranges (a layer that was not
pulled) or a blob in the content store (pulled whole). Then:

1. **Index.** Every layer's entries: the TOC's, or one streaming pass over the stored blob that
   writes nothing and re-verifies the blob's digest and its diff ID on the way (so a plain layer is
   as proven as in a full pull). :func:`imagevol.lazy.build_index` merges them by the applier's
   changeset rules.
2. **Resolve** the sub path on the index by the profile's policy (:func:`imagevol.lazy.resolve`):
   a sub path a full tree would refuse is refused here with the same kind, before anything is
   fetched or written.
3. **Closure and key.** :func:`imagevol.lazy.closure` lists the entries to write; the tree's key is
   a digest of what it is made of (for each layer its TOC digest, or its diff ID), the policy, the
   resolved path and the directories and links the walk passed. ``partial-`` keys can never name a
   full tree (``chain-``), and no two images whose TOCs differ share one, whatever their configs
   claim (a config may claim another image's diff IDs: containers/storage PR #1627).
4. **Fetch.** Payloads of TOC layers are read in few multi-range requests, each decoded with a hard
   cap and verified against its TOC digest before it is kept (:class:`imagevol.lazy.cache.LayerCache`,
   temporary name then rename); payloads of plain layers are copied out of their blob in a second
   verified pass.
5. **Write.** The closure becomes one synthetic tar stream (PAX headers carrying every name, link,
   owner, time and extended attribute exactly) applied by the layer applier itself: the same
   in-root, fd-only writes, metadata rules and write-bit stripping as every tree. The tree is built
   in a private staging directory and published by rename under its key's lock, leased, and removed
   like any tree (:mod:`imagevol.trees.snapshots`).

Each partial tree carries a label (``snapshots/.labels/<key>.json``): its trust level (``verified``
when every layer was proven whole, ``toc-verified`` when TOCs were checked against their
tar-split, ``toc-pinned`` when a TOC is pinned by the manifest but nothing cross-checks it against
the tar), the full tree it is part of, and, once completion found a mismatch, ``revoked`` and why.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any

import attrs

from .. import lazy
from .._tempname import nonce
from .._text import goquote
from ..content.ranges import ByteRange, FileReader, RangedReader
from ..errors import DiffIDMismatchError, ImageVolError, LazyFormatError
from ..lazy.cache import LayerCache
from ..oci import Descriptor, Digest
from ._decompress import ChunkPipe
from ._layer_metadata import BuildState
from ._layer_tree import Tree
from ._partial_tar import TarStream, synthetic_tar
from ._tarstream import TarReader
from .layers import apply_layer_fd
from .snapshots import Snapshot, SnapshotKey, Snapshots

VERIFIED = "verified"
TOC_VERIFIED = "toc-verified"
TOC_PINNED = "toc-pinned"
REVOKED = "revoked"
_RANK = {TOC_PINNED: 0, TOC_VERIFIED: 1, VERIFIED: 2}
#: Bytes of payload ranges asked for in one round (the registry reader splits them further).
FETCH_BATCH = 32 * 1024 * 1024


def tar_members(source: Callable[[], bytes]) -> Iterator[lazy.MemberLike]:
    """The project's tar reader as a :data:`imagevol.lazy.MemberReader`."""
    return iter(TarReader(source).next, None)


@attrs.frozen
class LayerSource:
    """One layer of a partial build: its descriptor and diff ID, and for a layer not in the
    content store its verified TOC and a reader of its blob's ranges."""

    desc: Descriptor
    diff_id: Digest
    toc: lazy.LayerToc | None = None
    reader: RangedReader | None = None

    @property
    def trust(self) -> str:
        """``verified``, or ``toc-verified``/``toc-pinned`` for a layer known by its TOC only."""
        if self.toc is None:
            return VERIFIED
        return TOC_VERIFIED if self.toc.tar_split_checked else TOC_PINNED

    def identity(self) -> list[str]:
        """What identifies the layer in a partial tree's key: its diff ID, or its TOC digest."""
        if self.toc is None:
            return ["diff", str(self.diff_id)]
        return ["toc", self.toc.format.value, self.toc.dialect, str(self.toc.toc_digest)]


@attrs.frozen
class Label:
    """What a partial tree is: its trust level (and why, when revoked), the full tree it is a
    part of, the layers (blob digests) it was built from, and the sub path it serves."""

    trust: str
    image: str
    layers: tuple[str, ...]
    sub_path: str
    real_path: str
    reason: str = ""
    #: The layers (blob digests) whose entries came from their TOC, not from a stored blob: what
    #: a completion has to prove.
    toc_layers: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The label as stored beside the tree."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Label:
        """The label :meth:`to_json` stored."""
        return cls(
            str(obj["trust"]),
            str(obj["image"]),
            tuple(str(x) for x in obj.get("layers", ())),
            str(obj.get("sub_path", "")),
            str(obj.get("real_path", ".")),
            str(obj.get("reason", "")),
            tuple(str(x) for x in obj.get("toc_layers", ())),
        )


@attrs.frozen
class PartialResult:
    """A partial tree ready to mount: its snapshot and its trust label."""

    snapshot: Snapshot
    label: Label
    #: Bytes fetched for payloads by this build (0 when the tree existed).
    fetched: int = 0


class PartialTrees:
    """Partial trees in a node's snapshots directory, with lazily fetched payloads in ``cache``."""

    def __init__(self, snapshots: Snapshots, cache: LayerCache) -> None:
        self.snapshots = snapshots
        self.cache = cache
        self._labels = os.path.join(snapshots.root, ".labels")
        os.makedirs(self._labels, mode=0o700, exist_ok=True)

    # --- labels -----------------------------------------------------------------------------------

    def label(self, key: SnapshotKey) -> Label | None:
        """The trust label of a partial tree, None when it has none."""
        try:
            with open(os.path.join(self._labels, key.name + ".json")) as f:
                return Label.from_json(json.load(f))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def set_label(self, key: SnapshotKey, label: Label) -> None:
        """Store the trust label of a partial tree (atomically: temporary file and rename)."""
        tmp = os.path.join(self._labels, f".{key.name}.{os.getpid()}.{nonce()}")
        with open(tmp, "w") as f:
            json.dump(label.to_json(), f)
        os.rename(tmp, os.path.join(self._labels, key.name + ".json"))

    def drop_label(self, key: SnapshotKey) -> None:
        """Forget the trust label of a removed tree."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self._labels, key.name + ".json"))

    def labelled(self) -> dict[SnapshotKey, Label]:
        """Every published partial tree with its label."""
        out = {}
        for key in self.snapshots.published():
            if key.kind == "partial":
                label = self.label(key)
                if label is not None:
                    out[key] = label
        return out

    # --- building -----------------------------------------------------------------------------------

    def index(self, layers: Sequence[LayerSource]) -> lazy.MergedIndex:
        """The merged index of ``layers`` (plain layers re-verified while read)."""
        streams = []
        for i, layer in enumerate(layers):
            if layer.toc is not None:
                streams.append(layer.toc.entries)
            else:
                streams.append(tuple(self._plain_entries(layer, i, len(layers))))
        limits = self.snapshots.options.limits
        return lazy.build_index(
            streams,
            lazy.IndexLimits(limits.max_entries, limits.max_depth, (os.geteuid(), os.getegid())),
        )

    def _pipe(self, blob: IO[bytes], hasher: Any = None) -> ChunkPipe:
        """A stored blob's uncompressed chunks, produced where the node's options say."""
        options = self.snapshots.options
        return ChunkPipe(blob, options.limits.max_bytes, mode=options.decompress, hasher=hasher)

    def _plain_entries(self, layer: LayerSource, i: int, count: int) -> list[lazy.Entry]:
        hasher = hashlib.new(layer.diff_id.algorithm)
        with self.snapshots.open_layer(layer.desc) as blob:
            pipe = self._pipe(blob, hasher)
            try:
                reader = TarReader(pipe.read)
                entries = lazy.entries_from_members(iter(reader.next, None))
                reader.drain()
            finally:
                pipe.close()
        got = Digest(layer.diff_id.algorithm, pipe.hexdigest())
        if got != layer.diff_id:
            raise DiffIDMismatchError(
                f"wrong diff id calculated on extraction {goquote(str(got))}: the image config names "
                f"{goquote(str(layer.diff_id))} for layer {i + 1} of {count} ({layer.desc.digest})"
            )
        return entries

    def check_blob(self, desc: Descriptor, diff_id: Digest) -> None:
        """The completion check of a TOC layer now in the content store: its TOC read again from
        the blob (pinned by the same annotation, so the very TOC a partial tree was built from)
        must list exactly the blob's tar members, one for one, and the tar must hash to
        ``diff_id``. Raises ``LazyFormatError`` (``mismatch``), ``DiffIDMismatchError`` or
        ``LayerError``."""
        path = self.snapshots.store.local_blob_path(desc.digest)
        if path is None:
            raise ImageVolError(f"layer {desc.digest} is not a local blob")
        reader = FileReader.open(path)
        try:
            toc = lazy.read_layer_toc(desc, reader, members=tar_members)
        finally:
            reader.close()
        # eStargz TOCs keep whole seconds only; a full pull applies the tar's own times.
        slack = 999_999_999 if toc.format is lazy.TocFormat.ESTARGZ else 0
        hasher = hashlib.new(diff_id.algorithm)
        with self.snapshots.open_layer(desc) as blob:
            pipe = self._pipe(blob, hasher)
            try:
                tar = TarReader(pipe.read)
                lazy.check_members_match(toc.entries, iter(tar.next, None), time_slack_ns=slack)
                tar.drain()
            finally:
                pipe.close()
        got = Digest(diff_id.algorithm, pipe.hexdigest())
        if got != diff_id:
            raise DiffIDMismatchError(
                f"wrong diff id calculated on extraction {goquote(str(got))}: the image config names "
                f"{goquote(str(diff_id))}"
            )

    def acquire(
        self,
        image: SnapshotKey,
        layers: Sequence[LayerSource],
        sub_path: str,
        policy: lazy.Policy,
        holder: str,
    ) -> PartialResult:
        """The partial tree of ``sub_path`` in the image of ``layers`` (whose full tree would be
        ``image``), built if needed and leased to ``holder``. Raises ``SubPathError`` for a sub
        path the full tree would refuse, anything else for a lazy failure."""
        index = self.index(layers)
        resolution = lazy.resolve(index, sub_path, policy, follower=lazy.Follower.current())
        closure = lazy.closure(index, resolution)
        key = partial_key(layers, policy, resolution)
        trust = min((layer.trust for layer in layers), key=_RANK.__getitem__, default=VERIFIED)
        label = Label(
            trust,
            image.name,
            tuple(str(layer.desc.digest) for layer in layers),
            sub_path,
            resolution.path,
            toc_layers=tuple(str(layer.desc.digest) for layer in layers if layer.toc is not None),
        )
        existing = self.label(key)
        if existing is not None and existing.trust == REVOKED:
            # A completion proved these TOCs wrong: never serve that tree again.
            raise lazy_revoked(existing)
        fetched = [0]

        def build(root_fd: int, state: BuildState) -> list[str]:
            fetched[0] = self._write(root_fd, state, key, layers, closure)
            self.set_label(key, label)
            return []

        snap = self.snapshots.acquire_tree(key, build, holder)
        return PartialResult(snap, self.label(key) or label, fetched[0])

    def _write(
        self,
        root_fd: int,
        state: BuildState,
        key: SnapshotKey,
        layers: Sequence[LayerSource],
        closure: lazy.Closure,
    ) -> int:
        scratch = os.path.join(self.snapshots.staging, f"{key.name}.{os.getpid()}.{nonce()}.payloads")
        os.mkdir(scratch, 0o700)
        try:
            fetched, opener = self._payloads(layers, closure, scratch)
            stream = TarStream(synthetic_tar(closure, opener))
            apply_layer_fd(root_fd, io.BufferedReader(stream, 1 << 20), self.snapshots.options, state)
            self._make_empty_implicit_dirs(root_fd, closure)
            return fetched
        finally:
            for name in os.listdir(scratch):
                os.unlink(os.path.join(scratch, name))
            os.rmdir(scratch)

    def _make_empty_implicit_dirs(self, root_fd: int, closure: lazy.Closure) -> None:
        """The synthetic tar leaves implicit directories out, for the applier makes each as the
        missing parent of what lies below it. One with nothing below it in the closure is a
        directory an opaque marker or whiteouts emptied after a lower layer's files made it:
        the full build has it (0755, the builder's), so it is made here the same way, in root."""
        # A closure holds every ancestor of each of its entries: a parent of one has something below.
        below = {node.path.rpartition("/")[0] for node in closure.nodes if "/" in node.path}
        tree = Tree(root_fd, max_depth=self.snapshots.options.limits.max_depth)
        try:
            for node in closure.nodes:
                if node.type == "dir" and node.implicit and node.path != "." and node.path not in below:
                    tree.parent(tuple(node.path.split("/")), create=True)
        finally:
            tree.close()

    def _payloads(
        self, layers: Sequence[LayerSource], closure: lazy.Closure, scratch: str
    ) -> tuple[int, Callable[[lazy.Node], IO[bytes]]]:
        """Make every payload of ``closure`` available; return the bytes fetched and an opener."""
        fetched = 0
        plain: dict[int, set[int]] = {}
        for node in closure.payloads:
            assert node.source is not None
            layer = layers[node.source.layer]
            if layer.toc is None:
                plain.setdefault(node.source.layer, set()).add(node.source.entry)
        for number, layer in enumerate(layers):
            if layer.toc is not None:
                fetched += self._fetch(layer, [n for n in closure.payloads if n.source and n.source.layer == number])
            elif number in plain:
                self._extract(layer, plain[number], number, scratch)

        def opener(node: lazy.Node) -> IO[bytes]:
            assert node.source is not None
            layer = layers[node.source.layer]
            if layer.toc is None:
                return open(os.path.join(scratch, f"{node.source.layer}-{node.source.entry}"), "rb")
            entry = layer.toc.entries[node.source.entry]
            if entry.inline is not None:
                return io.BytesIO(entry.inline)
            assert entry.digest is not None
            return open(self.cache.payload_path(layer.desc.digest, entry.digest), "rb")

        return fetched, opener

    def _fetch(self, layer: LayerSource, nodes: Sequence[lazy.Node]) -> int:
        """Fetch, decode, verify and keep the payloads of ``nodes`` not in the cache yet."""
        assert layer.toc is not None
        toc = layer.toc
        todo: dict[Digest, lazy.Entry] = {}
        for node in nodes:
            assert node.source is not None
            entry = toc.entries[node.source.entry]
            fresh = entry.inline is None and entry.digest is not None and entry.size > 0
            if fresh and entry.digest is not None and not self.cache.has_payload(layer.desc.digest, entry.digest):
                todo.setdefault(entry.digest, entry)
        if not todo:
            return 0
        if layer.reader is None:
            raise ImageVolError("the layer's payloads cannot be fetched: no reader")
        fetched = 0
        batch: list[lazy.Entry] = []
        size = 0
        for entry in todo.values():
            need = sum(r.length for r in lazy.payload_ranges(entry))
            if batch and size + need > FETCH_BATCH:
                fetched += self._fetch_batch(layer, batch)
                batch, size = [], 0
            batch.append(entry)
            size += need
        return fetched + self._fetch_batch(layer, batch)

    def _fetch_batch(self, layer: LayerSource, batch: Sequence[lazy.Entry]) -> int:
        assert layer.toc is not None and layer.reader is not None
        if not batch:
            return 0
        ranges: list[ByteRange] = []
        for entry in batch:
            ranges.extend(lazy.payload_ranges(entry))
        pieces = lazy.read_coalesced(layer.reader, ranges) if ranges else []
        pos = 0
        for entry in batch:
            n = len(lazy.payload_ranges(entry))
            assert entry.digest is not None
            self.cache.put_payload(
                layer.desc.digest, entry.digest, lazy.decode_payload(layer.toc, entry, pieces[pos : pos + n])
            )
            pos += n
        return sum(r.length for r in lazy.coalesce(ranges))

    def _extract(self, layer: LayerSource, wanted: set[int], number: int, scratch: str) -> None:
        """Copy the members ``wanted`` (by ordinal) out of a stored blob, read and verified again."""
        with self.snapshots.open_layer(layer.desc) as blob:
            pipe = self._pipe(blob)
            try:
                reader = TarReader(pipe.read)
                for ordinal, _member in enumerate(iter(reader.next, None)):
                    if ordinal in wanted:
                        fd = os.open(
                            os.path.join(scratch, f"{number}-{ordinal}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
                        )
                        try:
                            reader.copy_to(fd)
                        finally:
                            os.close(fd)
                reader.drain()
            finally:
                pipe.close()


def lazy_revoked(label: Label) -> LazyFormatError:
    """The error a mount of a revoked lazily served sub path fails with."""
    return LazyFormatError("mismatch", f"this sub path was served lazily before and revoked: {label.reason}")


def partial_key(layers: Sequence[LayerSource], policy: lazy.Policy, resolution: lazy.Resolution) -> SnapshotKey:
    """The key of a partial tree: what every layer is (TOC digest or diff ID), the policy, the
    resolved path and the directories and links the walk passed (the tree holds exactly those)."""
    doc = {
        "layers": [layer.identity() for layer in layers],
        "policy": str(policy),
        "path": resolution.path,
        "visited": list(resolution.visited),
    }
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return SnapshotKey.for_partial(Digest.of(raw))
