"""Containers on a real OCI runtime (runc), end to end through the CLI against the loopback registry.

The container image (the BusyBox stand-in) and the image volumes come from the registry; the node
runs the Pods' containers for real with ``--run-containers`` (or, without it, ``exec --real`` runs a
one-off container). Every test checks what the container's own tools print and, afterwards, that the
host is as it was: its mount table, ``runc list``, no monitor process, no state directory left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from imagevol.kubelet.pod_sync import PodRecord
from imagevol.node import Node, NodeConfig
from imagevol.runtime import runc
from imagevol.testing.pods import container, image_volume, pod_doc, to_yaml
from tests.helpers import peers

REASON = runc.unavailable_reason()
if REASON is not None and os.environ.get("CI") == "true":  # pragma: no cover - CI runs as root with runc
    raise RuntimeError(f"CI must run the real-runtime tests: {REASON}")
pytestmark = [pytest.mark.peers, pytest.mark.skipif(REASON is not None, reason=str(REASON))]


@pytest.fixture(scope="module")
def reg(fixtures_layout: str) -> Iterator[peers.Registry]:
    """v2 (an image volume), an artifact and the BusyBox stand-in (the container image)."""
    with peers.registry() as r:
        peers.push_fixtures(fixtures_layout, r, ("v2", "debian", "artifact-raw"))
        yield r


class Cli:
    """``imagevol`` as a separate process (the container's stdio is the command's) on one node."""

    def __init__(self, root: str, conf: str, *options: str) -> None:
        self.root, self.conf, self.options = root, conf, options

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "imagevol.cli", "--root", self.root, "--registries", self.conf, *self.options]
        return subprocess.run([*cmd, *args], capture_output=True, text=True, check=False, timeout=120)

    def apply(self, tmp_path: Any, doc: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        path = os.path.join(str(tmp_path), f"{doc['metadata']['name']}.yaml")
        with open(path, "w") as f:
            f.write(to_yaml(doc))
        return self("apply", "-f", path)

    def node(self) -> Node:
        return Node(NodeConfig(root=self.root, registries=self.conf, run_containers="--run-containers" in self.options))

    def record(self, name: str) -> PodRecord:
        return self.node().get_pod(name)

    def wait_exit(self, name: str, container_name: str = "c") -> PodRecord:
        """Wait until the monitor recorded the container's exit, then sync once."""
        node = self.node()
        cid = node.get_pod(name).state(container_name).container_id
        deadline = time.monotonic() + 60
        while (status := node.runtime.container_status(cid)) is not None and status.state != runc.EXITED:
            assert time.monotonic() < deadline, "the container did not exit"
            time.sleep(0.05)
        return node.sync_pod(name)


@pytest.fixture
def conf(reg: peers.Registry, tmp_path: Any) -> str:
    path = os.path.join(str(tmp_path), "registries.conf")
    with open(path, "w") as f:
        f.write(f'[[registry]]\nlocation = "{reg.host}"\ninsecure = true\n')
    return path


@pytest.fixture
def cli(node_root: str, conf: str) -> Iterator[Cli]:
    c = Cli(node_root, conf, "--run-containers")
    before = _mountinfo()
    yield c
    for record in c.node().pods():  # nothing may outlive the test, even when it failed
        c("delete", "pod", record.pod.name, "--grace-period", "0s")
    _assert_nothing_left(c, before)


@pytest.fixture
def sim(node_root: str, conf: str) -> Iterator[Cli]:
    """The same node without the option: the simulation; ``exec --real`` makes one-off containers."""
    c = Cli(node_root, conf)
    before = _mountinfo()
    yield c
    for record in c.node().pods():
        c("delete", "pod", record.pod.name)
    _assert_nothing_left(c, before)


def _mountinfo() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split(" ", 4)[4] for line in f)


def _monitors(root: str) -> list[str]:
    """Processes whose command line names the node root (monitors, runc)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if root in cmdline and "pytest" not in cmdline:
            out.append(cmdline)
    return out


def _assert_nothing_left(c: Cli, before: list[str]) -> None:
    """No mount of ours on the host, nothing runc knows, no monitor, no bundle, no lease."""
    ours = [m for m in set(_mountinfo()) ^ set(before) if c.root in m]
    assert ours == []
    listed = subprocess.run(
        ["runc", "--root", os.path.join(c.root, "runtime", "oci", "runc"), "list", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert listed.stdout.split() == []
    assert _monitors(c.root) == []
    bundles = os.path.join(c.root, "runtime", "oci", "bundles")
    assert not os.path.isdir(bundles) or os.listdir(bundles) == []
    leases = os.path.join(c.root, "snapshots", ".leases")
    assert not os.path.isdir(leases) or os.listdir(leases) == []


def _ref(reg: peers.Registry, tag: str) -> str:
    return f"{reg.host}/lab/{tag}:v1"


def _pod(
    reg: peers.Registry, name: str, command: list[str], *, policy: str = "", sub_path: str = "dir", tag: str = "v2"
) -> dict[str, Any]:
    ctr = container("c", ("v", "/volume", sub_path), image=_ref(reg, "debian"), command=command)
    doc = pod_doc(name, [ctr], [image_volume("v", _ref(reg, tag))])
    if policy:
        doc["spec"]["restartPolicy"] = policy
    return doc


# --- containers that run their own command ------------------------------------------------------------


@pytest.mark.parametrize("policy", ["Never", "OnFailure"])
def test_a_container_reads_its_image_volume_and_completes(
    cli: Cli, reg: peers.Registry, tmp_path: Any, policy: str
) -> None:
    done = cli.apply(tmp_path, _pod(reg, "reader", ["cat", "/volume/file"], policy=policy))
    assert done.returncode == 0, done.stderr
    record = cli.wait_exit("reader")
    state = record.state("c")
    assert (state.state, state.reason, state.exit_code, state.restart_count) == ("terminated", "Completed", 0, 0)
    assert record.phase == "Succeeded"
    assert cli("get", "pods").stdout.splitlines()[1].split()[:4] == ["reader", "0/1", "Completed", "0"]
    assert cli("logs", "reader", "-c", "c").stdout == "1\n"  # busybox's cat, inside the container
    described = cli("describe", "pod", "reader").stdout
    assert "State:          Terminated\n      Reason:       Completed\n      Exit Code:    0" in described
    cli.node().sync()  # a completed container is not started again
    assert cli.record("reader").state("c").container_id == state.container_id


def test_a_failing_container_is_restarted_with_crash_loop_backoff(cli: Cli, reg: peers.Registry, tmp_path: Any) -> None:
    assert cli.apply(tmp_path, _pod(reg, "crasher", ["sh", "-c", "echo crashing; exit 1"])).returncode == 0
    uid = cli.record("crasher").pod.uid
    who = f"crasher_default({uid})"
    # The first exit: Error, and restarted at once (the backoff starts at 10 s from this exit).
    record = cli.wait_exit("crasher")
    state = record.state("c")
    assert (state.state, state.restart_count) == ("running", 1)
    first = state.previous_id  # the first container, kept for logs --previous
    # The second exit: backing off, the container waits in CrashLoopBackOff.
    record = cli.wait_exit("crasher")
    state = record.state("c")
    assert (state.state, state.reason, state.exit_code) == ("waiting", "CrashLoopBackOff", 1)
    assert state.message == f"back-off 10s restarting failed container=c pod={who}"
    assert [(e.type, e.reason, e.message) for e in record.events if e.reason == "BackOff"] == [
        ("Warning", "BackOff", f"Back-off restarting failed container c in pod {who}")
    ]
    assert cli("get", "pods").stdout.splitlines()[1].split()[:4] == ["crasher", "0/1", "CrashLoopBackOff", "1"]
    assert cli("logs", "crasher").stdout == "crashing\n"
    assert cli("logs", "crasher", "--previous").stdout == "crashing\n"
    assert cli.node().sync_pod("crasher").state("c").reason == "CrashLoopBackOff"  # still backing off
    # Ten seconds later on the node's clock: restarted, and the previous container is now the
    # second one (the first is removed, with its bundle).
    assert cli("sync", "--advance", "10s").returncode in (0, 1)
    state = cli.record("crasher").state("c")
    assert state.restart_count == 2 and state.reason != "CrashLoopBackOff"
    assert not os.path.exists(os.path.join(cli.root, "runtime", "oci", "bundles", first))
    # The next exit doubles the backoff.
    state = cli.wait_exit("crasher").state("c")
    assert state.message == f"back-off 20s restarting failed container=c pod={who}"


def test_writes_fail_with_the_containers_own_read_only_error(cli: Cli, reg: peers.Registry, tmp_path: Any) -> None:
    assert cli.apply(tmp_path, _pod(reg, "sleeper", ["sleep", "3600"])).returncode == 0
    done = cli("exec", "sleeper", "--real", "--", "touch", "/volume/new")
    assert (done.returncode, done.stderr) == (
        1,
        "touch: /volume/new: Read-only file system\ncommand terminated with exit code 1\n",
    )
    # exec --real runs in the running container: its PID 1 is the Pod's command.
    done = cli("exec", "sleeper", "--real", "--", "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; cat /volume/file")
    assert (done.returncode, done.stdout) == (0, "sleep 3600 1\n"), done.stderr
    options = _container_mount_options(cli, "sleeper", "/volume")
    assert {"ro", "nosuid", "nodev"} <= set(options) and "noexec" not in options
    # The root filesystem is the container's own and writable (an overlay over the image's tree).
    done = cli("exec", "sleeper", "--real", "--", "sh", "-c", "touch /made && ls /made && cat /etc/os-release")
    assert done.returncode == 0 and done.stdout.startswith('/made\nPRETTY_NAME="BusyBox stand-in')
    started = time.monotonic()
    assert cli("delete", "pod", "sleeper", "--grace-period", "1s").returncode == 0
    assert time.monotonic() - started < 60  # sleep ignores SIGTERM as PID 1: SIGKILL after the grace


def _container_mount_options(cli: Cli, pod: str, target: str) -> list[str]:
    done = cli("exec", pod, "--real", "--", "cat", "/proc/self/mountinfo")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    [row] = [r for r in rows if r[4] == target]
    return row[5].split(",")


def test_crio_mounts_a_file_sub_path_and_one_bind_per_artifact_file(
    node_root: str, conf: str, reg: peers.Registry, tmp_path: Any
) -> None:
    crio = Cli(node_root, conf, "--run-containers", "--runtime", "crio")
    before = _mountinfo()
    try:
        doc = _pod(reg, "files", ["sleep", "3600"], sub_path="file")
        doc["spec"]["containers"][0]["volumeMounts"].append({"name": "a", "mountPath": "/artifact"})
        doc["spec"]["containers"][0]["volumeMounts"].append({"name": "v", "mountPath": "/d", "subPath": "dir"})
        doc["spec"]["volumes"].append({"name": "a", "image": {"reference": _ref(reg, "artifact-raw")}})
        assert crio.apply(tmp_path, doc).returncode == 0
        script = "cat /volume; cat /artifact/dir/file /artifact/file; cat /d/file"
        done = crio("exec", "files", "--real", "--", "sh", "-c", script)
        assert (done.returncode, done.stdout) == (0, "2\n1\n2\n1\n"), done.stderr
        done = crio("exec", "files", "--real", "--", "cat", "/proc/self/mountinfo")
        rows = {r.split()[4]: r.split()[5].split(",") for r in done.stdout.splitlines()}
        for target in ("/volume", "/artifact/dir/file", "/artifact/file", "/d"):  # a bind per blob file
            assert {"ro", "nosuid", "nodev"} <= set(rows[target]), target
        # A directory is an overlay with lower dirs only, as CRI-O mounts it.
        [fstype] = [r.split(" - ")[1].split()[0] for r in done.stdout.splitlines() if r.split()[4] == "/d"]
        assert fstype == "overlay"
        done = crio("exec", "files", "--real", "--", "touch", "/d/new")
        assert (done.returncode, done.stderr) == (
            1,
            "touch: /d/new: Read-only file system\ncommand terminated with exit code 1\n",
        )
        assert "/artifact" not in rows
        done = crio("exec", "files", "--real", "--", "sh", "-c", "echo x > /artifact/file")
        assert done.returncode != 0 and "Read-only file system" in done.stderr
    finally:
        crio("delete", "pod", "files", "--grace-period", "0s")
    _assert_nothing_left(crio, before)


# --- exec --real without running containers: a one-off container --------------------------------------


def test_exec_real_runs_a_one_off_container(sim: Cli, reg: peers.Registry, tmp_path: Any) -> None:
    assert sim.apply(tmp_path, _pod(reg, "p", ["sleep", "infinity"])).returncode == 0
    done = sim("exec", "p", "--real", "--", "cat", "/volume/file")
    assert (done.returncode, done.stdout) == (0, "1\n"), done.stderr
    # The image's own userland, users and wording.
    done = sim("exec", "p", "--real", "--", "sh", "-c", "whoami; hostname; ls /volume; cat /proc/1/comm; true")
    assert (done.returncode, done.stdout) == (0, "root\np\nfile\nsh\n"), done.stderr
    done = sim("exec", "p", "--real", "--", "sh", "-c", "exit 7")
    assert done.returncode == 7
    done = sim("exec", "p", "--real", "--", "touch", "/volume/x")
    assert (done.returncode, done.stderr) == (
        1,
        "touch: /volume/x: Read-only file system\ncommand terminated with exit code 1\n",
    )
    done = sim("exec", "p", "--real", "--", "imagevol-no-such-command")
    assert done.returncode == 127 and "executable file not found" in done.stderr and sim.root not in done.stderr
    # Each one-off container is gone: the simulated container is still the only one.
    assert sim("exec", "p", "--", "cat", "/volume/file").stdout == "1\n"
    assert os.listdir(os.path.join(sim.root, "runtime", "oci", "bundles")) == []


def test_a_symlink_swapped_in_after_create_cannot_redirect_the_bind(
    sim: Cli, reg: peers.Registry, tmp_path: Any
) -> None:
    """The sub path was resolved at create time; the staging helper binds from the fd it re-opens
    along the recorded symlink-free path, checked to be the same inode. A symlink to the host's
    ``/etc`` swapped in for ``dir`` (or another directory renamed over it) is refused: the container
    never sees the host's files nor the replacement."""
    assert sim.apply(tmp_path, _pod(reg, "p", ["sleep", "infinity"])).returncode == 0
    node = sim.node()
    [mount] = node.runtime.container_status(node.get_pod("p").state("c").container_id).mounts  # type: ignore[union-attr]
    tree = node.snapshots.path(type(node.snapshots.published()[0]).parse(mount.snapshot))
    os.rename(os.path.join(tree, "dir"), os.path.join(tree, "dir.orig"))
    for swap in (_symlink("/etc"), _other_dir()):
        swap(os.path.join(tree, "dir"))
        done = sim("exec", "p", "--real", "--", "sh", "-c", "ls /volume; cat /volume/file /volume/hostname")
        assert done.returncode != 0
        assert "changed since it was mounted" in done.stderr and tree not in done.stderr
        assert done.stdout == ""  # neither the host's /etc nor the replacement was shown
        _remove(os.path.join(tree, "dir"))
    os.rename(os.path.join(tree, "dir.orig"), os.path.join(tree, "dir"))
    assert sim("exec", "p", "--real", "--", "cat", "/volume/file").stdout == "1\n"


def _symlink(target: str) -> Callable[[str], None]:
    return lambda path: os.symlink(target, path)


def _other_dir() -> Callable[[str], None]:
    def make(path: str) -> None:
        os.mkdir(path)
        with open(os.path.join(path, "file"), "w") as f:
            f.write("evil\n")

    return make


def _remove(path: str) -> None:
    if os.path.islink(path):
        os.unlink(path)
    else:
        os.unlink(os.path.join(path, "file"))
        os.rmdir(path)


def test_a_missing_container_image_never_runs(cli: Cli, reg: peers.Registry, tmp_path: Any) -> None:
    doc = _pod(reg, "p", ["cat", "/volume/file"])
    doc["spec"]["containers"][0]["image"] = _ref(reg, "no-such-image")
    done = cli.apply(tmp_path, doc)
    assert done.returncode == 1 and "c: Waiting (ErrImagePull: " in done.stdout
    assert cli.node().runtime.list_containers() == []
    assert not os.path.isdir(os.path.join(cli.root, "runtime", "oci", "bundles")) or not os.listdir(
        os.path.join(cli.root, "runtime", "oci", "bundles")
    )


def test_generated_config_follows_the_cri(cli: Cli, reg: peers.Registry, tmp_path: Any) -> None:
    """The bundle's config.json: the Pod's command, the image's env, the default mounts, the image
    volume as a staged read-only bind; and the container sees exactly that."""
    doc = _pod(reg, "p", ["sleep", "3600"])
    doc["spec"]["containers"][0]["env"] = [{"name": "GREETING", "value": "hi"}]
    assert cli.apply(tmp_path, doc).returncode == 0
    cid = cli.record("p").state("c").container_id
    with open(os.path.join(cli.root, "runtime", "oci", "bundles", cid, "config.json")) as f:
        config = json.load(f)
    assert config["process"]["args"] == ["sleep", "3600"]
    assert "GREETING=hi" in config["process"]["env"] and config["process"]["env"][0].startswith("PATH=")
    [volume] = [m for m in config["mounts"] if m["destination"] == "/volume"]
    assert volume["type"] == "bind" and volume["options"] == ["rbind", "ro", "nosuid", "nodev", "rprivate"]
    assert volume["source"].endswith("/stage/0")
    done = cli("exec", "p", "--real", "--", "sh", "-c", "echo $GREETING")
    assert done.stdout == "hi\n"


def test_a_command_that_is_not_there_is_a_start_error(cli: Cli, reg: peers.Registry, tmp_path: Any) -> None:
    assert cli.apply(tmp_path, _pod(reg, "p", ["no-such-command"], policy="Never")).returncode == 0
    state = cli.wait_exit("p").state("c")
    assert (state.state, state.reason, state.exit_code) == ("terminated", "StartError", 128)
    assert state.message == (
        'OCI runtime create failed: unable to start container process: exec: "no-such-command": '
        "executable file not found in $PATH: unknown"
    )
    assert cli("logs", "p").stdout == ""  # runc's complaint is the status message, not the log


def test_a_container_whose_monitor_died_is_killed_and_restarted(cli: Cli, reg: peers.Registry, tmp_path: Any) -> None:
    """Crash recovery: the monitor is gone (killed); the next look at the container kills what is
    left of it, reports it exited (255, as containerd reports a task it lost) and the kubelet
    restarts it by its policy."""
    assert cli.apply(tmp_path, _pod(reg, "p", ["sleep", "3600"])).returncode == 0
    cid = cli.record("p").state("c").container_id
    bundle = os.path.join(cli.root, "runtime", "oci", "bundles", cid)
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(bundle, "status.json")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with open(os.path.join(bundle, "status.json")) as f:
        status = json.load(f)
    os.kill(status["monitor_pid"], 9)
    while runc.alive(status["monitor_pid"], status["monitor_start"]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    state = cli.node().sync_pod("p").state("c")
    assert (state.restart_count, state.state) == (1, "running")
    previous = cli.node().runtime.container_status(state.previous_id)
    assert previous is not None and (previous.state, previous.exit_code, previous.reason) == (
        runc.EXITED,
        255,
        "Unknown",
    )
    runc_list = ["runc", "--root", os.path.join(cli.root, "runtime", "oci", "runc"), "list", "-q"]
    while not (listed := subprocess.run(runc_list, capture_output=True, text=True, check=True)).stdout.strip():
        assert time.monotonic() < deadline, "the restarted container never ran"
        time.sleep(0.05)
    assert listed.stdout.split() == [state.container_id]  # the lost one is gone


def test_delete_right_after_apply_leaves_nothing(cli: Cli, reg: peers.Registry, tmp_path: Any) -> None:
    """StartContainer returns once the monitor recorded the start, so a delete that follows at once
    finds the container to stop (no monitor or runc container is left to start behind its back)."""
    for n in range(3):
        assert cli.apply(tmp_path, _pod(reg, f"p{n}", ["sleep", "3600"])).returncode == 0
        assert cli("delete", "pod", f"p{n}", "--grace-period", "0s").returncode == 0
        assert _monitors(cli.root) == []


def test_init_containers_run_to_completion_first(cli: Cli, reg: peers.Registry, tmp_path: Any) -> None:
    doc = _pod(reg, "p", ["cat", "/volume/file"], policy="Never")
    init = container("init", ("v", "/volume", "dir"), image=_ref(reg, "debian"), command=["sh", "-c", "exit 3"])
    doc["spec"]["initContainers"] = [init]
    cli.apply(tmp_path, doc)
    record = cli.record("p")
    assert (record.state("init").state, record.state("c").container_id) == ("running", "")  # c waits
    record = cli.wait_exit("p", "init")
    init_state, state = record.state("init"), record.state("c")
    # restartPolicy Never: a failed init container fails the Pod; the app container never starts.
    assert (init_state.state, init_state.reason, init_state.exit_code) == ("terminated", "Error", 3)
    assert (state.state, state.container_id) == ("waiting", "")
    assert cli("get", "pods").stdout.splitlines()[1].split()[:3] == ["p", "0/1", "Init:Error"]


def test_the_app_container_starts_once_its_init_container_completed(
    cli: Cli, reg: peers.Registry, tmp_path: Any
) -> None:
    doc = _pod(reg, "p", ["sh", "-c", "cat /volume/file; echo app"], policy="Never")
    doc["spec"]["initContainers"] = [
        container("init", ("v", "/volume", "dir"), image=_ref(reg, "debian"), command=["sh", "-c", "echo init"])
    ]
    cli.apply(tmp_path, doc)
    record = cli.wait_exit("p", "init")
    assert (record.state("init").reason, record.state("c").state) == ("Completed", "running")
    record = cli.wait_exit("p", "c")
    assert (record.state("c").reason, record.phase) == ("Completed", "Succeeded")
    assert (cli("logs", "p", "-c", "init").stdout, cli("logs", "p").stdout) == ("init\n", "1\napp\n")
