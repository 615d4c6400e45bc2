"""What every content source offers the puller (:mod:`imagevol.content.pull`).

A source only moves bytes. It is not trusted: the puller verifies every manifest and blob against
its digest and size before anything reaches the content store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

from ...oci import Descriptor
from ..ranges import RangedReader
from .auth import Credentials


class Source(Protocol):
    """A place that can serve one repository's manifests and blobs."""

    #: Human-readable origin for messages, without credentials (e.g. ``oci-layout:v2``).
    description: str

    def resolve(self) -> Descriptor:
        """The descriptor (media type, digest, size) of the manifest or index the reference names.
        Raises ``ImageNotFoundError`` when the source does not have it."""
        ...

    def fetch_manifest(self, desc: Descriptor) -> bytes:
        """The raw bytes of a manifest or index (at most 4 MiB; unverified)."""
        ...

    def fetch_blob(self, desc: Descriptor) -> Iterator[bytes]:
        """The blob's bytes in chunks (unverified; the store verifies while writing)."""
        ...

    def ranged_reader(self, desc: Descriptor, on_fetch: Callable[[int], None] | None = None) -> RangedReader:
        """Byte ranges of the blob ``desc`` (lazy sub paths; unverified, like every answer).
        ``on_fetch`` is told the bytes each answer brought. Raises ``ImageVolError`` when the
        source cannot serve ranges of it (``LazyFormatError`` ``unsupported``, or the blob is
        missing)."""
        ...

    def credentials_used(self) -> Credentials | None:
        """The credentials the source authenticated with, None when it needed none (KEP-2535
        records which credentials proved access to an image)."""
        ...

    def close(self) -> None:
        """Release connections and files (the puller calls it when done with the source)."""
        ...


@runtime_checkable
class ViewSource(Protocol):
    """A source that can also lend a blob's bytes without copying them (the registry's)."""

    def fetch_blob_views(self, desc: Descriptor) -> Iterator[memoryview]:
        """The blob's bytes as views of one buffer the source reuses: each is valid only until
        the next is asked for, so the caller must be done with it by then (unverified)."""
        ...
