"""Real peers for integration tests: the CNCF distribution registry on 127.0.0.1, skopeo, umoci,
promtool (recipes: shared/spec/oci-peers.md).

A missing peer skips the test locally and fails it under ``CI=true`` (the test command installs
them; CI must never pass by skipping).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
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

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _config(directory: str, port: int, htpasswd: str | None, access_log: bool) -> str:
    auth = ""
    if htpasswd:
        auth = f"auth:\n  htpasswd:\n    realm: test-realm\n    path: {htpasswd}\n"
    return (
        "version: 0.1\n"
        "log:\n  level: info\n  formatter: text\n"
        f"  accesslog:\n    disabled: {'false' if access_log else 'true'}\n"
        f"storage:\n  filesystem:\n    rootdirectory: {directory}/data\n"
        "  delete:\n    enabled: true\n  cache:\n    blobdescriptor: inmemory\n"
        f"http:\n  addr: {LOOPBACK}:{port}\n  secret: imagevol-tests\n" + auth
    )


@contextlib.contextmanager
def registry(*, user: str = "", password: str = "", access_log: bool = True) -> Iterator[Registry]:
    """Start a registry (Basic auth when ``user`` is given); stop it and remove its data after."""
    binary = require("docker-registry")
    directory = tempfile.mkdtemp(prefix="imagevol-registry-")
    htpasswd = None
    if user:
        import bcrypt

        htpasswd = os.path.join(directory, "htpasswd")
        with open(htpasswd, "w") as f:
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
            f.write(f"{user}:{hashed}\n")
    port = free_port()
    config = os.path.join(directory, "config.yml")
    with open(config, "w") as f:
        f.write(_config(directory, port, htpasswd, access_log))
    log = open(os.path.join(directory, "registry.log"), "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([binary, "serve", config], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    reg = Registry(directory, port, proc, user, password)
    try:
        _wait_ready(reg)
        yield reg
    finally:
        reg.stop()
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
    """Push ``layout:tag`` to ``reg`` unchanged (``--all --preserve-digests``, oci-peers.md 3)."""
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
