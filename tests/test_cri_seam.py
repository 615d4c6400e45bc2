"""The kubelet side works against any runtime that serves the CRI of ``imagevol.cri``.

A small in-memory runtime (no content store, no snapshots, no registry) implements
``ImageService`` and ``RuntimeService`` and records every call. The kubelet's pod sync, the image
manager, the image GC and the exec view are driven by it exactly as by the real runtime, which
proves the seam carries everything they need and nothing else. The real runtime's
``ImageFsInfo`` is checked against what is on disk.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator

import attrs
import pytest

from imagevol.api import FeatureGates, admit
from imagevol.cri import (
    ContainerConfig,
    ContainerRuntime,
    ContainerStatus,
    Credentials,
    FilesystemIdentifier,
    FilesystemUsage,
    Image,
    ImageFsInfo,
    ImageService,
    ImageSpec,
    Keyring,
    Mount,
    MountStatus,
    PullImageResult,
    RuntimeService,
)
from imagevol.errors import (
    CreateContainerError,
    ImageInUseError,
    ImageVolError,
    ImageVolumeMountFailedError,
    PullError,
)
from imagevol.exec.view import ContainerView
from imagevol.kubelet.events import NORMAL, EventRecorder
from imagevol.kubelet.image_gc import ImageGC, filesystem_capacity
from imagevol.kubelet.image_manager import Backoff, ImageManager
from imagevol.kubelet.metrics import KubeletMetrics
from imagevol.kubelet.pod_sync import Kubelet, PodRecord
from imagevol.node import Node
from tests.helpers.clock import FakeClock
from tests.helpers.fixture_node import PREFIX, ctr, make_node, pod, vol

#: The Pods' container image, as the image manager asks for it (``debian`` with the default tag).
DEBIAN = "debian:latest"
DEBIAN_IMAGE = Image(
    "sha256:" + hashlib.sha256(b"debian config").hexdigest(),
    ("docker.io/library/debian:latest",),
    ("docker.io/library/debian@sha256:" + hashlib.sha256(b"debian").hexdigest(),),
)


def _image(tag: str, size: int, *, auth: tuple[str, ...] = (), pulled_at: float = 0.0) -> Image:
    digest = "sha256:" + hashlib.sha256(tag.encode()).hexdigest()
    config = "sha256:" + hashlib.sha256(b"config " + tag.encode()).hexdigest()
    ref = f"{PREFIX}:{tag}"
    return Image(config, (ref,), (f"{PREFIX}@{digest}",), size, auth=auth, pulled_at=pulled_at)


class FakeRuntime:
    """Both CRI services over dictionaries. Each image's content is a directory of ``trees``."""

    name = "fake"

    def __init__(self, remote: dict[str, Image], trees: str, clock: FakeClock) -> None:
        self.remote = remote
        self.trees = trees
        self.clock = clock
        self.local: dict[str, Image] = {}
        self.containers: dict[str, ContainerStatus] = {}
        self.pulls: list[tuple[str, Keyring | None]] = []
        self.created: list[tuple[str, ContainerConfig]] = []
        self.removed: list[str] = []
        self.mount_failure = ""
        self.collections = 0

    # ImageService
    def pull_image(self, reference: str, keyring: Keyring | None = None) -> PullImageResult:
        self.pulls.append((reference, keyring))
        if reference not in self.remote:
            raise PullError(f"failed to pull and unpack image {reference!r}: not found")
        image = attrs.evolve(self.remote[reference], pulled_at=self.clock())
        self.local[reference] = image
        return PullImageResult(image.id, image, duration=1.5)

    def image_status(self, reference: str) -> Image | None:
        return self.local.get(reference)

    def list_images(self) -> list[Image]:
        return list(self.local.values())

    def remove_image(self, reference: str) -> Image:
        image = self.local[reference]
        if any(image.id in {c.image_id, *(m.image_id for m in c.mounts)} for c in self.containers.values()):
            raise ImageInUseError("image is in use by a container")
        self.removed.append(reference)
        return self.local.pop(reference)

    def image_fs_info(self) -> ImageFsInfo:
        used = sum(i.size for i in self.local.values())
        return ImageFsInfo((FilesystemUsage(0, FilesystemIdentifier(self.trees), used, len(self.local)),))

    def garbage_collect(self) -> int:
        self.collections += 1
        return 0

    # RuntimeService
    def create_container(self, sandbox_id: str, config: ContainerConfig) -> ContainerStatus:
        self.created.append((sandbox_id, config))
        if config.image.image not in {i.id for i in self.local.values()}:
            raise CreateContainerError(f"image {config.image.image} is not local")
        if self.mount_failure:
            raise ImageVolumeMountFailedError(self.mount_failure)
        mounts = []
        for m in config.mounts:
            assert m.image is not None
            if m.image.image not in {i.id for i in self.local.values()}:
                raise ImageVolumeMountFailedError(f"image {m.image.image} is not local")
            mounts.append(MountStatus(m.container_path, m.image.image, m.image.user_specified_image,
                                      "fake", ".", True, m.image_sub_path))  # fmt: skip
        status = ContainerStatus(f"{len(self.created):064x}", sandbox_id, config.name,
                                 config.image.user_specified_image, tuple(mounts), self.clock(),
                                 image_id=config.image.image)  # fmt: skip
        self.containers[status.id] = status
        return status

    def remove_container(self, container_id: str) -> None:
        self.containers.pop(container_id, None)

    def container_status(self, container_id: str) -> ContainerStatus | None:
        return self.containers.get(container_id)

    def list_containers(self) -> list[ContainerStatus]:
        return list(self.containers.values())

    def open_mount(self, status: MountStatus) -> int:
        try:
            return os.open(os.path.join(self.trees, status.image_id.replace(":", "-")), os.O_PATH | os.O_CLOEXEC)
        except OSError:
            raise ImageVolError(f"the image volume mounted at {status.container_path} is gone") from None


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(tmp_path: str, clock: FakeClock) -> FakeRuntime:
    remote = {f"{PREFIX}:{t}": _image(t, size) for t, size in (("v2", 1000), ("kitten", 5000), ("old", 300))}
    remote[DEBIAN] = DEBIAN_IMAGE
    trees = os.path.join(tmp_path, "trees")
    for image in remote.values():
        os.makedirs(os.path.join(trees, image.id.replace(":", "-"), "dir"))
        with open(os.path.join(trees, image.id.replace(":", "-"), "dir", "file"), "w") as f:
            f.write(image.repo_tags[0] + "\n")
    return FakeRuntime(remote, trees, clock)


def _kubelet(fake: FakeRuntime, clock: FakeClock, *, ensure_secrets: bool = False) -> Kubelet:
    gates = FeatureGates.for_version("1.33", "ImageVolume=true")
    metrics = KubeletMetrics()
    manager = ImageManager(fake, Backoff(), metrics, clock=clock, ensure_secret_pulled_images=ensure_secrets)
    return Kubelet(fake, manager, metrics, gates, clock=clock)


def _record(name: str, sub_path: str = "dir", tag: str = "v2") -> PodRecord:
    gates = FeatureGates.for_version("1.33", "ImageVolume=true")
    return PodRecord.new(admit(pod(name, [ctr("c", ("v", "/v", sub_path))], [vol("v", tag)]), gates), 0.0)


def test_the_fake_serves_both_protocols(fake: FakeRuntime) -> None:
    runtime: ContainerRuntime = fake  # the static check: mypy --strict verifies the seam
    assert isinstance(runtime, ImageService)
    assert isinstance(runtime, RuntimeService)


def test_a_pod_syncs_against_the_fake_runtime(fake: FakeRuntime, clock: FakeClock) -> None:
    kubelet = _kubelet(fake, clock)
    keyring = Keyring.single("fixtures.example", Credentials("alice", "s3cret"))
    record = kubelet.sync_pod(_record("p"), keyring)
    # The image manager asked ImageStatus (absent), then PullImage with the Pod's keyring: the
    # volume's image, then the container's own.
    assert fake.pulls == [(f"{PREFIX}:v2", keyring), (DEBIAN, keyring)]
    # CreateContainer received the container's image and the CRI mount: the image IDs from the
    # pulls, the Pod's references.
    image = fake.remote[f"{PREFIX}:v2"]
    [(sandbox, config)] = fake.created
    assert sandbox == record.sandbox_id
    assert config.image == ImageSpec(DEBIAN_IMAGE.id, "debian")
    assert config.mounts == (Mount("/v", "", True, ImageSpec(image.id, f"{PREFIX}:v2"), "dir"),)
    state = record.state("c")
    assert (state.state, state.container_id) == ("running", f"{1:064x}")
    assert [(e.type, e.reason, e.field_path) for e in record.events] == [
        (NORMAL, "Pulling", ""), (NORMAL, "Pulled", ""),
        (NORMAL, "Pulling", "spec.containers{c}"), (NORMAL, "Pulled", "spec.containers{c}"),
        (NORMAL, "Created", "spec.containers{c}"), (NORMAL, "Started", "spec.containers{c}"),
    ]  # fmt: skip
    assert record.events[1].message == (
        f'Successfully pulled image "{PREFIX}:v2" in 1.5s (0s including waiting). Image size: 1000 bytes.'
    )
    assert record.volumes["v"].image_ref == image.id
    assert (kubelet.metrics.requested, kubelet.metrics.succeeded, kubelet.metrics.errors) == (1, 1, 0)
    # A second pass has nothing to start: it leaves the Pod alone, image volumes included
    # (k/k PR #138655: no "already present" event per sync).
    before = record.to_json()
    kubelet.sync_pod(record, keyring)
    assert len(fake.pulls) == 2 and len(fake.created) == 1  # the two pulls of the first pass
    assert record.to_json() == before


def test_a_runtime_mount_failure_reaches_the_pod(fake: FakeRuntime, clock: FakeClock) -> None:
    kubelet = _kubelet(fake, clock)
    fake.mount_failure = 'failed to ensure image subpath "dir" in "image-volumes/0": no'
    record = kubelet.sync_pod(_record("p"))
    state = record.state("c")
    assert (state.state, state.reason) == ("waiting", "CreateContainerError")
    assert state.message == f"ImageVolumeMountFailed: {fake.mount_failure}"
    assert record.events[-1].message == f"Error: ImageVolumeMountFailed: {fake.mount_failure}"
    assert (kubelet.metrics.requested, kubelet.metrics.succeeded, kubelet.metrics.errors) == (1, 0, 1)
    assert fake.containers == {}


def test_a_failed_pull_never_reaches_create_container(fake: FakeRuntime, clock: FakeClock) -> None:
    kubelet = _kubelet(fake, clock)
    record = kubelet.sync_pod(_record("p", tag="missing"))
    assert record.state("c").reason == "ErrImagePull"
    assert fake.created == []


def test_kep_2535_is_decided_from_the_image_status(fake: FakeRuntime, clock: FakeClock) -> None:
    """The credential fingerprints travel in the CRI ``Image``: a Pod without the credentials that
    pulled an image makes the kubelet ask the registry again; one with them does not."""
    creds = Credentials("alice", "s3cret")
    fake.local[f"{PREFIX}:v2"] = _image("v2", 1000, auth=(creds.fingerprint(),))
    kubelet = _kubelet(fake, clock, ensure_secrets=True)
    kubelet.sync_pod(_record("with"), Keyring.single("mirror.example", creds))
    assert [ref for ref, _ in fake.pulls] == [DEBIAN]
    kubelet.sync_pod(_record("without"), Keyring())
    # (``debian`` is ``:latest``, so pulled at every start: pull policy Always.)
    assert [ref for ref, _ in fake.pulls] == [DEBIAN, f"{PREFIX}:v2", DEBIAN]


def test_image_manager_reports_the_pulled_image(fake: FakeRuntime, clock: FakeClock) -> None:
    manager = ImageManager(fake, Backoff(), KubeletMetrics(), clock=clock)
    result = manager.ensure("uid", f"{PREFIX}:kitten", "Always", Keyring(), EventRecorder())
    assert result.image == fake.local[f"{PREFIX}:kitten"]
    assert result.image_ref == result.image.id


def test_image_gc_frees_through_the_cri_only(fake: FakeRuntime, clock: FakeClock) -> None:
    """Usage comes from ImageFsInfo, capacity from its mount point's filesystem, what is in use
    from the containers' status mounts; least recently used goes first, an image in use never."""
    kubelet = _kubelet(fake, clock)
    for tag in ("old", "kitten"):  # least recently used first, whatever the names
        fake.pull_image(f"{PREFIX}:{tag}")
        clock.advance(10)
    kubelet.sync_pod(_record("p"))  # v2, in use
    gc = ImageGC(fake, clock=clock)
    assert gc.usage() == 6300
    assert gc.capacity() == filesystem_capacity(fake.trees)
    # 80% of 7000 is 5600: removing "old" (pulled first, never mounted) is not enough, "kitten" too.
    result = gc.collect(capacity=7000)
    assert result.removed == (f"{PREFIX}:old", f"{PREFIX}:kitten")
    # In use: the container's own image and the image it mounts.
    assert result.kept_in_use == ("docker.io/library/debian:latest", f"{PREFIX}:v2")
    assert (result.usage_before, result.usage_after) == (6300, 1000)
    assert fake.removed == [f"{PREFIX}:old", f"{PREFIX}:kitten"]
    assert fake.collections == 3  # the runtime's collector: once first, once per removal


def test_image_gc_below_the_threshold_removes_nothing(fake: FakeRuntime, clock: FakeClock) -> None:
    fake.pull_image(f"{PREFIX}:kitten")
    result = ImageGC(fake, clock=clock).collect(capacity=10_000)
    assert result.removed == () and fake.removed == []


def test_the_exec_view_opens_mounts_through_the_runtime(fake: FakeRuntime, clock: FakeClock) -> None:
    record = _kubelet(fake, clock).sync_pod(_record("p", sub_path=""))
    status = fake.container_status(record.state("c").container_id)
    assert status is not None
    view = ContainerView("c", status.mounts, fake.open_mount)
    assert view.cat("/v/dir/file") == f"{PREFIX}:v2\n".encode()
    fake.trees = os.path.join(fake.trees, "gone")
    with pytest.raises(ImageVolError, match="the image volume mounted at /v is gone"):
        view.cat("/v/dir/file")


# --- ImageFsInfo of the real runtime ------------------------------------------------------------------


def _walk(root: str) -> Iterator[os.stat_result]:
    """Every entry below ``root``, by lstat, never following a link (an independent walk)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            try:
                yield os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue


def _on_disk(node: Node) -> tuple[int, int]:
    blobs = [s for s in _walk(os.path.join(node.root, "content", "blobs")) if stat.S_ISREG(s.st_mode)]
    trees = list(_walk(node.snapshots.root))
    used = sum(s.st_size for s in blobs) + sum(s.st_size for s in trees if not stat.S_ISDIR(s.st_mode))
    return used, len(blobs) + len(trees)


def test_image_fs_info_matches_the_disk(node_root: str, fixtures_layout: str) -> None:
    node = make_node(node_root, fixtures_layout, FakeClock())
    empty = node.runtime.image_fs_info()
    [fs] = empty.image_filesystems
    assert fs.fs_id.mountpoint == node.snapshots.root
    assert (fs.used_bytes, fs.inodes_used) == _on_disk(node)
    assert empty.container_filesystems == ()
    node.create_pod(pod("a", [ctr("c", ("v", "/v", "dir"))], [vol("v", "v2")]))
    node.create_pod(pod("b", [ctr("c", ("k", "/k", ""))], [vol("k", "kitten")]))
    [fs] = node.runtime.image_fs_info().image_filesystems
    used, inodes = _on_disk(node)
    assert (fs.used_bytes, fs.inodes_used) == (used, inodes)
    assert used > 0 and fs.used_bytes > empty.image_filesystems[0].used_bytes
    # The kubelet's GC reads the same numbers; freeing an image lowers them by what left the disk.
    gc = ImageGC(node.runtime, clock=node.now)
    assert gc.usage() == used
    assert gc.capacity() == filesystem_capacity(node.root)
    node.delete_pod("b")
    result = gc.collect(capacity=1)
    assert result.removed == (f"{PREFIX}:kitten",)
    assert result.usage_after == _on_disk(node)[0] < used
    assert node.store.fsck().clean


def test_image_fs_info_never_follows_a_link_out_of_the_tree(node_root: str, fixtures_layout: str) -> None:
    """A tree's symlink to a big directory elsewhere counts as a link (its own few bytes): the
    walk never measures, or even looks at, what an image's link points to."""
    node = make_node(node_root, fixtures_layout, FakeClock())
    node.create_pod(pod("a", [ctr("c", ("v", "/v", ""))], [vol("v", "v2")]))
    outside = os.path.join(node_root + ".outside")
    os.makedirs(outside)
    with open(os.path.join(outside, "big"), "wb") as f:
        f.write(b"x" * 1_000_000)
    before = node.runtime.image_fs_info().image_filesystems[0]
    [key] = node.snapshots.published()
    tree = node.snapshots.get(key)
    assert tree is not None
    os.chmod(tree, 0o755)  # planted as an attacker with write access would, for the test only
    os.symlink(outside, os.path.join(tree, "evil"))
    after = node.runtime.image_fs_info().image_filesystems[0]
    assert after.used_bytes == before.used_bytes + len(outside)
    assert after.inodes_used == before.inodes_used + 1
