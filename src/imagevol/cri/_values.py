"""The values that cross the CRI boundary: what the kubelet sends (:class:`ImageSpec`,
:class:`Mount`, :class:`ContainerConfig`, the pull credentials :class:`Keyring` of
:class:`Credentials`, the CRI ``AuthConfig``) and what the runtime answers (:class:`ContainerStatus`
with its :class:`MountStatus` entries, :class:`Image`, :class:`PullImageResult`, :class:`ImageFsInfo`
with its :class:`FilesystemUsage`). Where imagevol needs more than the CRI offers, the extension is
named as such.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .._text import goquote

if TYPE_CHECKING:
    from ..api.models import Secret

#: CRI MountPropagation enum names, translated from the API's mountPropagation (R4.6).
PROPAGATION = {None: "PROPAGATION_PRIVATE", "None": "PROPAGATION_PRIVATE",
               "HostToContainer": "PROPAGATION_HOST_TO_CONTAINER",
               "Bidirectional": "PROPAGATION_BIDIRECTIONAL"}  # fmt: skip


def _text_field(name: str, value: object) -> str:
    """One field in protobuf text format; proto3 default values are omitted, as Go prints them."""
    if isinstance(value, bool):
        return f"{name}:true" if value else ""
    if isinstance(value, str):
        return f"{name}:{goquote(value)}" if value else ""
    return f"{name}:{value}"


def _text(fields: Sequence[str]) -> str:
    return " ".join(f for f in fields if f)


# --- what the kubelet sends --------------------------------------------------------------------------


@attrs.frozen
class ImageSpec:
    """``runtime.v1.ImageSpec``: ``image`` is the runtime's image ref returned by the pull (not the
    user string, R3.8); ``user_specified_image`` is the reference as written in the Pod (R11.10)."""

    image: str
    user_specified_image: str = ""
    runtime_handler: str = ""
    annotations: Mapping[str, str] = attrs.field(factory=dict)

    def proto_text(self) -> str:
        """What Go's ``%+v`` prints for the generated message (protobuf text format, one line;
        upstream's spacing is deliberately unstable, so only the field content is reproduced)."""
        annotations = [
            f"annotations:{{key:{goquote(k)} value:{goquote(v)}}}" for k, v in sorted(self.annotations.items())
        ]
        return _text(
            [
                _text_field("image", self.image),
                *annotations,
                _text_field("user_specified_image", self.user_specified_image),
                _text_field("runtime_handler", self.runtime_handler),
            ]
        )


@attrs.frozen
class Mount:
    """``runtime.v1.Mount`` as the kubelet builds it for an image volume (R4.6, R8.1)."""

    container_path: str
    host_path: str = ""
    readonly: bool = True
    image: ImageSpec | None = None
    image_sub_path: str = ""
    propagation: str = "PROPAGATION_PRIVATE"
    selinux_relabel: bool = False
    recursive_read_only: bool = False

    def proto_text(self) -> str:
        """What Go's ``%+v`` prints for the generated message (containerd quotes it, R9.16)."""
        propagation = "" if self.propagation == "PROPAGATION_PRIVATE" else f"propagation:{self.propagation}"
        return _text(
            [
                _text_field("container_path", self.container_path),
                _text_field("host_path", self.host_path),
                _text_field("readonly", self.readonly),
                _text_field("selinux_relabel", self.selinux_relabel),
                propagation,
                _text_field("recursive_read_only", self.recursive_read_only),
                f"image:{{{self.image.proto_text()}}}" if self.image is not None else "",
                _text_field("image_sub_path", self.image_sub_path),
            ]
        )


def _image_spec(value: ImageSpec | str) -> ImageSpec:
    return value if isinstance(value, ImageSpec) else ImageSpec(value)


@attrs.frozen
class ContainerConfig:
    """``runtime.v1.ContainerConfig``, the fields imagevol needs. ``image`` is the container's own
    image as the kubelet hands it over after ``EnsureImageExists``: ``image.image`` is the image
    ref the pull returned (the image ID), ``user_specified_image`` the Pod's ``image`` (a plain
    string is taken as ``ImageSpec(string)``). The runtime finds that image in its store to build
    the container from it."""

    name: str
    image: ImageSpec = attrs.field(converter=_image_spec)
    mounts: tuple[Mount, ...] = ()
    envs: tuple[tuple[str, str], ...] = ()
    #: The Pod's ``command`` and ``args`` (the runtime applies them to the image's Entrypoint/Cmd).
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    #: The sandbox's hostname (``PodSandboxConfig.hostname`` upstream; imagevol has no sandboxes).
    hostname: str = ""


# --- what the runtime answers about containers --------------------------------------------------------


@attrs.frozen
class MountStatus:
    """A mounted image volume, as ``ContainerStatus.mounts`` reports it (R7.2, R9.8): the CRI
    ``Mount`` echoed back, with what the runtime recorded when it mounted it."""

    container_path: str
    #: ``image.image`` echoed back: the image ID the kubelet's image GC matches (R7.1, R7.2).
    image_id: str
    user_specified_image: str
    #: The tree mounted (the runtime's snapshot key): the chain ID of an image's layers, or an
    #: artifact's manifest digest.
    snapshot: str
    #: Path of the mounted entry relative to the snapshot root, free of symlinks (``.`` = root).
    real_path: str
    is_dir: bool
    sub_path: str = ""
    artifact: bool = False
    #: Inode of the mounted entry, read from the resolved fd; re-opens must find the same inode.
    inode: int = 0
    #: The exact image mounted, ``<repository>@<digest it was pulled by>`` (what CRI's
    #: ``ImageSpec.image_ref`` reports for a volume, KEP-5365).
    image_ref: str = ""
    #: What the mounted content is proven to be (an imagevol extension): ``verified`` (every
    #: layer's digest and diff ID), ``toc-verified`` / ``toc-pinned`` (a lazily built sub path,
    #: authenticated by the layers' tables of contents only), ``revoked`` (a later check failed).
    trust: str = "verified"
    #: How lazy mode served it (an imagevol extension): empty when not lazily, ``partial tree: ...``,
    #: or why it fell back to a full pull.
    lazy: str = ""


@attrs.frozen
class ContainerStatus:
    """``runtime.v1.ContainerStatus``, the fields imagevol needs (a simulated container that
    exists is running; one run for real reports its state, exit code and times).
    ``list_containers`` answers with these too, mounts included, where the CRI's
    ``ListContainers`` returns the shorter ``Container``.

    The container's own image, as containerd and CRI-O report it: ``image`` is the image's name
    (``image.image``: the reference it was pulled by, fully qualified), ``image_ref`` the exact image,
    ``<repository>@<digest it was pulled by>`` (the kubelet's ``imageID``), and ``image_id`` the
    local image ID (``ListContainers``' ``image_ref``: what the image GC and ``RemoveImage`` match)."""

    id: str
    sandbox_id: str
    name: str
    image: str
    mounts: tuple[MountStatus, ...]
    created_at: float
    image_ref: str = ""
    image_id: str = ""
    #: ``ContainerState``: a simulated container is running as long as it exists; one run by the
    #: node's OCI runtime reports what its monitor recorded.
    state: str = "CONTAINER_RUNNING"
    exit_code: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    #: ``reason``/``message`` of an exit the runtime explains (a start that failed).
    reason: str = ""
    message: str = ""
    #: Where the container's output goes (``log_path``), empty for a simulated container.
    log_path: str = ""

    def to_json(self) -> dict[str, Any]:
        """The status as the runtime's state file stores it."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ContainerStatus:
        """The status :meth:`to_json` stored."""
        mounts = tuple(MountStatus(**m) for m in obj.get("mounts", ()))
        return cls(
            obj["id"],
            obj["sandbox_id"],
            obj["name"],
            obj["image"],
            mounts,
            obj["created_at"],
            str(obj.get("image_ref", "")),
            str(obj.get("image_id", "")),
            str(obj.get("state", "CONTAINER_RUNNING")),
            int(obj.get("exit_code", 0)),
            float(obj.get("started_at", 0.0)),
            float(obj.get("finished_at", 0.0)),
            str(obj.get("reason", "")),
            str(obj.get("message", "")),
            str(obj.get("log_path", "")),
        )


# --- what the runtime answers about images ------------------------------------------------------------


@attrs.frozen
class Image:
    """``runtime.v1.Image``: one pulled image or artifact as ``ImageStatus`` / ``ListImages`` report it.

    imagevol's runtime records images per reference, so each reference is one ``Image`` (containerd
    and CRI-O merge the references of one image ID into one ``Image``): ``repo_tags`` holds the
    reference when it is a tag, ``repo_digests`` holds ``<repository>@<digest it was pulled by>``
    (or the reference itself when it names a digest). The fields after ``pinned`` are imagevol's
    extensions, which the kubelet keeps in its own state upstream."""

    id: str
    repo_tags: tuple[str, ...] = ()
    repo_digests: tuple[str, ...] = ()
    size: int = 0
    pinned: bool = False
    #: An OCI artifact rather than an image (only runtimes that mount artifacts have them).
    artifact: bool = False
    #: Fingerprints of the credentials that proved access to it (``anonymous`` when pulled without
    #: any): what KEP-2535 (``KubeletEnsureSecretPulledImages``) checks a Pod's credentials against.
    auth: tuple[str, ...] = ()
    #: When it was last pulled (seconds since the epoch): the image GC's last use for an image no
    #: container ever mounted.
    pulled_at: float = 0.0

    @property
    def reference(self) -> str:
        """The reference the runtime records it under: what ``RemoveImage`` and ``rmi`` take."""
        return (self.repo_tags or self.repo_digests or (self.id,))[0]

    @property
    def digest(self) -> str:
        """The digest the reference resolved to when pulled (an index's for a multi-platform image)."""
        return self.repo_digests[0].rpartition("@")[2] if self.repo_digests else ""


@attrs.frozen
class PullImageResult:
    """``runtime.v1.PullImageResponse``: ``image_ref`` is the image ID the kubelet hands back in
    ``ImageSpec.image`` (R3.8). imagevol adds what the ``Pulled`` event and the pull metrics need:
    the pulled image's status and how long the pull took (seconds)."""

    image_ref: str
    image: Image
    duration: float = 0.0


@attrs.frozen
class FilesystemIdentifier:
    """``runtime.v1.FilesystemIdentifier``: the directory the image filesystem lives in."""

    mountpoint: str


@attrs.frozen
class FilesystemUsage:
    """``runtime.v1.FilesystemUsage``: what a runtime's images take on one filesystem."""

    #: Nanoseconds since the epoch at which the usage was measured.
    timestamp: int
    fs_id: FilesystemIdentifier
    used_bytes: int
    inodes_used: int


@attrs.frozen
class ImageFsInfo:
    """``runtime.v1.ImageFsInfoResponse``. The kubelet's image GC reads the first image
    filesystem's usage and asks the node for that filesystem's capacity."""

    image_filesystems: tuple[FilesystemUsage, ...]
    container_filesystems: tuple[FilesystemUsage, ...] = ()


# --- pull credentials ------------------------------------------------------------------------------------

DOCKER_CONFIG_JSON = "kubernetes.io/dockerconfigjson"
DOCKER_CFG = "kubernetes.io/dockercfg"
#: The fingerprint recorded for an image pulled without credentials.
ANONYMOUS = "anonymous"


@attrs.frozen
class Credentials:
    """A user name and password (or identity token) for one registry: the CRI ``AuthConfig``."""

    username: str
    password: str = attrs.field(repr=False)

    @classmethod
    def parse(cls, text: str) -> Credentials:
        """``USER:PASS`` as the CLI takes it."""
        user, sep, password = text.partition(":")
        if not sep or not user:
            raise ValueError("credentials must be USER:PASSWORD")
        return cls(user, password)

    def fingerprint(self) -> str:
        """A stable, non-reversible identity of these credentials, for KEP-2535 bookkeeping."""
        digest = hashlib.sha256(f"{self.username}\0{self.password}".encode()).hexdigest()
        return "sha256-" + digest[:32]


def _host_of(key: str) -> str:
    """Normalise a docker config key (``https://index.docker.io/v1/``, ``quay.io``) to a host."""
    host = key
    for scheme in ("https://", "http://"):
        if host.startswith(scheme):
            host = host[len(scheme) :]
    host = host.split("/", 1)[0]
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = "docker.io"
    return host


@attrs.frozen
class Keyring:
    """Credentials by registry host, in the order they were given (each is tried in turn).

    The kubelet builds it from the Pod's pull secrets and the node's own credentials and passes it
    whole with ``PullImage``: the CRI passes one ``AuthConfig`` per attempt, but only the runtime
    knows which mirrors a reference is pulled from, so the registry side picks the credentials of
    each host it contacts (:meth:`for_host`). Nothing is ever read from ``~/.docker/config.json``
    (oras-py gap 7 in docs/pulling.md): a Pod must not pull with credentials it was not given."""

    entries: tuple[tuple[str, Credentials], ...] = ()

    @classmethod
    def from_docker_config(cls, data: bytes) -> Keyring:
        """Parse a ``.dockerconfigjson`` (``{"auths": {...}}``) or legacy ``.dockercfg``."""
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"pull secret is not valid JSON: {exc}") from None
        auths = obj.get("auths", obj) if isinstance(obj, dict) else None
        if not isinstance(auths, dict):
            raise ValueError("pull secret has no auths")
        entries = []
        for key, value in auths.items():
            if not isinstance(value, dict):
                continue
            user, password = value.get("username"), value.get("password")
            if isinstance(value.get("auth"), str) and value["auth"]:
                try:
                    decoded = base64.b64decode(value["auth"], validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    raise ValueError(f"pull secret entry {key!r}: auth is not base64") from None
                user, _, password = decoded.partition(":")
            if isinstance(user, str) and user and isinstance(password, str):
                entries.append((_host_of(str(key)), Credentials(user, password)))
        return cls(tuple(entries))

    @classmethod
    def from_secrets(cls, secrets: Iterable[Secret]) -> Keyring:
        """The credentials of ``kubernetes.io/dockerconfigjson`` and ``dockercfg`` Secrets."""
        entries: list[tuple[str, Credentials]] = []
        for secret in secrets:
            if secret.type == DOCKER_CONFIG_JSON and ".dockerconfigjson" in secret.data:
                entries += cls.from_docker_config(secret.data[".dockerconfigjson"]).entries
            elif secret.type == DOCKER_CFG and ".dockercfg" in secret.data:
                entries += cls.from_docker_config(secret.data[".dockercfg"]).entries
        return cls(tuple(entries))

    @classmethod
    def single(cls, host: str, creds: Credentials) -> Keyring:
        """A keyring of one host's credentials."""
        return cls(((_host_of(host), creds),))

    def for_host(self, host: str) -> list[Credentials]:
        """The credentials offered to ``host``, in order."""
        host = _host_of(host)
        return [c for h, c in self.entries if h == host]

    def fingerprints(self) -> set[str]:
        """The fingerprint of every credential offered, whatever its host."""
        return {creds.fingerprint() for _, creds in self.entries}

    def merged(self, other: Keyring) -> Keyring:
        """This keyring's credentials, then ``other``'s."""
        return Keyring(self.entries + other.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)
