"""HTTP to one registry over the standard library: oras-py's request path, rebuilt with the
safety it lacks (the oras-py gaps in docs/pulling.md) and without its import cost.

:class:`RegistryClient` sends every request of a pull, over ``http.client`` connections kept
alive per scheme and host (:mod:`imagevol.content.sources._transport`), and returns a :class:`Reply`:

* every wait is bounded (gap 3): each try of a request has a deadline, each body a low-speed
  limit, each request with its retries an overall deadline, each blob a budget across its resumes
  (:mod:`imagevol.content.sources._bounds`, enforced on the sockets the transport registers);
  bodies are read only through :class:`Reply`, under those bounds, and only up to a size limit;
* no ``@retry`` decorator (gap 4): only idempotent requests are retried, a bounded number of times,
  with exponential backoff, on connection errors, 429 and 5xx;
* redirects are followed here, at most 5, without reading their bodies, and ``Authorization`` is
  only sent to the registry's own host;
* authentication is learnt once per client from ``GET /v2/`` and then sent with every request, so
  no request is sent twice for auth (gap 6); Basic and Bearer challenges are told apart by their
  scheme (gap 5);
* credentials come only from :class:`KeyringAuth` (what the caller or the Pod's pull secrets gave):
  never from ``~/.docker/config.json``, ``ORAS_USER``/``ORAS_PASS`` or ``~/.netrc``, and no proxy
  variable or cookie is ever used (gap 7);
* ``Accept-Encoding: identity``, so the bytes hashed are the bytes the registry stored;
* failures read like containerd's (:mod:`imagevol.content.sources._neterrors`).

oras-py's own API (``get_tags``, ``get_manifest``, ...) runs over the same client through
:class:`~imagevol.content.sources._oras.OrasRegistry` (:attr:`RegistryClient.oras`), which alone
imports oras-py and ``requests``: a pull imports neither.

Size: over 500 lines, because :class:`RegistryClient` is one request path (bounds, retries,
redirects, authentication) and each step relies on the others (a :class:`Reply` is only read under
its request's bounds, credentials only go to the registry's own host); the parts that stand alone
live in ``bounds``, ``transport``, ``challenge``, ``neterrors`` and ``oras``.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urljoin, urlsplit

import attrs

from ..._text import goquote
from ...errors import AuthenticationError, PullError, RegistryUnavailableError
from . import _bounds as bounds
from ._bounds import Deadline, SpeedMeter, Timeouts, duration
from ._challenge import Challenge, parse_challenges
from ._neterrors import PLAIN_HTTP_ANSWER, describe, host_port, sanitize
from ._transport import Connection, Pool
from .auth import Credentials

if TYPE_CHECKING:
    from ._oras import OrasRegistry

__all__ = ["Headers", "KeyringAuth", "RegistryClient", "Reply", "RetryPolicy", "Timeouts", "TransportError"]

#: Statuses worth another try: the registry (or a proxy in front of it) is overloaded or restarting.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
IDEMPOTENT = frozenset({"GET", "HEAD"})
MAX_REDIRECTS = 5
#: The most one :meth:`Reply.read` returns (it allocates that much; callers loop anyway).
READ_AT_ONCE = 1024 * 1024
#: A ``/v2/`` answer announcing at most this many bytes is read, to keep its connection.
PING_DRAIN = 4096
#: A token response larger than this is not a token response.
MAX_TOKEN_RESPONSE = 1024 * 1024
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]{1,16384}$")
_SCOPE_PATH = re.compile(r"^/v2/(.+?)/(?:manifests|blobs|tags|referrers)(?:/|$)")
#: Everything a request to a hostile server can raise from inside http.client, ssl and socket
#: (ValueError: unparsable URLs and headers, IDNA errors, a CR or LF in a header value).
_TRANSPORT_ERRORS = (http.client.HTTPException, OSError, ValueError)
#: What a kept-alive connection the server closed meanwhile raises before any answer: the
#: request is sent again once, on a new connection (as Go's transport does).
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
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


class Headers(Mapping[str, str]):
    """Response header fields, looked up without regard to case; a field sent several times is
    one value, its values joined with ", " (RFC 9110 section 5.3), as ``requests`` shows them."""

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._map: dict[str, tuple[str, str]] = {}
        for name, value in fields:
            key = name.lower()
            seen = self._map.get(key)
            self._map[key] = (seen[0], f"{seen[1]}, {value}") if seen is not None else (name, value)

    def __getitem__(self, name: str) -> str:
        return self._map[name.lower()][1]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._map.values())

    def __len__(self) -> int:
        return len(self._map)

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"


class Reply:
    """A registry's answer: status and headers, and a body read only under the request's bounds.

    ``body`` holds what :meth:`RegistryClient.request` read when asked to (at most the limit
    plus one byte, so an oversized body is recognised without reading it all); otherwise the body
    is streamed with :meth:`read` or :meth:`readinto` and the reply closed when done
    (``with reply:``). A body read to its end gives its connection back for the next request; a
    reply closed before that closes its connection."""

    def __init__(
        self, resp: http.client.HTTPResponse, conn: Connection, pool: Pool, guard: bounds.Guard, method: str, url: str
    ) -> None:
        self._resp = resp
        self._conn = conn
        self._pool = pool
        self._guard = guard
        self._closed = False
        self.method = method
        self.url = url
        self.status_code: int = resp.status
        # The reason phrase is the server's text and ends up in messages: kept, but capped.
        self.reason: str = sanitize(resp.reason or "") or http.client.responses.get(resp.status, "")
        self.headers = Headers(resp.getheaders())
        self.body = b""

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes as soon as some arrive; ``b""`` at the end. Raises
        :class:`TransportError` when the connection fails or the bounds cut it."""
        buf = bytearray(max(0, min(size, READ_AT_ONCE)))  # what one read can bring, not what was asked
        n = self.readinto(memoryview(buf))
        return bytes(buf[:n]) if n < len(buf) else bytes(buf)

    def readinto(self, buf: memoryview) -> int:
        """Read up to ``len(buf)`` bytes into ``buf`` as soon as some arrive (one read of the
        socket, no copy in between); 0 at the end. Raises :class:`TransportError` as :meth:`read`."""
        if self._guard.failure:
            raise self._cut()
        try:
            n = _readinto1(self._resp, buf)
        except _TRANSPORT_ERRORS as exc:
            if self._guard.failure:
                raise self._cut() from None
            raise TransportError(self.method, self.url, describe(exc, self.url, self._guard.endpoints())) from None
        if self._guard.failure:
            raise self._cut()  # the watchdog shut the socket: a short read is not the end of the body
        meter = self._guard.meter
        if meter is not None:
            meter.add(n)
        return n

    def read_all(self, limit: int, chunk: int = 64 * 1024) -> bytes:
        """The whole body, or its first ``limit + 1`` bytes when it is larger than ``limit``."""
        out = bytearray()
        while len(out) <= limit and (data := self.read(min(chunk, limit + 1 - len(out)))):
            out += data
        return bytes(out)

    def detach_meter(self) -> None:
        """The body will be read at its reader's pace (oras's ``iter_content``): keep only the
        deadline, not the low-speed limit."""
        self._guard.body_started(None)

    def announced_length(self) -> int | None:
        """``Content-Length`` when it is a number."""
        value = self.headers.get("Content-Length", "").strip()
        return int(value) if value.isdigit() else None

    def _cut(self) -> TransportError:
        where = self._guard.endpoints()
        why = self._guard.failure
        if why.startswith("transfer too slow") and where:
            why = f"read tcp {where}: {why}"
        return TransportError(self.method, self.url, why, cut=True)

    def discard(self) -> None:
        """Drop the answer unread (a redirect's body, which could be endless): its connection is
        closed, the request's bounds stay armed."""
        if not self._closed:
            self._closed = True
            self._resp.close()
            self._conn.close()

    def close(self) -> None:
        """End the request: its bounds are released, its connection kept for the next request
        when the body was read to the end, else closed."""
        self._guard.release()  # first: the connection may serve another request once pooled
        if self._closed:
            return
        self._closed = True
        if self._resp.isclosed() and self._conn.sock is not None and not self._resp.will_close:
            self._pool.put(self._conn)
        else:
            self._resp.close()
            self._conn.close()

    def __enter__(self) -> Reply:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _readinto1(resp: http.client.HTTPResponse, buf: memoryview) -> int:
    """One read of the body of ``resp`` into ``buf``.

    ``HTTPResponse.readinto`` waits until ``buf`` is full, so a slow but acceptable registry would
    look silent to the low-speed meter for as long as a whole buffer takes; ``read1`` returns what
    has arrived but allocates each time. For a ``Content-Length`` body this does what ``read1``
    does, into ``buf``: one read of the socket's buffered file, never past the announced length,
    keeping ``resp.length`` so that http.client knows when the body (and the connection's turn)
    is over. Chunked and close-delimited bodies go through ``read1``."""
    if resp.fp is None or not buf:
        return 0
    length = resp.length  # 0 for a HEAD, 204 or 304 answer (http.client knows they have no body)
    if resp.chunked or length is None:
        data = resp.read1(len(buf))
        buf[: len(data)] = data
        return len(data)
    n: int = resp.fp.readinto1(buf[:length]) if length else 0
    if n == 0 and length:
        resp.close()
        raise http.client.IncompleteRead(b"", length)
    resp.length = length - n
    if not resp.length:
        resp.close()  # the whole body is in: the connection may serve the next request
    return n


class KeyringAuth:
    """A client's credentials: only those it is given (gap 7).

    It remembers the registry's challenge; for ``Basic`` it sends the current credentials, for
    ``Bearer`` it fetches (and caches until expiry) one token per scope from the realm, sending
    the current credentials, or none for an anonymous token. When a registry rejects the current
    credentials the next ones are tried, as the kubelet tries each pull secret in turn.
    """

    def __init__(self, credentials: Sequence[Credentials] = ()) -> None:
        self.credentials = tuple(credentials)
        self.index = 0
        self.challenge: Challenge | None = None
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.RLock()

    def logout(self) -> None:
        """Forget every token."""
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


class RegistryClient:
    """A client for one registry host. See the module docstring for what differs from oras-py.

    ``plain_http`` talks HTTP only; ``insecure`` (registries.conf) tries HTTPS without certificate
    verification first and falls back to HTTP, as containers-registries.conf(5) describes.
    ``clock`` dates cached tokens; the bounds run on the watchdog's monotonic clock. HTTPS
    certificates are checked against the system's trust store (as containerd does).
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
        self.host = host
        self.prefix: str = "http" if plain_http else "https"
        self.schemes: tuple[str, ...] = ("http",) if plain_http else ("https", "http") if insecure else ("https",)
        self.tls_verify = not insecure
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.clock = clock
        self.headers = {"User-Agent": "imagevol", "Accept-Encoding": "identity"}
        self.auth = KeyringAuth(credentials)
        self._pool = Pool(connect_timeout=self.timeouts.connect, read_timeout=self.timeouts.read, verify=not insecure)
        self._ping_lock = threading.Lock()
        self._pinged = False
        self._oras: OrasRegistry | None = None

    @property
    def base_url(self) -> str:
        return f"{self.prefix}://{self.host}"

    @property
    def oras(self) -> OrasRegistry:
        """oras-py's ``Registry`` API (``get_tags``, ``get_manifest``, ...) over this client:
        its requests get this client's auth, bounds and retries (imports oras-py on first use)."""
        if self._oras is None:
            from ._oras import OrasRegistry

            self._oras = OrasRegistry(self)
        return self._oras

    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            # What this class was before it dropped oras-py's base class: an oras ``Registry``.
            # Its public methods still answer here, through the adapter; nothing else does.
            if name.startswith("_"):
                raise AttributeError(name)
            from ._oras import ORAS_METHODS

            if name not in ORAS_METHODS:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            return getattr(self.oras, name)

    def request(
        self,
        url: str,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        *,
        body_limit: int | None = None,
        deadline: Deadline | None = None,
        meter: SpeedMeter | None = None,
        body: Any = None,
    ) -> Reply:
        """Send one request with authentication, bounds and (for GET/HEAD) bounded retries.

        With ``body_limit``, a 200 answer's body is read into ``Reply.body`` (at most
        ``body_limit + 1`` bytes; none when ``Content-Length`` announces more) and the reply is
        closed; other answers are closed unread. Without it the reply is open: read it, close it.
        ``deadline`` and ``meter`` are a blob's budget and low-speed meter, which span its resumes.
        ``body`` (bytes or a binary file) is sent with the first hop only. Returns the reply
        whatever its status, except that a 401 which the credentials at hand cannot answer raises
        :class:`AuthenticationError`."""
        self.ping()
        scope = _scope_for(url, method)
        renewed = False
        while True:
            sent = dict(headers or {})
            auth = self._authorization(scope)
            if auth:
                sent["Authorization"] = auth
            reply = self._send(method, url, sent, body_limit=body_limit, deadline=deadline, meter=meter, body=body)
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
                    with self._send("GET", url, {}) as reply:
                        # Its body is of no use: a short one (``{}``, an error list) is read, under
                        # the bounds, so the connection serves the next request; others never are.
                        length = reply.announced_length()
                        if length is not None and length <= PING_DRAIN:
                            with contextlib.suppress(TransportError):
                                reply.read_all(PING_DRAIN)
                except PullError as exc:
                    if i + 1 < len(self.schemes):
                        continue  # insecure registry: HTTPS failed, try plain HTTP
                    text = f"pinging container registry {self.host}: {exc}"
                    if PLAIN_HTTP_ANSWER in str(exc):
                        text += f"; to pull over plain HTTP, set insecure = true for {self.host} in registries.conf"
                    raise (RegistryUnavailableError if isinstance(exc, RegistryUnavailableError) else PullError)(
                        text
                    ) from None
                self.prefix = scheme
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
        body: Any = None,
    ) -> Reply:
        """Tries of one request (see :meth:`request`), each under a :class:`~.bounds.Guard`:
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
                reply = self._exchange(method, url, headers, params, guard, body)
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
        body: Any = None,
    ) -> Reply:
        """One try: the request and its redirects (at most ``MAX_REDIRECTS``, bodies unread),
        all under ``guard``. ``Authorization`` goes only to the host it was meant for."""
        sent = dict(headers)
        current = _with_query(url, params) if params else url
        for hop in range(MAX_REDIRECTS + 1):
            reply = self._open(method, current, sent, body if hop == 0 else None, guard)
            location = reply.headers.get("Location", "")
            if reply.status_code not in REDIRECT_STATUSES or not location:
                return reply
            reply.discard()  # a redirect's body is never read: it could be endless
            target = urljoin(current, location)
            if urlsplit(target).scheme not in ("http", "https"):
                raise TransportError(method, current, "unsupported protocol scheme in redirect")
            if not _same_origin(url, target):
                sent.pop("Authorization", None)
            current = target
        raise TransportError(method, url, f"stopped after {MAX_REDIRECTS} redirects")

    def _open(self, method: str, url: str, headers: dict[str, str], body: Any, guard: bounds.Guard) -> Reply:
        """Send one request to ``url`` (exactly: no proxy, no credentials taken from the URL or
        ``~/.netrc``) on a connection to its origin; its answer's status and headers."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise TransportError(method, url, "unsupported protocol scheme")
        try:
            port = parts.port
        except ValueError:
            raise TransportError(method, url, "invalid URL") from None
        host = parts.hostname or ""
        if not host:
            raise TransportError(method, url, "invalid URL")
        origin = (parts.scheme, host, port or (443 if parts.scheme == "https" else 80))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # The Host field as the URL names it, without any user:password@ (never sent anywhere).
        sent = {**self.headers, **headers, "Host": parts.netloc.rpartition("@")[2]}
        for fresh in (False, True):
            conn = self._pool.get(origin) if not fresh else self._pool.new(origin)
            conn.serve(guard)
            try:
                conn.request(method, target, body=body, headers=sent)
                resp = conn.getresponse()
            except _TRANSPORT_ERRORS as exc:
                conn.close()
                if not fresh and conn.reused and isinstance(exc, _STALE) and not guard.failure and body is None:
                    continue  # the server closed the idle connection as we reused it: once more, anew
                why = guard.failure or describe(exc, url, guard.endpoints())
                raise TransportError(method, url, why, cut=bool(guard.failure)) from None
            return Reply(resp, conn, self._pool, guard, method, url)
        raise AssertionError("unreachable")  # pragma: no cover

    def _unauthorized_message(self, method: str, url: str) -> str:
        ch = self.auth.challenge
        if not self.auth.credentials and (ch is None or ch.scheme == "basic"):
            return (
                "pull access denied, repository does not exist or may require authorization: "
                "authorization failed: no basic auth credentials"
            )
        return f"failed to authorize: unexpected status from {method} request to {url}: 401 Unauthorized"

    def close(self) -> None:
        """Close the client's idle connections."""
        self._pool.close()


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


def _with_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` added to its query (form-encoded, as ``requests`` adds them)."""
    return url + ("&" if urlsplit(url).query else "?") + urlencode(params)
