"""Pulling references into the content store, for images and artifacts: what the runtime's image
service does for ``PullImage`` and ``ImageStatus``.

:meth:`ImagePuller.pull` walks the sources a reference maps to (mirrors first, registries.conf semantics), fetches
the manifest, picks the node's platform out of an index, and ingests config and layers into the
content store. Every byte is verified against the digest that referred to it: the manifest against
the digest in the reference or the one the source resolved, an index entry's manifest against the
index, blobs against the manifest. Limits are checked before anything is fetched. The config is
fetched first, then the layers, up to ``max_concurrent_downloads`` at a time (containerd's default
is 3; oras-py fetches one after another, gap 11). The image record is written last, so a failed or
interrupted pull leaves no name pointing at incomplete content.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

import attrs

from .._text import goquote
from ..errors import (
    ContentError,
    DigestMismatchError,
    ImageNotFoundError,
    ImageVolError,
    InvalidReferenceError,
    ManifestError,
    PullError,
    RegistryUnavailableError,
    SizeMismatchError,
)
from ..oci import (
    INDEX_TYPES,
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    Descriptor,
    Digest,
    Index,
    Manifest,
    Platform,
    host_platform,
    image_diff_ids,
    parse_manifest,
)
from ..oci.reference import Reference, parse_normalized
from .image_db import ImageDatabase, ImageRecord, store_name
from .sources.auth import ANONYMOUS, Keyring
from .sources.base import Source, ViewSource
from .sources.mirrors import PullSource, RegistriesConfig
from .store import ContentStore, mismatch

if TYPE_CHECKING:
    from concurrent.futures import Future

#: Builds a registry source for one endpoint. Given the credentials that apply to its host.
RegistryFactory = Callable[[PullSource, Keyring], Source]
#: Told ``(bytes fetched, bytes to fetch)`` as a pull progresses (from several threads).
ProgressFn = Callable[[int, int], None]
#: Lazy pulls: given the source and an image manifest, the layers not to fetch now (their tables
#: of contents fetched and verified by the hook, which also keeps them).
DeferFn = Callable[[Source, Manifest], set[Digest]]

DEFAULT_MAX_CONCURRENT_DOWNLOADS = 3


@attrs.frozen
class PullResult:
    """A finished pull: the stored record, how long it took (seconds) and how many blobs were fetched."""

    record: ImageRecord
    duration: float
    fetched_blobs: int


class _CancelledError(Exception):
    """Another blob of the same pull failed: stop this one (its temporary file is removed)."""


class ImagePuller:
    """Pull references into one node's content store and look up what was pulled (the image
    database, :attr:`image_db`). ``imagevol.Resolver`` is its old name."""

    def __init__(
        self,
        store: ContentStore,
        registries: RegistriesConfig | None = None,
        *,
        platform: Platform | None = None,
        registry_factory: RegistryFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_concurrent_downloads: int = DEFAULT_MAX_CONCURRENT_DOWNLOADS,
        progress: ProgressFn | None = None,
    ) -> None:
        self.store = store
        self.image_db = ImageDatabase(store)
        self.registries = registries or RegistriesConfig()
        self.platform = platform or host_platform()
        self.registry_factory = registry_factory
        self.clock = clock
        self.max_concurrent_downloads = max(1, max_concurrent_downloads)
        self.progress = progress
        #: Set by a lazy runtime: which layers a pull leaves in the registry (see :data:`DeferFn`).
        self.defer_layers: DeferFn | None = None

    @property
    def images(self) -> ImageDatabase:
        """The old name of :attr:`image_db`."""
        return self.image_db

    # --- ImageStatus ---------------------------------------------------------------------------

    def lookup(self, reference: str) -> ImageRecord | None:
        """The local record for ``reference`` when every blob it needs is present."""
        record = self.image_db.lookup(reference)
        if record is None or not self.is_complete(record):
            return None
        return record

    def is_complete(self, record: ImageRecord) -> bool:
        """Whether the manifests and the config of ``record`` are in the store (layers are
        checked when the tree is built)."""
        needed = [record.manifest_digest, record.target.digest, record.config_digest]
        return all(self.store.has(d) for d in needed)

    # --- PullImage ---------------------------------------------------------------------------

    def pull(self, reference: str, keyring: Keyring | None = None) -> PullResult:
        """Pull ``reference`` (a user string) with ``keyring``; return the stored record.

        Sources are tried in order (mirrors, then the registry itself); the error raised when all
        fail names every failure and has the type of the last one (the registry's own answer),
        unless a source served content that failed verification: then the image was found and
        its content is wrong, which is what the error says (never "failed to resolve")."""
        start = self.clock()
        try:
            ref = parse_normalized(reference)
        except InvalidReferenceError as exc:
            raise InvalidReferenceError(f"failed to pull image {goquote(reference)}: {exc}") from None
        if not ref.tag and not ref.digest:
            ref = ref.with_tag("latest")
        prefix = f"failed to pull and unpack image {goquote(str(ref))}"
        keyring = keyring or Keyring()
        try:
            specs = self.registries.pull_sources(ref)
        except PullError as exc:
            raise type(exc)(f"{prefix}: {exc}") from None
        errors: list[str] = []
        failures: list[ImageVolError] = []
        last: ImageVolError | None = None
        for spec in specs:
            source: Source | None = None
            try:
                source = self._source(spec, keyring)
                # A shared hold on "gc": blobs ingested before the record is written are not yet
                # reachable from index.json, and a garbage collection must not delete them.
                with self.store.locks.hold("gc", shared=True):
                    record, fetched = self._pull_from(ref, source, keyring, spec)
            except ImageVolError as exc:
                errors.append(str(exc))
                failures.append(exc)
                last = exc
                continue
            finally:
                if source is not None:
                    source.close()
            return PullResult(record, self.clock() - start, fetched)
        detail = "; ".join(errors) or "no source configured"
        last = next((e for e in reversed(failures) if isinstance(e, ContentError)), last)
        if last is None or isinstance(last, ImageNotFoundError):
            raise ImageNotFoundError(f"{prefix}: failed to resolve reference {goquote(str(ref))}: {detail}")
        if isinstance(last, RegistryUnavailableError):
            # The CRI sentinel first, so the kubelet reports RegistryUnavailable (R3.6).
            raise RegistryUnavailableError(f"RegistryUnavailable: {prefix}: {detail}")
        kind = type(last) if isinstance(last, PullError | ContentError | ManifestError) else PullError
        raise kind(f"{prefix}: {detail}")

    def _source(self, spec: PullSource, keyring: Keyring) -> Source:
        if spec.endpoint.is_layout:
            from .sources.layout import OCILayoutSource  # only for an oci-layout: mirror

            return OCILayoutSource(spec.endpoint.layout_path, spec.layout_ref_name, spec.reference.digest)
        if self.registry_factory is None:
            raise ImageNotFoundError(f"{spec.endpoint.location}: no registry access configured")
        return self.registry_factory(spec, keyring)

    def _fetch_manifest(self, source: Source, desc: Descriptor) -> tuple[bytes, Manifest | Index]:
        if desc.size > MAX_MANIFEST_BYTES:
            raise ManifestError(
                f"manifest {desc.digest} of {desc.size} bytes exceeds the {MAX_MANIFEST_BYTES}-byte limit"
            )
        raw = source.fetch_manifest(desc)
        got = Digest.of(raw, desc.digest.algorithm)
        kind = "index" if desc.media_type in INDEX_TYPES else "manifest"
        if got != desc.digest:
            raise DigestMismatchError(f"digest mismatch for {kind} {desc.digest}: content hashes to {got}")
        if len(raw) != desc.size:
            raise SizeMismatchError(
                f"size mismatch for {kind} {desc.digest}: {len(raw)} bytes, its descriptor declares {desc.size}"
            )
        return raw, parse_manifest(raw, desc.media_type)

    def _pull_from(self, ref: Reference, source: Source, keyring: Keyring, spec: PullSource) -> tuple[ImageRecord, int]:
        top = source.resolve()
        if ref.digest and str(top.digest) != ref.digest:
            raise DigestMismatchError(f"{source.description}: resolved {top.digest}, reference pins {ref.digest}")
        raw, doc = self._fetch_manifest(source, top)
        top = Descriptor(top.media_type or _kind(doc), top.digest, top.size)
        manifest_desc, manifest_raw, manifest = top, raw, doc
        if isinstance(doc, Index):
            manifest_desc = doc.select(self.platform)
            manifest_raw, child = self._fetch_manifest(source, manifest_desc)
            if not isinstance(child, Manifest):
                raise ManifestError(f"index entry {manifest_desc.digest} is not an image manifest")
            manifest = child
        assert isinstance(manifest, Manifest)
        blobs = _unique(manifest.blobs())
        for blob in blobs:
            if blob.data is not None and len(blob.data) != blob.size:
                raise SizeMismatchError(
                    f"{mismatch('size', blob)}: embedded data of {len(blob.data)} bytes, its descriptor "
                    f"declares {blob.size}"
                )
            if blob.data is not None and Digest.of(blob.data, blob.digest.algorithm) != blob.digest:
                raise DigestMismatchError(f"{mismatch('digest', blob)}: embedded data does not match its descriptor")
            if blob.size > self.store.max_blob_size:
                raise SizeMismatchError(
                    f"blob {blob.digest} of {blob.size} bytes exceeds the maximum blob size of "
                    f"{self.store.max_blob_size} bytes"
                )
        if manifest.is_image and manifest.config.size > MAX_CONFIG_BYTES:
            raise SizeMismatchError(
                f"image config {manifest.config.digest} of {manifest.config.size} bytes exceeds the "
                f"{MAX_CONFIG_BYTES}-byte limit"
            )
        # An image's config names its layers by diff ID: check that it names as many as the manifest
        # lists (containerd's unpacker does the same) before any layer is fetched.
        check = (lambda: self.diff_ids(manifest)) if manifest.is_image else None
        deferred = self.defer_layers(source, manifest) if self.defer_layers and manifest.is_image else set()
        wanted = [b for b in blobs if b.digest not in deferred or b.digest == manifest.config.digest]
        fetched = self._ingest_blobs(source, wanted, after_config=check)
        # Manifests last: a manifest in the store implies its blobs are there.
        self.store.ingest(manifest_desc, [manifest_raw])
        if manifest_desc != top:
            self.store.ingest(top, [raw])
        used = source.credentials_used()
        auth = used.fingerprint() if used is not None else ANONYMOUS
        size = manifest_desc.size + sum(b.size for b in blobs) + (top.size if manifest_desc != top else 0)
        record = ImageRecord(
            name=store_name(ref),
            target=top,
            manifest_digest=manifest_desc.digest,
            config_digest=manifest.config.digest,
            artifact=not manifest.is_image,
            size=size,
            auth=(auth,),
            pulled_at=time.time(),
        )
        previous = self.image_db.get(record.name)
        if previous is not None and previous.target.digest == record.target.digest:
            record = attrs.evolve(record, auth=tuple(dict.fromkeys((*previous.auth, auth))))
        self.image_db.put(record)
        return record, fetched

    def _ingest_blobs(
        self, source: Source, blobs: Sequence[Descriptor], after_config: Callable[[], object] | None = None
    ) -> int:
        """Store every blob not yet present: the config first (then ``after_config()``), then the
        layers concurrently. Blobs already present must have the size their descriptor declares.
        The first failure stops the others; each blob is fetched once even when other pulls
        (threads or processes) want it at the same time (the store's single-flight)."""
        for blob in blobs:
            if self.store.has(blob.digest):
                _named(blob, functools.partial(self.store.check_size, blob))
        todo = [b for b in blobs if not self.store.has(b.digest)]
        total = sum(b.size for b in todo if b.data is None)
        meter = _Meter(total, self.progress)
        cancel = threading.Event()

        def one(blob: Descriptor) -> bool:
            return _named(blob, lambda: self.store.ingest_once(blob, _fetch(source, blob, meter, cancel)))

        fetched = 0
        if todo and blobs and todo[0] is blobs[0]:
            fetched = int(one(todo[0]))
            todo = todo[1:]
        if after_config is not None:
            after_config()
        if not todo:
            meter.report()
            return fetched
        rest = todo
        if len(rest) <= 1 or self.max_concurrent_downloads == 1:
            return fetched + sum(one(b) for b in rest)
        # Imported here: an image with one layer (and a whole-process pull of it) never needs it.
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

        with ThreadPoolExecutor(max_workers=min(len(rest), self.max_concurrent_downloads)) as pool:
            futures: list[Future[bool]] = [pool.submit(one, b) for b in rest]
            wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.done() and f.exception() is not None for f in futures):
                cancel.set()
                for f in futures:
                    f.cancel()
                wait(futures)
                errors = [f.exception() for f in futures if not f.cancelled()]
                raise next(e for e in errors if e is not None and not isinstance(e, _CancelledError))
        return fetched + sum(f.result() for f in futures)

    # --- content a lazy pull left in the registry --------------------------------------------------

    def sources_for(self, record: ImageRecord, keyring: Keyring | None = None) -> Generator[Source, None, None]:
        """Sources of ``record``'s content, in pull order (mirrors first); each is closed when the
        caller moves on to the next one or stops."""
        ref = parse_normalized(record.name)
        for spec in self.registries.pull_sources(ref):
            try:
                source = self._source(spec, keyring or Keyring())
            except ImageVolError:
                continue
            try:
                yield source
            finally:
                source.close()

    def fetch_blobs(self, record: ImageRecord, blobs: Sequence[Descriptor], keyring: Keyring | None = None) -> int:
        """Fetch the blobs of ``record``'s image that are not in the store (layers a lazy pull
        left in the registry), verified as in a pull, from the first source that has them all.
        Returns how many were fetched; raises the last source's error when none could."""
        missing = [b for b in _unique(blobs) if not self.store.has(b.digest)]
        if not missing:
            return 0
        prefix = f"failed to pull and unpack image {goquote(record.name)}"
        errors: list[str] = []
        last: ImageVolError | None = None
        for source in self.sources_for(record, keyring):
            try:
                with self.store.locks.hold("gc", shared=True):
                    return self._ingest_blobs(source, missing)
            except ImageVolError as exc:
                errors.append(str(exc))
                last = exc
        kind = type(last) if isinstance(last, PullError | ContentError) else PullError
        raise kind(f"{prefix}: {'; '.join(errors) or 'no source configured'}")

    def manifest_of(self, record: ImageRecord) -> Manifest:
        """The image manifest of ``record`` (a manifest, never an index), read from the store."""
        doc = self.store.read_manifest(Descriptor("", record.manifest_digest, self.store.size(record.manifest_digest)))
        if not isinstance(doc, Manifest):
            raise ManifestError(f"{record.manifest_digest} is not an image manifest")
        return doc

    def diff_ids(self, manifest: Manifest) -> tuple[Digest, ...]:
        """The diff IDs an image's config gives its layers, one per layer (its config must be in
        the store; its size and digest are checked again as it is read)."""
        return image_diff_ids(manifest, self.store.read_verified(manifest.config, MAX_CONFIG_BYTES))


class _Meter:
    """Counts fetched bytes across threads and tells the progress callback."""

    def __init__(self, total: int, progress: ProgressFn | None) -> None:
        self.total = total
        self.done = 0
        self.progress = progress
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        if self.progress is None:
            return
        with self._lock:
            self.done += n
            self.progress(self.done, self.total)

    def report(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total)


def _fetch(
    source: Source, blob: Descriptor, meter: _Meter, cancel: threading.Event
) -> Callable[[], Iterator[bytes | memoryview]]:
    if blob.data is not None:
        data = blob.data
        return lambda: iter((data,))

    def chunks() -> Iterator[bytes | memoryview]:
        # A registry lends views of one buffer (no allocation per read): the store hashes and
        # writes each chunk before it asks for the next, which is all a view needs.
        stream = source.fetch_blob_views(blob) if isinstance(source, ViewSource) else source.fetch_blob(blob)
        for chunk in stream:
            if cancel.is_set():
                raise _CancelledError()
            meter.add(len(chunk))
            yield chunk

    return chunks


T = TypeVar("T")


def _named(blob: Descriptor, step: Callable[[], T]) -> T:
    """Run ``step`` for ``blob``; a size or digest failure names the blob of the descriptor it
    concerns (``size mismatch for layer sha256:...``), whoever raised it (a source or the store)."""
    try:
        return step()
    except SizeMismatchError as exc:
        if str(exc).startswith(mismatch("size", blob)):
            raise  # the store's own words already name it
        raise SizeMismatchError(f"{mismatch('size', blob)}: {exc}") from None
    except DigestMismatchError as exc:
        if str(exc).startswith(mismatch("digest", blob)):
            raise
        raise DigestMismatchError(f"{mismatch('digest', blob)}: {exc}") from None


def _unique(blobs: Sequence[Descriptor]) -> list[Descriptor]:
    """Each digest once (a manifest may list one layer twice)."""
    seen: set[Digest] = set()
    out = []
    for b in blobs:
        if b.digest not in seen:
            seen.add(b.digest)
            out.append(b)
    return out


def _kind(doc: Manifest | Index) -> str:
    return doc.media_type
