"""Mirror configuration in the containers-registries.conf(5) TOML shape.

Supported: ``[[registry]]`` with ``prefix`` (exact, or ``*.domain`` wildcard), ``location``,
``insecure``, ``blocked``, ``mirror-by-digest-only``, and ``[[registry.mirror]]`` entries with
``location``, ``insecure`` and ``pull-from-mirror`` (``all``, ``digest-only``, ``tag-only``).
Mirrors are tried in order, then the primary location. Our extension: a location of the form
``oci-layout:PATH`` names an OCI image layout on disk (relative to the config file), for offline use.

Matching follows containers/image: a prefix matches a repository name when the name equals it or
continues it with ``/``, ``:`` or ``@`` (so ``example.com`` also matches ``example.com:5000``, a
quirk upstream keeps); ``*.example.com`` matches any subdomain host; the longest prefix wins and, on
a tie, the first entry in the file. The matched part of the name is replaced by the location.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs

from ...errors import BlockedRegistryError
from ...oci.reference import Reference

OCI_LAYOUT_SCHEME = "oci-layout:"


@attrs.frozen
class Endpoint:
    """One place to try: a registry host (+ optional path) or an OCI layout directory."""

    location: str
    insecure: bool = False
    pull_from_mirror: str = "all"

    @property
    def is_layout(self) -> bool:
        """Whether the location is an OCI layout (``oci-layout:PATH``) rather than a registry."""
        return self.location.startswith(OCI_LAYOUT_SCHEME)

    @property
    def layout_path(self) -> str:
        """The layout directory of an ``oci-layout:`` location."""
        return self.location[len(OCI_LAYOUT_SCHEME) :]


@attrs.frozen
class PullSource:
    """Where to pull ``reference`` from: ``endpoint``, under the name ``name`` there (a repository
    path for a registry; a ``ref.name`` for an OCI layout), with the tag/digest of the reference."""

    endpoint: Endpoint
    repository: str
    reference: Reference
    is_mirror: bool

    @property
    def layout_ref_name(self) -> str:
        """The ``org.opencontainers.image.ref.name`` to look up in an OCI-layout endpoint: the
        tag, prefixed by what remains of the repository path after the matched prefix."""
        tag = self.reference.tag
        return f"{self.repository}:{tag}" if self.repository else tag


@attrs.frozen
class RegistryEntry:
    """One ``[[registry]]`` table: the prefix it applies to, its location and mirrors."""

    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirror_by_digest_only: bool = False
    mirrors: tuple[Endpoint, ...] = ()

    def matches(self, name: str) -> bool:
        """Whether the repository ``name`` falls under this entry's prefix."""
        return match_length(name, self.prefix) != -1


def match_length(name: str, prefix: str) -> int:
    """How much of the repository ``name`` the ``prefix`` covers, or -1 when it does not match
    (containers/image's ``refMatchingPrefix``)."""
    if prefix.startswith("*."):
        # Upstream looks only at the first occurrence of ".example.com" (so "a.example.com.example.com"
        # would not match); every occurrence in the host is tried here.
        suffix, i = prefix[1:], name.find(prefix[1:])
        while i != -1 and "/" not in name[:i]:
            end = i + len(suffix)
            if end == len(name) or name[end] in ":/@":
                return end
            i = name.find(suffix, i + 1)
        return -1
    if name == prefix:
        return len(prefix)
    if len(name) > len(prefix) and name.startswith(prefix) and name[len(prefix)] in ":/@":
        return len(prefix)
    return -1


def _rewrite(name: str, prefix: str, location: str) -> str:
    """Replace the matched prefix of the repository ``name`` by ``location`` (a wildcard entry
    without a location of its own keeps the name)."""
    if not location or location.startswith("*."):
        return name
    return location + name[match_length(name, prefix) :]


@attrs.frozen
class RegistriesConfig:
    """Parsed registries.conf: which endpoints serve which references."""

    registries: tuple[RegistryEntry, ...] = ()
    source: str = ""

    @classmethod
    def load(cls, path: str) -> RegistriesConfig:
        """Read a registries.conf file (TOML); ``oci-layout:`` paths are relative to it."""
        import tomllib  # only when there is a file to read (a pull without one skips it)

        with open(path, "rb") as f:
            try:
                data = tomllib.load(f)
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"{path}: invalid TOML: {exc}") from None
        return cls.from_dict(data, base_dir=os.path.dirname(os.path.abspath(path)), source=path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str = ".", source: str = "") -> RegistriesConfig:
        """The configuration a parsed registries.conf holds (``source`` names it in messages)."""
        entries = []
        for i, reg in enumerate(data.get("registry", []) or []):
            if not isinstance(reg, dict):
                raise ValueError(f"registry[{i}] must be a table")
            location = _location(str(reg.get("location", "")), base_dir)
            prefix = str(reg.get("prefix", "")).rstrip("/") or location
            if not prefix:
                raise ValueError(f"registry[{i}] needs a prefix or a location")
            if prefix.startswith("*.") and any(c in prefix for c in "/@:"):
                raise ValueError(
                    f"registry[{i}]: wildcarded prefix should be in the format: *.example.com; "
                    f"prefix {prefix!r} is incorrectly formatted"
                )
            mirrors = []
            for j, mir in enumerate(reg.get("mirror", []) or []):
                if not isinstance(mir, dict) or not mir.get("location"):
                    raise ValueError(f"registry[{i}].mirror[{j}] needs a location")
                policy = str(mir.get("pull-from-mirror", "all"))
                if policy not in ("all", "digest-only", "tag-only"):
                    raise ValueError(f"registry[{i}].mirror[{j}]: invalid pull-from-mirror {policy!r}")
                mirrors.append(
                    Endpoint(_location(str(mir["location"]), base_dir), bool(mir.get("insecure", False)), policy)
                )
            entries.append(
                RegistryEntry(
                    prefix=prefix,
                    location=location or prefix,
                    insecure=bool(reg.get("insecure", False)),
                    blocked=bool(reg.get("blocked", False)),
                    mirror_by_digest_only=bool(reg.get("mirror-by-digest-only", False)),
                    mirrors=tuple(mirrors),
                )
            )
        return cls(tuple(entries), source)

    def find(self, name: str) -> RegistryEntry | None:
        """The entry with the longest matching prefix; on a tie, the first in the file."""
        best: RegistryEntry | None = None
        for entry in self.registries:
            if entry.matches(name) and (best is None or len(entry.prefix) > len(best.prefix)):
                best = entry
        return best

    def pull_sources(self, ref: Reference) -> list[PullSource]:
        """Endpoints to try for ``ref``, in order: mirrors that apply, then the primary location."""
        name = ref.name
        entry = self.find(name)
        if entry is None:
            return [PullSource(Endpoint(ref.domain), ref.path, ref, is_mirror=False)]
        if entry.blocked:
            raise BlockedRegistryError(f"registry {entry.prefix} is blocked in {self.source or 'registries.conf'}")
        by_digest = bool(ref.digest)
        out = []
        for mirror in entry.mirrors:
            if entry.mirror_by_digest_only:
                # The entry-wide switch replaces the per-mirror one (upstream forbids mixing them).
                if not by_digest:
                    continue
            elif (mirror.pull_from_mirror == "digest-only" and not by_digest) or (
                mirror.pull_from_mirror == "tag-only" and by_digest
            ):
                continue
            out.append(_pull_source(mirror, name, entry.prefix, ref, is_mirror=True))
        primary = Endpoint(entry.location, entry.insecure)
        out.append(_pull_source(primary, name, entry.prefix, ref, is_mirror=False))
        return out


def _pull_source(endpoint: Endpoint, name: str, prefix: str, ref: Reference, *, is_mirror: bool) -> PullSource:
    if endpoint.is_layout:
        rest = name[match_length(name, prefix) :].lstrip("/")
        return PullSource(endpoint, rest, ref, is_mirror)
    rewritten = _rewrite(name, prefix, endpoint.location)
    host, _, repo = rewritten.partition("/")
    return PullSource(attrs.evolve(endpoint, location=host), repo, ref, is_mirror)


def _location(location: str, base_dir: str) -> str:
    location = location.rstrip("/")
    if location.startswith(("http://", "https://")):
        raise ValueError(f"invalid location {location!r}: URI schemes are not supported")
    if location.startswith(OCI_LAYOUT_SCHEME):
        path = location[len(OCI_LAYOUT_SCHEME) :]
        if not os.path.isabs(path):
            path = os.path.normpath(os.path.join(base_dir, path))
        return OCI_LAYOUT_SCHEME + path
    return location
