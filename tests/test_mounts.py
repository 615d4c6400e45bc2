"""Real mounts (``exec --real``): commands run in a private mount namespace with the volumes bound
``ro,nosuid,nodev``. Each property is proven by doing the forbidden thing (a write, a set-uid exec, a
device read) and the host is checked to be untouched (mount table and files) afterwards."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from imagevol.exec import namespace as mounts
from imagevol.trees import subpath as sp
from tests.helpers.privileges import AS_NOBODY, setpriv, setpriv_for_checkout
from tests.helpers.subpaths import REGISTRY, build_layout, make_node, pod_yaml, write_registries

REASON = mounts.probe()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"real mounts not permitted here: {REASON}")

# Runs inside the namespace: tries the forbidden things and reports what the kernel said.
_INSPECT = r"""
import errno, json, os, sys
out = {}
for target in sys.argv[1:]:
    row = {"exists": os.path.exists(target)}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == target:
                row["options"] = fields[5].split(",")
    probe = os.path.join(target, "new-file") if os.path.isdir(target) else target
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
        row["write"] = "ok"
    except OSError as exc:
        row["write"] = errno.errorcode[exc.errno]
    out[target] = row
print(json.dumps(out))
"""


def _mountinfo() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(f.read().splitlines())


def _assert_host_unchanged(before: list[str], targets: tuple[str, ...] = ()) -> None:
    """The host's mount table equals ``before``. Other processes on a shared host may mount or
    unmount their own things meanwhile, so a difference is tolerated only if none of it could be
    ours: everything ``mounts.run`` creates lies below its ``imagevol-real-*`` scratch directory or
    at a container path."""
    after = _mountinfo()
    if after == before:
        return
    changed = sorted(set(before) ^ set(after))
    ours = [line for line in changed if "imagevol-real-" in line.split()[4] or line.split()[4] in targets]
    assert ours == [], ours


def _opener(root: str, sub_path: str) -> Any:
    def open_it() -> int:
        root_fd = sp.open_root(root)
        try:
            return sp.resolve(root_fd, sub_path).fd
        finally:
            os.close(root_fd)

    return open_it


def _run(binds: list[mounts.Bind], argv: list[str]) -> tuple[int, str, str]:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        code = mounts.run(binds, argv, stdio=(0, out.fileno(), err.fileno()))
        out.seek(0)
        err.seek(0)
        return code, out.read().decode(), err.read().decode()


@pytest.fixture
def tree(tmp_path: Any) -> Iterator[str]:
    root = os.path.join(str(tmp_path), "vol")
    os.makedirs(os.path.join(root, "dir"))
    with open(os.path.join(root, "dir", "file"), "w") as f:
        f.write("1\n")
    with open(os.path.join(root, "file"), "w") as f:
        f.write("2\n")
    yield root


def test_volumes_are_read_only_nosuid_nodev_and_the_host_is_untouched(tree: str) -> None:
    before = _mountinfo()
    host_before = sorted(os.listdir(tree)), sorted(os.listdir(os.path.join(tree, "dir")))
    binds = [
        mounts.Bind("/volume", _opener(tree, "dir")),
        mounts.Bind("/etc/imagevol-test/conf", _opener(tree, "dir")),  # created on the overlay, not in /etc
        mounts.Bind("/single", _opener(tree, "file")),  # a file sub path (CRI-O)
    ]
    argv = [sys.executable, "-c", _INSPECT, "/volume", "/etc/imagevol-test/conf", "/single"]
    code, out, err = _run(binds, argv)
    assert code == 0, err
    seen = json.loads(out)
    for target, row in seen.items():
        assert row["exists"], target
        assert {"ro", "nosuid", "nodev"} <= set(row["options"]), (target, row)
        assert "noexec" not in row["options"]  # R11.5: binaries in image volumes may run
        assert row["write"] == "EROFS", (target, row)  # an actual write attempt
    _assert_host_unchanged(before, ("/volume", "/etc/imagevol-test/conf", "/single"))  # nothing leaked
    assert (sorted(os.listdir(tree)), sorted(os.listdir(os.path.join(tree, "dir")))) == host_before
    assert not os.path.exists("/volume") and not os.path.exists("/etc/imagevol-test")


def test_contents_are_the_resolved_entries(tree: str) -> None:
    code, out, _ = _run([mounts.Bind("/volume", _opener(tree, "dir"))], ["cat", "/volume/file"])
    assert (code, out) == (0, "1\n")


def test_nosuid_and_nodev_are_enforced(tmp_path: Any) -> None:
    """A set-uid-root copy of ``id`` and a ``/dev/zero`` node inside a volume: run as nobody, the
    program keeps nobody's identity, and the device cannot be opened."""
    setpriv()  # the command runs from the volume, not from the checkout
    base = tempfile.mkdtemp(prefix="imagevol-nosuid-")
    try:
        os.chmod(base, 0o755)
        shutil.copy2(shutil.which("id") or "/usr/bin/id", os.path.join(base, "id"))
        os.chmod(os.path.join(base, "id"), 0o4755)
        os.mknod(os.path.join(base, "zero"), 0o666 | stat.S_IFCHR, os.makedev(1, 5))
        script = "setpriv --reuid=65534 --regid=65534 --clear-groups /volume/id -u; head -c1 /volume/zero; echo rc=$?"
        _, out, err = _run([mounts.Bind("/volume", _opener(base, "."))], ["sh", "-c", script])
    finally:
        shutil.rmtree(base)
    assert out.splitlines()[0] == "65534"  # the set-uid bit was ignored (would print 0)
    assert "rc=1" in out and "Permission denied" in err  # nodev


def test_exit_status_and_missing_commands(tree: str) -> None:
    assert _run([], ["sh", "-c", "exit 7"])[0] == 7
    with pytest.raises(mounts.RealExecError) as info:
        _run([], ["imagevol-no-such-command"])
    assert info.value.exit_code == 127
    assert "imagevol-no-such-command: No such file or directory" in str(info.value)
    with pytest.raises(mounts.RealExecError, match="no command"):
        _run([], [])


def test_mount_points_are_never_created_in_host_mounts(tree: str) -> None:
    before = _mountinfo()
    with pytest.raises(mounts.RealExecError, match="its parent is a host mount"):
        _run([mounts.Bind("/proc/imagevol-test", _opener(tree, "dir"))], ["true"])
    with pytest.raises(mounts.RealExecError, match="exists and is not a directory"):
        _run([mounts.Bind("/etc/hostname", _opener(tree, "dir"))], ["true"])
    _assert_host_unchanged(before, ("/proc/imagevol-test", "/etc/hostname"))


def test_a_host_that_refuses_namespaces_gets_a_clear_message(monkeypatch: pytest.MonkeyPatch, tree: str) -> None:
    def refuse(flags: int) -> None:
        raise OSError(errno.EPERM, "unshare: Operation not permitted")

    monkeypatch.setattr(mounts, "_unshare", refuse)
    with pytest.raises(mounts.RealExecError) as info:
        _run([mounts.Bind("/volume", _opener(tree, "dir"))], ["true"])
    message = str(info.value)
    assert "does not let" in message and "private mount namespace" in message
    assert "Without --real, exec shows the container's view" in message
    assert tree not in message


# --- through the CLI --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def layout_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = str(tmp_path_factory.mktemp("layouts"))
    build_layout(os.path.join(d, "layout"))
    return d


def _cli(root: str, registries: str, *args: str, runtime: str = "containerd") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, IMAGEVOL_ROOT=root)
    cmd = [sys.executable, "-m", "imagevol.cli", "--runtime", runtime, "--registries", registries, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=120)


@pytest.mark.parametrize("runtime", ["containerd", "crio"])
def test_cli_exec_real(tmp_path: Any, layout_dir: str, runtime: str) -> None:
    root = os.path.join(str(tmp_path), "node")
    registries = write_registries(layout_dir, os.path.join(layout_dir, "layout"))
    node = make_node(root, layout_dir, runtime)
    sub_path = "file" if runtime == "crio" else "dir"
    [applied] = node.apply(pod_yaml("p", image=f"{REGISTRY}:tricky", sub_path=sub_path))
    record = applied.record
    assert record is not None and record.containers[0].state == "running"
    before = _mountinfo()
    done = _cli(root, registries, "exec", "p", "-c", "c", "--real", "--", "cat", "/volume", runtime=runtime)
    if runtime == "containerd":
        assert done.returncode == 1 and "Is a directory" in done.stderr
        done = _cli(root, registries, "exec", "p", "--real", "--", "cat", "/volume/file")
        assert (done.returncode, done.stdout) == (0, "1\n"), done.stderr
    else:
        assert (done.returncode, done.stdout) == (0, "2\n"), done.stderr
    done = _cli(
        root, registries, "exec", "p", "--real", "--", sys.executable, "-c", _INSPECT, "/volume", runtime=runtime
    )
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)["/volume"]
    assert row["write"] == "EROFS" and {"ro", "nosuid", "nodev"} <= set(row["options"])
    _assert_host_unchanged(before, ("/volume",))
    # The view-based exec stays the default.
    done = _cli(root, registries, "exec", "p", "--", "sh", "-c", "true", runtime=runtime)
    assert done.returncode == 1 and "use --real" in done.stderr


def test_unprivileged_user_namespace_path(tree: str) -> None:
    """Not root: the child maps itself to root in a new user namespace and mounts there (overlayfs
    with userxattr). Run as nobody on a world-readable tree."""
    setpriv = setpriv_for_checkout()
    # The inner command runs as nobody: the system interpreter, not this venv's (its base may live
    # in a directory nobody cannot search).
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 for the inner command")
    base = tempfile.mkdtemp(prefix="imagevol-userns-")
    try:
        os.chmod(base, 0o755)
        shutil.copytree(tree, os.path.join(base, "vol"))
        subprocess.run(["chmod", "-R", "a+rX", base], check=True)
        script = (
            "import json, sys\n"
            "from imagevol.exec import namespace as mounts\n"
            "from imagevol.trees import subpath as sp\n"
            "import os\n"
            "def opener():\n"
            f"    r = sp.open_root({os.path.join(base, 'vol')!r})\n"
            "    try: return sp.resolve(r, 'dir').fd\n"
            "    finally: os.close(r)\n"
            "print(mounts.probe() or '')\n"
            f"sys.exit(mounts.run([mounts.Bind('/volume', opener)], [{python!r}, '-c', {_INSPECT!r}, '/volume']))\n"
        )
        cmd = [setpriv, *AS_NOBODY, sys.executable, "-c", script]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60, cwd="/")
    finally:
        shutil.rmtree(base)
    first, _, rest = done.stdout.partition("\n")
    if first:
        pytest.skip(f"unprivileged user namespaces are not available: {first}")
    assert done.returncode == 0, done.stderr
    row = json.loads(rest)["/volume"]
    assert row["write"] == "EROFS" and {"ro", "nosuid", "nodev"} <= set(row["options"])
