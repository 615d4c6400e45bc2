"""A slow, hostile registry of our own on 127.0.0.1, on raw sockets.

It serves one small image from memory (``/v2/``, manifests by tag and digest, blobs with ``Range``,
and optionally a Bearer challenge with a ``/token`` endpoint on the same port), and every answer
can be shaped by a rule: status line and headers sent one byte at a time, a body trickled, a
body that never ends, a few bytes then a dropped connection, silence. Raw sockets because
``http.server`` cannot pace its status line and headers. What each request received and how many
body bytes were sent for it are recorded, so tests can prove a client stopped reading.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress

import attrs

from imagevol.oci import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, Digest, canonical_json

LOOPBACK = "127.0.0.1"
_RANGE = re.compile(r"^bytes=(\d+)-$")


@attrs.frozen
class Shape:
    """How to send one answer. ``respond`` replaces the registry's own (status, headers, body).
    ``header_pace``: seconds between the bytes of the status line and headers. ``pace``:
    ``(bytes, seconds)``, the body in pieces of that many bytes every that many seconds.
    ``drop_after``: body bytes before the connection is cut; ``hold`` seconds of silence before
    the cut. ``endless``: after the headers, bytes forever (no ``Content-Length`` unless
    ``respond`` gives one). ``delay``: silence before the status line. ``no_answer``: close the
    connection without a word."""

    respond: tuple[int, Mapping[str, str], bytes] | None = None
    delay: float = 0.0
    no_answer: bool = False
    header_pace: float | None = None
    pace: tuple[int, float] | None = None
    drop_after: int | None = None
    hold: float = 0.0
    endless: bool = False


@attrs.frozen
class Seen:
    method: str
    path: str
    headers: Mapping[str, str]
    at: float = attrs.field(factory=time.monotonic, eq=False)

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


Rule = Callable[[Seen], Shape | None]


@attrs.frozen
class TinyImage:
    """A config, one gzip layer and the manifest naming them."""

    config: bytes
    layer: bytes
    manifest: bytes

    @property
    def layer_digest(self) -> str:
        return str(Digest.of(self.layer))

    @property
    def manifest_digest(self) -> str:
        return str(Digest.of(self.manifest))

    def blobs(self) -> dict[str, bytes]:
        return {str(Digest.of(self.config)): self.config, self.layer_digest: self.layer}


def tiny_image(payload: int = 2000) -> TinyImage:
    """A small image whose layer holds ``payload`` incompressible bytes (so the gzip layer is a
    little larger than that, and its size is what a test about speed needs)."""
    data = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(payload // 32 + 1))[:payload]
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("file")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer = gzip.compress(tar_buf.getvalue(), mtime=0)
    config = canonical_json(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": str(Digest.of(config)), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": str(Digest.of(layer)), "size": len(layer)}],
        }
    )
    return TinyImage(config, layer, manifest)


class SlowRegistry:
    """Serves ``lab/app:v1`` (and by digest) on 127.0.0.1; ``rule`` shapes any answer."""

    def __init__(self, rule: Rule | None = None, *, bearer: bool = False, payload: int = 2000) -> None:
        self.rule: Rule = rule or (lambda _seen: None)
        self.bearer = bearer
        self.image = tiny_image(payload)
        self.blobs = self.image.blobs()
        self.manifest = self.image.manifest
        self.manifest_digest = self.image.manifest_digest
        self.seen: list[Seen] = []
        self.sent: dict[int, int] = {}  # index in seen -> body bytes written
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.settimeout(0.05)
        self.host = f"{LOOPBACK}:{self._listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def requests(self, part: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if part in s.path]

    def bytes_sent(self, part: str) -> int:
        with self._lock:
            return sum(self.sent.get(i, 0) for i, s in enumerate(self.seen) if part in s.path)

    def stop(self) -> None:
        self.stopping.set()
        self._accept.join(5)
        self._listener.close()
        for t in self._threads:
            t.join(5)

    # --- serving ---------------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                head = self._read_head(conn)
            except OSError:
                return
            if head is None:
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                # Not HTTP (a TLS ClientHello, say): answer like any HTTP server would.
                with suppress(OSError):
                    conn.sendall(b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                return
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            seen = Seen(parts[0], parts[1], headers)
            with self._lock:
                self.seen.append(seen)
                index = len(self.seen) - 1
            shape = self.rule(seen) or Shape()
            status, out, body = shape.respond or self._answer(seen)
            self._send(conn, index, seen, shape, status, dict(out), body)

    def _read_head(self, conn: socket.socket) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return None
            data += chunk
            if len(data) > 65536:
                return None
            if not data[:1].isalpha():
                return data  # binary: not an HTTP request
        return data.split(b"\r\n\r\n", 1)[0]

    def _answer(self, seen: Seen) -> tuple[int, dict[str, str], bytes]:
        path = seen.path.split("?", 1)[0]
        if path == "/token":
            return 200, {"Content-Type": "application/json"}, json.dumps({"token": "t0k3n", "expires_in": 300}).encode()
        if self.bearer and seen.header("Authorization") != "Bearer t0k3n":
            realm = f"http://{self.host}/token"
            challenge = f'Bearer realm="{realm}",service="slow",scope="repository:lab/app:pull"'
            return 401, {"WWW-Authenticate": challenge, "Content-Type": "application/json"}, b'{"errors":[]}'
        if path == "/v2/":
            return 200, {"Content-Type": "application/json"}, b"{}"
        if path in ("/v2/lab/app/manifests/v1", f"/v2/lab/app/manifests/{self.manifest_digest}"):
            return (
                200,
                {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": self.manifest_digest},
                self.manifest,
            )
        m = re.fullmatch(r"/v2/lab/app/blobs/(sha256:[0-9a-f]{64})", path)
        if m and m.group(1) in self.blobs:
            data = self.blobs[m.group(1)]
            r = _RANGE.match(seen.header("Range"))
            if r:
                start = int(r.group(1))
                return 206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}, data[start:]
            return 200, {"Content-Type": "application/octet-stream"}, data
        return 404, {"Content-Type": "application/json"}, b'{"errors":[{"code":"NOT_FOUND"}]}'

    def _send(
        self, conn: socket.socket, index: int, seen: Seen, shape: Shape, status: int, out: dict[str, str], body: bytes
    ) -> None:
        if not shape.endless and not any(k.lower() == "content-length" for k in out):
            out["Content-Length"] = str(len(body))
        out["Connection"] = "close"
        head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in out.items()) + "\r\n"
        if shape.no_answer or (shape.delay and self.stopping.wait(shape.delay)):
            return
        try:
            if shape.header_pace is None:
                conn.sendall(head.encode("latin-1"))
            else:
                for ch in head.encode("latin-1"):
                    conn.sendall(bytes([ch]))
                    if self.stopping.wait(shape.header_pace):
                        return
            if seen.method == "HEAD":
                return
            for piece in self._pieces(body, shape):
                conn.sendall(piece)
                with self._lock:
                    self.sent[index] = self.sent.get(index, 0) + len(piece)
                if shape.pace is not None and self.stopping.wait(shape.pace[1]):
                    return
            if shape.hold and self.stopping.wait(shape.hold):
                return
            if shape.drop_after is not None:
                conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            return  # the client went away: what tests look for

    def _pieces(self, body: bytes, shape: Shape) -> Iterator[bytes]:
        step = shape.pace[0] if shape.pace is not None else 64 * 1024
        if shape.endless:
            filler = b"a" * step
            while not self.stopping.is_set():
                yield filler
            return
        end = len(body) if shape.drop_after is None else min(len(body), shape.drop_after)
        for i in range(0, end, step):
            yield body[i : min(i + step, end)]


_REASONS = {200: "OK", 206: "Partial Content", 307: "Temporary Redirect", 401: "Unauthorized", 404: "Not Found"}
_REASONS |= {400: "Bad Request", 500: "Internal Server Error", 503: "Service Unavailable"}


@contextmanager
def slow_registry(rule: Rule | None = None, **kwargs: object) -> Iterator[SlowRegistry]:
    server = SlowRegistry(rule, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
