"""The sockets under ``requests``, made interruptible by a request's :class:`~.bounds.Guard`.

``requests`` and urllib3 hide their sockets, and a per-read socket timeout cannot bound a whole
request (see :mod:`imagevol.sources.bounds`). :func:`mount` installs connection classes that
register themselves with the guard of the request using them: when a new connection is made
(before its TLS handshake, so a trickled handshake is bounded too) and whenever a pooled one is
reused. Each keeps a duplicate of its TCP socket; cutting the request is ``shutdown(SHUT_RDWR)`` on
that duplicate, which wakes a blocked read whether it is plain or TLS, without touching the
``SSLSocket`` object another thread is using. A connection is only ever cut by the guard that
currently owns it, so a pooled connection handed to the next request is safe from the last one's
watchdog.
"""

from __future__ import annotations

import socket
import threading
from contextlib import suppress
from typing import Any

import requests
import requests.adapters
import urllib3
import urllib3.connection

from . import bounds


class _Watched:
    """Mixin for urllib3's connection classes (first in the MRO)."""

    _iv_sock: socket.socket | None = None
    _iv_guard: bounds.Guard | None = None
    _iv_endpoints: str = ""
    timeout: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._iv_lock = threading.Lock()

    def _new_conn(self) -> socket.socket:
        guard = bounds.current()
        if guard is not None:
            # The connect itself never outlives the request's deadline.
            left = max(0.001, guard.remaining(bounds.WATCHDOG.clock()))
            self.timeout = left if self.timeout is None else min(float(self.timeout), left)
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        spare = sock.dup()
        endpoints = ""
        with suppress(OSError):
            endpoints = f"{_addr(sock.getsockname())}->{_addr(sock.getpeername())}"
        with self._iv_lock:
            old, self._iv_sock = self._iv_sock, spare
            self._iv_endpoints = endpoints
            self._iv_guard = guard
        if old is not None:
            old.close()
        if guard is not None:
            guard.watch(self)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> Any:
        guard = bounds.current()
        if guard is not None:
            with self._iv_lock:
                self._iv_guard = guard
            guard.watch(self)
        return super().request(*args, **kwargs)  # type: ignore[misc]

    def interrupt(self, guard: bounds.Guard) -> None:
        with self._iv_lock:
            if self._iv_guard is not guard or self._iv_sock is None:
                return
            with suppress(OSError):
                self._iv_sock.shutdown(socket.SHUT_RDWR)

    def endpoints(self) -> str:
        """``local->peer`` as Go prints them in ``read tcp ...`` errors ("" before connecting)."""
        return self._iv_endpoints

    def close(self) -> None:
        with self._iv_lock:
            spare, self._iv_sock = self._iv_sock, None
            self._iv_guard = None
        if spare is not None:
            spare.close()
        super().close()  # type: ignore[misc]


def _addr(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


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
