"""The three runtime profiles end to end (kubelet -> CRI CreateContainer -> profile), on an image full of
hostile entries: where they accept, where they refuse, and their upstream messages (R9.7, R9.11,
R9.16 to R9.19, R11.11). Messages reach Pod authors, so none may contain a host path."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import Any

import pytest

from imagevol import runtime as rt
from imagevol.cri import ContainerConfig, ImageService, ImageSpec, Mount, RuntimeService
from imagevol.errors import ImageVolError, ImageVolumeMountFailedError
from imagevol.exec.view import ContainerView
from imagevol.node import Node
from imagevol.runtime.crio import go_clean
from imagevol.trees.snapshots import SnapshotKey
from tests.helpers.subpaths import REGISTRY, make_node, pod_yaml

OK = "ok"


@pytest.fixture
def nodes(tmp_path: Any, layout_dir: str) -> Iterator[dict[str, Node]]:
    yield {name: make_node(os.path.join(str(tmp_path), name), layout_dir, name) for name in rt.PROFILES}


def _start(node: Node, name: str, **kwargs: Any) -> tuple[Any, Any]:
    [applied] = node.apply(pod_yaml(name, **kwargs))
    record = applied.record
    assert record is not None
    return record, record.containers[0]


def _mounts(node: Node, state: Any) -> list[rt.MountStatus]:
    container = node.runtime.container_status(state.container_id)
    assert container is not None
    return list(container.mounts)


def _digest12(node: Node) -> str:
    [record] = [r for r in node.puller.image_db.all() if r.name.endswith(":tricky")]
    return record.manifest_digest.hex[:12]


# (sub path, containerd, crio): OK with the mounted real path and kind, or the message's tail.
CASES = [
    ("dir", ("dir", True), ("dir", True)),
    ("link-dir", ("dir", True), ("dir", True)),
    ("deep/a/b", ("deep/a/b", True), ("deep/a/b", True)),
    ("file", "only directory subpath is supported", ("file", False)),
    ("pipe", "only directory subpath is supported", ("pipe", False)),
    ("bin/sh", "openat bin/sh: path escapes from parent", ("bin/busybox", False)),
    ("abs-etc", "openat abs-etc: path escapes from parent", ("etc", True)),
    ("up", "openat up: path escapes from parent", (".", True)),
    (
        "loop",
        "openat loop: too many levels of symbolic links",
        "openat2 {crio}/loop: too many levels of symbolic links",
    ),
    ("dir/file/", "openat dir/file/: not a directory", "openat2 {crio}/dir/file/: not a directory"),
    ("missing", "openat missing: no such file or directory", 'sub path "missing" does not exist in image volume'),
]


@pytest.mark.parametrize(("sub_path", "containerd", "crio"), CASES, ids=[c[0] for c in CASES])
def test_profiles_on_hostile_sub_paths(nodes: dict[str, Node], sub_path: str, containerd: Any, crio: Any) -> None:
    for profile, expected in (("containerd", containerd), ("crio", crio), ("legacy", (".", True))):
        node = nodes[profile]
        record, state = _start(node, "p", sub_path=sub_path)
        if isinstance(expected, tuple):
            assert state.state == "running", (profile, state.message)
            [mount] = _mounts(node, state)
            assert (mount.real_path, mount.is_dir) == expected, profile
            assert mount.sub_path == ("" if profile == "legacy" else sub_path)
            assert mount.inode > 0
            continue
        hexid = _digest12(node)
        tail = expected.format(crio=f"overlay/{hexid}/merged")
        assert (state.state, state.reason) == ("waiting", "CreateContainerError"), profile
        assert state.message.startswith("ImageVolumeMountFailed: "), state.message
        assert tail in state.message, (profile, state.message)
        if profile == "containerd":
            assert state.message.startswith(
                f'ImageVolumeMountFailed: failed to ensure image subpath "{sub_path}" in "image-volumes/{hexid}": '
            )
        failed = [e for e in record.events if e.reason == "Failed"]
        assert failed and failed[-1].message == f"Error: {state.message}"
        assert node.root not in state.message and "/snapshots/" not in state.message


def test_exact_upstream_messages(nodes: dict[str, Node]) -> None:
    node = nodes["containerd"]
    _, state = _start(node, "missing", sub_path="missing")
    hexid = _digest12(node)
    assert state.message == (
        f'ImageVolumeMountFailed: failed to ensure image subpath "missing" in "image-volumes/{hexid}": '
        "openat missing: no such file or directory"
    )
    _, state = _start(node, "file", sub_path="file")
    assert state.message == (
        f'ImageVolumeMountFailed: failed to ensure image subpath "file" in "image-volumes/{hexid}": '
        f'only directory subpath is supported, subpath: "file", mountpoint: "image-volumes/{hexid}" '
    )
    node = nodes["crio"]
    _, state = _start(node, "missing", sub_path="missing")
    [image] = [r for r in node.runtime.list_images() if r.reference.endswith(":tricky")]
    assert state.message == (f'ImageVolumeMountFailed: sub path "missing" does not exist in image volume "{image.id}"')


def test_crio_file_sub_paths_and_confined_links_show_in_the_view(nodes: dict[str, Node]) -> None:
    node = nodes["crio"]
    for name, sub_path, path, want in [
        ("f", "file", "/volume", b"2\n"),
        ("sh", "bin/sh", "/volume", b"#!/bin/sh\necho busybox\n"),
        ("etc", "abs-etc", "/volume/os-release", b'NAME="Alpine Linux"\n'),
        ("up", "up", "/volume/dir/file", b"1\n"),
    ]:
        _, state = _start(node, name, sub_path=sub_path)
        view = ContainerView("c", _mounts(node, state), node.runtime.open_mount)
        assert view.cat(path) == want, sub_path


def test_legacy_mounts_the_whole_image_whatever_the_sub_path(nodes: dict[str, Node]) -> None:
    node = nodes["legacy"]
    _, state = _start(node, "legacy", sub_path="missing/anything")
    assert state.state == "running"
    view = ContainerView("c", _mounts(node, state), node.runtime.open_mount)
    assert "bin" in view.ls("/volume") and "etc" in view.ls("/volume")


# --- CRI-O artifacts: the prefix filter of R9.11 ---------------------------------------------------------


@pytest.mark.parametrize(
    ("sub_path", "files"),
    [
        ("", ["subpath"]),
        (".", ["subpath"]),
        ("subpath", ["2", "3"]),
        ("subpath/", ["2", "3"]),
        ("./subpath", ["2", "3"]),
    ],
)
def test_crio_artifact_prefix_filter(nodes: dict[str, Node], sub_path: str, files: list[str]) -> None:
    node = nodes["crio"]
    _, state = _start(node, "art", image=f"{REGISTRY}:subpath", sub_path=sub_path)
    assert state.state == "running", state.message
    view = ContainerView("c", _mounts(node, state), node.runtime.open_mount)
    assert view.ls("/volume") == files
    if files == ["2", "3"]:
        assert view.cat("/volume/2") == b"2"


@pytest.mark.parametrize("sub_path", ["subpath/2", "nope", "./", "sub", "subpath/../nope"])
def test_crio_artifact_sub_path_must_prefix_a_file_name(nodes: dict[str, Node], sub_path: str) -> None:
    """Only "directory" prefixes match (``Clean(sub)+"/"``): a file name, a partial name, and
    ``./`` (which cleans to ``.``, giving the prefix ``./``) match nothing."""
    node = nodes["crio"]
    if ".." in sub_path:  # the API server and the kubelet never let it through; the CRI may
        image_id = _pulled(node, "subpath")
        mount = Mount("/v", image=ImageSpec(image_id), image_sub_path=sub_path)
        with pytest.raises(ImageVolumeMountFailedError, match="does not exist in OCI artifact volume"):
            node.runtime.create_container("sandbox", ContainerConfig("c", "img", (mount,)))
        return
    _, state = _start(node, "art", image=f"{REGISTRY}:subpath", sub_path=sub_path)
    [image] = [r for r in node.runtime.list_images() if r.reference.endswith(":subpath")]
    assert state.message == (
        f'ImageVolumeMountFailed: ImageVolumeMountFailed: sub path "{sub_path}" does not exist in OCI '
        f'artifact volume "{image.id}"'
    )


def test_crio_tar_artifact_prefix_is_checked_on_the_extracted_tree(nodes: dict[str, Node]) -> None:
    node = nodes["crio"]
    _, state = _start(node, "tar", image=f"{REGISTRY}:tar-artifact", sub_path="dir")
    assert state.state == "running", state.message
    view = ContainerView("c", _mounts(node, state), node.runtime.open_mount)
    assert view.cat("/volume/file") == b"1\n"
    for sub_path in ("empty", "file", "nope"):  # no regular file below / not a directory / missing
        _, state = _start(node, f"tar-{sub_path}", image=f"{REGISTRY}:tar-artifact", sub_path=sub_path)
        assert "does not exist in OCI artifact volume" in state.message, sub_path


@pytest.mark.parametrize("profile", ["containerd", "legacy"])
def test_containerd_cannot_mount_artifacts(nodes: dict[str, Node], profile: str) -> None:
    _, state = _start(nodes[profile], "art", image=f"{REGISTRY}:subpath")
    assert state.reason == "CreateContainerError"
    assert "failed to get diff IDs for image volume" in state.message


# --- the CRI contract -------------------------------------------------------------------------------


def _pulled(node: Node, tag: str) -> str:
    return node.runtime.pull_image(f"{REGISTRY}:{tag}").image_ref


@pytest.mark.parametrize("profile", sorted(rt.PROFILES))
def test_profiles_implement_the_cri_services(nodes: dict[str, Node], profile: str) -> None:
    runtime = nodes[profile].runtime
    assert isinstance(runtime, ImageService)
    assert isinstance(runtime, RuntimeService)
    assert runtime.name == profile


def test_containerd_checks_the_cri_mount_r9_16(nodes: dict[str, Node]) -> None:
    runtime = nodes["containerd"].runtime
    image = _pulled(nodes["containerd"], "v2")
    spec = ImageSpec(image, "quay.io/crio/artifact:v2")
    cases = [
        (Mount("/v", host_path="/x", image=spec), "hostpath must be empty while mount image: "),
        (Mount("/v", readonly=False, image=spec), "readonly must be true while mount image: "),
        (Mount("/v", image=ImageSpec("")), "image not specified in: "),
        (Mount("/v", image=ImageSpec("sha256:" + "0" * 64)), f'failed to resolve image "sha256:{"0" * 64}": not found'),
    ]
    for mount, message in cases:
        with pytest.raises(ImageVolumeMountFailedError) as info:
            runtime.create_container("sandbox", ContainerConfig("c", "img", (mount,)))
        assert str(info.value).startswith("ImageVolumeMountFailed: " + message), str(info.value)
    assert str(info.value)
    # The CRI message is quoted the way Go prints it: protobuf text, defaults omitted.
    assert Mount("/v", host_path="/x", image=spec, image_sub_path="d").proto_text() == (
        f'container_path:"/v" host_path:"/x" readonly:true image:{{image:"{image}" '
        'user_specified_image:"quay.io/crio/artifact:v2"} image_sub_path:"d"'
    )
    assert not runtime.list_containers()


def test_crio_messages_for_bad_cri_mounts(nodes: dict[str, Node]) -> None:
    runtime = nodes["crio"].runtime
    for mount, message in [
        (Mount("/v", image=ImageSpec("")), "invalid mount specified: "),
        (Mount("/v", image=ImageSpec("sha256:" + "0" * 64)), f'image "sha256:{"0" * 64}" does not exist locally'),
    ]:
        with pytest.raises(ImageVolumeMountFailedError) as info:
            runtime.create_container("sandbox", ContainerConfig("c", "img", (mount,)))
        assert str(info.value).startswith("ImageVolumeMountFailed: " + message)


def test_direct_cri_sub_paths_outside_the_kubelet_rules(nodes: dict[str, Node]) -> None:
    """The kubelet never sends absolute or ``..`` sub paths (R4.5); called directly, the runtimes
    refuse them before any I/O, with the wording of Go's os.Root for containerd."""
    node = nodes["containerd"]
    image = _pulled(node, "tricky")
    for sub_path in ["/etc", "etc/../../..", "a\x00b"]:
        mount = Mount("/v", image=ImageSpec(image), image_sub_path=sub_path)
        with pytest.raises(ImageVolumeMountFailedError) as info:
            node.runtime.create_container("sandbox", ContainerConfig("c", "img", (mount,)))
        text = "invalid argument" if "\x00" in sub_path else "path escapes from parent"
        assert str(info.value).endswith(f"openat {sub_path}: {text}")


def test_a_second_mount_opens_the_published_tree_without_rebuilding(
    nodes: dict[str, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = nodes["containerd"]
    _, first = _start(node, "first", sub_path="dir")
    assert first.state == "running"

    def no_rebuild(*args: object) -> list[str]:
        raise AssertionError("a published tree was rebuilt")

    monkeypatch.setattr(node.snapshots, "_build", no_rebuild)
    _, second = _start(node, "second", sub_path="deep/a")
    assert second.state == "running"
    assert _mounts(node, first)[0].snapshot == _mounts(node, second)[0].snapshot


def test_open_mount_refuses_an_entry_swapped_since_create(nodes: dict[str, Node]) -> None:
    node = nodes["containerd"]
    _, state = _start(node, "swap", sub_path="deep/a")
    [mount] = _mounts(node, state)
    tree = node.snapshots.get(SnapshotKey.parse(mount.snapshot))
    assert tree is not None
    deep = os.path.join(tree, "deep")
    os.chmod(deep, stat.S_IMODE(os.stat(deep).st_mode) | stat.S_IWUSR)
    os.rename(os.path.join(deep, "a"), os.path.join(deep, "a.old"))
    os.symlink("/", os.path.join(deep, "a"))  # someone with host access swaps the mounted directory
    with pytest.raises(ImageVolError) as info:
        node.runtime.open_mount(mount)
    assert "/volume: the mounted entry changed since it was mounted" in str(info.value)
    assert tree not in str(info.value)
    os.unlink(os.path.join(deep, "a"))
    os.mkdir(os.path.join(deep, "a"))  # a look-alike directory: right name, wrong inode
    with pytest.raises(ImageVolError):
        node.runtime.open_mount(mount)


def test_go_clean_matches_go_path_clean() -> None:
    cases = {
        "": ".",
        ".": ".",
        "./": ".",
        "a//b/": "a/b",
        "./a/./b/.": "a/b",
        "a/../b": "b",
        "a/..": ".",
        "../a": "../a",
        "../../a/..": "../..",
        "/../a": "/a",
        "//a": "/a",
        "/": "/",
    }
    for text, want in cases.items():
        assert go_clean(text) == want, text


def test_unknown_runtime_profile() -> None:
    with pytest.raises(ValueError, match="choose from containerd, crio, legacy"):
        rt.runtime_class("docker")


def test_the_profile_names_the_cli_offers_are_the_profiles() -> None:
    """``--runtime`` takes its choices from the cheap name list, without importing the profiles."""
    assert tuple(sorted(rt.PROFILES)) == rt.PROFILE_NAMES
    assert rt.DEFAULT_PROFILE in rt.PROFILES
