"""Attacks on sub-path resolution. Each test proves the attack fails on the returned handle itself
(where ``/proc/self/fd/N`` points, its device and inode) or on the filesystem, not only on the
exception that was raised."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from imagevol.errors import SubPathError
from imagevol.trees import _inroot, _openat2
from imagevol.trees import subpath as sp
from tests.helpers.subpaths import open_fds

BACKENDS = [sp.Backend.KERNEL, sp.Backend.USERSPACE]

# --- CVE-2021-25741: a directory on the path is swapped for a symlink to outside the root ------------

_SWAPPER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
RENAME_EXCHANGE = 2
a = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
first = True
while True:
    # Atomically exchange the directory "b" and the symlink "x" (renameat2 RENAME_EXCHANGE).
    if libc.renameat2(a, b"b", a, b"x", RENAME_EXCHANGE) != 0:
        sys.exit("renameat2: " + os.strerror(ctypes.get_errno()))
    if first:
        print("ready", flush=True)
        first = False
"""


@pytest.fixture
def race_tree(tmp_path: object) -> Iterator[dict[str, str]]:
    base = str(tmp_path)
    root = os.path.join(base, "root")
    os.makedirs(os.path.join(root, "a", "b", "c"))
    with open(os.path.join(root, "a", "b", "c", "secret"), "w") as f:
        f.write("inside\n")
    os.makedirs(os.path.join(base, "outside", "b", "c"))
    with open(os.path.join(base, "outside", "b", "c", "secret"), "w") as f:
        f.write("outside\n")
    yield {"base": base, "root": root, "a": os.path.join(root, "a"), "outside": os.path.join(base, "outside", "b")}


@pytest.mark.parametrize("link", ["absolute", "relative"])
def test_symlink_exchange_race_never_yields_a_handle_outside(race_tree: dict[str, str], link: str) -> None:
    target = race_tree["outside"] if link == "absolute" else "../../../outside/b"
    os.symlink(target, os.path.join(race_tree["a"], "x"))
    outside = os.stat(os.path.join(race_tree["outside"], "c", "secret"))
    inside = os.stat(os.path.join(race_tree["a"], "b", "c", "secret"))
    root_text = os.path.realpath(race_tree["root"])
    root_fd = sp.open_root(race_tree["root"])
    swapper = subprocess.Popen(
        [sys.executable, "-c", _SWAPPER, race_tree["a"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    outcomes: dict[str, int] = {}
    fds_before = open_fds()
    try:
        assert swapper.stdout is not None
        assert swapper.stdout.readline().strip() == "ready", swapper.stderr.read() if swapper.stderr else ""
        deadline = time.monotonic() + 20.0
        attempts = 0
        for policy in sp.Policy:
            for backend in BACKENDS:
                for _ in range(1500):
                    attempts += 1
                    try:
                        r = sp.resolve(root_fd, "a/b/c/secret", policy, backend)
                    except SubPathError as exc:
                        outcomes[exc.kind] = outcomes.get(exc.kind, 0) + 1
                        continue
                    try:
                        where = os.readlink(r.proc_path)
                        st = os.fstat(r.fd)
                        # The handle names the inside file, by path and by identity; never the
                        # outside one, whatever state the swapper left the tree in.
                        assert where.startswith(root_text + "/"), where
                        assert (st.st_dev, st.st_ino) == (inside.st_dev, inside.st_ino)
                        assert (st.st_dev, st.st_ino) != (outside.st_dev, outside.st_ino)
                        data_fd = os.open(r.proc_path, os.O_RDONLY | os.O_CLOEXEC)
                        try:
                            assert os.pread(data_fd, 64, 0) == b"inside\n"
                        finally:
                            os.close(data_fd)
                    finally:
                        r.close()
                    outcomes["ok"] = outcomes.get("ok", 0) + 1
                assert time.monotonic() < deadline, f"race test too slow after {attempts} attempts"
    finally:
        swapper.kill()
        swapper.communicate()
        os.close(root_fd)
    # The swap really raced with the lookups: both outcomes were seen, thousands of times in all.
    assert attempts == 6000
    assert outcomes.get("ok", 0) > 0, outcomes
    assert sum(n for k, n in outcomes.items() if k != "ok") > 0, outcomes
    assert set(outcomes) <= {"ok", "escape", "notfound", "notdir"}, outcomes
    assert open_fds() <= fds_before  # no descriptor leaked on any outcome


def test_directory_moved_out_mid_walk_is_caught(race_tree: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The one thing the userspace walk cannot stop by construction: a directory it already holds is
    renamed out of the tree. The final containment check (the kernel's complete_walk() check,
    emulated) refuses the handle instead of returning it."""
    real_open = _inroot._open_component
    moved = os.path.join(race_tree["base"], "moved")

    def attacker_open(dir_fd: int, name: str) -> int:
        if name == "c" and not os.path.exists(moved):
            os.rename(os.path.join(race_tree["a"], "b"), moved)  # while the walker holds "b"
        return real_open(dir_fd, name)

    monkeypatch.setattr(_inroot, "_open_component", attacker_open)
    root_fd = sp.open_root(race_tree["root"])
    before = open_fds()
    try:
        for policy in sp.Policy:
            if os.path.exists(moved):
                os.rename(moved, os.path.join(race_tree["a"], "b"))
            with pytest.raises(SubPathError) as info:
                sp.resolve(root_fd, "a/b/c/secret", policy, sp.Backend.USERSPACE)
            assert info.value.kind == "escape"
            assert os.path.exists(moved)  # the attack did happen
        assert open_fds() == before
    finally:
        os.close(root_fd)


# --- magic links, downgrades, retries, leaks ---------------------------------------------------------

_PROC_PROBE = r"""
import json, os, sys, ctypes
from imagevol.trees import subpath as sp
base = sys.argv[1]
root = os.path.join(base, "root")
os.makedirs(os.path.join(root, "proc"))
libc = ctypes.CDLL(None, use_errno=True)
if libc.mount(b"proc", os.path.join(root, "proc").encode(), b"proc", 0, None) != 0:
    sys.exit("mount proc: " + os.strerror(ctypes.get_errno()))
root_fd = sp.open_root(root)
out = {}
for path in ["proc/self/root", "proc/self/root/etc", "proc/self/cwd", "proc/self/exe", "proc/self/fd/0",
             "proc/self/ns/mnt", "proc/self", "proc/mounts", "proc/self/status"]:
    for policy in sp.Policy:
        row = []
        for backend in (sp.Backend.KERNEL, sp.Backend.USERSPACE):
            try:
                r = sp.resolve(root_fd, path, policy, backend)
                row.append("ok:" + r.relative_path(root_fd).split("/", 2)[0])
                r.close()
            except sp.SubPathError as exc:
                row.append("error:" + exc.kind)
        out[path + " " + policy.value] = row
print(json.dumps(out))
"""


def test_procfs_magic_links_are_refused_by_both_backends(tmp_path: object) -> None:
    """RESOLVE_NO_MAGICLINKS and its userspace emulation: with a procfs mounted inside the tree (in
    a private mount namespace), /proc/self/root and friends are never followed."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to mount procfs in a private namespace")
    cmd = ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", _PROC_PROBE, str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # the child imports as we do
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    for key, (kernel, user) in results.items():
        assert kernel == user, key
    for magic in ("proc/self/root", "proc/self/root/etc", "proc/self/cwd", "proc/self/exe", "proc/self/fd/0"):
        for policy in sp.Policy:
            assert results[f"{magic} {policy.value}"] == ["error:loop", "error:loop"], magic
    # Plain procfs links (self -> <pid>, mounts -> self/mounts) are ordinary relative links.
    assert results["proc/self beneath"] == ["ok:proc", "ok:proc"]
    assert results["proc/mounts in_root"] == ["ok:proc", "ok:proc"]


@pytest.mark.parametrize("err", [errno.EPERM, errno.EAGAIN, errno.EXDEV, errno.ENOMEM])
def test_a_failing_openat2_is_reported_never_downgraded(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    """If openat2 exists but fails, the userspace walker must not be tried instead (an attacker
    who can provoke the failure would otherwise pick the weaker resolver)."""
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "dir"))
    walked: list[str] = []

    def walk(dir_fd: int, name: str) -> int:
        walked.append(name)
        return os.open(name, os.O_PATH, dir_fd=dir_fd)

    monkeypatch.setattr(_inroot, "_open_component", walk)

    def failing(*args: object, **kwargs: object) -> int:
        raise OSError(err, os.strerror(err))

    assert _openat2.available()  # probed once per process, before anything can fail
    monkeypatch.setattr(_openat2, "openat2", failing)
    root_fd = sp.open_root(root)
    try:
        with pytest.raises(SubPathError) as info:
            sp.resolve(root_fd, "dir")
    finally:
        os.close(root_fd)
    assert walked == []
    assert info.value.kind == {errno.EPERM: "denied", errno.EXDEV: "escape"}.get(err, "failed")


def test_eagain_is_retried_a_bounded_number_of_times(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def busy(*args: object) -> int:
        calls.append(args)
        ctypes.set_errno(errno.EAGAIN)
        return -1

    monkeypatch.setattr(_openat2, "_syscall", busy)
    with pytest.raises(OSError) as info:
        _openat2.openat2(-100, "/", _openat2.O_PATH, _openat2.RESOLVE_BENEATH)
    assert info.value.errno == errno.EAGAIN
    assert len(calls) == _openat2.MAX_RETRIES


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.value)
def test_no_descriptor_leaks_on_any_outcome(tmp_path: object, backend: sp.Backend) -> None:
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "d", "e"))
    open(os.path.join(root, "d", "f"), "w").close()
    for name, target in [("loop", "loop"), ("esc", "../.."), ("abs", "/etc"), ("dangling", "nope"), ("ok", "d/e")]:
        os.symlink(target, os.path.join(root, name))
    root_fd = sp.open_root(root)
    before = open_fds()
    try:
        for _ in range(50):
            for path in ["loop", "esc", "abs", "dangling", "d/f/", "d/f/x", "d/missing", "ok", "d/f", "d/e/"]:
                for policy in sp.Policy:
                    with contextlib.suppress(SubPathError):
                        sp.resolve(root_fd, path, policy, backend).close()
        assert open_fds() == before
    finally:
        os.close(root_fd)


def test_messages_name_the_sub_path_never_the_host_path(tmp_path: object) -> None:
    root = os.path.join(str(tmp_path), "secret-host-location")
    os.makedirs(os.path.join(root, "d"))
    os.symlink("../..", os.path.join(root, "esc"))
    os.symlink("loop", os.path.join(root, "loop"))
    root_fd = sp.open_root(root)
    try:
        for backend in BACKENDS:
            for path in ["esc", "loop", "missing", "d/../x", "/abs", "n" * 300, "d/x\x00"]:
                with pytest.raises(SubPathError) as info:
                    sp.resolve(root_fd, path, sp.Policy.BENEATH, backend)
                assert "secret-host-location" not in str(info.value)
                assert str(tmp_path) not in str(info.value)
    finally:
        os.close(root_fd)


# --- re-opening a recorded path ---------------------------------------------------------------------


def test_reopen_refuses_a_component_swapped_for_a_symlink(tmp_path: object) -> None:
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "a", "b"))
    os.makedirs(os.path.join(root, "elsewhere", "b"))
    root_fd = sp.open_root(root)
    try:
        r = sp.resolve(root_fd, "a/b")
        recorded, inode = r.relative_path(root_fd), r.ino
        r.close()
        os.rename(os.path.join(root, "a"), os.path.join(root, "a.old"))
        os.symlink("elsewhere", os.path.join(root, "a"))
        with pytest.raises(OSError) as info:
            sp.reopen_beneath(root_fd, recorded, inode=inode)
        assert info.value.errno == errno.ELOOP
        # A directory renamed over the recorded one passes the symlink rule but not the inode.
        os.unlink(os.path.join(root, "a"))
        os.rename(os.path.join(root, "elsewhere"), os.path.join(root, "a"))
        with pytest.raises(OSError) as info:
            sp.reopen_beneath(root_fd, recorded, inode=inode)
        assert info.value.errno == errno.ESTALE
        fd = sp.reopen_beneath(root_fd, recorded)  # without the inode it is just a symlink-free path
        os.close(fd)
    finally:
        os.close(root_fd)


def test_reopen_userspace_fallback_matches(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "a", "b"))
    os.symlink("a", os.path.join(root, "l"))
    monkeypatch.setattr(_openat2, "available", lambda: False)
    root_fd = sp.open_root(root)
    try:
        fd = sp.reopen_beneath(root_fd, "a/b", inode=os.stat(os.path.join(root, "a", "b")).st_ino)
        assert os.path.samestat(os.fstat(fd), os.stat(os.path.join(root, "a", "b")))
        os.close(fd)
        for path, code in [("l/b", errno.ELOOP), ("a/../a", errno.EXDEV), ("a/nope", errno.ENOENT)]:
            with pytest.raises(OSError) as info:
                sp.reopen_beneath(root_fd, path)
            assert info.value.errno == code, path
    finally:
        os.close(root_fd)


# --- fs.protected_symlinks --------------------------------------------------------------------------


def test_protected_symlinks_rule_applies_to_trailing_links_only(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``fs.protected_symlinks=1`` the kernel refuses to follow a *trailing* link in a sticky
    world-writable directory unless the follower or the directory owner owns it; the userspace walk
    applies the same rule so both backends stay equal on such hosts. (This host's sysctl is left
    alone: the rule is switched on for the walker only.)"""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the link another owner")
    monkeypatch.setattr(_inroot, "_protected_symlinks", lambda: True)
    root = str(tmp_path)
    tmp = os.path.join(root, "tmp")
    os.makedirs(os.path.join(root, "d"))
    os.mkdir(tmp)
    os.chmod(tmp, 0o1777)
    os.symlink("../d", os.path.join(tmp, "link"))
    os.lchown(os.path.join(tmp, "link"), 4321, 4321)
    root_fd = sp.open_root(root)
    try:
        for path in ["tmp/link", "tmp/link/"]:
            with pytest.raises(SubPathError) as info:
                sp.resolve(root_fd, path, backend=sp.Backend.USERSPACE)
            assert info.value.kind == "denied"
        sp.resolve(root_fd, "tmp/link/.", backend=sp.Backend.USERSPACE).close()  # not trailing
        os.lchown(os.path.join(tmp, "link"), 0, 0)  # owned by the follower
        sp.resolve(root_fd, "tmp/link", backend=sp.Backend.USERSPACE).close()
    finally:
        os.close(root_fd)
