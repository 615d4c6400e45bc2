"""OCI value types: digests, descriptors, platforms, manifests and indexes.

Everything here is pure: parsing validates at the boundary (a registry answer is hostile input) and
returns frozen values. Nothing here touches the network or the disk.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..errors import DiffIDMismatchError, ManifestError

# --- media types -----------------------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
#: Sent as ``Accept`` on every manifest request: registry 2.8 answers 404 for an OCI manifest
#: unless an OCI type is listed explicitly (docs/pulling.md, oras-py gap 8).
MANIFEST_ACCEPT = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)

#: Config media types that make a manifest a container *image* (R9.1).
IMAGE_CONFIG_TYPES = frozenset({"", OCI_CONFIG, DOCKER_CONFIG})

#: Layer media types applied as tar changesets, and their compression.
TAR_LAYER_COMPRESSION: Mapping[str, str] = {
    OCI_LAYER: "none",
    OCI_LAYER_NONDIST: "none",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_NONDIST_GZIP: "gzip",
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_LAYER_FOREIGN_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_NONDIST_ZSTD: "zstd",
}

ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_MODEL_FILEPATH = "org.cncf.model.filepath"

#: Manifests larger than this are refused before parsing (the distribution spec's 4 MiB guidance,
#: also containerd's and CRI-O's limit).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: Image configs larger than this are refused before parsing (containers/image's
#: ``MaxConfigBodySize``, the limit CRI-O and skopeo read configs under; containerd has none).
MAX_CONFIG_BYTES = 4 * 1024 * 1024

_EMPTY_JSON = b"{}"
EMPTY_DIGEST = "sha256:" + hashlib.sha256(_EMPTY_JSON).hexdigest()

# --- digests ---------------------------------------------------------------------------------------

_ALGORITHMS = {"sha256": 64, "sha384": 96, "sha512": 128}
_DIGEST_RE = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")


@attrs.frozen(order=True)
class Digest:
    """A content digest such as ``sha256:<64 hex>``; sha256, sha384 and sha512 are accepted."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """``ALGORITHM:HEX``, checked (a :class:`~imagevol.errors.ManifestError` if malformed)."""
        m = _DIGEST_RE.fullmatch(text) if isinstance(text, str) else None
        if m is None:
            raise ManifestError(f"invalid digest {text!r}")
        algorithm, encoded = m.group(1), m.group(2)
        want = _ALGORITHMS.get(algorithm)
        if want is None:
            raise ManifestError(f"unsupported digest algorithm {algorithm!r}")
        if len(encoded) != want or not re.fullmatch(r"[0-9a-f]+", encoded):
            raise ManifestError(f"invalid {algorithm} digest {text!r}")
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of ``data``."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> Any:
        """A new hashlib object of this digest's algorithm."""
        return hashlib.new(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


# --- platforms -------------------------------------------------------------------------------------


@attrs.frozen
class Platform:
    """An OCI platform. ``variant`` is compared when both sides give one (``arm64`` defaults to
    ``v8``, as containerd's matcher does)."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch[/variant]`` as the CLI and containerd write it."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"platform {text!r} is not of the form os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    @classmethod
    def from_json(cls, obj: object) -> Platform:
        """A platform as a descriptor or config holds it (``os``, ``architecture``, ``variant``)."""
        if not isinstance(obj, dict):
            raise ManifestError("platform must be an object")
        os_ = _str(obj, "os", required=True)
        arch = _str(obj, "architecture", required=True)
        return cls(os_, arch, _str(obj, "variant"), _str(obj, "os.version"))

    def normalized(self) -> Platform:
        """The platform with containerd's normalisation (``aarch64`` is ``arm64/v8``, ``x86_64`` is ``amd64``)."""
        arch, variant = self.architecture, self.variant
        if arch in ("aarch64",):
            arch = "arm64"
        if arch in ("x86_64", "x86-64"):
            arch = "amd64"
        if arch == "arm64" and variant in ("", "8"):
            variant = "v8"
        if arch == "arm" and variant == "":
            variant = "v7"
        return Platform(self.os.lower(), arch, variant, self.os_version)

    def matches(self, other: Platform) -> bool:
        """Whether both name the same platform once normalised."""
        a, b = self.normalized(), other.normalized()
        return a.os == b.os and a.architecture == b.architecture and a.variant == b.variant

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base


def host_platform() -> Platform:
    """The platform of the machine running this process, as a Linux node would report it."""
    import platform as _platform

    machine = _platform.machine().lower()
    return Platform("linux", machine).normalized()


# --- descriptors, manifests, indexes ----------------------------------------------------------------


def _str(obj: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise ManifestError(f"missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise ManifestError(f"field {key!r} must be a string")
    return value


def _annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    value = obj.get("annotations")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ManifestError("annotations must map strings to strings")
    return dict(value)


@attrs.frozen
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: Digest
    size: int = attrs.field()
    annotations: Mapping[str, str] = attrs.field(factory=dict, eq=False)
    platform: Platform | None = None
    artifact_type: str = ""
    data: bytes | None = attrs.field(default=None, eq=False, repr=False)

    @size.validator
    def _check_size(self, _: object, value: int) -> None:
        if value < 0:
            raise ManifestError("descriptor size must not be negative")

    @classmethod
    def from_json(cls, obj: object) -> Descriptor:
        """A descriptor as a manifest or index holds it, checked field by field."""
        if not isinstance(obj, dict):
            raise ManifestError("descriptor must be an object")
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError("descriptor size must be a non-negative integer")
        platform = obj.get("platform")
        data: bytes | None = None
        if "data" in obj:
            import base64
            import binascii

            raw = obj["data"]
            if not isinstance(raw, str):
                raise ManifestError("descriptor data must be base64 text")
            try:
                data = base64.b64decode(raw, validate=True)
            except binascii.Error as exc:
                raise ManifestError(f"descriptor data is not base64: {exc}") from None
        return cls(
            media_type=_str(obj, "mediaType", required=True),
            digest=Digest.parse(_str(obj, "digest", required=True)),
            size=size,
            annotations=_annotations(obj),
            platform=Platform.from_json(platform) if platform is not None else None,
            artifact_type=_str(obj, "artifactType"),
            data=data,
        )

    def to_json(self) -> dict[str, Any]:
        """The descriptor in its JSON shape."""
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        if self.platform is not None:
            p: dict[str, str] = {
                "architecture": self.platform.architecture,
                "os": self.platform.os,
            }
            if self.platform.variant:
                p["variant"] = self.platform.variant
            if self.platform.os_version:
                p["os.version"] = self.platform.os_version
            out["platform"] = p
        return out

    @property
    def title(self) -> str:
        """The ``org.opencontainers.image.title`` annotation (an artifact file's name), empty if none."""
        return self.annotations.get(ANNOTATION_TITLE, "")


@attrs.frozen
class Manifest:
    """An image manifest (OCI or Docker schema 2)."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    artifact_type: str = ""
    annotations: Mapping[str, str] = attrs.field(factory=dict, eq=False)

    @property
    def is_image(self) -> bool:
        """CRI-O's classification (R9.1): a manifest is an image when its config type is an image
        config (or empty) and it carries no ``artifactType``; anything else is an artifact."""
        return self.config.media_type in IMAGE_CONFIG_TYPES and not self.artifact_type

    def blobs(self) -> tuple[Descriptor, ...]:
        """The config and the layers."""
        return (self.config, *self.layers)


@attrs.frozen
class Index:
    """An OCI image index or Docker manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = attrs.field(factory=dict, eq=False)

    def select(self, platform: Platform) -> Descriptor:
        """The first manifest whose platform matches (the order of the index decides ties, as in
        containerd). Raises ``PlatformError`` naming what is available."""
        from ..errors import PlatformError

        for desc in self.manifests:
            if desc.media_type not in MANIFEST_TYPES:
                continue
            if desc.platform is not None and desc.platform.matches(platform):
                return desc
        available = sorted({str(d.platform) for d in self.manifests if d.platform is not None})
        raise PlatformError(
            f"no matching manifest for {platform} in the manifest list entries"
            f" (available: {', '.join(available) or 'none'})"
        )


def parse_manifest(raw: bytes, media_type: str = "") -> Manifest | Index:
    """Parse a manifest or index from its raw bytes.

    ``media_type`` is what the transport said (Content-Type or the referring descriptor); the
    document's own ``mediaType`` must agree with it when both are present, so that a registry cannot
    make us treat an index as a manifest or the reverse.
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest of {len(raw)} bytes exceeds the {MAX_MANIFEST_BYTES}-byte limit")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ManifestError("manifest must be a JSON object")
    if obj.get("schemaVersion") != 2:
        raise ManifestError(f"unsupported manifest schemaVersion {obj.get('schemaVersion')!r}")
    declared = _str(obj, "mediaType")
    if declared and media_type and declared != media_type:
        raise ManifestError(f"manifest declares media type {declared!r} but was served as {media_type!r}")
    kind = declared or media_type
    if not kind:
        # OCI allows an absent mediaType; infer it from the shape, as containerd does.
        kind = OCI_INDEX if "manifests" in obj else OCI_MANIFEST
    if kind in INDEX_TYPES:
        entries = obj.get("manifests")
        if not isinstance(entries, list):
            raise ManifestError("index has no manifests list")
        return Index(kind, tuple(Descriptor.from_json(e) for e in entries), _annotations(obj))
    if kind in MANIFEST_TYPES:
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise ManifestError("manifest has no layers list")
        return Manifest(
            media_type=kind,
            config=Descriptor.from_json(obj.get("config")),
            layers=tuple(Descriptor.from_json(layer) for layer in layers),
            artifact_type=_str(obj, "artifactType"),
            annotations=_annotations(obj),
        )
    raise ManifestError(f"unsupported manifest media type {kind!r}")


# --- image configs and layer identity ----------------------------------------------------------------


def parse_diff_ids(raw: bytes) -> tuple[Digest, ...]:
    """``rootfs.diff_ids`` of an image config: the digests of the *uncompressed* layers, bottom
    first. A config without ``rootfs`` has none (containerd reads it the same way and then compares
    the count with the manifest's layers); a ``rootfs.type`` other than ``layers`` is refused, as
    the image spec requires."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise ManifestError(f"image config of {len(raw)} bytes exceeds the {MAX_CONFIG_BYTES}-byte limit")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"unmarshal image config: {exc}") from None
    if not isinstance(obj, dict):
        raise ManifestError("unmarshal image config: not a JSON object")
    rootfs = obj.get("rootfs")
    if rootfs is None:
        return ()
    if not isinstance(rootfs, dict):
        raise ManifestError("unmarshal image config: rootfs must be an object")
    kind = rootfs.get("type")
    if kind is not None and kind != "layers":
        raise ManifestError(f'image config: unknown rootfs type {kind!r} (only "layers" is defined)')
    ids = rootfs.get("diff_ids")
    if ids is None:
        return ()
    if not isinstance(ids, list):
        raise ManifestError("unmarshal image config: rootfs.diff_ids must be a list")
    return tuple(Digest.parse(d) if isinstance(d, str) else _bad_diff_id(d) for d in ids)


def _bad_diff_id(value: object) -> Digest:
    raise ManifestError(f"image config: diff ID {value!r} is not a digest string")


def image_diff_ids(manifest: Manifest, config: bytes) -> tuple[Digest, ...]:
    """The diff IDs of an image's layers: one per manifest layer, or an error in containerd's
    wording (``pkg/unpack``) when the config and the manifest disagree on how many there are."""
    diff_ids = parse_diff_ids(config)
    if len(diff_ids) != len(manifest.layers):
        raise DiffIDMismatchError(
            f"number of layers and diffIDs don't match: {len(manifest.layers)} != {len(diff_ids)}"
        )
    return diff_ids


def chain_ids(diff_ids: Sequence[Digest]) -> list[Digest]:
    """The ChainID of every prefix of a layer stack (image spec, config.md "Layer ChainID"):
    ``ChainID(L0) = DiffID(L0)`` and ``ChainID(L0..Ln) = SHA256(ChainID(L0..Ln-1) + " " + DiffID(Ln))``.
    Equal chains mean equal uncompressed layers in equal order, hence equal trees."""
    out: list[Digest] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else Digest.of(f"{out[-1]} {diff_id}".encode()))
    return out


def chain_id(diff_ids: Sequence[Digest]) -> Digest | None:
    """The ChainID of the whole stack; None for an image without layers (an empty chain)."""
    ids = chain_ids(diff_ids)
    return ids[-1] if ids else None


def canonical_json(obj: object) -> bytes:
    """Sorted, compact JSON: how this project writes every manifest it builds (reproducible digests)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
