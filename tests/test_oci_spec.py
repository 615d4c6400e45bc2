"""The real-runtime path without running anything: the OCI config a container gets (argv, env, user,
default mounts, each profile's image-volume mounts), the kubelet's restart rules and crash-loop
backoff, and what ``exec --real`` says where no OCI runtime can run (not root, no runc)."""

from __future__ import annotations

import io
import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagevol.cli import main
from imagevol.cri import ContainerStatus, MountStatus
from imagevol.errors import CreateContainerError
from imagevol.kubelet.events import EventRecorder
from imagevol.kubelet.pod_sync import ContainerState
from imagevol.kubelet.restarts import container_backoff, go_duration, in_backoff, observe, should_restart
from imagevol.node import Node, NodeConfig
from imagevol.runtime import oci_spec, runc
from imagevol.runtime.containerd import ContainerdRuntime
from imagevol.runtime.crio import CrioRuntime
from imagevol.testing.pods import container, image_volume, pod_doc, to_pod, to_yaml
from tests.helpers.fixture_node import container_image_registries

IMAGE = oci_spec.ImageConfig(env=("PATH=/bin", "A=image"), entrypoint=("/entry",), cmd=("default", "cmd"))


# --- process ------------------------------------------------------------------------------------------


def test_argv_follows_the_kubernetes_rules() -> None:
    assert oci_spec.process_args(IMAGE, (), ()) == ["/entry", "default", "cmd"]
    assert oci_spec.process_args(IMAGE, (), ("x",)) == ["/entry", "x"]  # args replace Cmd only
    assert oci_spec.process_args(IMAGE, ("sh",), ()) == ["sh"]  # command drops Entrypoint and Cmd
    assert oci_spec.process_args(IMAGE, ("sh",), ("-c", "true")) == ["sh", "-c", "true"]
    with pytest.raises(CreateContainerError, match="no command specified"):
        oci_spec.process_args(oci_spec.ImageConfig(), (), ())


def test_env_is_the_image_env_then_the_containers() -> None:
    assert oci_spec.merge_env(IMAGE.env, [("A", "pod"), ("B", "b")]) == ["PATH=/bin", "A=pod", "B=b"]
    assert oci_spec.merge_env((), [("B", "b")])[0].startswith("PATH=/usr/local/sbin:")


_NAMES = st.sampled_from(["PATH", "A", "B", "HOME", "X_1"])


@given(
    st.lists(st.tuples(_NAMES, st.text(max_size=5)), max_size=6),
    st.lists(st.tuples(_NAMES, st.text(max_size=5)), max_size=6),
)
def test_env_merge_keeps_first_positions_and_last_values(
    image: list[tuple[str, str]], pod: list[tuple[str, str]]
) -> None:
    merged = oci_spec.merge_env([f"{k}={v}" for k, v in image], pod)
    names = [item.partition("=")[0] for item in merged]
    assert len(names) == len(set(names)) and "PATH" in names
    expected = dict(image + pod)
    for item in merged:
        name, _, value = item.partition("=")
        assert value == expected.get(name, value)  # the last value of each name wins
    order = [k for k, _ in image + pod]
    given_names = [n for n in names if n in expected]
    assert given_names == sorted(set(order), key=order.index)  # where each name first appeared


def test_image_config_fields_of_the_wrong_type_are_refused() -> None:
    parsed = oci_spec.ImageConfig.parse(b'{"config": {"Cmd": ["sh"], "WorkingDir": "/w", "User": "nobody"}}')
    assert (parsed.cmd, parsed.working_dir, parsed.user) == (("sh",), "/w", "nobody")
    assert oci_spec.ImageConfig.parse(b"{}") == oci_spec.ImageConfig()
    for bad in (b'{"config": {"Cmd": "sh"}}', b'{"config": {"Env": [1]}}', b'{"config": []}', b"\xff"):
        with pytest.raises(CreateContainerError, match="image config"):
            oci_spec.ImageConfig.parse(bad)


PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:100::/home/app:/bin/sh\n"
GROUP = "root:x:0:\nusers:x:100:\nwheel:x:10:app\n"


@pytest.mark.parametrize(
    ("spec", "user"),
    [
        ("", oci_spec.User(0, 0)),
        ("app", oci_spec.User(1000, 100, (10,))),
        ("1000", oci_spec.User(1000, 100, (10,))),
        ("4242", oci_spec.User(4242, 0)),  # a uid not in passwd runs with gid 0
        ("app:wheel", oci_spec.User(1000, 10)),
        ("app:7", oci_spec.User(1000, 7, (10,))),
    ],
)
def test_users_resolve_against_the_images_own_files(spec: str, user: oci_spec.User) -> None:
    assert oci_spec.resolve_user(spec, PASSWD, GROUP) == user


def test_unknown_users_and_groups_fail_the_create() -> None:
    with pytest.raises(CreateContainerError, match="no users found"):
        oci_spec.resolve_user("ghost", PASSWD, GROUP)
    with pytest.raises(CreateContainerError, match="no groups found"):
        oci_spec.resolve_user("app:ghosts", PASSWD, GROUP)


def test_etc_passwd_is_read_inside_the_image(tmp_path: Any) -> None:
    """An image whose /etc/passwd is a link to the host's reads its own tree: the link is re-rooted."""
    root = os.path.join(str(tmp_path), "rootfs")
    os.makedirs(os.path.join(root, "etc"))
    os.symlink("/etc/shadow", os.path.join(root, "etc", "passwd"))
    os.symlink("../../../../../../etc/hostname", os.path.join(root, "etc", "group"))
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        assert oci_spec.read_etc_file(fd, "passwd") == ""
        assert oci_spec.read_etc_file(fd, "group") == ""
    finally:
        os.close(fd)


def test_the_generated_config_has_the_cri_defaults() -> None:
    volume = oci_spec.VolumeMount("/volume", "/bundle/stage/0", ("rbind", "ro", "nosuid", "nodev", "rprivate"))
    config = oci_spec.generate(
        argv=["sh"], env=["PATH=/bin"], cwd="", user=oci_spec.User(), hostname="p", volumes=[volume]
    )
    assert config["process"]["cwd"] == "/" and config["process"]["terminal"] is False
    assert config["process"]["capabilities"]["bounding"] == list(oci_spec.DEFAULT_CAPABILITIES)
    assert "CAP_SYS_ADMIN" not in config["process"]["capabilities"]["effective"]
    assert [m["destination"] for m in config["mounts"]][:2] == ["/proc", "/dev"]
    assert config["mounts"][-1] == {
        "destination": "/volume",
        "type": "bind",
        "source": "/bundle/stage/0",
        "options": ["rbind", "ro", "nosuid", "nodev", "rprivate"],
    }
    assert {n["type"] for n in config["linux"]["namespaces"]} == {"pid", "ipc", "uts", "mount", "network"}
    assert "/proc/kcore" in config["linux"]["maskedPaths"] and "/proc/sys" in config["linux"]["readonlyPaths"]


# --- each profile's image-volume mounts ---------------------------------------------------------------


def _status(**fields: Any) -> MountStatus:
    base: dict[str, Any] = {
        "container_path": "/volume", "image_id": "sha256:x", "user_specified_image": "x", "snapshot": "s",
        "real_path": "dir", "is_dir": True,
    }  # fmt: skip
    return MountStatus(**{**base, **fields})


def test_containerd_binds_every_image_volume_read_only_with_its_propagation() -> None:
    mounts = ContainerdRuntime.volume_mounts(
        ContainerdRuntime.__new__(ContainerdRuntime), _status(), "/s/0", "PROPAGATION_HOST_TO_CONTAINER", (), "/e"
    )
    assert [(m.type, m.source, m.options) for m in mounts] == [
        ("bind", "/s/0", ("rbind", "ro", "nosuid", "nodev", "rslave"))
    ]


def test_crio_mounts_directories_as_lower_only_overlays_and_artifacts_per_file() -> None:
    crio = CrioRuntime.__new__(CrioRuntime)
    [overlay] = crio.volume_mounts(_status(), "/s/0", "PROPAGATION_PRIVATE", (), "/e")
    assert (overlay.type, overlay.options) == ("overlay", ("ro", "nosuid", "nodev", "lowerdir=/s/0:/e"))
    [single] = crio.volume_mounts(_status(is_dir=False), "/s/0", "PROPAGATION_PRIVATE", (), "/e")
    assert (single.type, single.options[:4]) == ("bind", ("bind", "ro", "nosuid", "nodev"))
    files = crio.volume_mounts(_status(artifact=True), "/s/0", "PROPAGATION_PRIVATE", ("a", "d/b"), "/e")
    assert [(m.destination, m.source) for m in files] == [("/volume/a", "/s/0/a"), ("/volume/d/b", "/s/0/d/b")]
    assert all("ro" in m.options and "nosuid" in m.options and "nodev" in m.options for m in files)


# --- restarts -----------------------------------------------------------------------------------------


def _exited(code: int, finished: float) -> ContainerStatus:
    return ContainerStatus("0" * 64, "s", "c", "i", (), 0.0, state="CONTAINER_EXITED", exit_code=code,
                           finished_at=finished)  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "code", "restart"),
    [("Always", 0, True), ("Always", 1, True), ("", 0, True), ("OnFailure", 0, False), ("OnFailure", 2, True),
     ("Never", 1, False), ("Never", 0, False)],
)  # fmt: skip
def test_restart_policy(policy: str, code: int, restart: bool) -> None:
    doc = pod_doc("p", [container("c")])
    if policy:
        doc["spec"]["restartPolicy"] = policy
    state = ContainerState("c", "containers", state="running")
    observe(state, _exited(code, 5.0))
    assert (state.state, state.reason, state.exit_code) == ("terminated", "Completed" if code == 0 else "Error", code)
    assert should_restart(to_pod(doc), state) is restart


def test_crash_loop_backoff_doubles_to_five_minutes_and_resets_after_ten() -> None:
    pod = to_pod(pod_doc("p", [container("c")]))
    backoff = container_backoff()
    events: list[Any] = []
    state = ContainerState("c", "containers")
    clock = [1000.0]
    recorder = EventRecorder(events, clock=lambda: clock[0])
    waits = []
    for _ in range(7):
        state.finished_at = clock[0]
        if in_backoff(pod, state, backoff, clock[0], recorder):
            waits.append(state.message.split()[1])
            clock[0] += backoff.entries[next(iter(backoff.entries))][0]  # wait it out
            assert not in_backoff(pod, state, backoff, clock[0], recorder)
        clock[0] += 1  # runs for a second, then crashes again
    assert waits == ["10s", "20s", "40s", "1m20s", "2m40s", "5m0s"]
    assert events[0].message == f"Back-off restarting failed container c in pod p_default({pod.uid})"
    # Ten minutes without a crash: the backoff starts again at 10 s.
    clock[0] += 601
    state.finished_at = clock[0]
    assert not in_backoff(pod, state, backoff, clock[0], recorder)
    assert next(iter(backoff.entries.values()))[0] == 10.0


@given(st.integers(min_value=0, max_value=10 * 3600))
def test_go_duration_reads_back(seconds: int) -> None:
    text = go_duration(seconds)
    total, number = 0, ""
    for ch in text:
        if ch.isdigit():
            number += ch
        else:
            total += int(number) * {"h": 3600, "m": 60, "s": 1}[ch]
            number = ""
    assert total == seconds
    assert text == "0s" or not text.startswith("0")


# --- where nothing can run ----------------------------------------------------------------------------


def test_not_root_or_no_runc_is_said_in_one_sentence(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert runc.unavailable_reason() == (
        "no OCI runtime can run containers here: imagevol runs them with runc as root, and this is not root"
    )
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert runc.Runc(str(tmp_path), "/nonexistent/runc").unavailable() == (
        "no OCI runtime can run containers here: runc is not installed (Debian package runc)"
    )


def test_exec_real_without_an_oci_runtime_keeps_the_view(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, fixtures_layout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = os.path.join(str(tmp_path), "registries.conf")
    with open(conf, "w") as f:
        f.write('[[registry]]\nprefix = "lab.example/x"\nlocation = "lab.example/x"\n')
        f.write(f'[[registry.mirror]]\nlocation = "oci-layout:{fixtures_layout}"\n')
        f.write(container_image_registries(fixtures_layout))
    root = os.path.join(str(tmp_path), "node")
    doc = pod_doc("p", [container("c", ("v", "/volume", "dir"))], [image_volume("v", "lab.example/x:v2")])
    path = os.path.join(str(tmp_path), "p.yaml")
    with open(path, "w") as f:
        f.write(to_yaml(doc))
    base = ["--root", root, "--registries", conf]
    assert main([*base, "apply", "-f", path], out=io.StringIO()) == 0
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    capsys.readouterr()
    assert main([*base, "exec", "p", "--real", "--", "cat", "/volume/file"], out=io.StringIO()) == 1
    err = capsys.readouterr().err
    assert err == (
        "error: exec --real: no OCI runtime can run containers here: imagevol runs them with runc as root, and "
        "this is not root. Without --real, exec shows the container's view of its image volumes.\n"
    )
    out = io.StringIO()
    assert main([*base, "exec", "p", "--", "cat", "/volume/file"], out=out) == 0 and out.getvalue() == "1\n"
    # A node that runs containers refuses to create one it cannot run, and holds nothing for it.
    node = Node(NodeConfig(root=root, registries=conf, run_containers=True))
    before = node.runtime.list_containers()
    [applied] = node.apply(to_yaml(pod_doc("q", [container("c", ("v", "/volume", "dir"))], doc["spec"]["volumes"])))
    record = applied.record
    assert record is not None
    state = record.state("c")
    assert (state.state, state.reason) == ("waiting", "CreateContainerError")
    assert state.message == runc.unavailable_reason()
    assert node.runtime.list_containers() == before
    assert [len(node.snapshots.holders(k)) for k in node.snapshots.published()] == [
        len(node.snapshots.holders(k)) for k in node.snapshots.published()
    ]
    assert sorted(os.listdir(os.path.join(root, "runtime", "containers"))) == sorted(
        f"{c.id}{suffix}" for c in before for suffix in (".json", ".process")
    )


def test_crio_overlay_options_escape_what_would_split_them() -> None:
    crio = CrioRuntime.__new__(CrioRuntime)
    [overlay] = crio.volume_mounts(_status(), "/n,x:y/s/0", "PROPAGATION_PRIVATE", (), "/n,x:y/e")
    assert overlay.options[-1] == "lowerdir=/n\\,x\\:y/s/0:/n\\,x\\:y/e"
