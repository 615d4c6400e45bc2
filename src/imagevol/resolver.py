"""The runtime's image service: ``PullImage`` and ``ImageStatus`` for images and artifacts.

``pull`` walks the sources a reference maps to (mirrors first, registries.conf semantics), fetches
the manifest, picks the node's platform out of an index, and ingests config and layers into the
content store. Every byte is verified against the digest that referred to it: the manifest against
the digest in the reference or the one the source resolved, an index entry's manifest against the
index, blobs against the manifest. The image record is written last, so a failed or interrupted pull
leaves no name pointing at incomplete content.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import attrs

from ._text import goquote
from .errors import (
    DigestMismatchError,
    ImageNotFoundError,
    ImageVolError,
    InvalidReferenceError,
    ManifestError,
    PullError,
)
from .images import ImageDB, ImageRecord, store_name
from .oci import (
    MAX_MANIFEST_BYTES,
    Descriptor,
    Digest,
    Index,
    Manifest,
    Platform,
    host_platform,
    parse_manifest,
)
from .reference import Reference, parse_normalized
from .sources.auth import ANONYMOUS, Keyring
from .sources.base import Source
from .sources.layout import OCILayoutSource
from .sources.mirrors import PullSource, RegistriesConfig
from .store import ContentStore

#: Builds a registry source for one endpoint. Given the credentials that apply to its host.
RegistryFactory = Callable[[PullSource, Keyring], Source]


@attrs.frozen
class PullResult:
    record: ImageRecord
    duration: float
    fetched_blobs: int


class Resolver:
    """Pull and look up images for one node."""

    def __init__(
        self,
        store: ContentStore,
        registries: RegistriesConfig | None = None,
        *,
        platform: Platform | None = None,
        registry_factory: RegistryFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.images = ImageDB(store)
        self.registries = registries or RegistriesConfig()
        self.platform = platform or host_platform()
        self.registry_factory = registry_factory
        self.clock = clock

    # --- ImageStatus ---------------------------------------------------------------------------

    def lookup(self, reference: str) -> ImageRecord | None:
        """The local record for ``reference`` when every blob it needs is present."""
        record = self.images.lookup(reference)
        if record is None:
            return None
        needed = [record.manifest_digest, record.target.digest]
        if not all(self.store.has(d) for d in needed):
            return None
        return record

    # --- PullImage ---------------------------------------------------------------------------

    def pull(self, reference: str, keyring: Keyring | None = None) -> PullResult:
        """Pull ``reference`` (a user string) with ``keyring``; return the stored record."""
        start = self.clock()
        try:
            ref = parse_normalized(reference)
        except InvalidReferenceError as exc:
            raise InvalidReferenceError(f"failed to pull image {goquote(reference)}: {exc}") from None
        if not ref.tag and not ref.digest:
            ref = ref.with_tag("latest")
        keyring = keyring or Keyring()
        errors: list[str] = []
        last: ImageVolError | None = None
        for spec in self.registries.pull_sources(ref):
            try:
                source = self._source(spec, keyring)
                record, fetched = self._pull_from(ref, source, keyring, spec)
            except ImageNotFoundError as exc:
                errors.append(str(exc))
                continue
            except ImageVolError as exc:
                errors.append(str(exc))
                last = exc
                continue
            return PullResult(record, self.clock() - start, fetched)
        detail = "; ".join(errors) or "no source configured"
        message = f"failed to pull and unpack image {goquote(str(ref))}: {detail}"
        if last is None:
            raise ImageNotFoundError(
                f"failed to pull and unpack image {goquote(str(ref))}: failed to resolve reference "
                f"{goquote(str(ref))}: {ref!s}: not found"
            )
        raise type(last)(message) if isinstance(last, PullError) else PullError(message)

    def _source(self, spec: PullSource, keyring: Keyring) -> Source:
        if spec.endpoint.is_layout:
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
        if got != desc.digest:
            raise DigestMismatchError(f"manifest {desc.digest}: content hashes to {got}")
        if len(raw) != desc.size:
            raise ManifestError(f"manifest {desc.digest}: {len(raw)} bytes, descriptor says {desc.size}")
        return raw, parse_manifest(raw, desc.media_type)

    def _pull_from(self, ref: Reference, source: Source, keyring: Keyring, spec: PullSource) -> tuple[ImageRecord, int]:
        top = source.resolve()
        if ref.digest and str(top.digest) != ref.digest:
            raise DigestMismatchError(f"{source.description}: resolved {top.digest}, reference pins {ref.digest}")
        raw, doc = self._fetch_manifest(source, top)
        top = Descriptor(top.media_type or _kind(doc), top.digest, top.size)
        fetched = 0
        manifest_desc, manifest_raw, manifest = top, raw, doc
        if isinstance(doc, Index):
            manifest_desc = doc.select(self.platform)
            manifest_raw, child = self._fetch_manifest(source, manifest_desc)
            if not isinstance(child, Manifest):
                raise ManifestError(f"index entry {manifest_desc.digest} is not an image manifest")
            manifest = child
        assert isinstance(manifest, Manifest)
        for blob in manifest.blobs():
            if blob.data is not None and Digest.of(blob.data, blob.digest.algorithm) != blob.digest:
                raise DigestMismatchError(f"embedded data of {blob.digest} does not match its digest")
            fetched += self.store.ingest_once(blob, _fetch(source, blob))
        # Manifests last: a manifest in the store implies its blobs are there.
        self.store.ingest(manifest_desc, [manifest_raw])
        if manifest_desc != top:
            self.store.ingest(top, [raw])
        auth = keyring_fingerprint(keyring, spec)
        size = manifest_desc.size + sum(b.size for b in manifest.blobs())
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
        previous = self.images.get(record.name)
        if previous is not None and previous.target.digest == record.target.digest:
            record = attrs.evolve(record, auth=tuple(dict.fromkeys((*previous.auth, auth))))
        self.images.put(record)
        return record, fetched

    def manifest_of(self, record: ImageRecord) -> Manifest:
        doc = self.store.read_manifest(Descriptor("", record.manifest_digest, self.store.size(record.manifest_digest)))
        if not isinstance(doc, Manifest):
            raise ManifestError(f"{record.manifest_digest} is not an image manifest")
        return doc


def keyring_fingerprint(keyring: Keyring, spec: PullSource) -> str:
    """Which credentials a pull used, for KEP-2535 (R7.4): the first matching entry's fingerprint
    (the one a registry source tries first), else ``anonymous``."""
    if spec.endpoint.is_layout:
        return ANONYMOUS
    creds = keyring.for_host(spec.endpoint.location)
    return creds[0].fingerprint() if creds else ANONYMOUS


def _fetch(source: Source, blob: Descriptor) -> Callable[[], Iterator[bytes]]:
    if blob.data is not None:
        data = blob.data
        return lambda: iter((data,))
    return lambda: source.fetch_blob(blob)


def _kind(doc: Manifest | Index) -> str:
    return doc.media_type
