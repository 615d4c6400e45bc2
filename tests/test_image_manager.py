"""``EnsureImageExists`` (R3.5 to R3.7): pull policies, default tag, events in kubelet wording, and
the per ``<podUID>_<image>`` backoff (10 s doubling to 300 s, R3.6) on an injected clock.

The runtime is real (a node whose registries.conf serves ``registry.test/lab`` from the fixtures'
OCI layout, and ``down.test`` from a closed port on 127.0.0.1); only time is simulated.
"""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagevol.content.sources._client import RetryPolicy
from imagevol.content.sources.auth import Keyring
from imagevol.content.sources.registry import RegistryAccess
from imagevol.kubelet.events import NORMAL, WARNING, Event, EventRecorder
from imagevol.kubelet.image_manager import (
    INITIAL_BACKOFF,
    MAX_BACKOFF,
    Backoff,
    EnsureResult,
    ImageManager,
    should_pull,
)
from imagevol.kubelet.metrics import KubeletMetrics
from imagevol.node import Node, NodeConfig
from tests.helpers import peers
from tests.helpers.clock import FakeClock

PULLED = re.compile(
    r'^Successfully pulled image "(?P<ref>[^"]+)" in (?P<d>[0-9.]+(ms|s)|0s) '
    r"\((?P<w>[0-9.]+(ms|s)|0s) including waiting\)\. Image size: (?P<size>\d+) bytes\.$"
)


class Kubelet:
    """An ImageManager on a real node, with its events and a fake clock."""

    def __init__(self, root: str, layout: str, runtime: str = "containerd") -> None:
        conf = os.path.join(root, "registries.conf")
        os.makedirs(root, exist_ok=True)
        with open(conf, "w") as f:
            f.write(
                f'[[registry]]\nprefix = "registry.test/lab"\nlocation = "oci-layout:{layout}"\n'
                f'[[registry]]\nprefix = "down.test"\nlocation = "127.0.0.1:{peers.free_port()}"\n'
            )
        access = RegistryAccess(plain_http=True, retry=RetryPolicy(attempts=1))
        self.node = Node(
            NodeConfig(root=os.path.join(root, "node"), registries=conf, registry_factory=access, runtime=runtime)
        )
        self.clock = FakeClock()
        self.backoff = Backoff()
        self.manager = ImageManager(self.node.runtime, self.backoff, KubeletMetrics(), clock=self.clock)
        self.events: list[Event] = []
        self.recorder = EventRecorder(self.events, clock=self.clock)

    def ensure(self, image: str, policy: str = "IfNotPresent", uid: str = "pod-a") -> EnsureResult:
        return self.manager.ensure(uid, image, policy, Keyring(), self.recorder)

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]

    def last(self) -> Event:
        return self.events[-1]


@pytest.fixture
def kubelet(tmp_path: object, fixtures_layout: str) -> Kubelet:
    return Kubelet(str(tmp_path), fixtures_layout)


# --- policies ---------------------------------------------------------------------------------------


def test_if_not_present_pulls_what_is_absent(kubelet: Kubelet) -> None:
    res = kubelet.ensure("registry.test/lab:v2")
    assert res.ok and res.image is not None
    assert res.image_ref == res.image.id
    assert kubelet.reasons() == ["Pulling", "Pulled"]
    assert kubelet.events[0].message == 'Pulling image "registry.test/lab:v2"'
    m = PULLED.match(kubelet.last().message)
    assert m is not None, kubelet.last().message
    assert m["ref"] == "registry.test/lab:v2" and int(m["size"]) == res.image.size
    assert all(e.type == NORMAL and e.field_path == "" for e in kubelet.events)  # against the Pod (R5.2)


def test_if_not_present_uses_what_is_there(kubelet: Kubelet) -> None:
    kubelet.ensure("registry.test/lab:v2")
    kubelet.events.clear()
    res = kubelet.ensure("registry.test/lab:v2")
    assert res.ok
    assert [(e.reason, e.message) for e in kubelet.events] == [
        ("Pulled", 'Container image "registry.test/lab:v2" already present on machine')
    ]


def test_always_pulls_even_when_present(kubelet: Kubelet) -> None:
    kubelet.ensure("registry.test/lab:v2")
    kubelet.events.clear()
    assert kubelet.ensure("registry.test/lab:v2", "Always").ok
    assert kubelet.reasons() == ["Pulling", "Pulled"]
    assert PULLED.match(kubelet.last().message)


def test_never_with_the_image_absent_is_err_image_never_pull(kubelet: Kubelet) -> None:
    res = kubelet.ensure("registry.test/lab:v2", "Never")
    assert (res.reason, res.message) == (
        "ErrImageNeverPull",
        'Container image "registry.test/lab:v2" is not present with pull policy of Never',
    )
    assert [(e.type, e.reason) for e in kubelet.events] == [(WARNING, "ErrImageNeverPull")]
    assert kubelet.node.puller.image_db.all() == []  # nothing was pulled


def test_never_with_the_image_present_uses_it(kubelet: Kubelet) -> None:
    kubelet.ensure("registry.test/lab:v2")
    kubelet.events.clear()
    assert kubelet.ensure("registry.test/lab:v2", "Never").ok
    assert kubelet.reasons() == ["Pulled"]


@pytest.mark.parametrize(
    ("policy", "present", "pull"),
    [("Always", True, True), ("Always", False, True), ("IfNotPresent", True, False), ("IfNotPresent", False, True),
     ("Never", True, False), ("Never", False, False), ("", False, False), ("always", False, False)],
)  # fmt: skip
def test_should_pull_is_the_kubelets(policy: str, present: bool, pull: bool) -> None:
    assert should_pull(policy, present) is pull


def test_no_tag_means_latest_in_the_pull_not_in_the_messages_nor_the_key(kubelet: Kubelet) -> None:
    """The kubelet pulls ``:latest`` but names the image as written, in its events and in the
    backoff key (``<podUID>_<image as written>``): ``lab`` and ``lab:latest`` back off apart."""
    res = kubelet.ensure("registry.test/lab")
    assert res.reason == "ErrImagePull"
    assert kubelet.events[0].message == 'Pulling image "registry.test/lab"'
    assert kubelet.events[1].message.startswith('Failed to pull image "registry.test/lab": ')
    assert '"registry.test/lab:latest"' in kubelet.events[1].message
    assert list(kubelet.backoff.entries) == ["pod-a_registry.test/lab"]
    assert kubelet.ensure("registry.test/lab").reason == "ImagePullBackOff"
    assert kubelet.ensure("registry.test/lab:latest").reason == "ErrImagePull"


def test_an_invalid_name_is_invalid_image_name(kubelet: Kubelet) -> None:
    res = kubelet.ensure("registry.test/Lab:v2")
    assert res.reason == "InvalidImageName"
    assert res.message.startswith('Failed to apply default image tag "registry.test/Lab:v2": ')
    assert [(e.type, e.reason) for e in kubelet.events] == [(WARNING, "InspectFailed")]


# --- failures, reasons and backoff ---------------------------------------------------------------------


def test_a_failed_pull_then_backs_off_10s_doubling_to_300s(kubelet: Kubelet) -> None:
    image = "registry.test/lab:missing"
    res = kubelet.ensure(image)
    assert res.reason == "ErrImagePull"
    assert kubelet.reasons() == ["Pulling", "Failed"]
    assert kubelet.last().type == WARNING
    assert kubelet.last().message == f'Failed to pull image "{image}": {res.message}'
    assert res.message.startswith(f'failed to pull and unpack image "{image}": failed to resolve reference')
    failure = res.message
    waits = []
    for _ in range(7):
        # Probe each second until the backoff lets a pull through again.
        waited = 0
        while True:
            kubelet.clock.advance(1)
            waited += 1
            kubelet.events.clear()
            res = kubelet.ensure(image)
            if res.reason != "ImagePullBackOff":
                break
            assert [(e.reason, e.message) for e in kubelet.events] == [("BackOff", f'Back-off pulling image "{image}"')]
            assert kubelet.events[0].type == NORMAL
            # The waiting message says why the last pull failed; the event does not.
            assert res.message == f'Back-off pulling image "{image}": ErrImagePull: {failure}'
        failure = res.message
        assert res.reason == "ErrImagePull" and kubelet.reasons() == ["Pulling", "Failed"]
        waits.append(waited)
    assert waits == [10, 20, 40, 80, 160, 300, 300]


def test_backoff_is_per_pod_and_per_image(kubelet: Kubelet) -> None:
    kubelet.ensure("registry.test/lab:missing", uid="pod-a")
    assert kubelet.ensure("registry.test/lab:missing", uid="pod-a").reason == "ImagePullBackOff"
    assert kubelet.ensure("registry.test/lab:missing", uid="pod-b").reason == "ErrImagePull"
    assert kubelet.ensure("registry.test/lab:nothing", uid="pod-a").reason == "ErrImagePull"
    assert kubelet.ensure("registry.test/lab:v2", uid="pod-a").ok


def test_backoff_forgets_after_twice_the_maximum(kubelet: Kubelet) -> None:
    image = "registry.test/lab:missing"
    for _ in range(4):
        kubelet.ensure(image)
        kubelet.clock.advance(MAX_BACKOFF)
    assert kubelet.backoff.entries[f"pod-a_{image}"][0] == 80
    kubelet.clock.advance(2 * MAX_BACKOFF + 1)
    kubelet.ensure(image)
    assert kubelet.backoff.entries[f"pod-a_{image}"][0] == INITIAL_BACKOFF


def test_a_successful_pull_collects_stale_backoff_entries(kubelet: Kubelet) -> None:
    kubelet.ensure("registry.test/lab:missing", uid="old")
    kubelet.clock.advance(2 * MAX_BACKOFF + 1)
    kubelet.ensure("registry.test/lab:missing", uid="recent")
    assert kubelet.ensure("registry.test/lab:v2").ok
    assert list(kubelet.backoff.entries) == ["recent_registry.test/lab:missing"]


def test_an_unreachable_registry_is_registry_unavailable_on_crio(tmp_path: object, fixtures_layout: str) -> None:
    """CRI-O reports the CRI sentinel, so the kubelet says RegistryUnavailable (R3.6)."""
    kubelet = Kubelet(str(tmp_path), fixtures_layout, runtime="crio")
    res = kubelet.ensure("down.test/app:v1")
    assert res.reason == "RegistryUnavailable"
    assert res.message.startswith("image pull failed for down.test/app:v1 because the registry is unavailable: ")
    assert "connection refused" in res.message
    assert kubelet.reasons() == ["Pulling", "Failed"]
    assert kubelet.ensure("down.test/app:v1").reason == "ImagePullBackOff"


def test_an_unreachable_registry_is_err_image_pull_on_containerd(kubelet: Kubelet) -> None:
    """containerd has no such sentinel: a plain pull failure, ErrImagePull."""
    res = kubelet.ensure("down.test/app:v1")
    assert res.reason == "ErrImagePull"
    assert res.message.startswith('failed to pull and unpack image "down.test/app:v1"')
    assert "connection refused" in res.message
    assert kubelet.ensure("down.test/app:v1").reason == "ImagePullBackOff"


# --- Backoff on its own ---------------------------------------------------------------------------------


@given(steps=st.lists(st.tuples(st.floats(0, 1000, allow_nan=False), st.booleans()), max_size=40))
def test_backoff_rules(steps: list[tuple[float, bool]]) -> None:
    """Whatever the timing: a failure sets 10 s after a quiet period of more than 600 s (or the
    first time), else doubles the previous, capped at 300; a key is in backoff exactly while less
    than its duration has passed since its last failure."""
    backoff = Backoff()
    now = 0.0
    duration, last = None, None
    for gap, fail in steps:
        now += gap
        inside = duration is not None and last is not None and now - last < duration
        assert backoff.in_backoff("k", now) is inside
        if fail:
            got = backoff.next("k", now)
            expired = last is None or now - last > 2 * MAX_BACKOFF
            want = INITIAL_BACKOFF if expired or duration is None else min(duration * 2, MAX_BACKOFF)
            assert got == want and got in (10, 20, 40, 80, 160, 300)
            duration, last = got, now
        assert Backoff.from_json(backoff.to_json()).entries == backoff.entries


# --- KEP-2535: an image pulled with credentials is not handed to Pods without them (R7.4) --------------


def test_secret_pulled_images_are_reverified_per_pod(fixtures_layout: str, tmp_path: object) -> None:
    from imagevol.content.sources.auth import Credentials

    with peers.registry(user="alice", password="s3cret") as reg:
        peers.push_fixtures(fixtures_layout, reg, ("v2",))
        access = RegistryAccess(plain_http=True)
        node = Node(NodeConfig(root=os.path.join(str(tmp_path), "node"), registry_factory=access))
        clock = FakeClock()
        manager = ImageManager(node.runtime, Backoff(), KubeletMetrics(), clock=clock, ensure_secret_pulled_images=True)
        recorder = EventRecorder([], clock=clock)
        image = f"{reg.host}/lab/v2:v1"
        good = Keyring.single(reg.host, Credentials("alice", "s3cret"))
        assert manager.ensure("with-secret", image, "IfNotPresent", good, recorder).ok
        mark = reg.mark()
        # Same credentials (another Pod): present, the registry is not asked again.
        assert manager.ensure("same-secret", image, "IfNotPresent", good, recorder).ok
        assert reg.access(mark) == []
        # No credentials: the image is on disk but this Pod has not proven access; the registry says no.
        res = manager.ensure("no-secret", image, "IfNotPresent", Keyring(), recorder)
        assert res.reason == "ErrImagePull" and "pull access denied" in res.message
        # Never cannot ask the registry, so the Pod does not get the image.
        res = manager.ensure("no-secret-never", image, "Never", Keyring(), recorder)
        assert res.reason == "ErrImageNeverPull"
