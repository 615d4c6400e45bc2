"""HTTP to one registry: oras-py's ``Registry`` with the safety it lacks (the oras-py gaps in
docs/pulling.md).

:class:`RegistryClient` subclasses ``oras.provider.Registry`` (its session, with cookies refused, its
``http``/``https`` prefix, its TLS switch and its auth-backend seam) and replaces the one method all
of oras's calls go through, ``do_request``, which here returns a :class:`Reply`:

* every wait is bounded (gap 3): each try of a request has a deadline, each body a low-speed
  limit, each request with its retries an overall deadline, each blob a budget across its resumes
  (:mod:`imagevol.content.sources._bounds`, enforced on the sockets by :mod:`imagevol.content.sources._transport`);
  bodies are read only through :class:`Reply`, under those bounds, and only up to a size limit;
* no ``@retry`` decorator (gap 4): only idempotent requests are retried, a bounded number of times,
  with exponential backoff, on connection errors, 429 and 5xx;
* redirects are followed here, at most 5, without reading their bodies, and ``Authorization`` is
  only sent to the registry's own host;
* authentication is learnt once per client from ``GET /v2/`` and then sent with every request, so
  no request is sent twice for auth (gap 6); Basic and Bearer challenges are told apart by their
  scheme (gap 5);
* credentials come only from :class:`KeyringAuth` (what the caller or the Pod's pull secrets gave):
  never from ``~/.docker/config.json``, ``ORAS_USER``/``ORAS_PASS`` or ``~/.netrc`` (gap 7);
* ``Accept-Encoding: identity``, so the bytes hashed are the bytes the registry stored;
* failures read like containerd's (:mod:`imagevol.content.sources._neterrors`).

Size: over 500 lines, because :class:`RegistryClient` replaces oras-py's request path as a whole
(bounds, retries, redirects, authentication) and each step relies on the others (a :class:`Reply`
is only read under its request's bounds, credentials only go to the registry's own host); the
parts that stand alone already live in ``bounds``, ``transport``, ``challenge`` and ``neterrors``.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import urljoin, urlsplit

import attrs
import oras.auth.base
import oras.provider
import requests
import requests.structures
import urllib3.exceptions

from ..._text import goquote
from ...errors import AuthenticationError, PullError, RegistryUnavailableError
from . import _bounds as bounds
from . import _transport as transport
from ._bounds import Deadline, SpeedMeter, Timeouts, duration
from ._challenge import Challenge, parse_challenges
from ._neterrors import PLAIN_HTTP_ANSWER, describe, host_port, sanitize
from .auth import Credentials

__all__ = ["KeyringAuth", "RegistryClient", "Reply", "RetryPolicy", "Timeouts", "TransportError"]

#: Statuses worth another try: the registry (or a proxy in front of it) is overloaded or restarting.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
IDEMPOTENT = frozenset({"GET", "HEAD"})
MAX_REDIRECTS = 5
#: A token response larger than this is not a token response.
MAX_TOKEN_RESPONSE = 1024 * 1024
#: What oras's own (non-streaming) calls may read: the manifest limit.
MAX_BUFFERED_BODY = 4 * 1024 * 1024
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]{1,16384}$")
_SCOPE_PATH = re.compile(r"^/v2/(.+?)/(?:manifests|blobs|tags|referrers)(?:/|$)")
#: Everything a request to a hostile server can raise from inside requests, urllib3, http.client,
#: ssl and socket (ValueError: unparsable URLs and headers, IDNA errors).
_TRANSPORT_ERRORS = (
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
    ValueError,
)
#: Failures another try cannot fix: the TLS setup, a bad URL or a loop in redirects.
_FATAL = ("tls: ", PLAIN_HTTP_ANSWER, "invalid URL", "unsupported protocol scheme", "stopped after")
#: Go's ``context.DeadlineExceeded``, which containerd reports when a pull's context times out.
DEADLINE_EXCEEDED = "context deadline exceeded"


@attrs.frozen
class RetryPolicy:
    """Bounded retries: at most ``attempts`` tries of one request, waiting ``initial`` seconds
    then doubling up to ``maximum``; all tries of a request and the waits between them end within
    ``deadline`` seconds (no try starts that could not, and a running one is cut there)."""

    attempts: int = 3
    initial: float = 0.5
    maximum: float = 4.0
    deadline: float = 60.0

    def delay(self, attempt: int) -> float:
        """The wait before try number ``attempt + 1`` (``attempt`` counts from 1)."""
        return float(min(self.maximum, self.initial * 2 ** (attempt - 1)))


class TransportError(RegistryUnavailableError):
    """A request failed on the wire or was cut by its bounds. ``why`` is the reason alone (Go's
    wording); ``cut`` is True when a deadline or the low-speed limit ended it."""

    def __init__(self, method: str, url: str, why: str, *, cut: bool = False) -> None:
        super().__init__(f"failed to do request: {_op(method)} {goquote(url)}: {why}")
        self.why = why
        self.cut = cut

    @property
    def fatal(self) -> bool:
        return not self.cut and self.why.startswith(_FATAL)


class Reply:
    """A registry's answer: status and headers, and a body read only under the request's bounds.

    ``body`` holds what :meth:`RegistryClient.request` read when asked to (at most the limit
    plus one byte, so an oversized body is recognised without reading it all); otherwise the body
    is streamed with :meth:`read` and the reply closed when done (``with reply:``)."""

    def __init__(self, resp: requests.Response, guard: bounds.Guard, method: str, url: str) -> None:
        self._resp = resp
        self._guard = guard
        self.method = method
        self.url = url
        self.status_code: int = resp.status_code
        # The reason phrase is the server's text and ends up in messages: kept, but capped.
        self.reason: str = sanitize(resp.reason or "") or http.client.responses.get(resp.status_code, "")
        self.headers: requests.structures.CaseInsensitiveDict[str] = resp.headers
        self.body = b""

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes as soon as some arrive; ``b""`` at the end. Raises
        :class:`TransportError` when the connection fails or the bounds cut it."""
        if self._guard.failure:
            raise self._cut()
        try:
            data = _read1(self._resp, size)
        except _TRANSPORT_ERRORS as exc:
            if self._guard.failure:
                raise self._cut() from None
            raise TransportError(self.method, self.url, describe(exc, self.url, self._guard.endpoints())) from None
        if self._guard.failure:
            raise self._cut()  # the watchdog shut the socket: a short read is not the end of the body
        meter = self._guard.meter
        if meter is not None:
            meter.add(len(data))
        return data

    def read_all(self, limit: int, chunk: int = 64 * 1024) -> bytes:
        """The whole body, or its first ``limit + 1`` bytes when it is larger than ``limit``."""
        out = bytearray()
        while len(out) <= limit and (data := self.read(min(chunk, limit + 1 - len(out)))):
            out += data
        return bytes(out)

    @property
    def response(self) -> requests.Response:
        """The underlying ``requests`` response (for oras-py's methods)."""
        return self._resp

    def detach_meter(self) -> None:
        """Reads will bypass :meth:`read` (oras's ``iter_content``): keep only the deadline."""
        self._guard.body_started(None)

    def announced_length(self) -> int | None:
        value = self.headers.get("Content-Length", "").strip()
        return int(value) if value.isdigit() else None

    def _cut(self) -> TransportError:
        where = self._guard.endpoints()
        why = self._guard.failure
        if why.startswith("transfer too slow") and where:
            why = f"read tcp {where}: {why}"
        return TransportError(self.method, self.url, why, cut=True)

    def close(self) -> None:
        self._guard.release()  # first: the connection may go back to the pool once closed
        self._resp.close()

    def __enter__(self) -> Reply:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


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
    ``clock`` dates cached tokens; the bounds run on the watchdog's monotonic clock.
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
        self.session.headers.update({"User-Agent": "imagevol", "Accept-Encoding": "identity"})
        transport.mount(self.session)
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

    # --- requests: imagevol's (request) and oras's seam (do_request) ----------------------------

    def do_request(
        self,
        url: str,
        method: str = "GET",
        data: Any = None,
        headers: dict[str, str] | None = None,
        json: Any = None,
        stream: bool = False,
    ) -> requests.Response:
        """oras-py's seam: every oras method sends through here, so its calls get imagevol's auth,
        bounds and retries too. Without ``stream`` the body is read under the bounds (at most
        4 MiB, the manifest limit; only for a 200 answer) before the response is returned; with
        ``stream`` the caller has one try's deadline to read it. imagevol itself uses
        :meth:`request`."""
        reply = self.request(
            url, method, headers, body_limit=None if stream else MAX_BUFFERED_BODY, data=data, json=json
        )
        if stream:
            reply.detach_meter()
            return reply.response
        if len(reply.body) > MAX_BUFFERED_BODY:
            raise PullError(f"{_op(method)} {goquote(url)}: response body exceeds {MAX_BUFFERED_BODY} bytes")
        resp = reply.response
        resp._content = reply.body  # what requests' .content/.json() then return
        return resp

    def request(
        self,
        url: str,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        *,
        body_limit: int | None = None,
        deadline: Deadline | None = None,
        meter: SpeedMeter | None = None,
        data: Any = None,
        json: Any = None,
    ) -> Reply:
        """Send one request with authentication, bounds and (for GET/HEAD) bounded retries.

        With ``body_limit``, a 200 answer's body is read into ``Reply.body`` (at most
        ``body_limit + 1`` bytes; none when ``Content-Length`` announces more) and the reply is
        closed; other answers are closed unread. Without it the reply is open: read it, close it.
        ``deadline`` and ``meter`` are a blob's budget and low-speed meter, which span its resumes.
        Returns the reply whatever its status, except that a 401 which the credentials at hand
        cannot answer raises :class:`AuthenticationError`."""
        self.ping()
        scope = _scope_for(url, method)
        renewed = False
        while True:
            sent = dict(headers or {})
            auth = self._authorization(scope)
            if auth:
                sent["Authorization"] = auth
            reply = self._send(
                method, url, sent, body_limit=body_limit, deadline=deadline, meter=meter, data=data, json=json
            )
            if reply.status_code != 401:
                return reply
            reply.close()
            ch = _pick(parse_challenges(reply.headers.get("WWW-Authenticate", "")))
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
            raise AuthenticationError(self._unauthorized_message(method, url))

    def ping(self) -> None:
        """``GET /v2/`` once per client: choose the scheme and learn the auth challenge."""
        with self._ping_lock:
            if self._pinged:
                return
            for i, scheme in enumerate(self.schemes):
                url = f"{scheme}://{self.host}/v2/"
                try:
                    with self._send("GET", url, {}) as reply:  # its body is of no use: never read
                        pass
                except PullError as exc:
                    if i + 1 < len(self.schemes):
                        continue  # insecure registry: HTTPS failed, try plain HTTP
                    text = f"pinging container registry {self.host}: {exc}"
                    if PLAIN_HTTP_ANSWER in str(exc):
                        text += f"; to pull over plain HTTP, set insecure = true for {self.host} in registries.conf"
                    raise (RegistryUnavailableError if isinstance(exc, RegistryUnavailableError) else PullError)(
                        text
                    ) from None
                self.prefix = self.auth.prefix = scheme
                if reply.status_code == 401:
                    self.auth.challenge = _pick(parse_challenges(reply.headers.get("WWW-Authenticate", "")))
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
            reply = self._send("GET", realm, headers, params=params, body_limit=MAX_TOKEN_RESPONSE)
            if reply.status_code in (401, 403) and basic and self.auth.next_credentials():
                continue
            if reply.status_code != 200:
                kind = "fetch oauth token" if basic else "fetch anonymous token"
                raise AuthenticationError(
                    f"failed to authorize: failed to {kind}: unexpected status from GET request to "
                    f"{realm}: {reply.status_code} {reply.reason}"
                )
            length = reply.announced_length()
            if len(reply.body) > MAX_TOKEN_RESPONSE or (length is not None and length > MAX_TOKEN_RESPONSE):
                raise AuthenticationError("failed to authorize: token response is too large")
            token, lifetime = _parse_token(reply.body)
            self.auth.store_token(scope, token, now + max(1.0, lifetime - 5.0))
            return token

    # --- one request, retried when that is safe ------------------------------------------------

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        params: dict[str, str] | None = None,
        body_limit: int | None = None,
        deadline: Deadline | None = None,
        meter: SpeedMeter | None = None,
        data: Any = None,
        json: Any = None,
    ) -> Reply:
        """Tries of one request (see :meth:`do_request`), each under a :class:`~.bounds.Guard`:
        ``Timeouts.request`` per try, ``RetryPolicy.deadline`` for all of them, ``deadline`` (a
        blob's budget) for everything including the body."""
        clock = bounds.WATCHDOG.clock
        t = self.timeouts
        retries = f"request and its retries took longer than {duration(self.retry.deadline)}"
        end = Deadline.after(self.retry.deadline, f"{DEADLINE_EXCEEDED} ({retries})", clock).earliest(deadline)
        attempt = 0
        while True:
            attempt += 1
            one_try = Deadline.after(t.request, f"{DEADLINE_EXCEEDED} (no answer within {duration(t.request)})", clock)
            guard = bounds.Guard(one_try.earliest(end))
            bounds.WATCHDOG.arm(guard)
            reply: Reply | None = None
            error: TransportError | None = None
            try:
                reply = self._exchange(method, url, headers, params, guard, data, json)
                if reply.status_code not in RETRY_STATUSES and body_limit is None:
                    # The body is the caller's to read: from now on a blob's own budget and meter
                    # bound it; anything else keeps this try's deadline.
                    guard.body_started(meter or SpeedMeter(t.low_speed_limit, t.low_speed_time, clock), deadline)
                    return reply
                with reply:
                    length = reply.announced_length()
                    if reply.status_code == 200 and body_limit is not None and not (length or 0) > body_limit:
                        guard.body_started(SpeedMeter(t.low_speed_limit, t.low_speed_time, clock))
                        reply.body = reply.read_all(body_limit)
                if reply.status_code not in RETRY_STATUSES:
                    return reply
            except TransportError as exc:
                if exc.fatal:
                    raise PullError(str(exc)) from None
                reply, error = None, exc
            finally:
                if reply is None or reply.status_code in RETRY_STATUSES or body_limit is not None:
                    guard.release()
            wait = self.retry.delay(attempt)
            if reply is not None:
                wait = max(wait, min(self.retry.maximum, _retry_after(reply)))
            if method not in IDEMPOTENT or attempt >= self.retry.attempts or clock() + wait >= end.at:
                if reply is not None:
                    return reply  # the caller reports the status in its own words
                assert error is not None
                raise error
            self.sleep(wait)

    def _exchange(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        params: dict[str, str] | None,
        guard: bounds.Guard,
        data: Any = None,
        json: Any = None,
    ) -> Reply:
        """One try: the request and its redirects (at most ``MAX_REDIRECTS``, bodies unread),
        all under ``guard``. ``Authorization`` goes only to the host it was meant for."""
        current, sent = url, dict(headers)
        for _hop in range(MAX_REDIRECTS + 1):
            first = current == url
            bounds.bind(guard)
            try:
                # Through the adapter, not Session.send: even with allow_redirects=False, requests
                # reads a redirect's whole body (to prepare Response.next), and it could be endless.
                prepared = self.session.prepare_request(
                    requests.Request(
                        method,
                        current,
                        headers=sent,
                        params=params if first else None,
                        data=data if first else None,
                        json=json if first else None,
                    )
                )
                resp = self.session.get_adapter(current).send(
                    prepared,
                    stream=True,
                    timeout=(self.timeouts.connect, self.timeouts.read),
                    verify=self._tls_verify,
                    proxies={},
                )
            except _TRANSPORT_ERRORS as exc:
                why = guard.failure or describe(exc, current, guard.endpoints())
                raise TransportError(method, current, why, cut=bool(guard.failure)) from None
            finally:
                bounds.bind(None)
            reply = Reply(resp, guard, method, current)
            location = resp.headers.get("Location", "")
            if resp.status_code not in REDIRECT_STATUSES or not location:
                return reply
            resp.close()  # a redirect's body is never read: it could be endless
            target = urljoin(resp.url or current, location)
            if urlsplit(target).scheme not in ("http", "https"):
                raise TransportError(method, current, "unsupported protocol scheme in redirect")
            if not _same_origin(url, target):
                sent.pop("Authorization", None)
            current = target
        raise TransportError(method, url, f"stopped after {MAX_REDIRECTS} redirects")

    def _unauthorized_message(self, method: str, url: str) -> str:
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


def _retry_after(reply: Reply) -> float:
    value = reply.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return 0.0


def _op(method: str) -> str:
    """Go's ``url.Error`` operation: ``Get``, ``Head``."""
    return method[:1].upper() + method[1:].lower()


def _same_origin(first: str, second: str) -> bool:
    """Whether a redirect stays on the registry's host (and port; an upgrade to HTTPS is fine)."""
    a, b = urlsplit(first), urlsplit(second)
    if (a.hostname or "").lower() != (b.hostname or "").lower():
        return False
    if a.scheme == b.scheme:
        return host_port(first) == host_port(second)
    upgrade = a.scheme == "http" and b.scheme == "https"
    return upgrade and host_port(first).endswith(":80") and host_port(second).endswith(":443")


def _read1(resp: requests.Response, size: int) -> bytes:
    raw = resp.raw
    # read1 returns what has arrived (up to size) instead of waiting for all of it, so the meter
    # sees a trickle as it happens; urllib3 < 2.1 has no read1.
    reader = getattr(raw, "read1", None)
    data = reader(size, decode_content=False) if reader is not None else raw.read(size, decode_content=False)
    return bytes(data)
