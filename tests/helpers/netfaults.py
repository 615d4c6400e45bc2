"""Fault injection on real sockets: an HTTP/1.1 proxy on 127.0.0.1 in front of the registry.

A ``rule`` sees every request and may return a :class:`Fault`: answer by itself (a hostile
registry), or forward to the registry and then drop the connection, stall, trickle, or lie in the
headers. Requests are recorded, so tests can assert on what the client sent (``Range``,
``Authorization``). Nothing here listens anywhere but 127.0.0.1.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress

import attrs

LOOPBACK = "127.0.0.1"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@attrs.frozen
class Request:
    method: str
    path: str
    headers: Mapping[str, str]
    at: float = attrs.field(factory=time.monotonic, eq=False)

    def header(self, name: str) -> str:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return ""


@attrs.frozen
class Fault:
    """What to do with one request. ``respond`` (status, headers, body) answers without the
    registry; otherwise the registry's answer is forwarded, with ``set_headers`` applied (``None``
    removes a header) and ``body`` replaced when given, then: ``drop_after`` body bytes the
    connection is cut; ``stall_after`` body bytes nothing more is sent; ``trickle`` sends
    ``(bytes, every seconds)``. ``no_length`` sends the body delimited by closing the connection.
    ``drop_request_headers`` are not forwarded (a registry that ignores ``Range``); ``delay``
    seconds pass before the answer (to make concurrent clients overlap)."""

    respond: tuple[int, Mapping[str, str], bytes] | None = None
    set_headers: Mapping[str, str | None] = attrs.field(factory=dict)
    body: bytes | None = None
    drop_after: int | None = None
    stall_after: int | None = None
    stall_headers: bool = False
    trickle: tuple[int, float] | None = None
    no_length: bool = False
    drop_request_headers: tuple[str, ...] = ()
    delay: float = 0.0


Rule = Callable[[Request], Fault | None]


class FaultProxy:
    def __init__(self, upstream: str, rule: Rule | None = None) -> None:
        self.upstream = upstream
        self.rule: Rule = rule or (lambda _req: None)
        self.requests: list[Request] = []
        self.stopping = threading.Event()
        self.httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def seen(self, path_part: str) -> list[Request]:
        return [r for r in self.requests if path_part in r.path]

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return None

            def do_GET(self) -> None:
                self._handle()

            def do_HEAD(self) -> None:
                self._handle()

            def _handle(self) -> None:
                req = Request(self.command, self.path, dict(self.headers.items()))
                proxy.requests.append(req)
                fault = proxy.rule(req) or Fault()
                if fault.delay:
                    proxy.stopping.wait(fault.delay)
                if fault.stall_headers:
                    proxy.stopping.wait(30)
                    self.close_connection = True
                    return
                if fault.respond is not None:
                    status, headers, body = fault.respond
                else:
                    status, headers, body = self._forward(req, fault.drop_request_headers)
                headers = dict(headers)
                for k, v in fault.set_headers.items():
                    headers = {hk: hv for hk, hv in headers.items() if hk.lower() != k.lower()}
                    if v is not None:
                        headers[k] = v
                if fault.body is not None:
                    body = fault.body
                    headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
                    if "Content-Length" not in fault.set_headers:
                        headers["Content-Length"] = str(len(body))
                if fault.no_length:
                    headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
                    headers["Connection"] = "close"
                    self.close_connection = True
                elif not any(k.lower() == "content-length" for k in headers):
                    headers["Content-Length"] = str(len(body))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command == "HEAD":
                    return
                self._body(body, fault)

            def _body(self, body: bytes, fault: Fault) -> None:
                cut = len(body)
                for limit in (fault.drop_after, fault.stall_after):
                    if limit is not None:
                        cut = min(cut, limit)
                if fault.trickle is not None:
                    step, every = fault.trickle
                    for i in range(0, cut, step):
                        if proxy.stopping.is_set():
                            break
                        self._write(body[i : i + step])
                        time.sleep(every)
                else:
                    self._write(body[:cut])
                if fault.stall_after is not None and cut < len(body):
                    proxy.stopping.wait(30)
                    self.close_connection = True
                elif fault.drop_after is not None and cut < len(body):
                    # An abrupt end: the client sees the connection closed mid-body.
                    self.close_connection = True
                    with suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                elif cut < len(body):
                    self._write(body[cut:])

            def _write(self, data: bytes) -> None:
                try:
                    self.wfile.write(data)
                    self.wfile.flush()
                except OSError:
                    self.close_connection = True

            def _forward(self, req: Request, drop: tuple[str, ...]) -> tuple[int, dict[str, str], bytes]:
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                try:
                    skip = _HOP_BY_HOP | {"host"} | {d.lower() for d in drop}
                    headers = {k: v for k, v in req.headers.items() if k.lower() not in skip}
                    conn.request(req.method, req.path, headers=headers)
                    resp = conn.getresponse()
                    body = resp.read()
                    out = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP}
                    # Challenges name the upstream's realm; nothing to rewrite for Basic auth.
                    return resp.status, out, body
                finally:
                    conn.close()

        return Handler


@contextmanager
def fault_proxy(upstream: str, rule: Rule | None = None) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream, rule)
    try:
        yield proxy
    finally:
        proxy.stop()


@contextmanager
def static_server(
    answer: Callable[[Request], tuple[int, Mapping[str, str], bytes]],
) -> Iterator[FaultProxy]:
    """A tiny HTTP server on 127.0.0.1 that answers every request with ``answer(request)``."""
    with fault_proxy("127.0.0.1:9", lambda req: Fault(respond=answer(req))) as server:
        yield server
