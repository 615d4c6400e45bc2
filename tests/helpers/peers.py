"""Real peers for integration tests: the CNCF distribution registry on 127.0.0.1, skopeo, umoci,
promtool (how each is started: docs/testing.md, "Peers").

A missing peer skips the test locally and fails it under ``CI=true`` (the test command installs
them; CI must never pass by skipping).
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
import pytest

LOOPBACK = "127.0.0.1"


def require(tool: str) -> str:
    """The path of ``tool``; skip (or, under CI, fail) the test when it is missing."""
    path = shutil.which(tool)
    if path is None:
        message = f"peer {tool!r} is not installed (scripts/test installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


@attrs.define
class Registry:
    """A running ``docker-registry`` bound to 127.0.0.1 only."""

    directory: str
    port: int
    process: subprocess.Popen[bytes]
    user: str = ""
    password: str = ""
    token_server: TokenServer | None = None

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def data_dir(self) -> str:
        return os.path.join(self.directory, "data")

    @property
    def access_log(self) -> str:
        return os.path.join(self.directory, "registry.log")

    def blob_data_path(self, hex_digest: str) -> str:
        """Where the registry keeps a blob on disk (to corrupt it in tests)."""
        return os.path.join(
            self.data_dir, "docker", "registry", "v2", "blobs", "sha256", hex_digest[:2], hex_digest, "data"
        )

    def requests(self) -> list[str]:
        """Request lines (``GET /v2/...``) the registry logged so far."""
        with open(self.access_log, errors="replace") as f:
            return [line for line in f if '"GET /v2/' in line or '"HEAD /v2/' in line]

    def access(self, since: int = 0) -> list[Access]:
        """Parsed access-log entries (every method), from entry number ``since`` on. Waits until
        the log has been quiet briefly: the registry logs a response after sending its last byte."""
        _wait_quiet(self.access_log)
        with open(self.access_log, errors="replace") as f:
            entries = [Access.parse(m) for m in _ACCESS_LINE.finditer(f.read())]
        return entries[since:]

    def mark(self) -> int:
        """The number of access-log entries so far (pass to :meth:`access` as ``since``)."""
        return len(self.access())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_ACCESS_LINE = re.compile(r'^\S+ - \S+ \[[^]]*\] "([A-Z]+) (\S+) HTTP/[0-9.]+" (\d+) (\d+|-) "[^"]*" "([^"]*)"', re.M)


@attrs.frozen
class Access:
    """One line of the registry's access log."""

    method: str
    path: str
    status: int
    size: int
    user_agent: str

    @classmethod
    def parse(cls, m: re.Match[str]) -> Access:
        return cls(m.group(1), m.group(2), int(m.group(3)), int(m.group(4)) if m.group(4).isdigit() else 0, m.group(5))

    @property
    def is_blob(self) -> bool:
        return "/blobs/sha256:" in self.path

    @property
    def is_manifest(self) -> bool:
        return "/manifests/" in self.path


def blob_gets(entries: Iterable[Access], digest: str = "") -> list[Access]:
    """GETs of blobs (of ``digest`` when given) among ``entries``."""
    return [e for e in entries if e.method == "GET" and e.is_blob and (not digest or e.path.endswith(digest))]


def _wait_quiet(path: str, quiet: float = 0.15, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        size = os.path.getsize(path)
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.03)


class TokenServer:
    """A Docker-registry token server (distribution's token auth) on 127.0.0.1: grants the
    requested scope to ``user:password`` given as Basic auth, and ``pull`` to anonymous callers
    when ``anonymous_pull``. Tokens are RS256 JWTs signed by ``openssl`` with a throwaway key
    whose self-signed certificate the registry trusts. Counts the token requests it serves."""

    SERVICE = "imagevol-registry"
    ISSUER = "imagevol-token-issuer"

    def __init__(self, directory: str, user: str, password: str, *, anonymous_pull: bool = False) -> None:
        openssl = require("openssl")
        self.key = os.path.join(directory, "token.key")
        self.cert = os.path.join(directory, "token.crt")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key, "-out", self.cert,
             "-days", "2", "-subj", "/CN=imagevol-token-issuer"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        der = subprocess.run(
            [openssl, "x509", "-in", self.cert, "-outform", "DER"], check=True, capture_output=True, timeout=60
        ).stdout
        self.x5c = base64.b64encode(der).decode()
        self.openssl = openssl
        self.user, self.password, self.anonymous_pull = user, password, anonymous_pull
        self.requests: list[tuple[str, bool]] = []  # (scope, authenticated)
        self.httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://{LOOPBACK}:{self.httpd.server_address[1]}/token"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def sign(self, scope: str, subject: str, actions_allowed: set[str]) -> str:
        access = []
        for item in scope.split(" ") if scope else []:
            kind, _, rest = item.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = [a for a in actions.split(",") if a in actions_allowed]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "x5c": [self.x5c]}
        claims = {"iss": self.ISSUER, "sub": subject, "aud": self.SERVICE, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}  # fmt: skip
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(
            [self.openssl, "dgst", "-sha256", "-sign", self.key],
            input=signing_input.encode(), check=True, capture_output=True, timeout=60,
        ).stdout  # fmt: skip
        return f"{signing_input}.{_b64url(signature)}"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlsplit

                query = parse_qs(urlsplit(self.path).query)
                scope = " ".join(query.get("scope", []))
                given = self.headers.get("Authorization", "")
                expected = "Basic " + base64.b64encode(f"{server.user}:{server.password}".encode()).decode()
                server.requests.append((scope, bool(given)))
                if given and given != expected:
                    self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
                    return
                if not given and not server.anonymous_pull:
                    self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})
                    return
                allowed = {"pull", "push", "delete", "*"} if given else {"pull"}
                token = server.sign(scope, server.user if given else "", allowed)
                self._send(200, {"token": token, "access_token": token, "expires_in": 300})

            def _send(self, status: int, obj: Any) -> None:
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _config(directory: str, port: int, htpasswd: str | None, access_log: bool, token: TokenServer | None = None) -> str:
    auth = ""
    if htpasswd:
        auth = f"auth:\n  htpasswd:\n    realm: test-realm\n    path: {htpasswd}\n"
    if token is not None:
        auth = (
            f"auth:\n  token:\n    realm: {token.realm}\n    service: {token.SERVICE}\n"
            f"    issuer: {token.ISSUER}\n    rootcertbundle: {token.cert}\n"
        )
    return (
        "version: 0.1\n"
        "log:\n  level: info\n  formatter: text\n"
        f"  accesslog:\n    disabled: {'false' if access_log else 'true'}\n"
        f"storage:\n  filesystem:\n    rootdirectory: {directory}/data\n"
        "  delete:\n    enabled: true\n  cache:\n    blobdescriptor: inmemory\n"
        f"http:\n  addr: {LOOPBACK}:{port}\n  secret: imagevol-tests\n" + auth
    )


@contextlib.contextmanager
def registry(
    *, user: str = "", password: str = "", token: bool = False, anonymous_pull: bool = False, access_log: bool = True
) -> Iterator[Registry]:
    """Start a registry: anonymous; with htpasswd Basic auth when ``user`` is given; with Bearer
    token auth (a :class:`TokenServer`) when ``token`` is also set. Stop it and remove its data
    after."""
    binary = require("docker-registry")
    directory = tempfile.mkdtemp(prefix="imagevol-registry-")
    htpasswd = None
    token_server = TokenServer(directory, user, password, anonymous_pull=anonymous_pull) if token else None
    if user and token_server is None:
        import bcrypt

        htpasswd = os.path.join(directory, "htpasswd")
        with open(htpasswd, "w") as f:
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
            f.write(f"{user}:{hashed}\n")
    port = free_port()
    config = os.path.join(directory, "config.yml")
    with open(config, "w") as f:
        f.write(_config(directory, port, htpasswd, access_log, token_server))
    log = open(os.path.join(directory, "registry.log"), "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([binary, "serve", config], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    reg = Registry(directory, port, proc, user, password, token_server)
    try:
        _wait_ready(reg)
        yield reg
    finally:
        reg.stop()
        if token_server is not None:
            token_server.stop()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


def _wait_ready(reg: Registry, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reg.process.poll() is not None:
            with open(reg.access_log, errors="replace") as f:
                raise RuntimeError(f"registry exited: {f.read()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://{reg.host}/v2/", timeout=1).close()
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    raise RuntimeError("registry did not become ready")


def skopeo_copy(layout: str, tag: str, reg: Registry, repo: str, dest_tag: str = "v1") -> None:
    """Push ``layout:tag`` to ``reg`` unchanged: ``--all`` keeps every platform of an index and
    ``--preserve-digests`` refuses to recompress, so the registry serves the layout's digests."""
    cmd = [
        require("skopeo"), "--insecure-policy", "copy", "-q", "--all", "--preserve-digests",
        "--dest-tls-verify=false",
    ]  # fmt: skip
    if reg.user:
        cmd += ["--dest-creds", f"{reg.user}:{reg.password}"]
    cmd += [f"oci:{layout}:{tag}", f"docker://{reg.host}/{repo}:{dest_tag}"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300, **kwargs)


def push_fixtures(layout: str, reg: Registry, tags: Iterable[str], repo_prefix: str = "lab") -> dict[str, str]:
    """Push each fixture ``tag`` of ``layout`` to ``reg`` as ``<repo_prefix>/<tag>:v1``; return
    the references by tag."""
    out = {}
    for tag in tags:
        skopeo_copy(layout, tag, reg, f"{repo_prefix}/{tag}")
        out[tag] = f"{reg.host}/{repo_prefix}/{tag}:v1"
    return out
