"""Registry credentials: only what the caller or the Pod's pull secrets provide.

Unlike oras-py and docker, nothing is ever read from ``~/.docker/config.json`` (oras-py
gap 7 in docs/pulling.md): a Pod must not pull with credentials it was not given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping

import attrs

from ..api.models import Secret

DOCKER_CONFIG_JSON = "kubernetes.io/dockerconfigjson"
DOCKER_CFG = "kubernetes.io/dockercfg"
ANONYMOUS = "anonymous"


@attrs.frozen
class Credentials:
    """A user name and password (or identity token) for one registry."""

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
    """Credentials by registry host, in the order they were given (the kubelet tries each)."""

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
        entries: list[tuple[str, Credentials]] = []
        for secret in secrets:
            if secret.type == DOCKER_CONFIG_JSON and ".dockerconfigjson" in secret.data:
                entries += cls.from_docker_config(secret.data[".dockerconfigjson"]).entries
            elif secret.type == DOCKER_CFG and ".dockercfg" in secret.data:
                entries += cls.from_docker_config(secret.data[".dockercfg"]).entries
        return cls(tuple(entries))

    @classmethod
    def single(cls, host: str, creds: Credentials) -> Keyring:
        return cls(((_host_of(host), creds),))

    def for_host(self, host: str) -> list[Credentials]:
        host = _host_of(host)
        return [c for h, c in self.entries if h == host]

    def merged(self, other: Keyring) -> Keyring:
        return Keyring(self.entries + other.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)


def keyring_from_mapping(hosts: Mapping[str, Credentials]) -> Keyring:
    return Keyring(tuple((_host_of(h), c) for h, c in hosts.items()))
