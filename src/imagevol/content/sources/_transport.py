"""The sockets under ``requests``, made interruptible by a request's :class:`~.bounds.Guard`.

``requests`` and urllib3 hide their sockets, and a per-read socket timeout cannot bound a whole
request (see :mod:`imagevol.content.sources._bounds`). :func:`mount` installs connection classes that
register themselves with the guard of the request using them: when a new connection is made
(before its TLS handshake, so a trickled handshake is bounded too) and whenever a pooled one is
reused. The guard keeps a duplicate of the TCP socket; cutting the request is
``shutdown(SHUT_RDWR)`` on that duplicate, which wakes a blocked read whether it is plain or TLS,
without touching the ``SSLSocket`` object another thread is using. Each connection remembers the
request it serves, so a guard never cuts a pooled connection that has moved on to the next one.
"""

from __future__ import annotations

import socket
from typing import Any

import requests
import requests.adapters
import urllib3
import urllib3.connection

from . import _bounds as bounds


class _Watched:
    """Mixin for urllib3's connection classes (first in the MRO)."""

    _iv_guard: bounds.Guard | None = None
    timeout: Any
    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        guard = bounds.current()
        if guard is not None:
            # The connect itself never outlives the request's deadline.
            left = max(0.001, guard.remaining(bounds.WATCHDOG.clock()))
            self.timeout = left if self.timeout is None else min(float(self.timeout), left)
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        self._iv_guard = guard
        if guard is not None:
            try:
                guard.watch(self, sock)  # before any TLS handshake: that is bounded too
            except OSError:
                sock.close()
                raise
        return sock

    def request(self, *args: Any, **kwargs: Any) -> Any:
        guard = bounds.current()
        self._iv_guard = guard
        if guard is not None and self.sock is not None:
            guard.watch(self, self.sock)  # a pooled connection, reused by this request
        return super().request(*args, **kwargs)  # type: ignore[misc]

    def carries(self, guard: bounds.Guard) -> bool:
        return self._iv_guard is guard


class _HTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def mount(session: requests.Session) -> None:
    """Make every connection of ``session`` interruptible by the guard of its request."""
    adapter = _Adapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
