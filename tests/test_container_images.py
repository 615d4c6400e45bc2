"""Container images go through the kubelet's image manager, as image volumes do, end to end through
the CLI against the loopback registry: a Pod whose container image is missing never runs
(``ErrImagePull``, then ``ImagePullBackOff``, events on the container), pull policies, the backoff
key a container shares with an image volume of the same reference, the image-volume metrics in both
modes for such a Pod, ``rmi`` and the GC of a container's own image, and ``ImageVolumeWithDigest``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

import pytest

from imagevol.cli import main
from imagevol.kubelet.pod_sync import PodRecord
from imagevol.node import Node, NodeConfig
from imagevol.testing.pods import container, image_volume, pod_doc, to_yaml
from tests.helpers import peers
from tests.helpers.fixture_node import container_image_registries, layout_digest

pytestmark = pytest.mark.peers


@pytest.fixture(scope="module")
def reg(fixtures_layout: str) -> Iterator[peers.Registry]:
    """v2 (an image volume) and the BusyBox stand-in (a container image) as ``lab/<tag>:v1``."""
    with peers.registry() as r:
        peers.push_fixtures(fixtures_layout, r, ("v2", "debian"))
        yield r


@pytest.fixture
def conf(reg: peers.Registry, tmp_path: Any) -> str:
    path = os.path.join(str(tmp_path), "registries.conf")
    with open(path, "w") as f:
        f.write(f'[[registry]]\nlocation = "{reg.host}"\ninsecure = true\n')
        f.write(container_image_registries())
    return path


class Cli:
    """The ``imagevol`` command on one node root, with the registry's conf and extra options."""

    def __init__(self, root: str, conf: str, capsys: pytest.CaptureFixture[str], *options: str) -> None:
        self.root, self.conf, self.capsys, self.options = root, conf, capsys, options

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        out = io.StringIO()
        code = main(["--root", self.root, "--registries", self.conf, *self.options, *args], out=out)
        return code, out.getvalue(), self.capsys.readouterr().err

    def apply(self, tmp_path: Any, doc: dict[str, Any]) -> tuple[int, str]:
        path = os.path.join(str(tmp_path), f"{doc['metadata']['name']}.yaml")
        with open(path, "w") as f:
            f.write(to_yaml(doc))
        code, out, _ = self("apply", "-f", path)
        return code, out

    def record(self, name: str) -> PodRecord:
        return Node(NodeConfig(root=self.root)).get_pod(name)


@pytest.fixture
def cli(node_root: str, conf: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(node_root, conf, capsys)


def _ref(reg: peers.Registry, tag: str) -> str:
    return f"{reg.host}/lab/{tag}:v1"


def _events(record: PodRecord, field_path: str) -> list[tuple[str, str, str]]:
    return [(e.type, e.reason, e.message) for e in record.events if e.field_path == field_path]


def _manifest_gets(reg: peers.Registry, since: int, repo: str) -> list[peers.Access]:
    return [a for a in reg.access(since) if a.is_manifest and f"/{repo}/" in a.path]


# --- a Pod whose container image does not exist ------------------------------------------------------


def test_a_missing_container_image_never_runs(cli: Cli, reg: peers.Registry, tmp_path: Any) -> None:
    """``startContainer`` pulls the container's image first: ``ErrImagePull`` with the pull's
    events on the container (``spec.containers{c}``), then ``ImagePullBackOff`` without asking the
    registry while backing off, a new attempt after 10 s, and the Pod runs once the image exists."""
    missing = f"{reg.host}/lab/late:v1"
    doc = pod_doc("p", [container("c", ("v", "/volume", "dir"), image=missing)], [image_volume("v", _ref(reg, "v2"))])
    code, out = cli.apply(tmp_path, doc)
    assert code == 1 and "c: Waiting (ErrImagePull: " in out
    record = cli.record("p")
    state = record.state("c")
    assert (state.state, state.reason, state.container_id) == ("waiting", "ErrImagePull", "")
    first = state.message
    assert first.startswith(f'failed to pull and unpack image "{missing}": ')
    # The volume was pulled for the Pod; the container's image for the container.
    assert [e.reason for e in record.events if not e.field_path] == ["Pulling", "Pulled"]
    assert _events(record, "spec.containers{c}") == [
        ("Normal", "Pulling", f'Pulling image "{missing}"'),
        ("Warning", "Failed", f'Failed to pull image "{missing}": {first}'),
        ("Warning", "Failed", "Error: ErrImagePull"),
    ]
    assert record.phase == "Pending" and cli("get", "pods")[1].splitlines()[1].split()[:3] == [
        "p",
        "0/1",
        "ErrImagePull",
    ]
    node = Node(NodeConfig(root=cli.root))
    assert node.runtime.list_containers() == [] and node.snapshots.published() == []  # never created

    # Backing off: no pull, the waiting message says why the last one failed.
    mark = reg.mark()
    cli("sync")
    record = cli.record("p")
    state = record.state("c")
    assert (state.reason, state.message) == (
        "ImagePullBackOff",
        f'Back-off pulling image "{missing}": ErrImagePull: {first}',
    )
    assert _events(record, "spec.containers{c}")[-2:] == [
        ("Normal", "BackOff", f'Back-off pulling image "{missing}"'),
        ("Warning", "Failed", "Error: ImagePullBackOff"),
    ]
    assert _manifest_gets(reg, mark, "late") == []
    assert cli("get", "pods")[1].splitlines()[1].split()[2] == "ImagePullBackOff"

    # After the 10 s backoff: pulled again (ErrImagePull), then in backoff for 20 s.
    mark = reg.mark()
    cli("sync", "--advance", "11s")
    assert cli.record("p").state("c").reason == "ErrImagePull"
    assert _manifest_gets(reg, mark, "late") != []

    # The image appears in the registry: the next attempt after the backoff starts the container.
    peers.skopeo_copy(_layout_of(reg), "debian", reg, "lab/late")
    cli("sync", "--advance", "21s")
    record = cli.record("p")
    assert record.phase == "Running"
    state = record.state("c")
    assert state.image_id.startswith(f"{reg.host}/lab/late@sha256:")
    assert state.image == missing
    code, describe, _ = cli("describe", "pod", "p")
    assert f"    Image:          {missing}\n    Image ID:       {state.image_id}\n" in describe
    # The container sees the volume, whose tree was built only now.
    assert cli("exec", "p", "--", "cat", "/volume/file")[:2] == (0, "1\n")


_LAYOUTS: dict[int, str] = {}


def _layout_of(reg: peers.Registry) -> str:
    return _LAYOUTS[reg.port]


@pytest.fixture(autouse=True)
def _remember_layout(reg: peers.Registry, fixtures_layout: str) -> None:
    _LAYOUTS[reg.port] = fixtures_layout


def test_never_pulls_nothing_and_says_so_on_the_container(cli: Cli, reg: peers.Registry, tmp_path: Any) -> None:
    image = _ref(reg, "debian")
    doc = pod_doc("never", [container("c", image=image, imagePullPolicy="Never")])
    mark = reg.mark()
    code, _ = cli.apply(tmp_path, doc)
    assert code == 1
    record = cli.record("never")
    message = f'Container image "{image}" is not present with pull policy of Never'
    assert (record.state("c").reason, record.state("c").message) == ("ErrImageNeverPull", message)
    assert _events(record, "spec.containers{c}") == [
        ("Warning", "ErrImageNeverPull", message),
        ("Warning", "Failed", "Error: ErrImageNeverPull"),
    ]
    assert reg.access(mark) == []  # the registry was never asked
    # Pulled by hand (as `crictl pull` would): the next start finds it.
    assert cli("pull", image)[0] == 0
    cli("sync")
    record = cli.record("never")
    assert record.phase == "Running"
    assert _events(record, "spec.containers{c}")[-3:] == [
        ("Normal", "Pulled", f'Container image "{image}" already present on machine'),
        ("Normal", "Created", "Created container: c"),
        ("Normal", "Started", "Started container c"),
    ]


def test_pull_policies_of_container_images(cli: Cli, reg: peers.Registry, tmp_path: Any) -> None:
    """Defaulted as the API server does (a tag other than ``latest``: IfNotPresent; none or
    ``latest``: Always), then IfNotPresent pulls what is absent and only that, Always pulls at every
    start (the registry is asked again), a running container is never pulled for again."""
    image = _ref(reg, "debian")
    mark = reg.mark()
    assert cli.apply(tmp_path, pod_doc("first", [container("c", image=image)]))[0] == 0
    first = cli.record("first")
    assert first.pod.spec.containers[0].image_pull_policy == "IfNotPresent"
    assert [r for _, r, _ in _events(first, "spec.containers{c}")] == ["Pulling", "Pulled", "Created", "Started"]
    assert len(_manifest_gets(reg, mark, "debian")) >= 1

    mark = reg.mark()
    assert cli.apply(tmp_path, pod_doc("second", [container("c", image=image)]))[0] == 0
    assert _events(cli.record("second"), "spec.containers{c}")[0] == (
        "Normal",
        "Pulled",
        f'Container image "{image}" already present on machine',
    )
    assert _manifest_gets(reg, mark, "debian") == []

    mark = reg.mark()
    assert cli.apply(tmp_path, pod_doc("always", [container("c", image=image, imagePullPolicy="Always")]))[0] == 0
    assert [r for _, r, _ in _events(cli.record("always"), "spec.containers{c}")][:2] == ["Pulling", "Pulled"]
    assert _manifest_gets(reg, mark, "debian") != []
    mark = reg.mark()
    cli("sync")  # every container runs: nothing is pulled again
    assert _manifest_gets(reg, mark, "debian") == []

    # No tag means latest means Always (the blog Pod's `debian`).
    assert cli.apply(tmp_path, pod_doc("latest", [container("c")]))[0] == 0
    assert cli.record("latest").pod.spec.containers[0].image_pull_policy == "Always"


def test_a_container_and_an_image_volume_share_the_backoff_key(cli: Cli, reg: peers.Registry, tmp_path: Any) -> None:
    """R3.6: the key is ``<podUID>_<image as written>``. The volume's failed pull puts the image in
    backoff, so the container naming the same image backs off at once, without a pull; a spelling
    that differs (``:latest`` written out) is another key and is pulled."""
    missing = f"{reg.host}/lab/nothing"
    doc = pod_doc(
        "shared",
        [container("same", image=missing), container("spelled", image=f"{missing}:latest")],
        [image_volume("v", missing, "IfNotPresent")],
    )
    mark = reg.mark()
    cli.apply(tmp_path, doc)
    record = cli.record("shared")
    assert record.volumes["v"].reason == "ErrImagePull"
    same = _events(record, "spec.containers{same}")
    assert same == [
        ("Normal", "BackOff", f'Back-off pulling image "{missing}"'),
        ("Warning", "Failed", "Error: ImagePullBackOff"),
    ]
    assert record.state("same").reason == "ImagePullBackOff"
    assert record.state("same").message.startswith(f'Back-off pulling image "{missing}": ErrImagePull: ')
    assert [r for _, r, _ in _events(record, "spec.containers{spelled}")] == ["Pulling", "Failed", "Failed"]
    assert record.state("spelled").reason == "ErrImagePull"
    # Two pull attempts reached the registry (the volume's and the other spelling's), not three.
    tags = [a.path for a in _manifest_gets(reg, mark, "nothing") if a.path.endswith("/latest")]
    per_attempt = len(tags) // 2
    assert per_attempt >= 1 and len(tags) == 2 * per_attempt


@pytest.mark.parametrize(
    ("mode", "first", "second"), [("upstream", (1, 1, 0), (2, 2, 0)), ("fixed", (0, 0, 0), (0, 0, 0))]
)
def test_metrics_of_a_pod_whose_container_image_fails(
    node_root: str,
    conf: str,
    capsys: pytest.CaptureFixture[str],
    reg: peers.Registry,
    tmp_path: Any,
    mode: str,
    first: tuple[int, int, int],
    second: tuple[int, int, int],
) -> None:
    """``incrementImageVolumeMetrics`` runs after every start attempt that had an image-volume map.
    Upstream it counts a mount as succeeded unless the runtime reported an image-volume mount
    failure, so a container whose own image fails to pull (before CreateContainer) adds a
    "success" per attempt (kubernetes PR #138460); the fixed mode counts nothing for it."""
    cli = Cli(node_root, conf, capsys, "--metrics-mode", mode)
    doc = pod_doc(
        "m",
        [container("c", ("v", "/volume", ""), image=f"{reg.host}/lab/absent:v1")],
        [image_volume("v", _ref(reg, "v2"))],
    )
    cli.apply(tmp_path, doc)
    assert _counters(cli) == first
    cli("sync")  # ImagePullBackOff: another attempt
    assert cli.record("m").state("c").reason == "ImagePullBackOff"
    assert _counters(cli) == second


def _counters(cli: Cli) -> tuple[int, int, int]:
    text = cli("metrics")[1]
    values = {}
    for line in text.splitlines():
        for name in ("requested", "mounted_succeed", "mounted_errors"):
            if line.startswith(f"kubelet_image_volume_{name}_total "):
                values[name] = int(float(line.split()[1]))
    return values["requested"], values["mounted_succeed"], values["mounted_errors"]


def test_rmi_and_gc_keep_the_image_a_container_runs_from(cli: Cli, reg: peers.Registry, tmp_path: Any) -> None:
    """Container images and image volumes share one store and one rule: an image a container uses
    (runs from, or mounts) is in use, for ``rmi`` (refused as CRI-O refuses it) and the GC."""
    image = _ref(reg, "debian")
    assert cli.apply(tmp_path, pod_doc("runs", [container("c", image=image)]))[0] == 0
    code, _, err = cli("rmi", image)
    assert code == 1 and "image is in use by a container" in err
    code, out, _ = cli("gc", "--all-unused")
    assert code == 0 and f"in use, kept: {image}" in out
    assert [i.reference for i in Node(NodeConfig(root=cli.root)).runtime.list_images()] == [image]
    cli("delete", "pod", "runs")
    assert cli("rmi", image)[:2] == (0, f"Deleted: {image}\n")
    node = Node(NodeConfig(root=cli.root))
    assert node.runtime.list_images() == [] and node.store.fsck().clean


# --- ImageVolumeWithDigest ------------------------------------------------------------------------------


def _digest_pod(reg: peers.Registry) -> dict[str, Any]:
    return pod_doc(
        "digest",
        [container("c", ("v", "/volume", "dir"), ("v", "/whole", ""), image=_ref(reg, "debian"))],
        [image_volume("v", _ref(reg, "v2"))],
    )


def test_image_volume_with_digest_reports_what_was_mounted(
    node_root: str,
    conf: str,
    capsys: pytest.CaptureFixture[str],
    reg: peers.Registry,
    tmp_path: Any,
    fixtures_layout: str,
) -> None:
    cli = Cli(
        node_root,
        conf,
        capsys,
        "--k8s-version",
        "1.35",
        "--feature-gates",
        "ImageVolume=true,ImageVolumeWithDigest=true",
    )
    assert cli.apply(tmp_path, _digest_pod(reg))[0] == 0
    digest = layout_digest(fixtures_layout, "v2")
    ref = f"{reg.host}/lab/v2@{digest}"
    state = cli.record("digest").state("c")
    # containerStatuses[].volumeMounts[] in the API's shape, one per mount of the container.
    assert state.volume_mounts == [
        {"name": "v", "mountPath": "/volume", "readOnly": True, "volumeStatus": {"image": {"imageRef": ref}}},
        {"name": "v", "mountPath": "/whole", "readOnly": True, "volumeStatus": {"image": {"imageRef": ref}}},
    ]
    # Like imageID for the container's own image.
    assert state.image_id == f"{reg.host}/lab/debian@{layout_digest(fixtures_layout, 'debian')}"
    describe = cli("describe", "pod", "digest")[1]
    assert f'      /volume from v (ro,path="dir")\n        Image Ref:  {ref}\n' in describe
    assert f"      /whole from v (ro)\n        Image Ref:  {ref}\n" in describe


@pytest.mark.parametrize(("version", "gates"), [("1.35", "ImageVolume=true"), ("1.36", "")])
def test_without_image_volume_with_digest_nothing_is_reported(
    node_root: str,
    conf: str,
    capsys: pytest.CaptureFixture[str],
    reg: peers.Registry,
    tmp_path: Any,
    version: str,
    gates: str,
) -> None:
    cli = Cli(node_root, conf, capsys, "--k8s-version", version, "--feature-gates", gates)
    assert cli.apply(tmp_path, _digest_pod(reg))[0] == 0
    state = cli.record("digest").state("c")
    assert state.state == "running" and state.volume_mounts == []
    assert "Image Ref:" not in cli("describe", "pod", "digest")[1]


def test_image_volume_with_digest_does_not_exist_before_1_35(cli: Cli) -> None:
    code, _, err = cli("--k8s-version", "1.34", "--feature-gates", "ImageVolumeWithDigest=true", "get", "pods")
    assert code != 0 and "unrecognized feature gate: ImageVolumeWithDigest" in err
