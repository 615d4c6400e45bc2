"""The walking skeleton through the CLI: the blog's Pod, offline, and its failure paths."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import yaml

from imagevol.cli import main
from imagevol.testing.pods import container, image_volume, pod_doc, to_yaml, volume_mount
from tests.helpers.paths import EXAMPLES

POD = os.path.join(EXAMPLES, "image-volume.yaml")
REGISTRIES = os.path.join(EXAMPLES, "registries.conf")


def offline_registries(root: str) -> str:
    """examples/registries.conf with the primary location moved to a closed port on 127.0.0.1,
    so that a tag the mirror lacks fails at once instead of going to quay.io."""
    with open(REGISTRIES) as f:
        text = f.read()
    layout = os.path.join(EXAMPLES, "oci-layout")
    text = text.replace('location = "quay.io/crio/artifact"', 'location = "127.0.0.1:9/crio/artifact"')
    text = text.replace('location = "oci-layout:oci-layout"', f'location = "oci-layout:{layout}"')
    path = root.rstrip("/") + ".registries.conf"
    with open(path, "w") as f:
        f.write(text)
    return path


def imagevol(root: str, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--root", root, "--registries", offline_registries(root), *args], out=out)
    return code, out.getvalue()


def _pod(name: str, sub_path: str = "", reference: str = "quay.io/crio/artifact:v2", policy: str = "") -> str:
    mount = volume_mount("volume", "/volume", sub_path)
    return to_yaml(pod_doc(name, [container("shell", mount)], [image_volume("volume", reference, policy)]))


def _apply(root: str, tmp_path: object, text: str) -> tuple[int, str]:
    path = os.path.join(str(tmp_path), "pod.yaml")
    with open(path, "w") as f:
        f.write(text)
    return imagevol(root, "apply", "-f", path)


def test_blog_pod_runs_and_shows_the_sub_path(node_root: str) -> None:
    code, out = imagevol(node_root, "apply", "-f", POD)
    assert code == 0, out
    assert 'Pulling image "quay.io/crio/artifact:v2"' in out
    assert "Successfully pulled image" in out
    assert "shell: Running" in out
    code, out = imagevol(node_root, "exec", "image-volume", "-c", "shell", "--", "cat", "/volume/file")
    assert (code, out) == (0, "1\n")
    code, out = imagevol(node_root, "exec", "image-volume", "-c", "shell", "--", "ls", "/volume")
    assert (code, out) == (0, "file\n")


def test_the_example_pod_ships_verbatim() -> None:
    with open(POD) as f:
        doc = yaml.safe_load(f)
    assert doc["spec"]["volumes"] == [
        {"name": "volume", "image": {"reference": "quay.io/crio/artifact:v2", "pullPolicy": "IfNotPresent"}}
    ]
    assert doc["spec"]["containers"][0]["volumeMounts"][0]["subPath"] == "dir"


def test_exec_outside_every_mount_says_so(node_root: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert imagevol(node_root, "apply", "-f", POD)[0] == 0
    code, _ = imagevol(node_root, "exec", "image-volume", "--", "cat", "/etc/passwd")
    assert code == 1
    assert "not inside any image-volume mount" in capsys.readouterr().err


def test_state_persists_across_processes(node_root: str) -> None:
    """Separate invocations see one node: apply in one process, exec in another."""
    assert imagevol(node_root, "apply", "-f", POD)[0] == 0
    env = dict(os.environ, IMAGEVOL_ROOT=node_root)
    cmd = [sys.executable, "-m", "imagevol.cli", "exec", "image-volume", "-c", "shell", "--", "cat", "/volume/file"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout) == (0, "1\n"), result.stderr


def test_missing_sub_path_is_a_create_container_error(node_root: str, tmp_path: object) -> None:
    code, out = _apply(node_root, tmp_path, _pod("nope", sub_path="nope"))
    assert code == 1
    failed = [line for line in out.splitlines() if "Warning" in line and "Failed" in line]
    assert len(failed) == 1
    message = failed[0].split("spec.containers{shell}", 1)[1].strip()
    assert message.startswith("Error: ImageVolumeMountFailed:")
    assert '"nope"' in message and "no such file or directory" in message
    assert "shell: Waiting (CreateContainerError" in out
    code, metrics = imagevol(node_root, "metrics")
    assert "kubelet_image_volume_mounted_errors_total 1.0" in metrics
    assert "kubelet_image_volume_requested_total 1.0" in metrics
    assert "kubelet_image_volume_mounted_succeed_total 0.0" in metrics


def test_unknown_reference_is_err_image_pull(node_root: str, tmp_path: object) -> None:
    code, out = _apply(node_root, tmp_path, _pod("unknown", reference="quay.io/crio/artifact:nothing"))
    assert code == 1
    assert "shell: Waiting (ErrImagePull" in out
    assert "Error: ErrImagePull" in out


def test_never_with_nothing_local_is_err_image_never_pull(node_root: str, tmp_path: object) -> None:
    code, out = _apply(node_root, tmp_path, _pod("never", policy="Never"))
    assert code == 1
    assert 'Container image "quay.io/crio/artifact:v2" is not present with pull policy of Never' in out
    assert "shell: Waiting (ErrImageNeverPull" in out
    assert not os.listdir(os.path.join(node_root, "content", "blobs", "sha256"))


@pytest.mark.parametrize(
    ("sub_path", "reference", "policy", "expected"),
    [
        (
            "/abs",
            "quay.io/crio/artifact:v2",
            "",
            'spec.containers[0].volumeMounts.subPath: Invalid value: "/abs": must be a relative path',
        ),
        (
            "a/../b",
            "quay.io/crio/artifact:v2",
            "",
            "spec.containers[0].volumeMounts.subPath: Invalid value: \"a/../b\": must not contain '..'",
        ),
        (
            "",
            "quay.io/crio/artifact:v2",
            "Sometimes",
            'spec.volumes[0].image.pullPolicy: Unsupported value: "Sometimes": '
            'supported values: "Always", "IfNotPresent", "Never"',
        ),
        ("", "", "IfNotPresent", "spec.volumes[0].image.reference: Required value"),
    ],
)
def test_invalid_pods_are_rejected_with_upstream_wording(
    node_root: str,
    tmp_path: object,
    capsys: pytest.CaptureFixture[str],
    sub_path: str,
    reference: str,
    policy: str,
    expected: str,
) -> None:
    code, _ = _apply(node_root, tmp_path, _pod("bad", sub_path=sub_path, reference=reference, policy=policy))
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith('The Pod "bad" is invalid: ')
    assert expected in err
    # Nothing was pulled and no Pod was stored.
    assert not os.listdir(os.path.join(node_root, "content", "blobs", "sha256"))
    assert imagevol(node_root, "get", "pods")[1].splitlines()[1:] == []


def test_describe_and_delete(node_root: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert imagevol(node_root, "apply", "-f", POD)[0] == 0
    code, out = imagevol(node_root, "describe", "pod", "image-volume")
    assert code == 0
    assert '/volume from volume (ro,path="dir")' in out
    assert "Reference:   quay.io/crio/artifact:v2" in out
    assert imagevol(node_root, "delete", "pod", "image-volume") == (0, 'pod "image-volume" deleted\n')
    assert imagevol(node_root, "describe", "pod", "image-volume")[0] == 1
    assert 'pods "image-volume" not found' in capsys.readouterr().err
    # The mount released its lease on the snapshot.
    leases = os.path.join(node_root, "snapshots", ".leases")
    assert os.listdir(leases) == []


def test_the_example_registries_conf_mirrors_to_the_layout() -> None:
    from imagevol.content.sources.mirrors import RegistriesConfig
    from imagevol.oci.reference import parse_normalized

    conf = RegistriesConfig.load(REGISTRIES)
    sources = conf.pull_sources(parse_normalized("quay.io/crio/artifact:v2"))
    assert [(s.is_mirror, s.endpoint.location) for s in sources] == [
        (True, "oci-layout:" + os.path.join(EXAMPLES, "oci-layout")),
        (False, "quay.io"),
    ]
