"""The node's image database: which references are pulled, to what, kept in the content store's
``index.json`` (one entry per reference, with our annotations next to the OCI ``ref.name``)."""

from __future__ import annotations

import time

import attrs

from ..errors import InvalidReferenceError
from ..oci import Descriptor, Digest
from ..oci.reference import Reference, parse_normalized
from .store import ContentStore

_A = "io.imagevol."


@attrs.frozen
class ImageRecord:
    """A pulled image or artifact, as the runtime's image service knows it."""

    name: str
    target: Descriptor
    manifest_digest: Digest
    config_digest: Digest
    artifact: bool
    size: int
    #: Fingerprints of credentials that have proven access to this image (KEP-2535, R7.4);
    #: ``anonymous`` when it was pulled without credentials.
    auth: tuple[str, ...] = ()
    pulled_at: float = 0.0

    @property
    def image_id(self) -> str:
        """The runtime's image ID: the config digest for images (containerd, CRI-O), the manifest
        digest for artifacts (CRI-O; all empty-config artifacts would otherwise share one ID)."""
        return str(self.manifest_digest if self.artifact else self.config_digest)

    def answers_to(self, image_id: str) -> bool:
        """Whether ``image_id`` names this image: its image ID, or the digest of its manifest or
        of what it was pulled by (``crictl`` accepts each)."""
        return image_id in (self.image_id, str(self.manifest_digest), str(self.target.digest))

    @property
    def repo_digest(self) -> str:
        """``<repository>@<digest it was pulled by>``, as CRI's ``repo_digests`` lists it."""
        ref = parse_normalized(self.name)
        return f"{ref.name}@{self.target.digest}"

    def to_descriptor(self) -> Descriptor:
        """The record as an ``index.json`` entry: its target descriptor with imagevol's annotations."""
        annotations = dict(self.target.annotations)
        annotations.update(
            {
                _A + "manifest": str(self.manifest_digest),
                _A + "config": str(self.config_digest),
                _A + "kind": "artifact" if self.artifact else "image",
                _A + "size": str(self.size),
                _A + "auth": ",".join(self.auth),
                _A + "pulled": f"{self.pulled_at:.3f}",
            }
        )
        return attrs.evolve(self.target, annotations=annotations)

    @classmethod
    def from_descriptor(cls, name: str, desc: Descriptor) -> ImageRecord:
        """The record an ``index.json`` entry named ``name`` holds (see :meth:`to_descriptor`)."""
        a = desc.annotations
        return cls(
            name=name,
            target=attrs.evolve(desc, annotations={k: v for k, v in a.items() if not k.startswith(_A)}),
            manifest_digest=Digest.parse(a.get(_A + "manifest", str(desc.digest))),
            config_digest=Digest.parse(a.get(_A + "config", str(desc.digest))),
            artifact=a.get(_A + "kind") == "artifact",
            size=int(a.get(_A + "size", "0") or 0),
            auth=tuple(x for x in a.get(_A + "auth", "").split(",") if x),
            pulled_at=float(a.get(_A + "pulled", "0") or 0),
        )


def store_name(ref: Reference) -> str:
    """The ``ref.name`` under which a pulled reference is recorded (fully qualified)."""
    return str(ref)


class ImageDatabase:
    """Records of pulled images in a :class:`ContentStore`."""

    def __init__(self, store: ContentStore) -> None:
        self.store = store

    def put(self, record: ImageRecord) -> None:
        """Store ``record``, replacing one of the same name."""
        self.store.set_ref(record.name, record.to_descriptor())

    def get(self, name: str) -> ImageRecord | None:
        """The record named ``name``, None if there is none."""
        desc = self.store.get_ref(name)
        return ImageRecord.from_descriptor(name, desc) if desc is not None else None

    def all(self) -> list[ImageRecord]:
        """Every record, in ``index.json`` order."""
        out = []
        for name, desc in sorted(self.store.refs().items()):
            try:
                out.append(ImageRecord.from_descriptor(name, desc))
            except Exception:
                continue
        return out

    def lookup(self, reference: str) -> ImageRecord | None:
        """``GetImageRef``: the record for a user reference (normalised, default tag applied), or
        for a digest reference any record whose target or platform manifest has that digest."""
        try:
            ref = parse_normalized(reference)
        except InvalidReferenceError:
            return None
        if not ref.tag and not ref.digest:
            ref = ref.with_tag("latest")
        found = self.get(store_name(ref))
        if found is not None or not ref.digest:
            return found
        for rec in self.all():
            rec_ref = parse_normalized(rec.name)
            if rec_ref.name == ref.name and ref.digest in (str(rec.target.digest), str(rec.manifest_digest)):
                return rec
        return None

    def by_id(self, image_id: str) -> list[ImageRecord]:
        """Every record ``image_id`` names (several images can share a config, hence an ID)."""
        return [r for r in self.all() if r.answers_to(image_id)]

    def remove(self, name: str) -> bool:
        """Remove the record named ``name``; False if there was none (blobs stay until a GC)."""
        return self.store.remove_ref(name)

    def add_auth(self, record: ImageRecord, fingerprint: str) -> ImageRecord:
        """Record that the credentials with ``fingerprint`` proved access to the image (KEP-2535)."""
        if fingerprint in record.auth:
            return record
        updated = attrs.evolve(record, auth=(*record.auth, fingerprint))
        self.put(updated)
        return updated


def now() -> float:
    """Wall-clock time, the time of a pull as records keep it."""
    return time.time()
