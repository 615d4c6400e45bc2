"""HTTP to one registry: oras-py's ``Registry`` with the safety it lacks (oci-peers.md section 4).

:class:`RegistryClient` subclasses ``oras.provider.Registry`` (its session, with cookies refused, its
``http``/``https`` prefix, its TLS switch and its auth-backend seam) and replaces the one method all
of oras's calls go through, ``do_request``:

* no ``@retry`` decorator (gap 4): only idempotent requests are retried, a bounded number of times,
  with exponential backoff and an overall deadline, on connection errors, 429 and 5xx;
* every request has a connect and a read timeout (gap 3);
* authentication is learnt once per client from ``GET /v2/`` and then sent with every request, so
  no request is sent twice for auth (gap 6); Basic and Bearer challenges are told apart by their
  scheme (gap 5);
* credentials come only from :class:`KeyringAuth` (what the caller or the Pod's pull secrets gave):
  never from ``~/.docker/config.json``, ``ORAS_USER``/``ORAS_PASS`` or ``~/.netrc`` (gap 7);
* ``Accept-Encoding: identity``, so the bytes hashed are the bytes the registry stored.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs
import oras.auth.base
import oras.provider
import requests
import urllib3.exceptions

from .._text import goquote
from ..errors import AuthenticationError, PullError, RegistryUnavailableError
from .auth import Credentials
from .challenge import Challenge, parse_challenges

#: Statuses worth another try: the registry (or a proxy in front of it) is overloaded or restarting.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
IDEMPOTENT = frozenset({"GET", "HEAD"})
#: Transport errors another try cannot fix (bad certificate, bad URL in a redirect).
_FATAL = (requests.exceptions.SSLError, requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema)
MAX_REDIRECTS = 5
#: A token response larger than this is not a token response.
MAX_TOKEN_RESPONSE = 1024 * 1024
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]{1,16384}$")
_SCOPE_PATH = re.compile(r"^/v2/(.+?)/(?:manifests|blobs|tags|referrers)(?:/|$)")


@attrs.frozen
class Timeouts:
    """How long to wait: ``connect`` for a TCP (and TLS) connection, ``read`` for any silence on
    the socket. ``low_speed_limit`` bytes per second averaged over ``low_speed_time`` seconds is
    the slowest transfer tolerated (curl's ``--speed-limit``), so a trickling server is dropped."""

    connect: float = 5.0
    read: float = 30.0
    low_speed_limit: int = 1024
    low_speed_time: float = 30.0


@attrs.frozen
class RetryPolicy:
    """Bounded retries: at most ``attempts`` tries of one request, waiting ``initial`` seconds
    then doubling up to ``maximum``, and never starting a try after ``deadline`` seconds."""

    attempts: int = 3
    initial: float = 0.5
    maximum: float = 4.0
    deadline: float = 60.0

    def delay(self, attempt: int) -> float:
        """The wait before try number ``attempt + 1`` (``attempt`` counts from 1)."""
        return float(min(self.maximum, self.initial * 2 ** (attempt - 1)))


class KeyringAuth(oras.auth.base.AuthBackend):  # type: ignore[misc]
    """An oras auth backend fed only with the credentials it is given (gap 7).

    It remembers the registry's challenge; for ``Basic`` it sends the current credentials, for
    ``Bearer`` it fetches (and caches until expiry) one token per scope from the realm, sending
    the current credentials, or none for an anonymous token. When a registry rejects the current
    credentials the next ones are tried, as the kubelet tries each pull secret in turn.
    """

    def __init__(self, credentials: Sequence[Credentials] = ()) -> None:
        super().__init__()
        self.credentials = tuple(credentials)
        self.index = 0
        self.challenge: Challenge | None = None
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.RLock()

    # oras-py reads ~/.docker/config.json (and credential helpers) through these two: never here.
    def load_configs(self, container: Any = None, configs: Any = None) -> None:
        return None

    def _load_auth(self, hostname: str) -> bool:
        return False

    def _logout(self) -> None:
        with self._lock:
            self._tokens.clear()

    @property
    def current(self) -> Credentials | None:
        return self.credentials[self.index] if self.index < len(self.credentials) else None

    @property
    def exhausted(self) -> bool:
        return bool(self.credentials) and self.index >= len(self.credentials)

    def basic_header(self) -> str:
        creds = self.current
        if creds is None:
            return ""
        raw = f"{creds.username}:{creds.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def cached_token(self, scope: str, now: float) -> str:
        with self._lock:
            token, expiry = self._tokens.get(scope, ("", 0.0))
            return token if token and now < expiry else ""

    def store_token(self, scope: str, token: str, expiry: float) -> None:
        with self._lock:
            self._tokens[scope] = (token, expiry)

    def forget_token(self, scope: str) -> None:
        with self._lock:
            self._tokens.pop(scope, None)

    def next_credentials(self) -> bool:
        """Give up on the current credentials; True when there are others to try."""
        with self._lock:
            self._tokens.clear()
            self.index += 1
            return self.index < len(self.credentials)


class RegistryClient(oras.provider.Registry):  # type: ignore[misc]
    """A client for one registry host. See the module docstring for what differs from oras-py.

    ``plain_http`` talks HTTP only; ``insecure`` (registries.conf) tries HTTPS without certificate
    verification first and falls back to HTTP, as containers-registries.conf(5) describes.
    """

    def __init__(
        self,
        host: str,
        *,
        plain_http: bool = False,
        insecure: bool = False,
        credentials: Sequence[Credentials] = (),
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(hostname=host, insecure=plain_http, tls_verify=not insecure, auth_backend="basic")
        self.host = host
        self.prefix: str = "http" if plain_http else "https"
        self.schemes: tuple[str, ...] = ("http",) if plain_http else ("https", "http") if insecure else ("https",)
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.clock = clock
        # requests would otherwise add credentials from ~/.netrc and route through $*_PROXY.
        self.session.trust_env = False
        self.session.max_redirects = MAX_REDIRECTS
        self.session.headers.update({"User-Agent": "imagevol", "Accept-Encoding": "identity"})
        # Replace oras's BasicAuth, which took ORAS_USER/ORAS_PASS from the environment.
        self.auth = KeyringAuth(credentials)
        self.auth.session = self.session
        self.auth.prefix = self.prefix
        self.auth._tls_verify = self._tls_verify
        self._ping_lock = threading.Lock()
        self._pinged = False

    @property
    def base_url(self) -> str:
        return f"{self.prefix}://{self.host}"

    # --- the one request method every oras call goes through ----------------------------------

    def do_request(
        self,
        url: str,
        method: str = "GET",
        data: Any = None,
        headers: dict[str, str] | None = None,
        json: Any = None,
        stream: bool = False,
    ) -> requests.Response:
        """Send one request with authentication, timeouts and (for GET/HEAD) bounded retries.
        Returns the response whatever its status, except that a 401 which the credentials at
        hand cannot answer raises :class:`AuthenticationError`."""
        self.ping()
        scope = _scope_for(url, method)
        renewed = False
        while True:
            sent = dict(headers or {})
            auth = self._authorization(scope)
            if auth:
                sent["Authorization"] = auth
            resp = self._send(method, url, sent, data=data, json=json, stream=stream)
            if resp.status_code != 401:
                return resp
            resp.close()
            ch = _pick(parse_challenges(resp.headers.get("WWW-Authenticate", "")))
            if ch is not None and not auth:
                # Sent without credentials: the registry asks here but did not at /v2/ (or asks
                # differently). Learn the challenge once; answering it needs something to send.
                if ch != self.auth.challenge and (ch.scheme == "bearer" or self.auth.current is not None):
                    self.auth.challenge = ch
                    continue
            elif ch is not None and ch.scheme == "bearer" and not renewed:
                # An expired or under-scoped token: fetch a fresh one once, same credentials.
                renewed = True
                self.auth.challenge = ch
                self.auth.forget_token(scope)
                continue
            elif ch is not None and self.auth.next_credentials():
                renewed = False
                continue
            raise AuthenticationError(self._unauthorized_message(method, url, resp))

    def ping(self) -> None:
        """``GET /v2/`` once per client: choose the scheme and learn the auth challenge."""
        with self._ping_lock:
            if self._pinged:
                return
            for i, scheme in enumerate(self.schemes):
                url = f"{scheme}://{self.host}/v2/"
                try:
                    resp = self._send("GET", url, {}, stream=False)
                except PullError as exc:
                    if i + 1 < len(self.schemes):
                        continue  # insecure registry: HTTPS failed, try plain HTTP
                    raise type(exc)(f"pinging container registry {self.host}: {exc}") from None
                self.prefix = self.auth.prefix = scheme
                if resp.status_code == 401:
                    self.auth.challenge = _pick(parse_challenges(resp.headers.get("WWW-Authenticate", "")))
                resp.close()
                self._pinged = True
                return

    def _authorization(self, scope: str) -> str:
        ch = self.auth.challenge
        if ch is None or self.auth.exhausted:
            return ""
        if ch.scheme == "basic":
            return str(self.auth.basic_header())
        if ch.scheme == "bearer":
            return "Bearer " + self._token(ch, scope)
        return ""

    def _token(self, ch: Challenge, scope: str) -> str:
        """A Bearer token for ``scope`` from the challenge's realm (cached until it expires)."""
        now = self.clock()
        cached = self.auth.cached_token(scope, now)
        if cached:
            return cached
        realm = ch.get("realm")
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise AuthenticationError(f"failed to authorize: invalid token realm {goquote(realm)}")
        params = {"service": ch.get("service")} if ch.get("service") else {}
        if scope:
            params["scope"] = scope
        while True:
            headers = {"Accept": "application/json"}
            basic = self.auth.basic_header()
            if basic:
                if parts.scheme == "http" and self.prefix == "https":
                    raise AuthenticationError(
                        f"failed to authorize: refusing to send credentials to the plain-HTTP realm {goquote(realm)}"
                    )
                headers["Authorization"] = basic
            resp = self._send("GET", realm, headers, params=params, stream=True)
            with resp:
                if resp.status_code in (401, 403) and basic and self.auth.next_credentials():
                    continue
                if resp.status_code != 200:
                    kind = "fetch oauth token" if basic else "fetch anonymous token"
                    raise AuthenticationError(
                        f"failed to authorize: failed to {kind}: unexpected status from GET request to "
                        f"{realm}: {resp.status_code} {resp.reason}"
                    )
                body = resp.raw.read(MAX_TOKEN_RESPONSE + 1, decode_content=True)
            token, lifetime = _parse_token(body)
            self.auth.store_token(scope, token, now + max(1.0, lifetime - 5.0))
            return token

    # --- one request, retried when that is safe ------------------------------------------------

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        stream: bool,
        data: Any = None,
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> requests.Response:
        start = self.clock()
        attempt = 0
        while True:
            attempt += 1
            resp: requests.Response | None = None
            try:
                resp = self.session.request(
                    method,
                    url,
                    data=data,
                    json=json,
                    params=params,
                    headers=headers,
                    stream=stream,
                    verify=self._tls_verify,
                    timeout=(self.timeouts.connect, self.timeouts.read),
                    allow_redirects=True,
                )
            except _FATAL as exc:
                raise PullError(f"failed to do request: {method} {goquote(url)}: {describe(exc)}") from None
            except requests.exceptions.TooManyRedirects:
                raise PullError(
                    f"failed to do request: {method} {goquote(url)}: stopped after {MAX_REDIRECTS} redirects"
                ) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                failure = describe(exc)
            else:
                if resp.status_code not in RETRY_STATUSES:
                    return resp
                failure = f"{resp.status_code} {resp.reason}"
            wait = self.retry.delay(attempt)
            if resp is not None:
                wait = max(wait, min(self.retry.maximum, _retry_after(resp)))
            out_of_time = self.clock() - start + wait > self.retry.deadline
            if method not in IDEMPOTENT or attempt >= self.retry.attempts or out_of_time:
                if resp is not None:
                    return resp  # the caller reports the status in its own words
                raise RegistryUnavailableError(f"failed to do request: {method} {goquote(url)}: {failure}")
            if resp is not None:
                resp.close()
            self.sleep(wait)

    def _unauthorized_message(self, method: str, url: str, resp: requests.Response) -> str:
        ch = self.auth.challenge
        if not self.auth.credentials and (ch is None or ch.scheme == "basic"):
            return (
                "pull access denied, repository does not exist or may require authorization: "
                "authorization failed: no basic auth credentials"
            )
        return f"failed to authorize: unexpected status from {method} request to {url}: 401 Unauthorized"

    def close(self) -> None:
        self.session.close()


def _pick(challenges: list[Challenge]) -> Challenge | None:
    """Bearer over Basic when a registry offers both (a token can be scoped; a password cannot)."""
    for scheme in ("bearer", "basic"):
        for ch in challenges:
            if ch.scheme == scheme:
                return ch
    return None


def _scope_for(url: str, method: str) -> str:
    m = _SCOPE_PATH.match(urlsplit(url).path)
    if m is None:
        return ""
    action = "pull" if method in IDEMPOTENT else "pull,push"
    return f"repository:{m.group(1)}:{action}"


def _parse_token(body: bytes) -> tuple[str, float]:
    if len(body) > MAX_TOKEN_RESPONSE:
        raise AuthenticationError("failed to authorize: token response is too large")
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AuthenticationError("failed to authorize: token response is not JSON") from None
    token = obj.get("token") or obj.get("access_token") if isinstance(obj, dict) else None
    if not isinstance(token, str) or not _TOKEN_CHARS.match(token):
        # A CR/LF in a token would let the token server inject headers into our requests.
        raise AuthenticationError("failed to authorize: token response has no usable token")
    lifetime = obj.get("expires_in", 60)
    if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
        lifetime = 60
    return token, float(min(lifetime, 24 * 3600))


def _retry_after(resp: requests.Response) -> float:
    value = resp.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return 0.0


def describe(exc: BaseException) -> str:
    """A short reason for a transport failure (requests' own messages run to several lines)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "i/o timeout (connect)"
    if isinstance(exc, requests.exceptions.ReadTimeout | urllib3.exceptions.ReadTimeoutError | TimeoutError):
        return "i/o timeout (no data)"
    if isinstance(exc, urllib3.exceptions.ProtocolError) and exc.args and isinstance(exc.args[0], str):
        return exc.args[0][:1].lower() + exc.args[0][1:200]  # "connection broken: IncompleteRead(...)"
    for cause in _causes(exc):
        if isinstance(cause, OSError) and cause.errno:
            return f"{os.strerror(cause.errno).lower()}" + (
                "" if cause.errno != errno.ECONNREFUSED else " (is the registry running?)"
            )
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        todo += [a for a in cur.args if isinstance(a, BaseException)]
        for attr in ("reason", "__cause__", "__context__"):
            nxt = getattr(cur, attr, None)
            if isinstance(nxt, BaseException):
                todo.append(nxt)
