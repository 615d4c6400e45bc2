"""oras-py's high-level registry API over imagevol's registry client.

:class:`OrasRegistry` is an ``oras.provider.Registry`` whose one request method, ``do_request``,
which all of oras's calls go through, sends through a
:class:`~imagevol.content.sources._client.RegistryClient`: oras's ``get_tags``, ``get_manifest``,
``download_blob`` and the rest get imagevol's authentication, bounds, retries, redirect rules and
error wording. oras's own session is never used (so nothing of ``~/.netrc``, the proxy variables
or cookies), and its auth backend never reads ``~/.docker/config.json`` (gap 7). A pull never
imports this module: oras-py, ``requests`` and ``jsonschema`` cost about a third of a second.
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlencode

import oras.auth.base
import oras.provider
import requests
import requests.structures
import requests.utils

from ..._text import goquote
from ...errors import PullError

#: The public methods of oras-py's ``Registry`` (what a ``RegistryClient`` forwards here).
ORAS_METHODS = frozenset(n for n in dir(oras.provider.Registry) if not n.startswith("_"))
#: What oras's own (non-streaming) calls may read: the manifest limit.
MAX_BUFFERED_BODY = 4 * 1024 * 1024


class Answer(Protocol):
    """What the adapter uses of a :class:`~imagevol.content.sources._client.Reply`."""

    @property
    def status_code(self) -> int: ...

    @property
    def reason(self) -> str: ...

    @property
    def url(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def body(self) -> bytes: ...

    def read(self, size: int) -> bytes: ...

    def detach_meter(self) -> None: ...

    def close(self) -> None: ...


class Client(Protocol):
    """What the adapter uses of a :class:`~imagevol.content.sources._client.RegistryClient`
    (named by its shape: the client module imports this one, not the other way round)."""

    host: str
    prefix: str
    tls_verify: bool

    def ping(self) -> None: ...

    def request(
        self,
        url: str,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        *,
        body_limit: int | None = None,
        body: Any = None,
    ) -> Answer: ...


class _NoConfigAuth(oras.auth.base.AuthBackend):  # type: ignore[misc]
    """oras's auth seam, emptied: the client authenticates, from its keyring only."""

    # oras-py reads ~/.docker/config.json (and credential helpers) through these two: never here.
    def load_configs(self, container: Any = None, configs: Any = None) -> None:
        return None

    def _load_auth(self, hostname: str) -> bool:
        return False

    def _logout(self) -> None:
        return None


class OrasRegistry(oras.provider.Registry):  # type: ignore[misc]
    """oras-py's ``Registry`` for ``client``'s host, sending through ``client``."""

    def __init__(self, client: Client) -> None:
        super().__init__(hostname=client.host, insecure=client.prefix == "http", tls_verify=client.tls_verify)
        self.client = client
        self.auth = _NoConfigAuth()

    @property
    def prefix(self) -> str:
        """``http`` or ``https``, as the client's ping chose (an insecure registry may be either)."""
        self.client.ping()
        return self.client.prefix

    @prefix.setter
    def prefix(self, value: str) -> None:
        return None  # oras's __init__ sets it; the client's ping decides

    def do_request(
        self,
        url: str,
        method: str = "GET",
        data: Any = None,
        headers: dict[str, str] | None = None,
        json: Any = None,
        stream: bool = False,
    ) -> requests.Response:
        """oras-py's seam: every oras method sends through here. Without ``stream`` the body is
        read under the bounds (at most 4 MiB, the manifest limit; only for a 200 answer) before
        the response is returned; with ``stream`` the caller has one try's deadline to read it."""
        sent = dict(headers or {})
        body = _encode(data, json, sent)
        reply = self.client.request(url, method, sent, body_limit=None if stream else MAX_BUFFERED_BODY, body=body)
        resp = requests.Response()
        resp.status_code = reply.status_code
        resp.reason = reply.reason
        resp.url = reply.url
        resp.headers = requests.structures.CaseInsensitiveDict(reply.headers)
        resp.encoding = requests.utils.get_encoding_from_headers(resp.headers)
        if stream:
            reply.detach_meter()
            resp.raw = _Body(reply)
            return resp
        if len(reply.body) > MAX_BUFFERED_BODY:
            raise PullError(f"{method.capitalize()} {goquote(url)}: response body exceeds {MAX_BUFFERED_BODY} bytes")
        resp._content = reply.body  # what requests' .content/.json() then return
        return resp


class _Body:
    """A streamed reply as ``requests.Response.raw`` (what ``iter_content`` reads)."""

    def __init__(self, reply: Answer) -> None:
        self._reply = reply

    def read(self, size: int = 64 * 1024, **_: Any) -> bytes:
        data = self._reply.read(size if size and size > 0 else 64 * 1024)
        if not data:
            self._reply.close()  # the end: release the bounds, keep the connection
        return data

    def close(self) -> None:
        self._reply.close()


def _encode(data: Any, json: Any, headers: dict[str, str]) -> Any:
    """A request body as ``requests`` would send ``data`` or ``json`` (bytes or a binary file)."""
    if json is not None:
        headers.setdefault("Content-Type", "application/json")
        return jsonlib.dumps(json).encode()
    if isinstance(data, dict):
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        return urlencode(data).encode()
    if isinstance(data, str):
        return data.encode()
    return data
