"""Sub paths near PATH_MAX under trees that lie deep on the host.

A legal sub path is shorter than 4096 bytes, but the tree it is resolved in has a host path of its
own: together they pass PATH_MAX, where the kernel can no longer print a handle's path through
``/proc/self/fd``. Both backends must then still resolve to the right inode and report the right
real path, or fail with a typed error; never an ``OSError`` out of the resolver.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from imagevol.api import Pod, load_documents
from imagevol.errors import SubPathError
from imagevol.exec.view import ContainerView
from imagevol.node import Node, NodeConfig
from imagevol.testing.images import Layer, LayoutBuilder
from imagevol.testing.tarbuild import TarEntry
from imagevol.trees import _inroot
from imagevol.trees import subpath as sp
from tests.helpers.subpaths import REGISTRY, pod_yaml, write_registries

BACKENDS = [sp.Backend.KERNEL, sp.Backend.USERSPACE]
POLICIES = [sp.Policy.BENEATH, sp.Policy.IN_ROOT]
#: 15 directories of 255 bytes and a 255-byte file: a 4095-byte sub path, the longest legal one.
DIRS = [f"d{i:02d}" + "x" * 252 for i in range(15)]
FILE = "f" * 255
DEEP = "/".join(DIRS)  # 3839 bytes
SUB_4095 = f"{DEEP}/{FILE}"


def _host_prefix(base: str) -> str:
    """A directory about 800 bytes deep on the host: with it, every 4095-byte sub path is far past
    PATH_MAX from ``/``."""
    path = base
    for i in range(4):
        path = os.path.join(path, f"h{i}" + "h" * 198)
    os.makedirs(path)
    return path


def _mkdirs(root_fd: int, names: list[str]) -> int:
    """Create ``names`` nested below ``root_fd`` (fd by fd: the path is too long for one call);
    return an fd on the last one."""
    fd = os.dup(root_fd)
    for name in names:
        os.mkdir(name, dir_fd=fd)
        nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    return fd


@attrs.frozen
class DeepTree:
    root: str
    file_ino: int
    marker_ino: int
    beyond_ino: int


@pytest.fixture
def tree(tmp_path: Any) -> Iterator[DeepTree]:
    root = os.path.join(_host_prefix(str(tmp_path)), "tree")
    os.mkdir(root)
    os.makedirs(os.path.join(root, "etc"))
    with open(os.path.join(root, "etc", "marker"), "w") as f:
        f.write("inside\n")
    marker_ino = os.stat(os.path.join(root, "etc", "marker")).st_ino
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    deep = _mkdirs(root_fd, DIRS)
    fd = os.open(FILE, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=deep)
    os.write(fd, b"deep\n")
    os.close(fd)
    file_ino = os.stat(FILE, dir_fd=deep).st_ino
    # Links: back to the top (16 levels up: one more than there are, to test escapes), and a
    # directory whose own real path is 4095 bytes, holding a file whose real path is 4097.
    os.symlink("../" * 16 + "etc", "out", dir_fd=deep)
    beyond = _mkdirs(deep, ["z" * 255])
    with open(os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=beyond), "w") as f:
        f.write("beyond\n")
    beyond_ino = os.stat("f", dir_fd=beyond).st_ino
    os.close(beyond)
    os.close(deep)
    os.symlink(DEEP, "short", dir_fd=root_fd)
    os.symlink(f"{DEEP}/{'z' * 255}", "beyond", dir_fd=root_fd)
    os.close(root_fd)
    assert len(os.path.abspath(root)) + len(SUB_4095) > 4096
    yield DeepTree(root, file_ino, marker_ino, beyond_ino)


@pytest.fixture
def root_fd(tree: DeepTree) -> Iterator[int]:
    fd = sp.open_root(tree.root)
    yield fd
    os.close(fd)


def _content(root_fd: int, real_path: str, inode: int) -> bytes:
    fd = sp.reopen_beneath(root_fd, real_path, inode=inode)
    try:
        rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
        with open(rfd, "rb") as f:
            return f.read()
    finally:
        os.close(fd)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_longest_legal_sub_path_resolves_to_the_right_inode(
    tree: DeepTree, root_fd: int, backend: sp.Backend, policy: sp.Policy
) -> None:
    assert len(SUB_4095.encode()) == 4095
    r = sp.resolve(root_fd, SUB_4095, policy, backend)
    try:
        assert (r.ino, r.is_dir) == (tree.file_ino, False)
        real = r.relative_path(root_fd)
    finally:
        r.close()
    assert real == SUB_4095
    # What the runtime records can be re-opened, and it is that file.
    assert _content(root_fd, real, tree.file_ino) == b"deep\n"


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_short_link_to_a_deep_entry_reports_the_deep_real_path(
    tree: DeepTree, root_fd: int, backend: sp.Backend, policy: sp.Policy
) -> None:
    r = sp.resolve(root_fd, f"short/{FILE}", policy, backend)
    try:
        assert r.ino == tree.file_ino
        assert r.relative_path(root_fd) == SUB_4095
    finally:
        r.close()
    r = sp.resolve(root_fd, "short", policy, backend)
    try:
        assert r.is_dir and r.relative_path(root_fd) == DEEP
    finally:
        r.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_byte_more_is_toolong_before_any_lookup(root_fd: int, backend: sp.Backend) -> None:
    for sub in (SUB_4095 + "x", f"{DEEP}/{'f' * 256}"):
        with pytest.raises(SubPathError) as info:
            sp.resolve(root_fd, sub, sp.Policy.BENEATH, backend)
        assert (info.value.kind, info.value.errno_name) == ("toolong", "ENAMETOOLONG")


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_entry_whose_real_path_is_past_path_max_is_a_typed_error(
    tree: DeepTree, root_fd: int, backend: sp.Backend, policy: sp.Policy
) -> None:
    """``beyond/f`` is a short sub path, but the file's real path is 4097 bytes: the handle is
    right, and asking for its real path is ``toolong`` (a runtime could not re-open it)."""
    r = sp.resolve(root_fd, "beyond/f", policy, backend)
    try:
        assert r.ino == tree.beyond_ino
        with pytest.raises(SubPathError) as info:
            r.relative_path(root_fd)
        assert info.value.kind == "toolong"
    finally:
        r.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_escapes_deep_in_the_tree_are_caught_or_clamped(tree: DeepTree, root_fd: int, backend: sp.Backend) -> None:
    sub = f"{DEEP}/out/marker"
    with pytest.raises(SubPathError) as info:
        sp.resolve(root_fd, sub, sp.Policy.BENEATH, backend)
    assert info.value.kind == "escape"
    r = sp.resolve(root_fd, sub, sp.Policy.IN_ROOT, backend)  # `..` clamps at the root: the tree's etc
    try:
        assert r.ino == tree.marker_ino
        assert r.relative_path(root_fd) == "etc/marker"
    finally:
        r.close()


def test_the_containment_climb(tree: DeepTree, root_fd: int, tmp_path: Any) -> None:
    deep = sp.resolve(root_fd, DEEP, sp.Policy.BENEATH, sp.Backend.KERNEL)
    outside = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert _inroot.is_below(root_fd, deep.fd)
        assert _inroot.is_below(root_fd, root_fd)
        assert not _inroot.is_below(root_fd, outside)
        assert not _inroot.is_below(deep.fd, root_fd)
    finally:
        deep.close()
        os.close(outside)


# --- through the node: two Pods, one image, a deep node root --------------------------------------


def _deep_image(layout: str) -> None:
    entries = [TarEntry("/".join(DIRS[: i + 1]) + "/", "dir", mode=0o755) for i in range(len(DIRS))]
    entries.append(TarEntry(SUB_4095, "file", b"deep\n", mode=0o644))
    entries.append(TarEntry("short", "symlink", linkname=DEEP))
    builder = LayoutBuilder(layout)
    builder.add_image([Layer(tuple(entries))], tag="deep")
    builder.save()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("runtime", ["containerd", "crio"])
def test_pods_mount_deep_sub_paths_under_a_deep_node_root(tmp_path: Any, runtime: str, backend: sp.Backend) -> None:
    """Two Pods mount the 3839-byte directory of one image (by its path, and through a short
    link) on a node whose root is 800 bytes deep: the mounts are recorded by their real path and
    both Pods see the file. CRI-O also mounts the 4095-byte file itself (containerd mounts only
    directories). One byte more is a typed failure that leaves the others running."""
    layouts = os.path.join(str(tmp_path), "layouts")
    _deep_image(os.path.join(layouts, "layout"))
    registries = write_registries(layouts, os.path.join(layouts, "layout"))
    root = os.path.join(_host_prefix(str(tmp_path)), "node")
    node = Node(NodeConfig(root=root, registries=registries, runtime=runtime, subpath_backend=backend, hermetic=True))
    image = f"{REGISTRY}:deep"
    cases = [("first", DEEP, DEEP, f"/volume/{FILE}"), ("second", "short", DEEP, f"/volume/{FILE}")]
    if runtime == "crio":
        cases.append(("file", f"short/{FILE}", SUB_4095, "/volume"))
    for name, sub, _, _ in cases:
        (pod,) = load_documents(pod_yaml(name, image=image, sub_path=sub))
        assert isinstance(pod, Pod)
        record = node.create_pod(pod)
        (state,) = record.containers
        assert (state.state, state.reason, state.message) == ("running", "", ""), state.message[:200]
    for name, _, real, path in cases:
        record = node.get_pod(name)
        status = node.runtime.container_status(record.containers[0].container_id)
        assert status is not None
        (mount,) = status.mounts
        assert mount.real_path == real
        assert ContainerView("c", status.mounts, node.runtime.open_mount).cat(path) == b"deep\n"
    (pod,) = load_documents(pod_yaml("toolong", image=image, sub_path=SUB_4095 + "x"))
    assert isinstance(pod, Pod)
    record = node.create_pod(pod)
    (state,) = record.containers
    assert state.reason == "CreateContainerError"
    assert "file name too long" in state.message
    assert root not in state.message and "[Errno" not in state.message
    running = ["Running"] * len(cases)
    assert sorted(r.status_text for r in node.pods()) == sorted([*running, "CreateContainerError"])
