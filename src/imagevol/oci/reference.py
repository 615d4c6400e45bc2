"""Image references: the distribution grammar, Docker-style normalisation, and the kubelet's
``ParseImageName`` / ``applyDefaultImageTag`` quirks (R2.1a, R3.5).
"""

from __future__ import annotations

import re

import attrs

from .._text import goquote
from ..errors import InvalidReferenceError
from ._model import Digest

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_NAME = rf"(?:({_DOMAIN})/)?({_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
# ASCII: distribution's \w (Go RE2) is [0-9A-Za-z_]; Python's would accept any Unicode letter.
# \Z, not $: Python's $ also matches before a trailing newline ("busybox\n" would pass).
_REFERENCE_RE = re.compile(rf"^{_NAME}(?::({_TAG}))?(?:@({_DIGEST}))?\Z", re.ASCII)
_ANCHORED_ID_RE = re.compile(r"^[a-f0-9]{64}\Z")


@attrs.frozen
class Reference:
    """A parsed, fully qualified reference: ``domain/path[:tag][@digest]``."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """Repository name with its domain, e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}" if self.domain else self.path

    @property
    def familiar_name(self) -> str:
        """The short form Docker prints: ``busybox`` for ``docker.io/library/busybox``."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        path = self.path
        if path.startswith(OFFICIAL_REPO_PREFIX) and "/" not in path[len(OFFICIAL_REPO_PREFIX) :]:
            path = path[len(OFFICIAL_REPO_PREFIX) :]
        return path

    def with_tag(self, tag: str) -> Reference:
        """The same reference with tag ``tag``."""
        return attrs.evolve(self, tag=tag)

    def with_digest(self, digest: str) -> Reference:
        """The same reference pinned to ``digest``."""
        return attrs.evolve(self, digest=digest)

    @property
    def object(self) -> str:
        """What to ask a registry for: the digest when there is one (it wins over the tag), else the
        tag, else ``latest``."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def _check_digest(text: str) -> None:
    try:
        Digest.parse(text)
    except Exception as exc:
        raise InvalidReferenceError(f"invalid reference format: {exc}") from None


def parse(text: str) -> Reference:
    """Parse a reference strictly (no normalisation): ``busybox`` has no domain."""
    if not text:
        raise InvalidReferenceError("invalid reference format: repository name must have at least one component")
    m = _REFERENCE_RE.match(text)
    if m is None:
        lowered = text.lower()
        if lowered != text and _REFERENCE_RE.match(lowered):
            raise InvalidReferenceError("invalid reference format: repository name must be lowercase")
        raise InvalidReferenceError("invalid reference format")
    domain, path, tag, digest = (g or "" for g in m.groups())
    name = f"{domain}/{path}" if domain else path
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidReferenceError(
            f"invalid reference format: repository name must not be more than {MAX_NAME_LENGTH} characters"
        )
    if digest:
        _check_digest(digest)
    return Reference(domain, path, tag, digest)


def _split_docker_domain(name: str) -> tuple[str, str]:
    i = name.find("/")
    first = name[:i] if i >= 0 else ""
    if i == -1 or (not any(c in first for c in ".:") and first != "localhost" and first.lower() == first):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, name[i + 1 :]
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def parse_normalized(text: str) -> Reference:
    """Parse and normalise as Docker and the kubelet do (``ParseNormalizedNamed``):
    ``busybox`` becomes ``docker.io/library/busybox``; no default tag is added."""
    if _ANCHORED_ID_RE.match(text):
        raise InvalidReferenceError(f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings")
    domain, remainder = _split_docker_domain(text)
    remote = remainder.split(":", 1)[0] if ":" in remainder else remainder
    remote = remote.split("@", 1)[0]
    if remote.lower() != remote:
        raise InvalidReferenceError(f"invalid reference format: repository name ({remote}) must be lowercase")
    return parse(f"{domain}/{remainder}")


def parse_image_name(text: str) -> tuple[str, str, str]:
    """The kubelet's ``parsers.ParseImageName``: (repository, tag, digest). With neither tag nor
    digest the tag is ``latest`` (R2.1a)."""
    try:
        ref = parse_normalized(text)
    except InvalidReferenceError as exc:
        raise InvalidReferenceError(f"couldn't parse image name {goquote(text)}: {exc}") from None
    tag = ref.tag
    if not tag and not ref.digest:
        tag = DEFAULT_TAG
    return ref.name, tag, ref.digest


def apply_default_tag(text: str) -> str:
    """The kubelet's ``applyDefaultImageTag`` (R3.5): append ``:latest`` when there is neither a
    tag nor a digest, without qualifying the name (``busybox`` becomes ``busybox:latest``)."""
    _, tag, digest = parse_image_name(text)
    if not digest and tag and not text.endswith(":" + tag):
        return f"{text}:{tag}"
    return text
