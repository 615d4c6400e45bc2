"""Connections to registries over the standard library, each interruptible by a request's
:class:`~._bounds.Guard`, kept alive and reused per scheme, host and port.

A connection is ``http.client``'s (its status line, header and chunked parsing, with its limits
on line length and header count), but this module makes its socket: before the TLS handshake the
TCP socket is registered with the guard of the request that opened it, so a trickled handshake is
cut like a trickled body, and a reused connection is registered again with each request's guard.
Each connection remembers the request it serves, so a guard never cuts a pooled connection that
has moved on to the next request (see :class:`~._bounds.Guard`).

A connection goes back to its :class:`Pool` only when its answer was read to the end with the
connection left open; an answer closed unread (an error body, a redirect, an abandoned ``200``)
closes its connection instead, so no unread byte of one answer is ever taken for the next. Before
an idle connection is reused it is polled: readable means the server closed it (or sent bytes
nobody asked for), and it is dropped. Nothing here reads ``~/.netrc``, the proxy variables or a
cookie jar: a connection goes exactly to the host of the URL it was made for.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
from typing import TYPE_CHECKING

from . import _bounds as bounds
from ._neterrors import DialError

if TYPE_CHECKING:
    import ssl

#: Idle connections kept per scheme, host and port (a pull fetches at most 3 blobs at a time).
MAX_IDLE = 4

Origin = tuple[str, str, int]


class Connection(http.client.HTTPConnection):
    """One HTTP/1.1 connection to ``origin`` (TLS when ``tls`` is given). ``connect`` bounds the
    TCP connect by ``connect_timeout`` and by the deadline of the request it serves; every read
    after that waits at most ``read_timeout`` (the longest silence), the guard bounding the rest."""

    def __init__(
        self, origin: Origin, *, tls: ssl.SSLContext | None, connect_timeout: float, read_timeout: float
    ) -> None:
        super().__init__(origin[1], origin[2], timeout=read_timeout)
        self.origin = origin
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._guard: bounds.Guard | None = None
        #: Whether the connection has carried a request before the current one.
        self.reused = False

    def serve(self, guard: bounds.Guard) -> None:
        """This connection carries ``guard``'s request now (registered at once when it is open)."""
        self._guard = guard
        if self.sock is not None:
            guard.watch(self, self.sock)

    def carries(self, guard: bounds.Guard) -> bool:
        """Whether the connection still serves ``guard``'s request (the guard's owner check)."""
        return self._guard is guard

    def connect(self) -> None:
        """Open the TCP connection (then TLS), registered with the current request's guard before
        any handshake byte is awaited."""
        guard = self._guard
        timeout = self._connect_timeout
        if guard is not None:
            timeout = min(timeout, max(0.001, guard.remaining(bounds.WATCHDOG.clock())))
        try:
            sock = socket.create_connection((self.host, self.port), timeout)
        except OSError as exc:
            raise DialError(str(exc)) from exc
        try:
            if guard is not None:
                guard.watch(self, sock)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(self.timeout)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Pool:
    """Idle keep-alive connections, at most :data:`MAX_IDLE` per origin; safe across threads."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, verify: bool = True) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._verify = verify
        self._tls: ssl.SSLContext | None = None
        self._idle: dict[Origin, list[Connection]] = {}
        self._lock = threading.Lock()

    def get(self, origin: Origin) -> Connection:
        """An idle connection to ``origin`` that the server has not closed, else a new one
        (connected when its first request is sent)."""
        with self._lock:
            idle = self._idle.get(origin, [])
            while idle:
                conn = idle.pop()
                if not _dropped(conn):
                    conn.reused = True
                    return conn
                conn.close()
        return self.new(origin)

    def new(self, origin: Origin) -> Connection:
        """A new connection to ``origin`` (connected when its first request is sent)."""
        tls = self._context() if origin[0] == "https" else None
        return Connection(origin, tls=tls, connect_timeout=self._connect_timeout, read_timeout=self._read_timeout)

    def put(self, conn: Connection) -> None:
        """Keep ``conn`` for the next request to its origin (its answer was read to the end)."""
        if conn.sock is None:
            return
        with self._lock:
            idle = self._idle.setdefault(conn.origin, [])
            if len(idle) < MAX_IDLE:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle = [c for conns in self._idle.values() for c in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()

    def _context(self) -> ssl.SSLContext:
        # ssl's contexts are built on the first HTTPS connection only (plain-HTTP pulls skip it).
        with self._lock:
            if self._tls is None:
                import ssl

                ctx = ssl.create_default_context()
                if not self._verify:
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                self._tls = ctx
            return self._tls


def _dropped(conn: Connection) -> bool:
    """Whether an idle connection is unusable: closed, or readable (the server hung up, or sent
    bytes that belong to no request)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True
