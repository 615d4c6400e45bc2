"""One error hierarchy for the whole library.

Every error carries the Kubernetes reason it maps to (``reason``) so that the kubelet can put it in a
container state or an event without guessing, and a message in the upstream wording where one exists.
Messages never contain host paths of the node's state directory: they are shown to Pod authors.
"""

from __future__ import annotations

from typing import ClassVar

from ._text import goquote


class ImageVolError(Exception):
    """Base class of every error this library raises on purpose."""

    reason: ClassVar[str] = "Error"


# --- references, manifests, content -------------------------------------------------------------


class InvalidReferenceError(ImageVolError, ValueError):
    """A reference does not follow the distribution grammar (kubelet reason ``InvalidImageName``)."""

    reason = "InvalidImageName"


class ManifestError(ImageVolError):
    """A manifest or index is malformed, too large, or of an unknown media type."""

    reason = "ErrImagePull"


class ContentError(ImageVolError):
    """Content failed verification (digest or size) or the store is inconsistent."""

    reason = "ErrImagePull"


class DigestMismatchError(ContentError):
    """Bytes received do not hash to the digest that was asked for."""


class SizeMismatchError(ContentError):
    """More or fewer bytes arrived than the descriptor promised, or a configured limit was hit."""


class DiffIDMismatchError(ContentError):
    """A layer's uncompressed stream does not hash to the config's ``rootfs.diff_ids`` entry for
    it: the image's layers are not the ones its config (its identity) names."""


class BlobNotFoundError(ContentError):
    """The content store has no blob with that digest."""


# --- pulling --------------------------------------------------------------------------------------


class PullError(ImageVolError):
    """A pull failed; the kubelet maps it to ``ErrImagePull`` (R3.6)."""

    reason = "ErrImagePull"


class ImageNotFoundError(PullError):
    """No source knows the reference (manifest unknown, repository unknown, or no mirror has it)."""


class AuthenticationError(PullError):
    """The registry refused the credentials, or asked for credentials that were not given."""


class RegistryUnavailableError(PullError):
    """The registry could not be reached or kept failing. The message starts with the CRI sentinel
    ``RegistryUnavailable`` so the kubelet maps it like a real one (R3.6, ``evalCRIPullErr``)."""

    reason = "RegistryUnavailable"


class BlockedRegistryError(PullError):
    """registries.conf marks the registry ``blocked = true``."""


class PlatformError(PullError):
    """An index has no manifest for the node's platform."""


# --- layers and sub paths ----------------------------------------------------------------------


class LayerError(ImageVolError):
    """A layer cannot be applied safely. ``kind`` is one of the classes of ``src/imagevol/testing/data/layers.json``:
    invalid_name, invalid_whiteout, invalid_link, notfound, notdir, loop, toolong, too_large,
    unsupported."""

    reason = "CreateContainerError"

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class SubPathError(ImageVolError):
    """A sub path cannot be resolved inside an image volume. ``kind`` is one of the classes of
    ``src/imagevol/testing/data/subpath.json``: invalid, escape, notfound, notdir, loop, toolong."""

    reason = "CreateContainerError"

    def __init__(self, kind: str, message: str, errno_name: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.errno_name = errno_name


# --- kubelet / runtime ---------------------------------------------------------------------------


class ImageVolumeMountFailedError(ImageVolError):
    """The runtime could not mount an image volume. ``str()`` starts with the CRI sentinel
    ``ImageVolumeMountFailed`` (R5.5); the kubelet turns it into ``CreateContainerError`` (R5.4)."""

    reason = "CreateContainerError"
    sentinel: ClassVar[str] = "ImageVolumeMountFailed"

    def __init__(self, detail: str) -> None:
        super().__init__(f"{self.sentinel}: {detail}")
        self.detail = detail


class CreateContainerError(ImageVolError):
    """The runtime refused to create a container for a reason unrelated to image-volume mounts."""

    reason = "CreateContainerError"


class CreateContainerConfigError(ImageVolError):
    """The kubelet could not build the container's config (R4.4, R4.5, R5.3)."""

    reason = "CreateContainerConfigError"


class ImageInUseError(ImageVolError):
    """An image cannot be removed because a container still mounts it (R7.3)."""


class PodNotFoundError(ImageVolError):
    """The node has no Pod of that name."""


class SecretNotFoundError(ImageVolError):
    """The node has no Secret of that name."""


class DecodeError(ImageVolError):
    """A manifest could not be decoded: YAML or JSON syntax, invalid UTF-8, nesting deeper than
    the limit, excessive aliasing. The message is what kubectl prints after ``error parsing
    FILE:`` (``error converting YAML to JSON: yaml: ...``, go-yaml's wording)."""

    reason = "BadRequest"


class RequestEntityTooLargeError(ImageVolError):
    """The API server refused a request body over its limit (HTTP 413, ``MaxRequestBodyBytes``)."""

    reason = "RequestEntityTooLarge"

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request entity too large: limit is {limit}")
        self.limit = limit


class StorageTooLargeError(ImageVolError):
    """The object is too large for the API server's storage (etcd's request limit). The API server
    passes etcd's error through unchanged, as an internal error without a reason."""

    reason = ""

    def __init__(self) -> None:
        super().__init__("etcdserver: request is too large")


class ConfigError(ImageVolError, ValueError):
    """A node configuration value is invalid (an unknown runtime profile, Kubernetes version,
    feature gate or admission plugin, a negative size): refused when the configuration is built,
    before anything is created under the root."""


class NodeStateError(ImageVolError):
    """The node's state directory (``--root``) cannot be used: missing permissions, a read-only or
    full filesystem, a corrupt state file. Messages never contain the directory's host path."""


class ValidationError(ImageVolError):
    """The API server rejected an object. ``errors`` are the field errors in upstream wording."""

    reason = "Invalid"

    def __init__(self, kind: str, name: str, errors: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.errors = list(errors)
        detail = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
        super().__init__(f"{kind} {goquote(name)} is invalid: {detail}")


# --- lazy sub paths (TOC formats) ---------------------------------------------------------------


class LazyFormatError(ContentError):
    """A layer's table of contents (zstd:chunked or eStargz), its footer, its annotations, its
    tar-split or a payload fetched by range is malformed, hostile or inconsistent. ``kind`` says
    which rule refused it: invalid_toc, invalid_name, invalid_link, invalid_whiteout, toolong,
    too_large, mismatch (the TOC disagrees with the tar), range (a reader answered the wrong bytes),
    digest, unsupported. Lazy mode never fails a mount because of it: it falls back to the full
    pull and records why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class LazyDigestError(LazyFormatError, DigestMismatchError):
    """Bytes read for a TOC, a tar-split, a file or a chunk do not hash to the digest that pins
    them (the manifest's annotation for a TOC, the verified TOC for everything else)."""

    def __init__(self, message: str) -> None:
        super().__init__("digest", message)


class LazyUnsupportedError(LazyFormatError):
    """The layer has no table of contents that imagevol can trust or read: no pinned TOC digest,
    a legacy stargz footer, an external TOC, a conflicting set of annotations."""

    def __init__(self, message: str) -> None:
        super().__init__("unsupported", message)


# --- the test kit ---------------------------------------------------------------------------------


class NoBusyBoxError(ImageVolError):
    """The host has no BusyBox (Debian's ``busybox-static``) to make the demo's ``debian``
    stand-in of (``imagevol demo``, ``imagevol fixtures --demo``)."""
