"""The CLI against a real registry: ``imagevol pull`` (policies, platform, credentials, plain
HTTP, progress on a terminal only) and ``apply`` of a Pod whose image volume comes from a registry
with its pull secret."""

from __future__ import annotations

import base64
import io
import json
import os
import pty
import select
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from imagevol.cli import main
from imagevol.content.store import ContentStore
from imagevol.oci import Index, parse_manifest
from imagevol.testing.pods import container, image_volume, pod_doc, to_yaml
from tests.helpers import peers
from tests.helpers.fixture_node import container_image_registries, layout_digest
from tests.helpers.netfaults import Fault, fault_proxy

USER, PASSWORD = "alice", "s3cret"


@pytest.fixture(scope="module")
def reg(fixtures_layout: str) -> Iterator[peers.Registry]:
    with peers.registry() as r:
        peers.push_fixtures(fixtures_layout, r, ("v2", "multi", "kitten"))
        yield r


@pytest.fixture(scope="module")
def private(fixtures_layout: str) -> Iterator[peers.Registry]:
    with peers.registry(user=USER, password=PASSWORD) as r:
        peers.push_fixtures(fixtures_layout, r, ("v2",))
        yield r


def imagevol(root: str, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(["--root", root, *args], out=out), out.getvalue()


def test_pull_prints_the_digest_and_nothing_else(
    reg: peers.Registry, fixtures_layout: str, node_root: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = imagevol(node_root, "pull", f"{reg.host}/lab/v2:v1", "--plain-http")
    assert (code, out) == (0, layout_digest(fixtures_layout, "v2") + "\n")
    assert capsys.readouterr().err == ""  # not a terminal: quiet


def test_pull_policies(reg: peers.Registry, node_root: str, capsys: pytest.CaptureFixture[str]) -> None:
    ref = f"{reg.host}/lab/kitten:v1"
    code, _ = imagevol(node_root, "pull", ref, "--plain-http", "--policy", "Never")
    assert code == 1
    assert capsys.readouterr().err == (
        f'error: ErrImageNeverPull: Container image "{ref}" is not present with pull policy of Never\n'
    )
    assert imagevol(node_root, "pull", ref, "--plain-http", "--policy", "IfNotPresent")[0] == 0
    mark = reg.mark()
    code, out = imagevol(node_root, "pull", ref, "--plain-http", "--policy", "IfNotPresent")
    assert code == 0 and out.startswith("sha256:")
    assert imagevol(node_root, "pull", ref, "--plain-http", "--policy", "Never")[0] == 0
    assert reg.access(mark) == []  # present: the registry was not asked
    assert imagevol(node_root, "pull", ref, "--plain-http")[0] == 0  # the default policy, Always, asks
    assert [e.path for e in reg.access(mark) if e.is_manifest] == ["/v2/lab/kitten/manifests/v1"]


def test_pull_with_a_platform(reg: peers.Registry, fixtures_layout: str, node_root: str) -> None:
    code, out = imagevol(node_root, "pull", f"{reg.host}/lab/multi:v1", "--plain-http", "--platform", "linux/arm64/v8")
    assert (code, out) == (0, layout_digest(fixtures_layout, "multi") + "\n")
    store = ContentStore(os.path.join(node_root, "content"))
    index = parse_manifest(store.read_blob(store.refs()[f"{reg.host}/lab/multi:v1"].digest))
    assert isinstance(index, Index)
    arm = next(d for d in index.manifests if d.platform is not None and d.platform.architecture == "arm64")
    amd = next(d for d in index.manifests if d.platform is not None and d.platform.architecture == "amd64")
    assert store.has(arm.digest) and not store.has(amd.digest)


def test_pull_with_an_unavailable_platform(
    reg: peers.Registry, node_root: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = imagevol(node_root, "pull", f"{reg.host}/lab/multi:v1", "--plain-http", "--platform", "linux/s390x")
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ErrImagePull: failed to pull and unpack image")
    assert "no matching manifest for linux/s390x" in err and "(available: linux/amd64, linux/arm64/v8)" in err


def test_pull_with_creds(private: peers.Registry, node_root: str, capsys: pytest.CaptureFixture[str]) -> None:
    ref = f"{private.host}/lab/v2:v1"
    assert imagevol(node_root, "pull", ref, "--plain-http")[0] == 1
    assert "pull access denied" in capsys.readouterr().err
    assert imagevol(node_root, "pull", ref, "--plain-http", "--creds", f"{USER}:wrong")[0] == 1
    assert "401 Unauthorized" in capsys.readouterr().err
    code, out = imagevol(node_root, "pull", ref, "--plain-http", "--creds", f"{USER}:{PASSWORD}")
    assert code == 0 and out.startswith("sha256:")


def _secret_yaml(host: str, password: str = PASSWORD) -> str:
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    config = json.dumps({"auths": {host: {"auth": auth}}})
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "regcred"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
        }
    )


def test_pull_with_a_pull_secret_file(private: peers.Registry, node_root: str, tmp_path: object) -> None:
    secret = os.path.join(str(tmp_path), "secret.yaml")
    with open(secret, "w") as f:
        f.write(_secret_yaml(private.host))
    ref = f"{private.host}/lab/v2:v1"
    assert imagevol(node_root, "pull", ref, "--plain-http", "--pull-secret", secret)[0] == 0
    raw = os.path.join(str(tmp_path), "config.json")
    with open(raw, "w") as f:
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        json.dump({"auths": {private.host: {"auth": auth}}}, f)
    assert imagevol(os.path.join(str(tmp_path), "n2"), "pull", ref, "--plain-http", "--pull-secret", raw)[0] == 0


def test_an_invalid_reference(node_root: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert imagevol(node_root, "pull", "Not/A/Reference")[0] == 1
    assert capsys.readouterr().err.startswith("error: InvalidImageName: Failed to apply default image tag")


def _run_on_a_terminal(argv: list[str]) -> tuple[int, bytes, bytes]:
    """Run ``argv`` with stderr on a pseudo-terminal; return (exit code, stdout, terminal output)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=terminal, stdin=subprocess.DEVNULL)
    os.close(terminal)
    seen = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        seen += chunk
    out = proc.stdout.read() if proc.stdout else b""
    os.close(controller)
    return proc.wait(30), out, seen


def test_a_long_pull_shows_progress_on_a_terminal_only(reg: peers.Registry, tmp_path: object) -> None:
    cli = [sys.executable, "-m", "imagevol.cli"]
    slow = lambda req: Fault(delay=0.8) if "/blobs/" in req.path else None  # noqa: E731
    with fault_proxy(reg.host, slow) as proxy:
        ref = f"{proxy.host}/lab/kitten:v1"
        code, out, term = _run_on_a_terminal(
            [*cli, "--root", os.path.join(str(tmp_path), "a"), "pull", ref, "--plain-http"]
        )
        assert code == 0 and out.startswith(b"sha256:") and out.count(b"\n") == 1
        assert b"%" in term and b"MiB" in term and term.endswith(b"\r\x1b[K")  # drawn, then erased
        quiet = subprocess.run(
            [*cli, "--root", os.path.join(str(tmp_path), "b"), "pull", ref, "--plain-http"],
            capture_output=True, check=True,
        )  # fmt: skip
        assert quiet.stdout == out and quiet.stderr == b""


# --- a Pod whose image volume comes from a registry, with its pull secret ------------------------------


def _registry_pod(directory: str, host: str, name: str, *, with_secret: bool) -> tuple[str, str]:
    """A registries.conf for ``host`` and a manifest of a Pod mounting ``host/lab/v2:v1`` (with the
    ``regcred`` pull secret in the same file and referenced by the Pod, when ``with_secret``)."""
    conf = os.path.join(directory, "registries.conf")
    with open(conf, "w") as f:
        f.write(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n')
        f.write(container_image_registries())
    secrets: dict[str, Any] = {"imagePullSecrets": [{"name": "regcred"}]} if with_secret else {}
    pod = pod_doc(
        name,
        [container("shell", ("v", "/volume", ""))],
        [image_volume("v", f"{host}/lab/v2:v1", "IfNotPresent")],
        **secrets,
    )
    manifest = os.path.join(directory, "pod.yaml")
    with open(manifest, "w") as f:
        f.write((_secret_yaml(host) + "---\n" if with_secret else "") + to_yaml(pod))
    return conf, manifest


def test_apply_pulls_an_image_volume_with_the_pods_pull_secret(
    private: peers.Registry, node_root: str, tmp_path: object
) -> None:
    conf, manifest = _registry_pod(str(tmp_path), private.host, "from-registry", with_secret=True)
    code, out = imagevol(node_root, "--registries", conf, "apply", "-f", manifest)
    assert code == 0, out
    assert f'Pulling image "{private.host}/lab/v2:v1"' in out
    assert "Successfully pulled image" in out and "Image size: " in out
    assert imagevol(node_root, "--registries", conf, "exec", "from-registry", "--", "cat", "/volume/file") == (0, "2\n")


def test_apply_without_the_pull_secret_fails_to_pull(private: peers.Registry, node_root: str, tmp_path: object) -> None:
    conf, manifest = _registry_pod(str(tmp_path), private.host, "no-secret", with_secret=False)
    home = os.path.join(str(tmp_path), "home", ".docker")
    os.makedirs(home)
    with open(os.path.join(home, "config.json"), "w") as f:  # ambient credentials are not used
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        json.dump({"auths": {private.host: {"auth": auth}}}, f)
    env = {**os.environ, "HOME": os.path.dirname(home), "DOCKER_CONFIG": home}
    proc = subprocess.run(
        [sys.executable, "-m", "imagevol.cli", "--root", node_root, "--registries", conf, "apply", "-f", manifest],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "shell: Waiting (ErrImagePull" in proc.stdout and "pull access denied" in proc.stdout


def test_pull_refuses_a_blob_over_the_maximum(
    reg: peers.Registry, node_root: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = imagevol(node_root, "pull", f"{reg.host}/lab/v2:v1", "--plain-http", "--max-blob-size", "100B")
    assert (code, out) == (1, "")
    assert "exceeds the maximum blob size of 100 bytes" in capsys.readouterr().err
    assert not [n for n in os.listdir(os.path.join(node_root, "content", "blobs", "sha256"))]
