"""Every network wait has a bound (issue 10): a registry that trickles, stalls, never stops sending
or drops and resumes forever cannot hold a pull past the bounds docs/pulling.md documents.

The registry is our own (slowserver.py, raw sockets on 127.0.0.1), so status lines, headers and
bodies can be paced byte by byte. The bounds are configured small, so each case takes about a
second; each asserts the pull failed within its bound (with a generous margin for a loaded
machine), with the right error type and wording, and that nothing partial is left in the content
store. Slow-but-acceptable servers still complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable

import pytest
import requests
import urllib3.exceptions
from hypothesis import given
from hypothesis import strategies as st

from imagevol.content.pull import ImagePuller
from imagevol.content.sources import _bounds as bounds
from imagevol.content.sources._bounds import Deadline, Guard, SpeedMeter, Timeouts, Watchdog, duration
from imagevol.content.sources._client import MAX_TOKEN_RESPONSE, RetryPolicy
from imagevol.content.sources._neterrors import PLAIN_HTTP_ANSWER, describe, sanitize
from imagevol.content.sources.auth import Keyring
from imagevol.content.sources.mirrors import RegistriesConfig
from imagevol.content.sources.registry import RegistryAccess
from imagevol.content.store import ContentStore
from imagevol.errors import (
    AuthenticationError,
    ImageNotFoundError,
    ImageVolError,
    ManifestError,
    PullError,
    RegistryUnavailableError,
)
from imagevol.kubelet.events import Event, EventRecorder
from imagevol.kubelet.image_manager import Backoff, ImageManager
from imagevol.kubelet.metrics import KubeletMetrics
from imagevol.node import Node, NodeConfig
from imagevol.oci import MAX_MANIFEST_BYTES
from tests.helpers import peers
from tests.helpers.clock import FakeClock
from tests.helpers.slowserver import Seen, Shape, slow_registry

#: Small bounds, so that each case takes about a second.
FAST = Timeouts(connect=1.0, read=1.0, request=0.6, low_speed_limit=1000, low_speed_time=0.3)
RETRY = RetryPolicy(attempts=2, initial=0.05, maximum=0.1, deadline=1.0)
#: Wall-clock slack on top of a bound: thread wake-ups on a busy 2-CPU machine, never a second bound.
MARGIN = 1.5
#: A client that kept reading an endless body would make the server send far more than this.
READ_AT_MOST = 32 * 1024 * 1024
TRICKLE = 0.1  # seconds per byte: the "one byte every two seconds", scaled like the bounds
REF = "lab/app:v1"

#: What no user-facing message may contain (Python-isms, not Go/containerd wording).
FORBIDDEN = ("[Errno", "Traceback", "HTTPConnectionPool", "HTTPSConnectionPool", "object at 0x", "urllib3", "_ssl.c")


class Puller:
    """A resolver on a fresh content store, reaching registries with the given bounds."""

    def __init__(
        self,
        root: str,
        *,
        timeouts: Timeouts = FAST,
        retry: RetryPolicy = RETRY,
        max_resumes: int = 5,
        plain_http: bool = True,
        registries: RegistriesConfig | None = None,
    ) -> None:
        self.root = os.path.join(root, "content")
        self.store = ContentStore(self.root)
        access = RegistryAccess(plain_http=plain_http, timeouts=timeouts, retry=retry, max_resumes=max_resumes)
        self.puller = ImagePuller(self.store, registries or RegistriesConfig(), registry_factory=access)
        self.elapsed = 0.0

    def fails(
        self, ref: str, kind: type[ImageVolError] = RegistryUnavailableError, keyring: Keyring | None = None
    ) -> str:
        """Pull ``ref``, expecting ``kind``; return the message (checked for Python-isms)."""
        start = time.monotonic()
        with pytest.raises(kind) as exc:
            self.puller.pull(ref, keyring)
        self.elapsed = time.monotonic() - start
        message = str(exc.value)
        assert_clean(message)
        return message

    def pulls(self, ref: str) -> None:
        start = time.monotonic()
        record = self.puller.pull(ref).record
        self.elapsed = time.monotonic() - start
        assert record is not None

    def assert_nothing_partial(self, *digests: str) -> None:
        """No blob of ``digests`` under its name, no temp file in ingest/, no image record."""
        blobs = os.path.join(self.root, "blobs", "sha256")
        present = set(os.listdir(blobs)) if os.path.isdir(blobs) else set()
        for digest in digests:
            assert digest.split(":", 1)[1] not in present, digest
        ingest = os.path.join(self.root, "ingest")
        assert [n for n in os.listdir(ingest) if not n.endswith(".lock")] == []
        assert self.puller.image_db.all() == []
        with open(os.path.join(self.root, "index.json")) as f:
            assert json.load(f)["manifests"] == []
        assert self.store.fsck().corrupt == ()


def assert_clean(message: str) -> None:
    for bad in FORBIDDEN:
        assert bad not in message, message
    assert "\n" not in message, message


@pytest.fixture
def puller(tmp_path: object) -> Puller:
    return Puller(str(tmp_path))


def when(part: str, shape: Shape) -> Callable[[Seen], Shape | None]:
    """``shape`` for every request whose path contains ``part``."""
    return lambda seen: shape if part in seen.path else None


# --- manifests, tokens and pings that trickle ----------------------------------------------------------

_TRICKLED = {
    "headers": Shape(header_pace=TRICKLE),
    "body": Shape(pace=(1, TRICKLE)),
}


@pytest.mark.parametrize(
    ("what", "how"),
    [("manifests/", "headers"), ("manifests/", "body"), ("/token", "headers"), ("/token", "body"), ("/v2/", "headers")],
)
def test_a_trickled_answer_ends_within_the_retry_deadline(puller: Puller, what: str, how: str) -> None:
    """One byte every TRICKLE seconds never trips a read timeout; the try's deadline (headers) or
    the low-speed limit (body) cuts each try, and all tries end by the retry deadline."""
    shape = _TRICKLED[how]

    def rule(seen: Seen) -> Shape | None:
        path = seen.path.split("?", 1)[0]
        return shape if (path == what if what == "/v2/" else what in path) else None

    with slow_registry(rule, bearer=True) as reg:
        message = puller.fails(f"{reg.host}/{REF}")
        tries = len([s for s in reg.seen if (s.path.split("?")[0] == what if what == "/v2/" else what in s.path)])
    assert puller.elapsed < RETRY.deadline + MARGIN, puller.elapsed
    assert message.startswith(f'RegistryUnavailable: failed to pull and unpack image "{reg.host}/{REF}"')
    if how == "headers":
        assert "context deadline exceeded" in message
    else:
        assert "transfer too slow: less than 1000 bytes/s" in message
        assert "read tcp 127.0.0.1:" in message  # Go names the connection: read tcp local->peer
    if what == "/v2/":
        assert f"pinging container registry {reg.host}" in message
    assert tries == RETRY.attempts
    puller.assert_nothing_partial(reg.image.layer_digest)


def test_the_documented_defaults_bound_a_trickle_to_a_minute() -> None:
    """With the defaults, what a trickled manifest or token can cost: one retry deadline."""
    t, r = Timeouts(), RetryPolicy()
    assert (t.connect, t.read, t.request, t.low_speed_limit, t.low_speed_time) == (5.0, 30.0, 30.0, 1024, 30.0)
    assert (r.attempts, r.deadline) == (3, 60.0)
    assert t.blob_budget(1024 * 1024) == 30.0 + 1024.0


@pytest.mark.parametrize("what", ["/manifests/", "/blobs/"])
def test_silence_inside_a_body_is_cut_at_the_bound_not_at_the_read_timeout(tmp_path: object, what: str) -> None:
    """A few bytes, then nothing: the watchdog must wake the blocked read (a check made only when a
    read returns would wait for the read timeout, here far beyond the bound)."""
    patient = Timeouts(connect=1.0, read=20.0, request=0.6, low_speed_limit=1000, low_speed_time=0.3)
    puller = Puller(str(tmp_path), timeouts=patient)
    with slow_registry(when(what, Shape(drop_after=10, hold=20.0))) as reg:
        message = puller.fails(f"{reg.host}/{REF}")
    assert "transfer too slow" in message
    assert puller.elapsed < RETRY.deadline + MARGIN, puller.elapsed
    puller.assert_nothing_partial(*reg.image.blobs())


def test_silence_before_the_headers_is_a_read_timeout(tmp_path: object) -> None:
    slow = Timeouts(connect=1.0, read=0.3, request=5.0, low_speed_limit=1000, low_speed_time=0.3)
    puller = Puller(str(tmp_path), timeouts=slow)
    with slow_registry(when("/manifests/", Shape(delay=3.0))) as reg:
        message = puller.fails(f"{reg.host}/{REF}")
    assert puller.elapsed < 2 * slow.read + RETRY.initial + MARGIN
    assert "read tcp 127.0.0.1:" in message and ": i/o timeout" in message


# --- blobs -------------------------------------------------------------------------------------------


def test_a_trickled_blob_is_cut_by_the_low_speed_limit(puller: Puller) -> None:
    with slow_registry(when("/blobs/", Shape(pace=(1, TRICKLE)))) as reg:
        layer = reg.image.layer_digest
        message = puller.fails(f"{reg.host}/{REF}")
        gets = reg.requests(f"/blobs/{layer}")
    # The config blob trickles too and is the first one fetched: it is cut after one window.
    assert puller.elapsed < FAST.request + FAST.low_speed_time + MARGIN, puller.elapsed
    assert "transfer too slow: less than 1000 bytes/s" in message
    assert "gave up after 1 attempts" in message  # a low-speed cut is not resumed
    assert gets == []
    puller.assert_nothing_partial(*reg.image.blobs())


def test_a_blob_that_sends_a_little_then_drops_gets_no_fresh_allowance(tmp_path: object) -> None:
    """Each resume makes progress, so a per-try check never fires and a resume counter keeps
    being reset: the blob's meter, which spans the resumes, cuts it after one window."""
    puller = Puller(str(tmp_path), max_resumes=50)

    def rule(seen: Seen) -> Shape | None:
        return Shape(drop_after=20, hold=0.1) if "/blobs/" + layer in seen.path else None

    with slow_registry(rule) as reg:
        layer = reg.image.layer_digest
        message = puller.fails(f"{reg.host}/{REF}")
        ranges = [s.header("Range") for s in reg.requests(f"/blobs/{layer}")]
    assert puller.elapsed < FAST.low_speed_time + FAST.request + MARGIN, puller.elapsed
    assert "transfer too slow" in message
    assert 2 <= len(ranges) < 20, ranges  # resumed, but a handful of times, not 200
    assert ranges[:3] == ["", "bytes=20-", "bytes=40-"]
    puller.assert_nothing_partial(layer)


def test_a_blob_has_one_budget_across_its_resumes(tmp_path: object) -> None:
    """Above the low-speed limit in every window it measures, but slower than the budget allows:
    the budget (one request's allowance plus the blob at the lowest speed) ends it."""
    lenient = Timeouts(connect=1.0, read=1.0, request=0.3, low_speed_limit=2000, low_speed_time=30.0)
    puller = Puller(str(tmp_path), timeouts=lenient, max_resumes=50)

    def rule(seen: Seen) -> Shape | None:
        return Shape(drop_after=100, hold=0.25) if "/blobs/" + layer in seen.path else None

    with slow_registry(rule) as reg:
        layer = reg.image.layer_digest
        budget = lenient.blob_budget(len(reg.image.layer))
        message = puller.fails(f"{reg.host}/{REF}")
        gets = reg.requests(f"/blobs/{layer}")
    assert budget < 2.0  # the server would need about 7 s for the whole layer
    assert puller.elapsed < budget + MARGIN, (puller.elapsed, budget)
    assert f"context deadline exceeded (blob took longer than its {duration(budget)} budget)" in message
    assert len(gets) > 2
    puller.assert_nothing_partial(layer)


def test_a_blob_without_a_byte_is_given_up_after_the_resumes(tmp_path: object) -> None:
    silent = Timeouts(connect=1.0, read=0.2, request=0.6, low_speed_limit=1, low_speed_time=30.0)
    puller = Puller(str(tmp_path), timeouts=silent, max_resumes=3)

    def rule(seen: Seen) -> Shape | None:
        return Shape(drop_after=0, hold=5.0) if "/blobs/" + layer in seen.path else None

    with slow_registry(rule) as reg:
        layer = reg.image.layer_digest
        message = puller.fails(f"{reg.host}/{REF}")
        gets = reg.requests(f"/blobs/{layer}")
    assert puller.elapsed < 3 * (silent.read + RETRY.maximum) + MARGIN
    assert len(gets) == 3 and "i/o timeout" in message and "gave up after 3 attempts, 0 of" in message
    puller.assert_nothing_partial(layer)


def test_slow_but_acceptable_servers_complete(tmp_path: object) -> None:
    """Every answer, token included, paced at about five times the low-speed limit (with the
    status line and headers a byte at a time): the pull completes and verifies."""
    puller = Puller(str(tmp_path))
    with slow_registry(lambda _seen: Shape(pace=(50, 0.01), header_pace=0.0005), bearer=True) as reg:
        puller.pulls(f"{reg.host}/{REF}")
        tokens = reg.requests("/token")
    assert len(tokens) == 1
    for digest in reg.image.blobs():
        from imagevol.oci import Digest

        assert puller.store.verify_blob(Digest.parse(digest))
    assert len(reg.image.layer) / 5000 < puller.elapsed  # it really was paced


def test_a_resumed_blob_completes_within_its_budget(tmp_path: object) -> None:
    puller = Puller(str(tmp_path), max_resumes=50)
    drops = [0]

    def rule(seen: Seen) -> Shape | None:
        if "/blobs/" + layer not in seen.path or drops[0] >= 3:
            return None
        drops[0] += 1
        return Shape(drop_after=300)

    with slow_registry(rule) as reg:
        layer = reg.image.layer_digest
        puller.pulls(f"{reg.host}/{REF}")
        ranges = [s.header("Range") for s in reg.requests(f"/blobs/{layer}")]
    assert ranges == ["", "bytes=300-", "bytes=600-", "bytes=900-"]


# --- bodies that never end, and bodies never read ------------------------------------------------------


def _endless(status: int, headers: dict[str, str] | None = None) -> Shape:
    return Shape(respond=(status, headers or {"Content-Type": "application/json"}, b""), endless=True)


def test_an_endless_token_is_refused_after_its_size_limit(puller: Puller) -> None:
    with slow_registry(when("/token", _endless(200)), bearer=True) as reg:
        message = puller.fails(f"{reg.host}/{REF}", AuthenticationError)
        sent = reg.bytes_sent("/token")
    assert "token response is too large" in message
    assert MAX_TOKEN_RESPONSE < sent < READ_AT_MOST
    assert puller.elapsed < RETRY.deadline + MARGIN


def test_a_token_announced_too_large_is_not_read(puller: Puller) -> None:
    big = Shape(respond=(200, {"Content-Length": str(1 << 40)}, b""), endless=True)
    with slow_registry(when("/token", big), bearer=True) as reg:
        message = puller.fails(f"{reg.host}/{REF}", AuthenticationError)
        sent = reg.bytes_sent("/token")
    assert "token response is too large" in message and sent < READ_AT_MOST


def test_an_endless_manifest_is_refused_after_4_mib(puller: Puller) -> None:
    with slow_registry(when("/manifests/", _endless(200, {"Content-Type": "application/json"}))) as reg:
        message = puller.fails(f"{reg.host}/{REF}", ManifestError)
        sent = reg.bytes_sent("/manifests/")
    assert f"manifest exceeds the {MAX_MANIFEST_BYTES}-byte limit" in message
    assert MAX_MANIFEST_BYTES < sent < READ_AT_MOST
    puller.assert_nothing_partial()


@pytest.mark.parametrize(("status", "kind"), [(503, RegistryUnavailableError), (404, ImageNotFoundError)])
def test_an_endless_error_body_is_never_read(puller: Puller, status: int, kind: type[ImageVolError]) -> None:
    with slow_registry(when("/manifests/", _endless(status))) as reg:
        message = puller.fails(f"{reg.host}/{REF}", kind)
        sent = reg.bytes_sent("/manifests/")
    assert sent < READ_AT_MOST
    assert puller.elapsed < RETRY.deadline + MARGIN
    if status == 503:
        assert "503 Service Unavailable" in message
    puller.assert_nothing_partial()


def test_an_endless_ping_body_is_never_read(puller: Puller) -> None:
    with slow_registry(lambda seen: _endless(200) if seen.path == "/v2/" else None) as reg:
        puller.pulls(f"{reg.host}/{REF}")
        sent = reg.bytes_sent("/v2/")  # every path starts with /v2/: all bodies together
    assert sent < READ_AT_MOST


def test_an_endless_redirect_body_is_never_read(puller: Puller) -> None:
    def rule(seen: Seen) -> Shape | None:
        if seen.path == "/v2/lab/app/manifests/v1":
            location = f"/v2/lab/app/manifests/{reg.manifest_digest}"
            return Shape(respond=(307, {"Location": location}, b""), endless=True)
        return None

    with slow_registry(rule) as reg:
        puller.pulls(f"{reg.host}/{REF}")
        sent = reg.bytes_sent("/manifests/v1")
    assert sent < READ_AT_MOST


# --- transport errors read like containerd's ------------------------------------------------------------


def test_a_refused_connection_reads_like_go(puller: Puller) -> None:
    port = peers.free_port()
    message = puller.fails(f"127.0.0.1:{port}/{REF}")
    assert f'Get "http://127.0.0.1:{port}/v2/": dial tcp 127.0.0.1:{port}: connect: connection refused' in message


def test_a_connection_closed_without_an_answer_is_eof(puller: Puller) -> None:
    with slow_registry(when("/manifests/", Shape(no_answer=True))) as reg:
        message = puller.fails(f"{reg.host}/{REF}")
    assert message.endswith(f'failed to do request: Get "http://{reg.host}/v2/lab/app/manifests/v1": EOF')


def test_https_to_a_plain_http_registry_says_so_and_how_to_allow_it(tmp_path: object) -> None:
    puller = Puller(str(tmp_path), plain_http=False)
    with slow_registry() as reg:
        message = puller.fails(f"{reg.host}/{REF}", PullError)
        assert message.startswith("failed to pull and unpack image")  # ErrImagePull: retrying cannot help
        assert PLAIN_HTTP_ANSWER in message
        assert f"set insecure = true for {reg.host} in registries.conf" in message
        # And with it allowed, the same registry serves the pull.
        conf = RegistriesConfig.from_dict({"registry": [{"prefix": reg.host, "insecure": True}]})
        Puller(str(tmp_path / "ok"), plain_http=False, registries=conf).pulls(f"{reg.host}/{REF}")  # type: ignore[operator]


def test_events_carry_go_style_reasons(tmp_path: object) -> None:
    """What reaches a Pod's `Failed` event through the kubelet's image manager."""
    with slow_registry(when("/manifests/", Shape(pace=(1, TRICKLE)))) as reg:
        conf = os.path.join(str(tmp_path), "registries.conf")
        with open(conf, "w") as f:
            f.write(
                f'[[registry]]\nprefix = "slow.test"\nlocation = "{reg.host}"\n'
                f'[[registry]]\nprefix = "down.test"\nlocation = "127.0.0.1:{peers.free_port()}"\n'
            )
        access = RegistryAccess(plain_http=True, timeouts=FAST, retry=RETRY)
        node = Node(NodeConfig(root=os.path.join(str(tmp_path), "node"), registries=conf, registry_factory=access))
        clock = FakeClock()
        manager = ImageManager(node.runtime, Backoff(), KubeletMetrics(), clock=clock)
        events: list[Event] = []
        recorder = EventRecorder(events, clock=clock)
        for image, reason in (("slow.test/lab/app:v1", "transfer too slow"), ("down.test/app:v1", "connect: ")):
            events.clear()
            result = manager.ensure("pod-a", image, "IfNotPresent", Keyring(), recorder)
            assert not result.ok
            failed = [e for e in events if e.reason == "Failed"]
            assert len(failed) == 1 and failed[0].message.startswith(f'Failed to pull image "{image}": ')
            assert reason in failed[0].message
            for text in (failed[0].message, result.message):
                assert_clean(text)
                assert str(tmp_path) not in text


# --- describe: the wording of every transport failure ---------------------------------------------------


def _wrapped(cause: BaseException, outer: type[Exception] = urllib3.exceptions.NewConnectionError) -> BaseException:
    """``cause`` as requests delivers it: requests' error around MaxRetryError around urllib3's."""
    inner: BaseException
    if outer is urllib3.exceptions.NewConnectionError:
        inner = outer(None, f"Failed to establish a new connection: {cause}")  # type: ignore[arg-type]
    elif outer is urllib3.exceptions.NameResolutionError:
        inner = outer("registry.invalid", None, cause)  # type: ignore[arg-type]
    else:
        inner = outer(str(cause))
    inner.__cause__ = cause
    retry = urllib3.exceptions.MaxRetryError(None, "/v2/", inner)  # type: ignore[arg-type]
    return requests.exceptions.ConnectionError(retry)


def test_describe_names_lookups_certificates_and_timeouts_like_go() -> None:
    url = "https://registry.invalid/v2/"
    gai = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert describe(_wrapped(gai, urllib3.exceptions.NameResolutionError), url) == (
        "dial tcp: lookup registry.invalid: no such host"
    )
    cert = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    cert.verify_code, cert.verify_message = 19, "self-signed certificate in certificate chain"
    assert describe(requests.exceptions.SSLError(cert), url) == (
        "tls: failed to verify certificate: x509: certificate signed by unknown authority"
    )
    plain = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)")
    plain.reason = "WRONG_VERSION_NUMBER"
    assert describe(requests.exceptions.SSLError(plain), url) == PLAIN_HTTP_ANSWER
    timeout = urllib3.exceptions.ConnectTimeoutError(None, "Connection to registry.invalid timed out.")
    timeout.__cause__ = TimeoutError("timed out")
    assert describe(requests.exceptions.ConnectTimeout(timeout), url) == "dial tcp registry.invalid:443: i/o timeout"
    reset = ConnectionResetError(104, "Connection reset by peer")
    assert describe(requests.exceptions.ConnectionError(reset), url, "10.0.0.1:5->10.0.0.2:443") == (
        "read tcp 10.0.0.1:5->10.0.0.2:443: read: connection reset by peer"
    )


@given(code=st.sampled_from([111, 113, 101, 110, 104, 99]), host=st.sampled_from(["127.0.0.1", "reg.test", "::1"]))
def test_describe_never_shows_errno_or_python_reprs(code: int, host: str) -> None:
    url = f"http://[{host}]:5000/v2/" if ":" in host else f"http://{host}:5000/v2/"
    error = OSError(code, os.strerror(code))
    text = describe(_wrapped(error), url)
    assert_clean(text)
    assert text.startswith("dial tcp ") and text.endswith(os.strerror(code).lower())


@given(st.text(max_size=300))
def test_sanitize_removes_python_isms(text: str) -> None:
    noisy = f"HTTPConnectionPool(host='x', port=1): [Errno 111] {text} (_ssl.c:1006) <urllib3.X object at 0xdeadbeef>"
    cleaned = sanitize(noisy)
    assert "[Errno" not in cleaned.replace(text, "") and "_ssl.c" not in cleaned.replace(text, "")
    assert len(cleaned) <= 203


# --- the watchdog itself -----------------------------------------------------------------------------


class _Conn:
    def __init__(self, guard: Guard | None) -> None:
        self.guard = guard

    def carries(self, guard: Guard) -> bool:
        return guard is self.guard


def _blocked_recv(sock: socket.socket) -> threading.Event:
    """A thread blocked in ``recv`` on ``sock``; the event is set when it returns."""
    done = threading.Event()

    def run() -> None:
        with contextlib.suppress(OSError):
            sock.recv(1)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done


def test_the_watchdog_thread_ends_with_the_last_guard_and_comes_back_with_the_next() -> None:
    dog = Watchdog()
    first, second = Guard(Deadline.after(60, "late")), Guard(Deadline.after(60, "late"))
    dog.arm(first)
    dog.arm(second)
    dog.arm(first)  # re-armed (its body started): still one guard
    thread = dog._thread
    assert thread is not None and thread.is_alive()
    first.release()
    first.release()  # twice is once
    thread.join(0.2)
    assert thread.is_alive()  # the second guard is still watched
    second.release()
    thread.join(5)
    assert not thread.is_alive() and dog._thread is None
    # A process done with the network runs no watchdog thread (it may fork); the next request
    # gets one again, and it still fires.
    _fires_on_a_blocked_read(dog, Guard(Deadline.after(0.05, "late")))


def _fires_on_a_blocked_read(dog: Watchdog, guard: Guard) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(10)
        done = _blocked_recv(ours)
        guard.watch(_Conn(guard), ours)
        dog.arm(guard)
        assert done.wait(3) and guard.failure == "late"
    guard.release()


def test_a_guard_wakes_a_blocked_read_at_its_deadline() -> None:
    _fires_on_a_blocked_read(Watchdog(), Guard(Deadline.after(0.1, "late")))


def test_a_guard_never_cuts_a_connection_that_moved_on_or_after_release() -> None:
    dog = Watchdog()
    moved, released = Guard(Deadline.after(0.05, "late")), Guard(Deadline.after(0.05, "late"))
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        for (ours, _), guard, owner in ((pairs[0], moved, None), (pairs[1], released, released)):
            ours.settimeout(1.0)
            guard.watch(_Conn(owner), ours)  # the first connection serves another request now
            dog.arm(guard)
        released.release()
        done = [_blocked_recv(ours) for ours, _ in pairs]
        time.sleep(0.3)
        assert moved.failure == "late" and released.failure == ""
        assert not any(d.is_set() for d in done)  # both reads still wait (until their own timeout)
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_a_meter_fails_a_window_with_too_few_bytes() -> None:
    now = [0.0]
    meter = SpeedMeter(100, 1.0, clock=lambda: now[0])
    meter.add(150)
    now[0] = 1.0
    assert meter.roll(now[0]) == ""  # 150 bytes in 1 s: fine, a new window starts
    meter.add(99)
    now[0] = 1.5
    assert meter.roll(now[0]) == ""  # the window is not over yet
    now[0] = 2.0
    assert meter.roll(now[0]) == "transfer too slow: less than 100 bytes/s over the last 1s"


def test_a_guard_armed_after_its_window_closed_fires_at_once() -> None:
    now = [10.0]
    meter = SpeedMeter(100, 1.0, clock=lambda: now[0])
    now[0] = 12.0  # time between two tries of a blob counts against it
    guard = Guard(Deadline(100.0, "late"), meter)
    assert guard.due() == 11.0
    assert guard.check(now[0]).startswith("transfer too slow")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250ms"), (1.0, "1s"), (1.5, "1.5s"), (30.0, "30s"), (60.0, "1m0s"), (3725.0, "1h2m5s")],
)
def test_durations_print_like_go(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_the_current_guard_is_per_thread() -> None:
    guard = Guard(Deadline.after(5, "late"))
    bounds.bind(guard)
    try:
        seen: list[Guard | None] = []
        t = threading.Thread(target=lambda: seen.append(bounds.current()))
        t.start()
        t.join()
        assert bounds.current() is guard and seen == [None]
    finally:
        bounds.bind(None)
