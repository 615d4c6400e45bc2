"""The content store: an OCI image layout on the local disk or on any fsspec filesystem.

Layout (readable by skopeo, umoci and oras): ``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``.
Our own scratch space is ``ingest/``, which OCI readers ignore.

Blobs arrive through :meth:`ContentStore.ingest`, which follows containerd's content store: write to
a private temporary name in ``ingest/``, hash and count while writing, refuse a byte more than the
descriptor promised, and only when digest and size agree rename into ``blobs/``. A reader therefore
never sees a partial or unverified blob under its digest. Concurrent ingests of one digest, from
threads or processes sharing the node root, are single-flighted by a named lock: the second waits and
then finds the blob present.

``index.json`` is the node's image database: one entry per pulled reference, carrying the OCI
``org.opencontainers.image.ref.name`` annotation (so peers can address it) and our own annotations.

Size: one class over 500 lines, because ingest, fsck and garbage collection share one locking
discipline (the ``gc`` lock, a lock per blob, owner-named ingest files); split, the rules that keep
a blob from being removed while it is written would be spread over several modules.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable, Iterator
from typing import IO, Any

import attrs

from .._tempname import nonce
from .._text import goquote
from ..errors import BlobNotFoundError, ContentError, DigestMismatchError, SizeMismatchError
from ..oci import (
    ANNOTATION_REF_NAME,
    IMAGE_CONFIG_TYPES,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_BYTES,
    OCI_EMPTY,
    Descriptor,
    Digest,
    Index,
    Manifest,
    parse_manifest,
)
from ._localfs import LocalFiles
from .locks import NamedLocks, process_alive

OCI_LAYOUT_VERSION = "1.0.0"
DEFAULT_MAX_BLOB_SIZE = 64 * 1024**3
_CHUNK = 1024 * 1024


@attrs.frozen
class FsckReport:
    """What :meth:`ContentStore.fsck` found (and, with ``repair``, removed)."""

    checked: int
    corrupt: tuple[str, ...]
    orphaned: tuple[str, ...]
    stale_ingests: tuple[str, ...]
    missing: tuple[str, ...]
    repaired: bool
    #: Files under ``blobs/`` whose names are not digests (no OCI reader can address them).
    invalid: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        """Whether nothing was found wrong."""
        return not (self.corrupt or self.orphaned or self.stale_ingests or self.missing or self.invalid)


class ContentStore:
    """An OCI image layout used as a verified, atomic blob store.

    ``root`` is a path on ``fs`` (local disk by default). ``lock_dir`` must be a local directory
    when several processes share the store; without it, locks only exclude threads.
    """

    def __init__(
        self,
        root: str,
        fs: Any | None = None,
        *,
        lock_dir: str | None = None,
        max_blob_size: int = DEFAULT_MAX_BLOB_SIZE,
    ) -> None:
        # The local disk without fsspec (its import is most of a pull's start-up), else the caller's.
        self.fs = fs if fs is not None else LocalFiles()
        self.root = root.rstrip("/") or "/"
        self.max_blob_size = max_blob_size
        self.is_local = "file" in _protocols(self.fs)
        if lock_dir is None and self.is_local:
            lock_dir = self._p("ingest")
        self.locks = NamedLocks(lock_dir)
        self._index_mutex = threading.Lock()
        self._init_layout()

    # --- paths ------------------------------------------------------------------------------

    def _p(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def blob_path(self, digest: Digest) -> str:
        """Where the blob ``digest`` lives (``blobs/<algorithm>/<hex>``)."""
        return self._p("blobs", digest.algorithm, digest.hex)

    def local_blob_path(self, digest: Digest) -> str | None:
        """The blob's path on the local disk, when the store is local (for fast readers)."""
        return self.blob_path(digest) if self.is_local else None

    def _init_layout(self) -> None:
        self.fs.makedirs(self._p("blobs", "sha256"), exist_ok=True)
        self.fs.makedirs(self._p("ingest"), exist_ok=True)
        if not self.fs.exists(self._p("oci-layout")):
            self._atomic_write("oci-layout", json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}).encode())
        if not self.fs.exists(self._p("index.json")):
            self._write_index(
                {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
            )
        self.recover()

    def _atomic_write(self, name: str, data: bytes) -> None:
        tmp = self._p("ingest", f"{name}.{os.getpid()}.{nonce()}.part")
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
            _fsync(f)
        self.fs.mv(tmp, self._p(name))

    # --- blobs ------------------------------------------------------------------------------

    def has(self, digest: Digest) -> bool:
        """Whether the blob is in the store."""
        return bool(self.fs.exists(self.blob_path(digest)))

    def size(self, digest: Digest) -> int:
        """The size of the stored blob in bytes."""
        try:
            return int(self.fs.size(self.blob_path(digest)))
        except FileNotFoundError:
            raise BlobNotFoundError(f"blob {digest} not found") from None

    def open_blob(self, digest: Digest) -> IO[bytes]:
        """Open the stored blob for reading (the caller closes it)."""
        try:
            f: IO[bytes] = self.fs.open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFoundError(f"blob {digest} not found") from None
        return f

    def read_blob(self, digest: Digest, max_size: int | None = None) -> bytes:
        """The stored blob's bytes, refused above ``max_size``."""
        limit = self.max_blob_size if max_size is None else max_size
        # Ask for the size first: read(limit + 1) would make Python allocate the whole limit.
        size = self.size(digest)
        if size > limit:
            raise SizeMismatchError(f"blob {digest} exceeds the {limit}-byte limit")
        with self.open_blob(digest) as f:
            data = f.read(min(size, limit) + 1)
        if len(data) > limit:
            raise SizeMismatchError(f"blob {digest} exceeds the {limit}-byte limit")
        return data

    def check_size(self, desc: Descriptor) -> None:
        """Refuse a descriptor whose size differs from the stored blob of its digest.

        A blob already present was verified when it was ingested, so its digest is right; a second
        descriptor naming it may still lie about its size (another image, another registry). That
        is the descriptor's fault, reported as containerd's metadata store does on commit, never as
        corruption of the store."""
        actual = self.size(desc.digest)
        if actual != desc.size:
            raise SizeMismatchError(
                f"{mismatch('size', desc)}: {goquote(ingest_ref(desc))} failed size validation: "
                f"{actual} != {desc.size}: failed precondition"
            )

    def read_verified(self, desc: Descriptor, limit: int) -> bytes:
        """A small blob (a config) read whole, its size checked against ``desc`` first and its
        digest re-computed: a descriptor that lies about the size is a size mismatch, bytes that no
        longer hash to their name are a corrupt store."""
        if desc.size > limit:
            raise SizeMismatchError(f"blob {desc.digest} of {desc.size} bytes exceeds the {limit}-byte limit")
        self.check_size(desc)
        data = self.read_blob(desc.digest, limit)
        got = Digest.of(data, desc.digest.algorithm)
        if got != desc.digest or len(data) != desc.size:
            raise DigestMismatchError(
                f"{mismatch('digest', desc)}: blob {desc.digest} in the content store is corrupt: it hashes to {got}"
            )
        return data

    def read_manifest(self, desc: Descriptor) -> Manifest | Index:
        """The stored manifest or index ``desc``, verified against its digest and parsed."""
        raw = self.read_blob(desc.digest, MAX_MANIFEST_BYTES)
        return parse_manifest(raw, desc.media_type)

    def ingest(self, desc: Descriptor, chunks: Iterable[bytes | memoryview] | None = None) -> None:
        """Store the blob ``desc`` from ``chunks`` (or from ``desc.data``), verified and atomically.

        If the blob is already present nothing is read. ``chunks`` is consumed only by the one
        thread or process that wins the blob's lock; others wait and then return."""
        if desc.size > self.max_blob_size:
            raise SizeMismatchError(
                f"blob {desc.digest} of {desc.size} bytes exceeds the maximum blob size of {self.max_blob_size} bytes"
            )
        if self.has(desc.digest):
            self.check_size(desc)
            return
        with self.locks.hold(f"blob-{desc.digest.algorithm}-{desc.digest.hex}"):
            if self.has(desc.digest):
                self.check_size(desc)
                return
            if chunks is None:
                if desc.data is None:
                    raise ContentError(f"no content given for blob {desc.digest}")
                chunks = (desc.data,)
            self._write_verified(desc, chunks)

    def ingest_once(self, desc: Descriptor, fetch: Any) -> bool:
        """Like :meth:`ingest`, but ``fetch()`` (returning chunks) is only called by the winner of
        the blob's lock, so a blob is fetched once however many pull it at the same time. Returns
        True when this call fetched it."""
        if self.has(desc.digest):
            self.check_size(desc)
            return False
        with self.locks.hold(f"blob-{desc.digest.algorithm}-{desc.digest.hex}"):
            if self.has(desc.digest):
                self.check_size(desc)
                return False
            if desc.size > self.max_blob_size:
                raise SizeMismatchError(
                    f"blob {desc.digest} of {desc.size} bytes exceeds the maximum blob size of "
                    f"{self.max_blob_size} bytes"
                )
            self._write_verified(desc, fetch())
            return True

    def _write_verified(self, desc: Descriptor, chunks: Iterable[bytes | memoryview]) -> None:
        # Each chunk is hashed and written before the next is asked for: a source may lend views
        # of one buffer it reuses (the registry's blob stream).
        tmp = self._p("ingest", f"{desc.digest.hex}.{os.getpid()}.{nonce()}.part")
        hasher = desc.digest.hasher()
        written = 0
        ref = ingest_ref(desc)
        try:
            with self.fs.open(tmp, "wb") as f:
                for chunk in chunks:
                    written += len(chunk)
                    if written > desc.size:
                        raise SizeMismatchError(
                            f"{mismatch('size', desc)}: failed commit on ref {goquote(ref)}: received more than "
                            f"the {desc.size} bytes its descriptor declares: failed precondition"
                        )
                    hasher.update(chunk)
                    f.write(chunk)
                if written != desc.size:
                    raise SizeMismatchError(
                        f"{mismatch('size', desc)}: failed commit on ref {goquote(ref)}: unexpected commit size "
                        f"{written}, expected {desc.size}: failed precondition"
                    )
                got = f"{desc.digest.algorithm}:{hasher.hexdigest()}"
                if got != str(desc.digest):
                    raise DigestMismatchError(
                        f"{mismatch('digest', desc)}: failed commit on ref {goquote(ref)}: unexpected commit "
                        f"digest {got}, expected {desc.digest}: failed precondition"
                    )
                _fsync(f)
            self.fs.mv(tmp, self.blob_path(desc.digest))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(tmp)
            raise

    def delete_blob(self, digest: Digest) -> None:
        """Remove a blob (the caller makes sure nothing needs it)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.blob_path(digest))

    def blobs(self) -> Iterator[Digest]:
        """The digest of every stored blob."""
        for path in self._blob_files():
            try:
                yield _digest_of_path(path)
            except ContentError:
                continue

    def usage(self) -> tuple[int, int]:
        """Bytes and number of the blobs in the store (one removed meanwhile is not counted)."""
        total = count = 0
        for digest in self.blobs():
            try:
                total += self.size(digest)
            except BlobNotFoundError:
                continue
            count += 1
        return total, count

    def _blob_files(self) -> list[str]:
        out = []
        for alg in self.fs.ls(self._p("blobs"), detail=False):
            if self.fs.isdir(alg):
                out += [p.rstrip("/") for p in self.fs.ls(alg, detail=False)]
            else:
                out.append(alg.rstrip("/"))
        return out

    def _invalid_blob_files(self) -> list[str]:
        bad = []
        for path in self._blob_files():
            try:
                _digest_of_path(path)
            except ContentError:
                bad.append(path)
        return bad

    def verify_blob(self, digest: Digest) -> bool:
        """Re-hash the stored blob; whether it still matches its digest."""
        hasher = digest.hasher()
        with self.open_blob(digest) as f:
            while chunk := f.read(_CHUNK):
                hasher.update(chunk)
        return bool(hasher.hexdigest() == digest.hex)

    # --- index.json (the image database) -------------------------------------------------------

    def _read_index(self) -> dict[str, Any]:
        with self.fs.open(self._p("index.json"), "rb") as f:
            obj = json.loads(f.read())
        if not isinstance(obj, dict) or not isinstance(obj.get("manifests"), list):
            raise ContentError("index.json of the content store is malformed")
        return obj

    def _write_index(self, obj: dict[str, Any]) -> None:
        self._atomic_write("index.json", json.dumps(obj, indent=1, sort_keys=True).encode())

    @contextlib.contextmanager
    def _index_update(self) -> Iterator[dict[str, Any]]:
        with self._index_mutex, self.locks.hold("index"):
            obj = self._read_index()
            before = json.dumps(obj, sort_keys=True)
            yield obj
            if json.dumps(obj, sort_keys=True) != before:  # an update that changed nothing writes nothing
                self._write_index(obj)

    def refs(self) -> dict[str, Descriptor]:
        """Every named entry of index.json, by ``ref.name``."""
        out: dict[str, Descriptor] = {}
        for entry in self._read_index()["manifests"]:
            try:
                desc = Descriptor.from_json(entry)
            except Exception:
                continue
            name = desc.annotations.get(ANNOTATION_REF_NAME)
            if name:
                out[name] = desc
        return out

    def get_ref(self, name: str) -> Descriptor | None:
        """The descriptor ``index.json`` holds under the ref name ``name``, None if none."""
        return self.refs().get(name)

    def set_ref(self, name: str, desc: Descriptor) -> None:
        """Point ``name`` at ``desc`` (replacing any previous target). Every blob it reaches must
        already be in the store; the entry is only written after that, so a crash leaves the old
        state."""
        annotations = dict(desc.annotations)
        annotations[ANNOTATION_REF_NAME] = name
        entry = attrs.evolve(desc, annotations=annotations, data=None).to_json()
        with self._index_update() as obj:
            kept = [e for e in obj["manifests"] if (e.get("annotations") or {}).get(ANNOTATION_REF_NAME) != name]
            kept.append(entry)
            kept.sort(key=lambda e: (e.get("annotations") or {}).get(ANNOTATION_REF_NAME, ""))
            obj["manifests"] = kept

    def remove_ref(self, name: str) -> bool:
        """Remove the ref name ``name`` from ``index.json``; False if there was none."""
        with self._index_update() as obj:
            before = len(obj["manifests"])
            obj["manifests"] = [
                e for e in obj["manifests"] if (e.get("annotations") or {}).get(ANNOTATION_REF_NAME) != name
            ]
            return len(obj["manifests"]) != before

    # --- reachability, fsck, recovery -------------------------------------------------------------

    def reachable(self) -> tuple[set[Digest], set[Digest]]:
        """(present, missing) blobs reachable from index.json. Index entries whose platform
        manifests were not pulled are not counted as missing: only one platform is ever fetched."""
        present: set[Digest] = set()
        missing: set[Digest] = set()
        for entry in self._read_index()["manifests"]:
            try:
                desc = Descriptor.from_json(entry)
            except Exception:
                continue
            self._walk(desc, present, missing, top=True)
        return present, missing

    def _walk(self, desc: Descriptor, present: set[Digest], missing: set[Digest], *, top: bool) -> None:
        if not self.has(desc.digest):
            if top or desc.media_type not in MANIFEST_TYPES:
                missing.add(desc.digest)
            return
        present.add(desc.digest)
        if desc.media_type in MANIFEST_TYPES | INDEX_TYPES:
            try:
                doc = self.read_manifest(desc)
            except Exception:
                return
            if isinstance(doc, Index):
                for child in doc.manifests:
                    self._walk(child, present, missing, top=False)
            else:
                for blob in doc.blobs():
                    if self.has(blob.digest):
                        present.add(blob.digest)
                    elif blob.data is None:
                        missing.add(blob.digest)

    def fsck(self, *, repair: bool = False) -> FsckReport:
        """Verify every blob; report (and with ``repair`` remove) corrupt blobs, blobs no entry of
        index.json reaches, and temporary files of dead ingests."""
        with self.locks.hold("gc"):
            corrupt: list[str] = []
            checked = 0
            for digest in list(self.blobs()):
                checked += 1
                if not self.verify_blob(digest):
                    corrupt.append(str(digest))
                    if repair:
                        self.delete_blob(digest)
            present, missing = self.reachable()
            orphaned = [str(d) for d in self.blobs() if d not in present and str(d) not in corrupt]
            if repair:
                for d in orphaned:
                    self.delete_blob(Digest.parse(d))
            stale = self._stale_ingests()
            invalid = self._invalid_blob_files()
            if repair:
                for path in stale + invalid:
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.rm(path, recursive=True)
            return FsckReport(
                checked=checked,
                corrupt=tuple(sorted(corrupt)),
                orphaned=tuple(sorted(orphaned)),
                stale_ingests=tuple(sorted(p.rsplit("/", 1)[-1] for p in stale)),
                missing=tuple(sorted(str(d) for d in missing)),
                repaired=repair,
                invalid=tuple(sorted(p[len(self._p("blobs")) + 1 :] for p in invalid)),
            )

    def _stale_ingests(self) -> list[str]:
        stale = []
        for path in self.fs.ls(self._p("ingest"), detail=False):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if not name.endswith(".part"):
                continue
            parts = name.split(".")
            pid = int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else -1
            if not process_alive(pid):
                stale.append(path)
        return stale

    def recover(self) -> list[str]:
        """Remove temporary files left by ingests whose process died (a crash mid-pull)."""
        removed = []
        for path in self._stale_ingests():
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(path)
                removed.append(path)
        return removed

    def garbage_collect(self, keep: set[Digest] | None = None) -> list[Digest]:
        """Delete every blob not reachable from index.json (nor in ``keep``)."""
        with self.locks.hold("gc"):
            present, _ = self.reachable()
            keep = present | (keep or set())
            removed = [d for d in self.blobs() if d not in keep]
            for d in removed:
                self.delete_blob(d)
            return removed


def _digest_of_path(path: str) -> Digest:
    """``.../blobs/<alg>/<hex>`` as a digest; ContentError for anything else."""
    parts = path.rstrip("/").rsplit("/", 2)
    if len(parts) < 3 or (parts[-3].rsplit("/", 1)[-1] != "blobs" and not parts[-3].endswith("blobs")):
        raise ContentError(f"{path} is not a blob path")
    try:
        return Digest.parse(f"{parts[-2]}:{parts[-1]}")
    except Exception:
        raise ContentError(f"{path} is not named by a digest") from None


def mismatch(what: str, desc: Descriptor) -> str:
    """``size mismatch for layer sha256:...``: how every verification error starts, naming the
    descriptor that was wrong (the caller adds the image)."""
    return f"{what} mismatch for {blob_kind(desc.media_type)} {desc.digest}"


def ingest_ref(desc: Descriptor) -> str:
    """containerd's ingest ref for a descriptor: ``layer-sha256:...``, ``config-sha256:...``..."""
    return f"{blob_kind(desc.media_type)}-{desc.digest}"


def blob_kind(media_type: str) -> str:
    """containerd's ingest ref prefix for a media type: index, manifest, config or layer."""
    if media_type in INDEX_TYPES:
        return "index"
    if media_type in MANIFEST_TYPES:
        return "manifest"
    if media_type in IMAGE_CONFIG_TYPES - {""} or media_type == OCI_EMPTY or "config" in media_type:
        return "config"
    return "layer"


def _fsync(f: Any) -> None:
    with contextlib.suppress(AttributeError, OSError, ValueError):
        f.flush()
        os.fsync(f.fileno())


def _protocols(fs: Any) -> tuple[str, ...]:
    proto = getattr(fs, "protocol", ())
    return (proto,) if isinstance(proto, str) else tuple(proto)
