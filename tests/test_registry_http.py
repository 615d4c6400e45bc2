"""The registry client's HTTP over the standard library, against a server scripted byte for byte.

What the connections do (one kept alive for a whole pull; a redirect to another host on a
connection of its own, without credentials; a connection the server closed, or on which it sent
bytes nobody asked for, never reused), how bodies are framed (``Content-Length``, chunked, split
anywhere into TCP segments: the bytes stored are exactly the blob's), and what is never consulted
(proxy variables, ``~/.netrc``, credentials in a URL). Each test pulls into a fresh content store
and checks what was stored, not only that no error was raised.
"""

from __future__ import annotations

import base64
import os
import re
import ssl
import subprocess
import tempfile
from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagevol.content.pull import ImagePuller
from imagevol.content.sources._bounds import Timeouts
from imagevol.content.sources._challenge import parse_challenges
from imagevol.content.sources._client import Headers, RegistryClient, RetryPolicy
from imagevol.content.sources.auth import Credentials, Keyring
from imagevol.content.sources.mirrors import RegistriesConfig
from imagevol.content.sources.registry import RegistryAccess, RegistrySource
from imagevol.content.store import ContentStore
from imagevol.errors import PullError
from imagevol.oci import OCI_MANIFEST, Descriptor, Digest
from imagevol.oci.reference import parse_normalized
from tests.helpers.rawhttp import Answer, Hit, raw_server, response
from tests.helpers.slowserver import TinyImage, tiny_image

QUICK = Timeouts(connect=2.0, read=5.0, request=5.0, low_speed_limit=1, low_speed_time=30.0)
RETRY = RetryPolicy(attempts=2, initial=0.01, maximum=0.05, deadline=10.0)
USER, PASSWORD = "alice", "s3cret"
_BLOB = re.compile(r"^/v2/lab/app/blobs/(sha256:[0-9a-f]{64})$")


def serve(
    image: TinyImage,
    *,
    chunked: Sequence[int] = (),
    cuts: Sequence[int] = (),
    close: bool = False,
    ping_body: bytes = b"{}",
    basic: bool = False,
    blobs_at: Callable[[], str] | None = None,
) -> Answer:
    """A registry serving ``image`` as ``lab/app:v1``. ``chunked``: chunk sizes of the manifest's
    and the blobs' bodies;
    ``cuts``: where each answer is split into separate sends; ``close``: close after every answer
    (without saying so); ``ping_body``: the body of ``/v2/``'s answer; ``basic``: Basic auth
    required; ``blobs_at``: the host blobs are redirected to."""
    blobs = image.blobs()
    token = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def answer(hit: Hit) -> tuple[Sequence[bytes | float], bool]:
        if basic and hit.header("Authorization") != token:
            raw = response(401, {"WWW-Authenticate": 'Basic realm="lab"'}, b'{"errors":[]}')
        elif hit.path == "/v2/":
            raw = response(200, {"Content-Type": "application/json", "Set-Cookie": "session=s1; Path=/"}, ping_body)
        elif hit.path in ("/v2/lab/app/manifests/v1", f"/v2/lab/app/manifests/{image.manifest_digest}"):
            raw = response(200, {"Content-Type": OCI_MANIFEST}, image.manifest, chunked=chunked)
        elif (m := _BLOB.match(hit.path)) and m.group(1) in blobs:
            if blobs_at is not None:
                raw = response(307, {"Location": f"http://{blobs_at()}{hit.path}"}, b"")
            else:
                raw = response(200, {"Content-Type": "application/octet-stream"}, blobs[m.group(1)], chunked=chunked)
        else:
            raw = response(404, {"Content-Type": "application/json"}, b'{"errors":[]}')
        return _split(raw, cuts), close

    return answer


def _split(raw: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({c % len(raw) for c in cuts if c % len(raw)})
    return [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]


def pull(root: str, host: str, keyring: Keyring | None = None, retry: RetryPolicy = RETRY) -> ContentStore:
    """Pull ``host``'s ``lab/app:v1`` into a content store at ``root``; return the store."""
    store = ContentStore(root)
    access = RegistryAccess(plain_http=True, timeouts=QUICK, retry=retry)
    ImagePuller(store, RegistriesConfig(), registry_factory=access).pull(f"{host}/lab/app:v1", keyring)
    return store


def assert_stored(store: ContentStore, image: TinyImage) -> None:
    """Every blob of ``image`` is in the store, byte for byte, and nothing else is half-written."""
    for digest, data in image.blobs().items():
        assert store.read_blob(Digest.parse(digest)) == data
    assert store.fsck().clean


# --- connections ---------------------------------------------------------------------------------------


def test_one_connection_serves_a_whole_pull(tmp_path: object) -> None:
    image = tiny_image()
    with raw_server(serve(image)) as server:
        store = pull(str(tmp_path), server.host)
    assert_stored(store, image)
    paths = [h.path for h in server.hits]
    assert paths[0] == "/v2/" and len(paths) == 4
    assert server.connections() == 1  # the ping's short body is read so that its connection goes on
    for hit in server.hits:  # the bytes hashed are the bytes stored; the registry's cookie is not kept
        assert (hit.header("Accept-Encoding"), hit.header("User-Agent"), hit.header("Cookie")) == (
            "identity",
            "imagevol",
            "",
        )


def test_a_connection_the_server_closed_is_not_reused(tmp_path: object) -> None:
    """The server closes after every answer without saying so: each request gets a new connection."""
    image = tiny_image()
    with raw_server(serve(image, close=True)) as server:
        store = pull(str(tmp_path), server.host)
    assert_stored(store, image)
    assert server.connections() == len(server.hits) == 4


def test_a_kept_connection_closed_as_the_request_goes_out_is_replaced_once(tmp_path: object) -> None:
    """The server hangs up on the second request of the first connection without a word (an idle
    timeout racing the request): it is sent again on a new connection, not counted as a try (one
    try is all the retry policy allows here)."""
    image = tiny_image()
    registry = serve(image)

    def answer(hit: Hit) -> tuple[Sequence[bytes | float], bool]:
        if hit.conn == 0 and "/manifests/" in hit.path:
            return [], True
        return registry(hit)

    with raw_server(answer) as server:
        store = pull(str(tmp_path), server.host, retry=RetryPolicy(attempts=1))
    assert_stored(store, image)
    manifests = [h.conn for h in server.hits if "/manifests/" in h.path]
    assert manifests == [0, 1]
    assert server.connections() == 2


def test_an_answer_left_unread_never_becomes_the_next_answer(tmp_path: object) -> None:
    """The ping's body is too long to be read for nothing, and it holds what looks like an answer
    ("404"): its connection must be closed, not reused, or that would be read as the manifest's."""
    image = tiny_image()
    forged = response(404, {"Content-Type": "application/json"}, b'{"errors":[]}')
    with raw_server(serve(image, ping_body=forged + b" " * 8192)) as server:
        store = pull(str(tmp_path), server.host, retry=RetryPolicy(attempts=1))  # no retry to hide it
    assert_stored(store, image)
    ping, manifest = server.hits[0], server.hits[1]
    assert ping.path == "/v2/" and "/manifests/" in manifest.path
    assert manifest.conn != ping.conn
    assert server.connections() == 2  # and from the manifest on, one connection again


def test_a_redirect_to_another_host_gets_its_own_connection_and_no_credentials(tmp_path: object) -> None:
    image = tiny_image()
    with (
        raw_server(serve(image)) as storage,
        raw_server(serve(image, basic=True, blobs_at=lambda: storage.host)) as registry,
    ):
        keyring = Keyring.single(registry.host, Credentials(USER, PASSWORD))
        store = pull(str(tmp_path), registry.host, keyring)
    assert_stored(store, image)
    assert [h.header("Authorization") for h in storage.hits] == ["", ""]
    assert storage.connections() == 1  # both blobs on one kept-alive connection to the storage host
    blob_hits = [h for h in registry.hits if "/blobs/" in h.path]
    assert len(blob_hits) == 2 and all(h.header("Authorization").startswith("Basic ") for h in blob_hits)


def test_proxy_variables_netrc_and_url_credentials_are_never_used(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry is reached directly, with what the keyring holds and nothing else."""
    home = os.path.join(str(tmp_path), "home")
    os.makedirs(home)
    with open(os.path.join(home, ".netrc"), "w") as f:
        f.write("machine 127.0.0.1 login netrc password fromhome\n")
    os.chmod(os.path.join(home, ".netrc"), 0o600)
    monkeypatch.setenv("HOME", home)
    monkeypatch.setenv("NETRC", os.path.join(home, ".netrc"))
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # the discard port: nothing answers there
    image = tiny_image()
    with raw_server(serve(image)) as server:
        store = pull(os.path.join(str(tmp_path), "store"), server.host)
        client = RegistryClient(server.host, plain_http=True, timeouts=QUICK, retry=RETRY)
        with client.request(f"http://netrc:pw@{server.host}/v2/") as reply:
            assert reply.status_code == 200
        client.close()
    assert_stored(store, image)
    assert [h.header("Authorization") for h in server.hits] == [""] * len(server.hits)
    assert server.hits[-1].header("Host") == server.host  # the URL's user:password is not sent


# --- bodies --------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.integers(min_value=1, max_value=40_000),
    chunked=st.lists(st.integers(min_value=1, max_value=9000), max_size=4).map(lambda sizes: [s * 16 for s in sizes]),
    cuts=st.lists(st.integers(min_value=1, max_value=60_000), max_size=8),
)
def test_every_framing_and_segmentation_stores_the_exact_bytes(
    payload: int, chunked: list[int], cuts: list[int]
) -> None:
    """Content-Length or chunked bodies (any chunk sizes), split into TCP segments anywhere."""
    image = tiny_image(payload)
    with tempfile.TemporaryDirectory() as root, raw_server(serve(image, chunked=chunked, cuts=cuts)) as server:
        store = pull(root, server.host)
        assert_stored(store, image)
        assert server.connections() == 1


def test_a_blob_streams_through_one_buffer(tmp_path: object) -> None:
    """The registry's blob stream lends views of one reused buffer (no allocation per read);
    ``fetch_blob`` hands out copies, which a caller may keep."""
    image = tiny_image(300_000)
    layer = Descriptor("application/octet-stream", Digest.parse(image.layer_digest), len(image.layer))
    with raw_server(serve(image, cuts=range(1000, 300_000, 7000))) as server:
        client = RegistryClient(server.host, plain_http=True, timeouts=QUICK, retry=RETRY)
        source = RegistrySource(client, "lab/app", parse_normalized(f"{server.host}/lab/app:v1"), chunk_size=64 * 1024)
        owners = {id(view.obj) for view in source.fetch_blob_views(layer)}
        kept = list(source.fetch_blob(layer))
        source.close()
    assert len(owners) == 1
    assert len(kept) > 1 and b"".join(kept) == image.layer


def test_repeated_header_fields_are_one_list() -> None:
    """Two ``WWW-Authenticate`` fields are read as both challenges (Bearer is then preferred)."""
    headers = Headers([("WWW-Authenticate", 'Basic realm="lab"'), ("www-authenticate", 'Bearer realm="http://t/x"')])
    assert headers["WWW-AUTHENTICATE"] == 'Basic realm="lab", Bearer realm="http://t/x"'
    assert [c.scheme for c in parse_challenges(headers["www-authenticate"])] == ["basic", "bearer"]
    assert list(headers) == ["WWW-Authenticate"] and len(headers) == 1


def test_the_raw_server_counts_connections() -> None:
    """The helper's connection count sees a client that does not reuse connections."""
    import http.client

    with raw_server(lambda hit: ([response(200, {}, b"x")], False)) as server:
        for _ in range(2):
            conn = http.client.HTTPConnection(server.host, timeout=5)
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"x"
            conn.close()
    assert server.connections() == 2


# --- TLS -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (and its key), made with openssl."""
    from tests.helpers import peers

    where = tmp_path_factory.mktemp("tls")
    key, cert = str(where / "key.pem"), str(where / "cert.pem")
    subprocess.run(
        [peers.require("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def _tls(certificate: tuple[str, str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*certificate)
    return ctx


def _pull_https(root: str, host: str, *, insecure: bool) -> ContentStore:
    store = ContentStore(root)
    conf = RegistriesConfig.from_dict({"registry": [{"prefix": host, "insecure": insecure}]})
    access = RegistryAccess(timeouts=QUICK, retry=RETRY)
    ImagePuller(store, conf, registry_factory=access).pull(f"{host}/lab/app:v1")
    return store


def test_an_insecure_registry_is_pulled_over_tls_without_verification(
    tmp_path: object, certificate: tuple[str, str]
) -> None:
    image = tiny_image()
    with raw_server(serve(image), tls=_tls(certificate)) as server:
        store = _pull_https(str(tmp_path), server.host, insecure=True)
    assert_stored(store, image)
    assert len(server.hits) == 4 and server.connections() == 1  # all over TLS: no fallback to HTTP


def test_a_certificate_nobody_trusts_is_refused_like_go(tmp_path: object, certificate: tuple[str, str]) -> None:
    image = tiny_image()
    with raw_server(serve(image), tls=_tls(certificate)) as server, pytest.raises(PullError) as exc:
        _pull_https(str(tmp_path), server.host, insecure=False)
    assert "tls: failed to verify certificate: x509: certificate signed by unknown authority" in str(exc.value)
    assert server.hits == []
    assert ContentStore(str(tmp_path)).fsck().clean and not list(ContentStore(str(tmp_path)).blobs())


def test_certificates_are_checked_against_the_system_trust_store(
    tmp_path: object, certificate: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSL_CERT_FILE names the trust store, as for Go programs (containerd) on Linux."""
    monkeypatch.setenv("SSL_CERT_FILE", certificate[0])
    image = tiny_image()
    with raw_server(serve(image), tls=_tls(certificate)) as server:
        store = _pull_https(str(tmp_path), server.host, insecure=False)
    assert_stored(store, image)
