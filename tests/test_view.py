"""The container view (``imagevol exec`` without ``--real``): paths resolved beneath each mount, never
followed out of it, device nodes and FIFOs never opened."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Any

import pytest

from imagevol.exec.view import ContainerView, ViewError
from imagevol.runtime import MountStatus
from imagevol.trees import subpath as sp


def _status(path: str, key: str, real_path: str = ".", is_dir: bool = True) -> MountStatus:
    return MountStatus(path, "sha256:" + "1" * 64, "example.test/img:v1", key, real_path, is_dir)


def _opener(trees: dict[str, str]) -> Callable[[MountStatus], int]:
    def open_mount(m: MountStatus) -> int:
        root = sp.open_root(trees[m.snapshot])
        try:
            return sp.reopen_beneath(root, m.real_path)
        finally:
            os.close(root)

    return open_mount


@pytest.fixture
def view(tmp_path: Any) -> ContainerView:
    base = str(tmp_path)
    vol = os.path.join(base, "vol")
    os.makedirs(os.path.join(vol, "dir", "sub"))
    with open(os.path.join(vol, "dir", "file"), "w") as f:
        f.write("1\n")
    with open(os.path.join(vol, "file"), "w") as f:
        f.write("2\n")
    os.symlink("../file", os.path.join(vol, "dir", "up"))
    os.symlink("../../outside", os.path.join(vol, "dir", "escape"))
    os.symlink("/etc/passwd", os.path.join(vol, "abs"))
    os.mkfifo(os.path.join(vol, "fifo"))
    if os.geteuid() == 0:
        os.mknod(os.path.join(vol, "disk"), 0o644 | stat.S_IFBLK, os.makedev(7, 0))
        os.mknod(os.path.join(vol, "zero"), 0o644 | stat.S_IFCHR, os.makedev(1, 5))
    with open(os.path.join(base, "outside"), "w") as f:
        f.write("host secret\n")
    other = os.path.join(base, "other")
    os.makedirs(other)
    with open(os.path.join(other, "nested"), "w") as f:
        f.write("nested\n")
    mounts = [
        _status("/volume", "vol"),
        _status("/volume/dir/sub", "other"),
        _status("/single", "vol", "file", is_dir=False),
    ]
    return ContainerView("c", mounts, _opener({"vol": vol, "other": other}))


def test_reads_through_mounts(view: ContainerView) -> None:
    assert view.cat("/volume/dir/file") == b"1\n"
    assert view.cat("/volume/dir/up") == b"2\n"  # a relative link inside the volume
    assert view.cat("/volume/dir/../file") == b"2\n"  # `..` inside the volume is resolved, scoped
    assert view.cat("/volume//./dir/file") == b"1\n"
    expected = ["abs", "dir", "fifo", "file"] + (["disk", "zero"] if os.geteuid() == 0 else [])
    assert view.ls("/volume") == sorted(expected)
    assert view.readlink("/volume/dir/up") == "../file"
    assert "Type: symbolic link" in view.stat("/volume/abs")
    assert view.cat("/single") == b"2\n"
    assert view.ls("/single") == ["/single"]


def test_nested_mounts_win_over_their_parent(view: ContainerView) -> None:
    assert view.ls("/volume/dir/sub") == ["nested"]
    assert view.cat("/volume/dir/sub/nested") == b"nested\n"
    assert view.cat("/volume/dir/sub/../file") == b"1\n"  # `..` leaves the nested mount's view


@pytest.mark.parametrize("path", ["/volume/dir/escape", "/volume/abs", "/volume/dir/../../etc/passwd"])
def test_nothing_leads_out_of_a_volume(view: ContainerView, path: str) -> None:
    with pytest.raises(ViewError) as info:
        view.cat(path)
    assert "leads outside the volume mounted at /volume" in str(info.value)
    assert "host secret" not in str(info.value)


def test_dotdot_at_a_mount_root_is_the_container_filesystem(view: ContainerView) -> None:
    with pytest.raises(ViewError, match="not inside any image-volume mount"):
        view.cat("/volume/../outside")
    assert view.cat("/single/../volume/file") == b"2\n"


def test_special_files_are_never_opened(view: ContainerView) -> None:
    with pytest.raises(ViewError, match="fifo: not opened"):
        view.cat("/volume/fifo")  # opening a FIFO would block forever
    if os.geteuid() == 0:
        # A block device shipped in an image would read the host's disk; the mounts are nodev.
        with pytest.raises(ViewError, match="block special file: not opened"):
            view.cat("/volume/disk")
        with pytest.raises(ViewError, match="character special file: not opened"):
            view.cat("/volume/zero")
        assert "Type: block special file" in view.stat("/volume/disk")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cat", "/etc/passwd"], "not inside any image-volume mount of container 'c'"),
        (["cat", "volume/file"], "paths in a container view must be absolute"),
        (["cat", "/volume/dir"], "Is a directory"),
        (["cat", "/volume/nope"], "No such file or directory"),
        (["cat", "/volume/file/x"], "Not a directory"),
        (["cat", "/single/x"], "Not a directory"),
        (["readlink", "/volume/file"], "not a symbolic link"),
        (["sh", "-c", "true"], "use --real to run real commands"),
        (["cat"], "missing operand"),
    ],
)
def test_errors_in_coreutils_style(view: ContainerView, argv: list[str], message: str) -> None:
    with pytest.raises(ViewError, match=message):
        b"".join(view.run(argv))


def test_run_concatenates_outputs(view: ContainerView) -> None:
    assert b"".join(view.run(["cat", "/volume/file", "/volume/dir/file"])) == b"2\n1\n"
    assert b"".join(view.run(["ls", "/volume/dir/sub", "/single"])) == b"/volume/dir/sub:\nnested\n/single:\n/single\n"
    assert b"".join(view.run(["readlink", "/volume/dir/up"])) == b"../file\n"
    assert b"Mounted: read-only from example.test/img:v1" in b"".join(view.run(["stat", "/volume/file"]))


def _snapshot(root: str) -> list[tuple[str, int, int, float]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            st = os.lstat(os.path.join(dirpath, name))
            out.append((os.path.relpath(os.path.join(dirpath, name), root), st.st_mode, st.st_size, st.st_mtime))
    return sorted(out)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["touch", "/volume/file"], "touch: /volume/file: Read-only file system"),
        (["touch", "/volume/new"], "touch: /volume/new: Read-only file system"),
        (["rm", "-rf", "/volume/dir"], "rm: /volume/dir: Read-only file system"),
        (["mkdir", "-p", "/volume/dir/sub/x"], "mkdir: /volume/dir/sub/x: Read-only file system"),
        (["mv", "/volume/file", "/volume/moved"], "mv: /volume/file: Read-only file system\nmv: /volume/moved: "),
        (["cp", "/volume/file", "/single"], "cp: /single: Read-only file system"),
        (["chmod", "0777", "/volume/file"], "chmod: /volume/file: Read-only file system"),
        (["tee", "/volume/file"], "tee: /volume/file: Read-only file system"),
        (["cp", "/volume/file", "/tmp/x"], "cp: /tmp/x: not inside any image-volume mount"),
        (["touch"], "touch: missing operand"),
    ],
)
def test_writes_fail_as_on_a_read_only_mount(view: ContainerView, tmp_path: Any, argv: list[str], message: str) -> None:
    """Published trees keep their modes (a 0644 file stays writable by its owner on the node), so it
    is the view that must refuse: every write command fails on an image-volume mount, and nothing
    in the trees changes."""
    before = _snapshot(str(tmp_path))
    with pytest.raises(ViewError) as info:
        list(view.run(argv))
    assert str(info.value).startswith(message)
    assert _snapshot(str(tmp_path)) == before
    assert view.cat("/volume/file") == b"2\n"
