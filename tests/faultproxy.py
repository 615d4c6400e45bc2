"""A fault-injecting HTTP proxy on 127.0.0.1 in front of a real registry.

Each request is forwarded to the registry; with probability ``rate`` one fault is injected instead
of (or into) the answer: a dropped connection, a truncated body (full Content-Length announced,
part sent), a stall longer than any sane client timeout, a 5xx answer, or flipped bytes in the body.
The random source is seeded, so a failing run can be replayed.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import random
import socket
import threading
import time
from collections.abc import Iterator, Sequence

import attrs

FAULTS = ("drop", "truncate", "stall", "5xx", "corrupt")


@attrs.define
class FaultProxy:
    upstream: str  # host:port
    rate: float
    faults: Sequence[str]
    seed: int
    stall_seconds: float = 30.0
    port: int = 0
    injected: list[tuple[str, str]] = attrs.field(factory=list)
    requests: int = 0
    _server: http.server.ThreadingHTTPServer | None = None
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _rng: random.Random = attrs.field(init=False)
    _stop: threading.Event = attrs.field(factory=threading.Event)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def choose(self, path: str) -> str:
        with self._lock:
            self.requests += 1
            if self._rng.random() >= self.rate:
                return ""
            fault = self._rng.choice(list(self.faults))
            self.injected.append((fault, path))
            return fault

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _handler(proxy: FaultProxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def _forward(self) -> None:
            fault = proxy.choose(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if fault == "drop":
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault == "stall":
                proxy._stop.wait(proxy.stall_seconds)
                self.close_connection = True
                return
            if fault == "5xx":
                payload = b'{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}'
                self.send_response(503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
            self.send_response(resp.status, resp.reason)
            for key, value in resp.getheaders():
                if key.lower() in ("content-length", "connection", "transfer-encoding"):
                    continue
                if key.lower() == "location" and value.startswith(f"http://{proxy.upstream}"):
                    self.send_header(key, value.replace(proxy.upstream, proxy.host, 1))
                    continue
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command == "HEAD":
                return
            if fault == "truncate" and len(data) > 1:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault == "corrupt" and data:
                i = len(data) // 2
                data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
            self.wfile.write(data)

        do_GET = _forward  # noqa: N815
        do_HEAD = _forward  # noqa: N815
        do_POST = _forward  # noqa: N815
        do_PUT = _forward  # noqa: N815
        do_PATCH = _forward  # noqa: N815

    return Handler


@contextlib.contextmanager
def fault_proxy(
    upstream: str,
    *,
    rate: float = 0.3,
    faults: Sequence[str] = FAULTS,
    seed: int = 0,
    stall_seconds: float = 30.0,
) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream, rate, faults, seed, stall_seconds)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
    server.daemon_threads = True
    proxy._server = server
    proxy.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.stop()
        thread.join(5)
        time.sleep(0)
