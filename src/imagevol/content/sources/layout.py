"""An OCI image layout as a source (for offline mirrors: ``oci-layout:PATH`` in registries.conf).

The layout is read from the local disk, or through the fsspec filesystem given (so it may be
remote). Its ``index.json`` names images by ``org.opencontainers.image.ref.name``; a digest
reference is looked up among the blobs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from ...errors import ImageNotFoundError, LazyFormatError, ManifestError
from ...oci import ANNOTATION_REF_NAME, MAX_MANIFEST_BYTES, OCI_INDEX, Descriptor, Digest
from .._localfs import LocalFiles
from ..ranges import FileReader
from .auth import Credentials

_CHUNK = 1024 * 1024


class OCILayoutSource:
    """Serves one name (``ref_name``, or ``digest``) out of an OCI image layout at ``path``."""

    def __init__(self, path: str, ref_name: str, digest: str = "", fs: Any | None = None) -> None:
        self.fs = fs if fs is not None else LocalFiles()
        self.path = path.rstrip("/")
        self.ref_name = ref_name
        self.digest = digest
        self.description = f"oci-layout:{ref_name or digest}"

    def _blob(self, digest: Digest) -> str:
        return f"{self.path}/blobs/{digest.algorithm}/{digest.hex}"

    def _index(self) -> list[Any]:
        try:
            with self.fs.open(f"{self.path}/index.json", "rb") as f:
                obj = json.loads(f.read(MAX_MANIFEST_BYTES + 1))
        except FileNotFoundError:
            raise ImageNotFoundError(f"{self.description}: the OCI layout has no index.json") from None
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{self.description}: index.json is not JSON: {exc}") from None
        manifests = obj.get("manifests") if isinstance(obj, dict) else None
        if not isinstance(manifests, list):
            raise ManifestError(f"{self.description}: index.json has no manifests list")
        return manifests

    def resolve(self) -> Descriptor:
        """The descriptor the reference names in the layout's ``index.json``."""
        entries = self._index()
        if self.digest:
            want = Digest.parse(self.digest)
            for entry in entries:
                desc = Descriptor.from_json(entry)
                if desc.digest == want:
                    return desc
            if self.fs.exists(self._blob(want)):
                # Not top-level (e.g. one platform of an index): the media type comes from the
                # document itself, which the puller checks against the digest anyway.
                with self.fs.open(self._blob(want), "rb") as f:
                    raw = f.read(MAX_MANIFEST_BYTES + 1)
                try:
                    media_type = str(json.loads(raw).get("mediaType") or "")
                except (ValueError, AttributeError):
                    raise ManifestError(f"{self.description}: {want} is not a manifest") from None
                if not media_type:
                    media_type = OCI_INDEX if b'"manifests"' in raw else "application/vnd.oci.image.manifest.v1+json"
                return Descriptor(media_type, want, len(raw))
            raise ImageNotFoundError(f"{self.description}: manifest unknown")
        for entry in entries:
            if (entry.get("annotations") or {}).get(ANNOTATION_REF_NAME) == self.ref_name:
                return Descriptor.from_json(entry)
        raise ImageNotFoundError(f"{self.description}: manifest unknown")

    def fetch_manifest(self, desc: Descriptor) -> bytes:
        """The bytes of the manifest or index ``desc`` (checked by the caller)."""
        if desc.size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest of {desc.size} bytes exceeds the {MAX_MANIFEST_BYTES}-byte limit")
        try:
            with self.fs.open(self._blob(desc.digest), "rb") as f:
                data: bytes = f.read(MAX_MANIFEST_BYTES + 1)
                return data
        except FileNotFoundError:
            raise ImageNotFoundError(f"{self.description}: manifest {desc.digest} missing") from None

    def fetch_blob(self, desc: Descriptor) -> Iterator[bytes]:
        """The bytes of the blob ``desc`` in chunks (verified by the caller)."""
        try:
            f = self.fs.open(self._blob(desc.digest), "rb")
        except FileNotFoundError:
            raise ImageNotFoundError(f"{self.description}: blob {desc.digest} missing") from None
        with f:
            while chunk := f.read(_CHUNK):
                yield chunk

    def ranged_reader(self, desc: Descriptor, on_fetch: Callable[[int], None] | None = None) -> FileReader:
        """Byte ranges of the blob ``desc``, read with ``pread`` from the layout's file (local
        layouts only: a remote fsspec layout has no file descriptor to read from). The file must
        have the size its descriptor declares; its bytes are verified by the caller."""
        protocol = getattr(self.fs, "protocol", ())
        if "file" not in ((protocol,) if isinstance(protocol, str) else tuple(protocol)):
            raise LazyFormatError("unsupported", f"{self.description}: ranged reads need a local OCI layout")
        try:
            reader = FileReader.open(self._blob(desc.digest), on_fetch)
        except FileNotFoundError:
            raise ImageNotFoundError(f"{self.description}: blob {desc.digest} missing") from None
        if reader.size != desc.size:
            reader.close()
            raise LazyFormatError("range", f"{self.description}: blob {desc.digest} is not {desc.size} bytes")
        return reader

    def credentials_used(self) -> Credentials | None:
        """None: a layout needs no credentials."""
        return None

    def close(self) -> None:
        """Nothing to release: files are opened per read."""
        return None
