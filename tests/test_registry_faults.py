"""Every registry answer is hostile: corrupt blobs, dropped and stalled connections, overload,
lying headers, oversized manifests, redirects. Real sockets on 127.0.0.1 only: the registry, and
a fault-injecting proxy (netfaults.py) in front of it.

After each failure the content store is checked on disk: the bad blob is not under ``blobs/``,
nothing is left in ``ingest/``, and no image record points at incomplete content.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator

import pytest

from imagevol.content.pull import ImagePuller
from imagevol.content.sources._client import RetryPolicy, Timeouts
from imagevol.content.sources.auth import Credentials, Keyring
from imagevol.content.sources.registry import RegistryAccess
from imagevol.content.store import ContentStore
from imagevol.errors import (
    AuthenticationError,
    DigestMismatchError,
    ManifestError,
    PullError,
    RegistryUnavailableError,
    SizeMismatchError,
)
from imagevol.oci import (
    MANIFEST_ACCEPT,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    Digest,
    Manifest,
    canonical_json,
    parse_manifest,
)
from tests.helpers import peers
from tests.helpers.fixture_node import layout_digest
from tests.helpers.netfaults import Fault, Request, fault_proxy, static_server

FAST_RETRY = RetryPolicy(attempts=3, initial=0.01, maximum=0.05, deadline=10.0)


def layout_manifest(layout: str, tag: str) -> tuple[Digest, Manifest]:
    digest = Digest.parse(layout_digest(layout, tag))
    with open(os.path.join(layout, "blobs", "sha256", digest.hex), "rb") as f:
        doc = parse_manifest(f.read())
    assert isinstance(doc, Manifest)
    return digest, doc


@pytest.fixture(scope="module")
def reg(fixtures_layout: str) -> Iterator[peers.Registry]:
    with peers.registry() as r:
        peers.push_fixtures(fixtures_layout, r, ("v2", "layers-mix", "multi"))
        yield r


class Setup:
    """A resolver on a fresh store whose registry access records its backoff waits."""

    def __init__(self, root: str, *, timeouts: Timeouts | None = None, max_resumes: int = 5, **store_kw: int) -> None:
        self.root = os.path.join(root, "content")
        self.store = ContentStore(self.root, **store_kw)  # type: ignore[arg-type]
        self.sleeps: list[float] = []
        access = RegistryAccess(
            plain_http=True,
            timeouts=timeouts or Timeouts(connect=2, read=5),
            retry=FAST_RETRY,
            max_resumes=max_resumes,
            sleep=self.sleeps.append,
        )
        self.puller = ImagePuller(self.store, registry_factory=access)

    def blobs(self) -> list[str]:
        return sorted(os.listdir(os.path.join(self.root, "blobs", "sha256")))

    def parts(self) -> list[str]:
        return [n for n in os.listdir(os.path.join(self.root, "ingest")) if not n.endswith(".lock")]

    def assert_nothing_recorded(self) -> None:
        assert self.parts() == []
        assert self.puller.image_db.all() == []
        with open(os.path.join(self.root, "index.json")) as f:
            assert json.load(f)["manifests"] == []


@pytest.fixture
def setup(tmp_path: object) -> Setup:
    return Setup(str(tmp_path))


def blob_rule(digest: Digest, fault: Fault, times: int = 1) -> Callable[[Request], Fault | None]:
    """``fault`` for the first ``times`` GETs of blob ``digest``."""
    seen = [0]

    def rule(req: Request) -> Fault | None:
        if req.path.endswith(f"/blobs/{digest}") and seen[0] < times:
            seen[0] += 1
            return fault
        return None

    return rule


# --- a blob corrupted inside the registry's storage ------------------------------------------------


def _corrupt(reg: peers.Registry, digest: Digest, how: str) -> None:
    path = reg.blob_data_path(digest.hex)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if how == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[:-1]
    with open(path, "wb") as f:
        f.write(data)


def test_a_corrupt_config_is_rejected_and_nothing_is_stored(fixtures_layout: str, setup: Setup) -> None:
    _, manifest = layout_manifest(fixtures_layout, "v2")
    with peers.registry() as reg:
        peers.push_fixtures(fixtures_layout, reg, ("v2",))
        _corrupt(reg, manifest.config.digest, "flip")
        with pytest.raises(DigestMismatchError) as exc:
            setup.puller.pull(f"{reg.host}/lab/v2:v1")
    assert f"expected {manifest.config.digest}" in str(exc.value)
    assert setup.blobs() == []  # the config is fetched first: nothing at all reached blobs/
    setup.assert_nothing_recorded()


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_corrupt_layer_is_rejected_and_never_stored(fixtures_layout: str, setup: Setup, how: str) -> None:
    _, manifest = layout_manifest(fixtures_layout, "layers-mix")
    bad = manifest.layers[1].digest
    with peers.registry() as reg:
        peers.push_fixtures(fixtures_layout, reg, ("layers-mix",))
        _corrupt(reg, bad, how)
        with pytest.raises((DigestMismatchError, SizeMismatchError, RegistryUnavailableError)) as exc:
            setup.puller.pull(f"{reg.host}/lab/layers-mix:v1")
    assert str(bad) in str(exc.value)
    assert bad.hex not in setup.blobs()
    setup.assert_nothing_recorded()
    # What did arrive is verified content no image uses yet: fsck calls it orphaned, not corrupt.
    report = setup.store.fsck()
    assert report.corrupt == () and set(report.orphaned) == {f"sha256:{h}" for h in setup.blobs()}
    setup.store.fsck(repair=True)
    assert setup.blobs() == []


# --- a dropped connection: resume with Range ---------------------------------------------------------


def test_a_dropped_blob_download_resumes_with_range(reg: peers.Registry, fixtures_layout: str, setup: Setup) -> None:
    _, manifest = layout_manifest(fixtures_layout, "layers-mix")
    layer = manifest.layers[0]
    cut = layer.size // 2
    with fault_proxy(reg.host, blob_rule(layer.digest, Fault(drop_after=cut))) as proxy:
        mark = reg.mark()
        setup.puller.pull(f"{proxy.host}/lab/layers-mix:v1")
        gets = proxy.seen(f"/blobs/{layer.digest}")
    assert [r.header("Range") for r in gets] == ["", f"bytes={cut}-"]
    assert [e.status for e in peers.blob_gets(reg.access(mark), str(layer.digest))] == [200, 206]
    assert setup.store.verify_blob(layer.digest)
    assert setup.parts() == []


def test_a_server_that_ignores_range_is_handled(reg: peers.Registry, fixtures_layout: str, setup: Setup) -> None:
    _, manifest = layout_manifest(fixtures_layout, "layers-mix")
    layer = manifest.layers[0]
    seen = [0]

    def rule(req: Request) -> Fault | None:
        if not req.path.endswith(f"/blobs/{layer.digest}"):
            return None
        seen[0] += 1
        return Fault(drop_after=layer.size // 3) if seen[0] == 1 else Fault(drop_request_headers=("Range",))

    with fault_proxy(reg.host, rule) as proxy:
        setup.puller.pull(f"{proxy.host}/lab/layers-mix:v1")
    assert seen[0] == 2
    assert setup.store.verify_blob(layer.digest)


def test_a_wrong_content_range_is_refused(reg: peers.Registry, fixtures_layout: str, setup: Setup) -> None:
    _, manifest = layout_manifest(fixtures_layout, "layers-mix")
    layer = manifest.layers[0]
    seen = [0]

    def rule(req: Request) -> Fault | None:
        if not req.path.endswith(f"/blobs/{layer.digest}"):
            return None
        seen[0] += 1
        if seen[0] == 1:
            return Fault(drop_after=10)
        return Fault(set_headers={"Content-Range": f"bytes 0-{layer.size - 1}/{layer.size}"})

    with fault_proxy(reg.host, rule) as proxy, pytest.raises(PullError) as exc:
        setup.puller.pull(f"{proxy.host}/lab/layers-mix:v1")
    assert "asked for bytes 10-" in str(exc.value)
    assert layer.digest.hex not in setup.blobs()
    setup.assert_nothing_recorded()


# --- timeouts and stalls: bounded, never minutes ------------------------------------------------------


def test_a_server_that_never_answers_times_out_quickly(reg: peers.Registry, tmp_path: object) -> None:
    setup = Setup(str(tmp_path), timeouts=Timeouts(connect=1, read=0.3))
    rule = lambda req: Fault(stall_headers=True) if "/manifests/" in req.path else None  # noqa: E731
    with fault_proxy(reg.host, rule) as proxy:
        start = time.monotonic()
        with pytest.raises(RegistryUnavailableError) as exc:
            setup.puller.pull(f"{proxy.host}/lab/v2:v1")
        elapsed = time.monotonic() - start
        tries = len(proxy.seen("/manifests/"))
    assert elapsed < 5, elapsed
    assert tries == FAST_RETRY.attempts
    assert "i/o timeout" in str(exc.value)
    assert str(exc.value).startswith("RegistryUnavailable: failed to pull and unpack image")
    assert exc.value.reason == "RegistryUnavailable"


def test_a_blob_that_stalls_mid_body_is_resumed(reg: peers.Registry, fixtures_layout: str, tmp_path: object) -> None:
    _, manifest = layout_manifest(fixtures_layout, "layers-mix")
    layer = manifest.layers[0]
    setup = Setup(str(tmp_path), timeouts=Timeouts(connect=1, read=0.3))
    with fault_proxy(reg.host, blob_rule(layer.digest, Fault(stall_after=20))) as proxy:
        start = time.monotonic()
        setup.puller.pull(f"{proxy.host}/lab/layers-mix:v1")
        elapsed = time.monotonic() - start
        ranges = [r.header("Range") for r in proxy.seen(f"/blobs/{layer.digest}")]
    assert elapsed < 3, elapsed
    assert ranges == ["", "bytes=20-"]
    assert setup.store.verify_blob(layer.digest)


def test_a_blob_that_keeps_stalling_is_given_up(reg: peers.Registry, fixtures_layout: str, tmp_path: object) -> None:
    _, manifest = layout_manifest(fixtures_layout, "layers-mix")
    layer = manifest.layers[0]
    setup = Setup(str(tmp_path), timeouts=Timeouts(connect=1, read=0.3), max_resumes=2)

    def rule(req: Request) -> Fault | None:
        if not req.path.endswith(f"/blobs/{layer.digest}"):
            return None
        return Fault(stall_after=0 if req.header("Range") else 20)

    with fault_proxy(reg.host, rule) as proxy:
        start = time.monotonic()
        with pytest.raises(RegistryUnavailableError) as exc:
            setup.puller.pull(f"{proxy.host}/lab/layers-mix:v1")
        elapsed = time.monotonic() - start
        ranges = [r.header("Range") for r in proxy.seen(f"/blobs/{layer.digest}")]
    assert elapsed < 5, elapsed
    assert ranges == ["", "bytes=20-", "bytes=20-"]
    assert "gave up after 3 attempts, 20 of" in str(exc.value)
    assert layer.digest.hex not in setup.blobs()
    setup.assert_nothing_recorded()


def test_a_trickling_blob_is_cut_not_resumed(reg: peers.Registry, fixtures_layout: str, tmp_path: object) -> None:
    # Below the low-speed limit the blob fails (its meter spans resumes, so a new connection would
    # get no fresh allowance); the kubelet's backoff retries the pull, as containerd's would.
    _, manifest = layout_manifest(fixtures_layout, "layers-mix")
    layer = manifest.layers[0]
    slow = Timeouts(connect=1, read=2, low_speed_limit=10_000, low_speed_time=0.3)
    setup = Setup(str(tmp_path), timeouts=slow)
    with fault_proxy(reg.host, blob_rule(layer.digest, Fault(trickle=(1, 0.02)))) as proxy:
        start = time.monotonic()
        with pytest.raises(RegistryUnavailableError) as exc:
            setup.puller.pull(f"{proxy.host}/lab/layers-mix:v1")
        elapsed = time.monotonic() - start
        ranges = [r.header("Range") for r in proxy.seen(f"/blobs/{layer.digest}")]
        assert "transfer too slow: less than 10000 bytes/s" in str(exc.value)
        assert elapsed < 3, elapsed
        assert ranges == [""]
        assert layer.digest.hex not in setup.blobs()
        setup.assert_nothing_recorded()
        setup.puller.pull(f"{proxy.host}/lab/layers-mix:v1")  # the trickle was a one-off
    assert setup.store.verify_blob(layer.digest)


def test_a_refused_connection_is_registry_unavailable(setup: Setup) -> None:
    port = peers.free_port()
    with pytest.raises(RegistryUnavailableError) as exc:
        setup.puller.pull(f"127.0.0.1:{port}/lab/v2:v1")
    assert "connection refused" in str(exc.value)
    assert setup.sleeps == [0.01, 0.02]  # bounded: attempts - 1 waits, doubling


# --- overload: bounded retries with backoff --------------------------------------------------------------


def test_503s_are_retried_with_backoff(reg: peers.Registry, setup: Setup) -> None:
    count = [0]

    def rule(req: Request) -> Fault | None:
        if "/manifests/" in req.path and count[0] < 2:
            count[0] += 1
            return Fault(respond=(503, {"Content-Type": "text/plain"}, b"busy"))
        return None

    with fault_proxy(reg.host, rule) as proxy:
        assert setup.puller.pull(f"{proxy.host}/lab/v2:v1").record
    assert setup.sleeps == [0.01, 0.02]


def test_persistent_503_gives_up_after_the_attempts(reg: peers.Registry, setup: Setup) -> None:
    def rule(req: Request) -> Fault | None:
        return Fault(respond=(503, {}, b"")) if "/manifests/" in req.path else None

    with fault_proxy(reg.host, rule) as proxy:
        with pytest.raises(RegistryUnavailableError) as exc:
            setup.puller.pull(f"{proxy.host}/lab/v2:v1")
        assert len(proxy.seen("/manifests/")) == FAST_RETRY.attempts
    assert "503 Service Unavailable" in str(exc.value)


def test_retry_after_is_honoured_but_capped(reg: peers.Registry, tmp_path: object) -> None:
    count = [0]

    def rule(req: Request) -> Fault | None:
        if "/manifests/" in req.path and count[0] < 1:
            count[0] += 1
            return Fault(respond=(429, {"Retry-After": "3600"}, b""))
        return None

    setup = Setup(str(tmp_path))
    with fault_proxy(reg.host, rule) as proxy:
        setup.puller.pull(f"{proxy.host}/lab/v2:v1")
    assert setup.sleeps == [FAST_RETRY.maximum]


def test_default_policy_never_waits_minutes() -> None:
    policy = RetryPolicy()
    waits = [policy.delay(i) for i in range(1, policy.attempts)]
    assert sum(waits) < 10 and policy.deadline <= 60


# --- explicit Accept headers -------------------------------------------------------------------------


def test_manifest_requests_list_the_oci_types_explicitly(reg: peers.Registry, setup: Setup) -> None:
    with fault_proxy(reg.host) as proxy:
        setup.puller.pull(f"{proxy.host}/lab/multi:v1")
        gets = proxy.seen("/manifests/")
    assert len(gets) == 2  # the index by tag, the platform manifest by digest
    for req in gets:
        accepted = [t.strip() for t in req.header("Accept").split(",")]
        assert accepted == list(MANIFEST_ACCEPT)
        assert req.header("Accept-Encoding") == "identity"


# --- lies in headers and bodies ------------------------------------------------------------------------


def test_a_manifest_announced_over_4mib_is_refused(setup: Setup) -> None:
    big = b" " * (MAX_MANIFEST_BYTES + 1)

    def answer(req: Request) -> tuple[int, dict[str, str], bytes]:
        return (200, {}, b"{}") if req.path == "/v2/" else (200, {"Content-Type": OCI_INDEX}, big)

    with static_server(answer) as server, pytest.raises(ManifestError) as exc:
        setup.puller.pull(f"{server.host}/lab/big:v1")
    assert f"exceeds the {MAX_MANIFEST_BYTES}-byte limit" in str(exc.value)
    setup.assert_nothing_recorded()


def test_a_manifest_over_4mib_without_length_is_refused(reg: peers.Registry, setup: Setup) -> None:
    rule = lambda req: (  # noqa: E731
        Fault(body=b" " * (MAX_MANIFEST_BYTES + 100), no_length=True) if "/manifests/" in req.path else None
    )
    with fault_proxy(reg.host, rule) as proxy, pytest.raises(ManifestError) as exc:
        setup.puller.pull(f"{proxy.host}/lab/v2:v1")
    assert "exceeds the" in str(exc.value)


def test_an_index_entry_over_4mib_is_not_fetched(setup: Setup) -> None:
    child = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "a" * 64,
             "size": MAX_MANIFEST_BYTES + 1, "platform": {"os": "linux", "architecture": "amd64"}}  # fmt: skip
    index = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child]})
    requested: list[str] = []

    def answer(req: Request) -> tuple[int, dict[str, str], bytes]:
        requested.append(req.path)
        return (200, {}, b"{}") if req.path == "/v2/" else (200, {"Content-Type": OCI_INDEX}, index)

    with static_server(answer) as server, pytest.raises(ManifestError):
        setup.puller.pull(f"{server.host}/lab/big:v1")
    assert requested == ["/v2/", "/v2/lab/big/manifests/v1"]


def test_a_lying_docker_content_digest_is_refused(reg: peers.Registry, setup: Setup) -> None:
    lie = "sha256:" + "0" * 64
    rule = lambda req: Fault(set_headers={"Docker-Content-Digest": lie}) if "/manifests/" in req.path else None  # noqa: E731
    with fault_proxy(reg.host, rule) as proxy, pytest.raises(DigestMismatchError) as exc:
        setup.puller.pull(f"{proxy.host}/lab/v2:v1")
    assert lie in str(exc.value)
    setup.assert_nothing_recorded()


def test_a_swapped_platform_manifest_is_refused(reg: peers.Registry, fixtures_layout: str, setup: Setup) -> None:
    digest, _ = layout_manifest(fixtures_layout, "v2")
    with open(os.path.join(fixtures_layout, "blobs", "sha256", digest.hex), "rb") as f:
        other = f.read()
    rule = lambda req: Fault(body=other) if "/manifests/sha256:" in req.path else None  # noqa: E731
    with fault_proxy(reg.host, rule) as proxy, pytest.raises(DigestMismatchError):
        setup.puller.pull(f"{proxy.host}/lab/multi:v1")
    setup.assert_nothing_recorded()


@pytest.mark.parametrize("delta", [-1, 1])
def test_a_content_length_that_disagrees_with_the_descriptor_is_refused(
    reg: peers.Registry, fixtures_layout: str, setup: Setup, delta: int
) -> None:
    _, manifest = layout_manifest(fixtures_layout, "v2")
    layer = manifest.layers[0]
    fault = Fault(set_headers={"Content-Length": str(layer.size + delta)}, drop_after=layer.size + min(delta, 0))
    with fault_proxy(reg.host, blob_rule(layer.digest, fault)) as proxy, pytest.raises(SizeMismatchError) as exc:
        setup.puller.pull(f"{proxy.host}/lab/v2:v1")
    assert f"registry announces {layer.size + delta} bytes" in str(exc.value)
    assert layer.digest.hex not in setup.blobs()
    setup.assert_nothing_recorded()


def test_more_bytes_than_declared_are_refused(reg: peers.Registry, fixtures_layout: str, setup: Setup) -> None:
    _, manifest = layout_manifest(fixtures_layout, "v2")
    layer = manifest.layers[0]
    with open(os.path.join(fixtures_layout, "blobs", "sha256", layer.digest.hex), "rb") as f:
        data = f.read()
    fault = Fault(body=data + b"trailing garbage", no_length=True)
    with fault_proxy(reg.host, blob_rule(layer.digest, fault)) as proxy, pytest.raises(SizeMismatchError) as exc:
        setup.puller.pull(f"{proxy.host}/lab/v2:v1")
    assert "more than the" in str(exc.value)
    assert layer.digest.hex not in setup.blobs()
    setup.assert_nothing_recorded()


def test_a_content_encoded_blob_is_refused(reg: peers.Registry, fixtures_layout: str, setup: Setup) -> None:
    _, manifest = layout_manifest(fixtures_layout, "v2")
    layer = manifest.layers[0]
    fault = Fault(set_headers={"Content-Encoding": "gzip"})
    with fault_proxy(reg.host, blob_rule(layer.digest, fault)) as proxy, pytest.raises(PullError) as exc:
        setup.puller.pull(f"{proxy.host}/lab/v2:v1")
    assert "Content-Encoding" in str(exc.value)


def test_a_blob_over_the_maximum_size_is_refused_before_fetching(
    reg: peers.Registry, fixtures_layout: str, tmp_path: object
) -> None:
    _, manifest = layout_manifest(fixtures_layout, "v2")
    setup = Setup(str(tmp_path), max_blob_size=manifest.layers[0].size - 1)
    mark = reg.mark()
    with pytest.raises(SizeMismatchError) as exc:
        setup.puller.pull(f"{reg.host}/lab/v2:v1")
    assert f"exceeds the maximum blob size of {manifest.layers[0].size - 1} bytes" in str(exc.value)
    assert peers.blob_gets(reg.access(mark)) == []
    assert setup.blobs() == []


# --- redirects --------------------------------------------------------------------------------------


def test_credentials_do_not_follow_a_redirect_to_another_host(fixtures_layout: str, setup: Setup) -> None:
    _, manifest = layout_manifest(fixtures_layout, "v2")
    layer = manifest.layers[0]
    with open(os.path.join(fixtures_layout, "blobs", "sha256", layer.digest.hex), "rb") as f:
        data = f.read()
    with peers.registry(user="alice", password="s3cret") as reg:
        peers.push_fixtures(fixtures_layout, reg, ("v2",))
        with static_server(lambda req: (200, {}, data)) as storage:
            redirect = Fault(respond=(307, {"Location": f"http://{storage.host}/blob"}, b""))
            with fault_proxy(reg.host, blob_rule(layer.digest, redirect)) as proxy:
                keyring = Keyring.single(proxy.host, Credentials("alice", "s3cret"))
                setup.puller.pull(f"{proxy.host}/lab/v2:v1", keyring)
                assert proxy.seen(f"/blobs/{layer.digest}")[0].header("Authorization").startswith("Basic ")
            assert [r.header("Authorization") for r in storage.requests] == [""]
    assert setup.store.verify_blob(layer.digest)


def test_a_redirect_loop_stops(reg: peers.Registry, setup: Setup) -> None:
    def rule(req: Request) -> Fault | None:
        if "/manifests/" in req.path:
            return Fault(respond=(302, {"Location": req.path}, b""))
        return None

    with fault_proxy(reg.host, rule) as proxy:
        with pytest.raises(PullError) as exc:
            setup.puller.pull(f"{proxy.host}/lab/v2:v1")
        assert len(proxy.seen("/manifests/")) == 6  # the request and 5 redirects, not retried
    assert "stopped after 5 redirects" in str(exc.value)
    assert exc.value.reason == "ErrImagePull"


# --- a hostile token server ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b'{"token": "abc\r\nX-Injected: 1"}', b"not json", b'{"token": 42}', b'{"token": "' + b"a" * (2 << 20) + b'"}'],
)
def test_a_hostile_token_response_is_refused(setup: Setup, body: bytes) -> None:
    port = [0]

    def answer(req: Request) -> tuple[int, dict[str, str], bytes]:
        if req.path.startswith("/token"):
            return 200, {"Content-Type": "application/json"}, body
        realm = f"http://127.0.0.1:{port[0]}/token"
        return 401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="x"'}, b""

    with static_server(answer) as server:
        port[0] = int(server.host.rsplit(":", 1)[1])
        with pytest.raises(AuthenticationError) as exc:
            setup.puller.pull(f"{server.host}/lab/v2:v1")
    assert not [r for r in server.requests if "X-Injected" in str(r.headers)]
    assert "failed to authorize" in str(exc.value)


def test_a_blob_without_progress_for_the_deadline_is_given_up(
    reg: peers.Registry, fixtures_layout: str, tmp_path: object
) -> None:
    _, manifest = layout_manifest(fixtures_layout, "layers-mix")
    layer = manifest.layers[0]
    setup = Setup(str(tmp_path), timeouts=Timeouts(connect=1, read=0.2), max_resumes=50)
    setup.puller.registry_factory = RegistryAccess(
        plain_http=True,
        timeouts=Timeouts(connect=1, read=0.2),
        retry=RetryPolicy(attempts=3, initial=0.01, maximum=0.05, deadline=0.5),
        max_resumes=50,
        sleep=setup.sleeps.append,
    )

    def rule(req: Request) -> Fault | None:
        if not req.path.endswith(f"/blobs/{layer.digest}"):
            return None
        return Fault(stall_after=0 if req.header("Range") else 20)

    with fault_proxy(reg.host, rule) as proxy:
        start = time.monotonic()
        with pytest.raises(RegistryUnavailableError):
            setup.puller.pull(f"{proxy.host}/lab/layers-mix:v1")
        elapsed = time.monotonic() - start
    assert elapsed < 3, elapsed  # the deadline (0.5 s without a byte) ended it, not 50 resumes
