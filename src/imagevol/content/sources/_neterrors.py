"""Transport failures in the words containerd (Go's ``net``, ``net/http`` and ``crypto/tls``) uses.

A Pod author reads these in ``kubectl describe pod``: ``dial tcp 10.0.0.5:5000: connect: connection
refused``, ``dial tcp: lookup registry.example: no such host``, ``http: server gave HTTP response to
HTTPS client``, ``tls: failed to verify certificate: x509: certificate signed by unknown authority``,
``read tcp ...: i/o timeout``, ``EOF``, ``unexpected EOF``. Never ``[Errno 111]``, never
``HTTPConnectionPool(host=...)`` or ``NewConnectionError(<urllib3...>)`` and never a traceback:
:func:`describe` walks the exception chain (the registry client's :class:`DialError` around an
``OSError``, ``http.client``'s and ``ssl``'s errors, or, for code that uses oras-py's own
``requests`` session, what ``requests`` and urllib3 build) and names the innermost cause, and
:func:`sanitize` strips what slips through. ``requests`` and urllib3 are never imported here: an
exception of theirs can only exist once they are loaded, so they are looked up in ``sys.modules``.
"""

from __future__ import annotations

import errno
import http.client
import os
import re
import socket
import ssl
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit

#: Go's wording when a TLS client gets a plain-HTTP answer (crypto/tls RecordHeaderError, as
#: net/http reports it). OpenSSL cannot show us the bytes, but these are the reasons it gives when
#: the first "record" is ``HTTP/1.x ...``: no TLS record starts with those bytes.
PLAIN_HTTP_ANSWER = "http: server gave HTTP response to HTTPS client"
_PLAIN_HTTP_REASONS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"})

#: OpenSSL verify codes Go reports as an unknown authority (self-signed, unknown issuer, ...).
_UNKNOWN_AUTHORITY = frozenset({2, 18, 19, 20, 21, 27})
_EXPIRED = frozenset({9, 10})
_HOSTNAME_MISMATCH = 62


class DialError(OSError):
    """The TCP connect (or the name lookup before it) failed; the ``OSError`` is its cause."""


#: Class names of the exceptions that mean the same in urllib3 (``urllib3.exceptions``) and
#: ``requests`` (``requests.exceptions``), by module.
_FOREIGN = {
    "dial": (("urllib3.exceptions", ("NewConnectionError", "ConnectTimeoutError", "NameResolutionError")),
             ("requests.exceptions", ("ConnectTimeout",))),
    "timeout": (("urllib3.exceptions", ("TimeoutError",)), ("requests.exceptions", ("Timeout",))),
    "url": (("urllib3.exceptions", ("LocationParseError",)), ("requests.exceptions", ("InvalidURL",))),
    "scheme": (("requests.exceptions", ("InvalidSchema", "MissingSchema")),),
}  # fmt: skip


def _kinds(kind: str, *own: type[BaseException]) -> tuple[type[BaseException], ...]:
    """``own`` and the foreign classes of ``kind`` whose modules are loaded (none can be raised
    before they are)."""
    found: list[type[BaseException]] = list(own)
    for module, names in _FOREIGN[kind]:
        loaded = sys.modules.get(module)
        if loaded is not None:
            found += [getattr(loaded, n) for n in names if isinstance(getattr(loaded, n, None), type)]
    return tuple(found)


def describe(exc: BaseException, url: str = "", endpoints: str = "") -> str:
    """What went wrong with the request to ``url``, Go-style. ``endpoints`` is ``local->peer``
    of the connection when one was made (Go names both in read errors)."""
    chain = list(_causes(exc))
    target = host_port(url)
    host = target.rsplit(":", 1)[0].strip("[]")
    for cause in chain:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return "tls: failed to verify certificate: x509: " + _x509(cause, host)
    for cause in chain:
        if isinstance(cause, ssl.SSLError) and not isinstance(cause, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            if cause.reason in _PLAIN_HTTP_REASONS:
                return PLAIN_HTTP_ANSWER
            return "tls: " + sanitize(str(cause.reason or cause.strerror or cause).lower().replace("_", " "))
    for cause in chain:
        if isinstance(cause, socket.gaierror):
            return f"dial tcp: lookup {host}: {_lookup(cause)}"
    dial = any(isinstance(c, _kinds("dial", DialError)) for c in chain)
    where = f"dial tcp {target}" if dial else f"read tcp {endpoints or target}"
    where = where.rstrip()
    for cause in chain:
        if isinstance(cause, OSError) and not isinstance(cause, ssl.SSLError) and cause.errno:
            if cause.errno in (errno.EPIPE, errno.ESHUTDOWN) and not dial:
                return f"write tcp {endpoints or target}".rstrip() + f": write: {_strerror(cause.errno)}"
            return f"{where}: {'connect' if dial else 'read'}: {_strerror(cause.errno)}"
    if any(isinstance(c, _kinds("timeout", TimeoutError, socket.timeout)) for c in chain):
        return f"{where}: i/o timeout"
    for cause in chain:
        if isinstance(cause, http.client.InvalidURL):
            return "invalid URL"
        if isinstance(cause, http.client.RemoteDisconnected):
            return "EOF"  # the connection closed before a status line (Go: `Get "...": EOF`)
        if isinstance(cause, http.client.IncompleteRead | ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return "unexpected EOF"
        if isinstance(cause, http.client.LineTooLong):
            return "net/http: HTTP/1.x transport connection broken: header line too long"
        if isinstance(cause, http.client.HTTPException):
            return "net/http: HTTP/1.x transport connection broken: malformed HTTP response"
    for cause in chain:
        if isinstance(cause, _kinds("url")):
            return "invalid URL"
        if isinstance(cause, _kinds("scheme")):
            return "unsupported protocol scheme"
    text = str(exc)
    if "IncompleteRead" in text or "Connection broken" in text:
        return "unexpected EOF"
    # Otherwise the innermost cause says it best; the wrappers ("HTTPConnectionPool(...): Max
    # retries exceeded with url: ...") only repeat it.
    inner = next((str(c) for c in reversed(chain) if str(c)), text)
    return sanitize(inner) or "connection failed"


def host_port(url: str) -> str:
    """``host:port`` of ``url`` with the scheme's default port filled in, as Go's dialer names it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host:
        return ""
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or (443 if parts.scheme == "https" else 80)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def sanitize(text: str) -> str:
    """Remove Python-isms from a message: ``[Errno N]``, ``(_ssl.c:N)``, ``<... object at 0x...>``,
    class-name wrappers; and cap its length."""
    text = re.sub(r"\[Errno -?\d+\]\s*", "", text)
    text = re.sub(r"\s*\(_ssl\.c:\d+\)", "", text)
    text = re.sub(r"\[SSL(: [A-Z_]+)?\]\s*", "", text)
    text = re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>:?\s*", "", text)
    text = re.sub(r"\b[A-Z]\w*(Error|Exception|Pool)\(", "(", text)
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:200] + "..."


def _x509(exc: ssl.SSLCertVerificationError, host: str) -> str:
    code = exc.verify_code
    if code in _UNKNOWN_AUTHORITY:
        return "certificate signed by unknown authority"
    if code in _EXPIRED:
        return "certificate has expired or is not yet valid"
    if code == _HOSTNAME_MISMATCH:
        return f"certificate is not valid for {host}"
    return sanitize(str(exc.verify_message or "certificate verification failed").lower())


def _lookup(exc: socket.gaierror) -> str:
    if exc.errno in (socket.EAI_NONAME, socket.EAI_NODATA, socket.EAI_FAIL):
        return "no such host"
    if exc.errno == socket.EAI_AGAIN:
        return "temporary failure in name resolution"
    return sanitize(str(exc.strerror or "lookup failed").lower())


def _strerror(code: int) -> str:
    # Go prints the C library's text in lower case ("connection refused", "no route to host").
    return os.strerror(code).lower()


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps (``args``, urllib3's ``reason``, ``__cause__``,
    ``__context__``), outermost first."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        todo += [a for a in cur.args if isinstance(a, BaseException)]
        for attr in ("reason", "__cause__", "__context__"):
            nxt = getattr(cur, attr, None)
            if isinstance(nxt, BaseException):
                todo.append(nxt)
