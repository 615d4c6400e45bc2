"""An HTTP/1.1 server on raw sockets on 127.0.0.1 whose every answer is scripted byte for byte.

Each accepted connection gets a number; each request read on it is recorded with that number
(:class:`Hit`), so tests can count the connections a client opened and see which requests shared
one. ``answer(hit)`` returns the pieces to send (each written with its own ``sendall``, so a test
controls how the bytes are split into TCP segments; a number is a pause in seconds) and whether to
close the connection afterwards.
Nothing here listens anywhere but 127.0.0.1.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress

import attrs

LOOPBACK = "127.0.0.1"


@attrs.frozen
class Hit:
    """One request as the server read it: the connection it came on (numbered from 0)."""

    conn: int
    method: str
    path: str
    headers: Mapping[str, str]

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


#: The pieces to send (bytes, or seconds to wait before the next piece) and whether to close.
Answer = Callable[[Hit], tuple[Sequence[bytes | float], bool]]


def response(status: int, headers: Mapping[str, str], body: bytes, *, chunked: Sequence[int] = ()) -> bytes:
    """The bytes of one answer: with ``Content-Length``, or chunked in pieces of the sizes given
    (cycled) when ``chunked`` is not empty."""
    head = [f"HTTP/1.1 {status} {'OK' if status < 300 else 'Other'}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    if not chunked:
        head.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body
    head.append("Transfer-Encoding: chunked")
    out = [("\r\n".join(head) + "\r\n\r\n").encode()]
    pos, i = 0, 0
    while pos < len(body):
        size = max(1, chunked[i % len(chunked)])
        piece = body[pos : pos + size]
        out.append(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        pos, i = pos + size, i + 1
    out.append(b"0\r\n\r\n")
    return b"".join(out)


class RawServer:
    """Answers with ``answer`` (over TLS when ``tls``, a server context, is given); ``hits`` lists
    the requests read, in order."""

    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.tls = tls
        self.hits: list[Hit] = []
        self._lock = threading.Lock()
        self._sock = socket.create_server((LOOPBACK, 0))
        self.host = f"{LOOPBACK}:{self._sock.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def connections(self) -> int:
        """How many connections the requests came on."""
        return len({h.conn for h in self.hits})

    def stop(self) -> None:
        self._stop = True
        with suppress(OSError):
            self._sock.close()
        for conn in list(self._conns):
            with suppress(OSError):
                conn.close()

    def _serve(self) -> None:
        index = 0
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._handle, args=(conn, index), daemon=True).start()
            index += 1

    def _handle(self, raw: socket.socket, index: int) -> None:
        with suppress(OSError):  # a client that hangs up, or speaks plain HTTP to TLS
            conn = self.tls.wrap_socket(raw, server_side=True) if self.tls is not None else raw
            with conn:
                self._exchange(conn, index)
        raw.close()

    def _exchange(self, conn: socket.socket, index: int) -> None:
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            line, *fields = head.decode("latin-1").split("\r\n")
            method, path, _ = line.split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
            length = int(headers.get("content-length", "0") or 0)
            while len(buf) < length:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            buf = buf[length:]
            hit = Hit(index, method, path, headers)
            with self._lock:
                self.hits.append(hit)
            pieces, close = self.answer(hit)
            for piece in pieces:
                if isinstance(piece, float | int):
                    time.sleep(piece)
                else:
                    conn.sendall(piece)
            if close:
                return


@contextmanager
def raw_server(answer: Answer, tls: ssl.SSLContext | None = None) -> Iterator[RawServer]:
    server = RawServer(answer, tls)
    try:
        yield server
    finally:
        server.stop()
