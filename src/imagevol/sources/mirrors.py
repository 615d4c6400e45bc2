"""Mirror configuration in the containers-registries.conf(5) TOML shape.

Supported: ``[[registry]]`` with ``prefix`` (exact, or ``*.domain`` wildcard), ``location``,
``insecure``, ``blocked``, ``mirror-by-digest-only``, and ``[[registry.mirror]]`` entries with
``location``, ``insecure`` and ``pull-from-mirror`` (``all``, ``digest-only``, ``tag-only``).
Mirrors are tried in order, then the primary location. Our extension: a location of the form
``oci-layout:PATH`` names an OCI image layout on disk (relative to the config file), for offline use.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from typing import Any

import attrs

from ..errors import BlockedRegistryError
from ..reference import Reference

OCI_LAYOUT_SCHEME = "oci-layout:"


@attrs.frozen
class Endpoint:
    """One place to try: a registry host (+ optional path) or an OCI layout directory."""

    location: str
    insecure: bool = False
    pull_from_mirror: str = "all"

    @property
    def is_layout(self) -> bool:
        return self.location.startswith(OCI_LAYOUT_SCHEME)

    @property
    def layout_path(self) -> str:
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
    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirror_by_digest_only: bool = False
    mirrors: tuple[Endpoint, ...] = ()

    def matches(self, name: str) -> bool:
        if self.prefix.startswith("*."):
            host = name.split("/", 1)[0]
            return host.endswith(self.prefix[1:])
        if name == self.prefix:
            return True
        return name.startswith(self.prefix) and name[len(self.prefix)] in "/:@"


def _rewrite(name: str, prefix: str, location: str) -> str:
    """Replace the matched prefix of the repository ``name`` by ``location``."""
    if prefix.startswith("*."):
        return name
    rest = name[len(prefix) :]
    return location + rest


@attrs.frozen
class RegistriesConfig:
    """Parsed registries.conf: which endpoints serve which references."""

    registries: tuple[RegistryEntry, ...] = ()
    source: str = ""

    @classmethod
    def load(cls, path: str) -> RegistriesConfig:
        with open(path, "rb") as f:
            try:
                data = tomllib.load(f)
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"{path}: invalid TOML: {exc}") from None
        return cls.from_dict(data, base_dir=os.path.dirname(os.path.abspath(path)), source=path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str = ".", source: str = "") -> RegistriesConfig:
        entries = []
        for i, reg in enumerate(data.get("registry", []) or []):
            if not isinstance(reg, dict):
                raise ValueError(f"registry[{i}] must be a table")
            location = _location(str(reg.get("location", "")), base_dir)
            prefix = str(reg.get("prefix", "")) or location
            if not prefix:
                raise ValueError(f"registry[{i}] needs a prefix or a location")
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
        """The entry with the longest matching prefix (exact prefixes beat wildcards)."""
        best: RegistryEntry | None = None
        for entry in self.registries:
            if not entry.matches(name):
                continue
            if best is None or _rank(entry) > _rank(best):
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
            if entry.mirror_by_digest_only and not by_digest:
                continue
            if mirror.pull_from_mirror == "digest-only" and not by_digest:
                continue
            if mirror.pull_from_mirror == "tag-only" and by_digest:
                continue
            out.append(_pull_source(mirror, name, entry.prefix, ref, is_mirror=True))
        primary = Endpoint(entry.location, entry.insecure)
        out.append(_pull_source(primary, name, entry.prefix, ref, is_mirror=False))
        return out


def _pull_source(endpoint: Endpoint, name: str, prefix: str, ref: Reference, *, is_mirror: bool) -> PullSource:
    if endpoint.is_layout:
        rest = "" if prefix.startswith("*.") else name[len(prefix) :].lstrip("/")
        return PullSource(endpoint, rest, ref, is_mirror)
    rewritten = _rewrite(name, prefix, endpoint.location)
    host, _, repo = rewritten.partition("/")
    return PullSource(attrs.evolve(endpoint, location=host), repo, ref, is_mirror)


def _rank(entry: RegistryEntry) -> tuple[int, int]:
    return (0 if entry.prefix.startswith("*.") else 1, len(entry.prefix))


def _location(location: str, base_dir: str) -> str:
    if location.startswith(OCI_LAYOUT_SCHEME):
        path = location[len(OCI_LAYOUT_SCHEME) :]
        if not os.path.isabs(path):
            path = os.path.normpath(os.path.join(base_dir, path))
        return OCI_LAYOUT_SCHEME + path
    return location
