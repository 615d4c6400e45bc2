"""The CLI's conventions, through the installed ``imagevol`` entry point as a user runs it:
namespaces, ``-o`` formats shaped like kubectl's, apply per document, the documented exit codes
(Ctrl-C included), and a description and help text on every command and option."""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from imagevol.cli._main import build_parser
from imagevol.testing.pods import container, image_volume, pod_doc, to_yaml
from tests.helpers.paths import REPO
from tests.helpers.peers import require

#: The console script pip wrote next to this interpreter (scripts/setup installs the package).
IMAGEVOL = os.path.join(os.path.dirname(sys.executable), "imagevol")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEVOL")}
    env["IMAGEVOL_ROOT"] = str(root)
    return env


#: Run argv with SIGINT at its default disposition. Ctrl-C on a terminal reaches a process whose
#: SIGINT is not ignored; a test run started in the background of a non-interactive shell would
#: otherwise hand its children SIGINT ignored (and exec keeps a default disposition as it is).
_WITH_SIGINT = (
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])",
)


class Cli:
    """``imagevol`` on one node root, with the demo's registries.conf."""

    def __init__(self, root: Path, demo: Path) -> None:
        self.root, self.demo = root, demo

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [IMAGEVOL, *args],
            env=_env(self.root),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert "Traceback" not in r.stderr, r.stderr
        return r

    def ok(self, *args: str, stdin: str | None = None) -> str:
        r = self(*args, stdin=stdin)
        assert r.returncode == 0, f"{args}: {r.stdout}{r.stderr}"
        return r.stdout

    def apply(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        # The registries after the command: global options are accepted there too.
        return self("apply", *args, "--registries", str(self.demo / "registries.conf"), stdin=stdin)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``imagevol demo DIR``, once for the module (tests/test_wheel.py runs it from a wheel too)."""
    assert os.access(IMAGEVOL, os.X_OK), f"no installed entry point at {IMAGEVOL}: run scripts/setup"
    d = tmp_path_factory.mktemp("demo") / "demo"
    r = subprocess.run([IMAGEVOL, "demo", str(d)], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and (d / "registries.conf").is_file() and (d / "pod.yaml").is_file(), r.stderr
    return d


@pytest.fixture
def cli(tmp_path: Path, demo_dir: Path) -> Cli:
    return Cli(tmp_path / "node", demo_dir)


def _pod(name: str, namespace: str = "") -> str:
    doc = pod_doc(name, [container("shell", ("volume", "/volume", "dir"))], [image_volume("volume", _REF)])
    if namespace:
        doc["metadata"]["namespace"] = namespace
    return to_yaml(doc)


_REF = "quay.io/crio/artifact:v2"


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    """A directory as ``kubectl apply -f DIR`` reads it: a Pod in team1, a file with an unsupported
    object and a Pod, an invalid Pod in JSON, and a file of another extension that is not read."""
    d = tmp_path / "manifests"
    d.mkdir()
    (d / "a.yaml").write_text(_pod("p1", "team1"))
    (d / "b.yml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n---\n" + _pod("p2"))
    bad = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "Bad_Name"},
           "spec": {"containers": [{"name": "c", "image": "x"}]}}  # fmt: skip
    (d / "c.json").write_text(json.dumps(bad))
    (d / "notes.txt").write_text("kind: [this is not read\n")
    return d


# --- apply -------------------------------------------------------------------------------------------


def test_apply_reports_each_document_and_applies_the_rest(cli: Cli, manifests: Path) -> None:
    r = cli.apply("-f", str(manifests), "-o", "name")
    assert r.returncode == 1  # something failed: reported at the end
    assert r.stdout.splitlines() == ["pod/p1", "pod/p2"]
    assert 'The ConfigMap "cm" is invalid' in r.stderr
    assert 'The Pod "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name"' in r.stderr
    assert "notes.txt" not in r.stderr
    listed = cli.ok("get", "pods", "-A", "-o", "name")
    assert sorted(listed.split()) == ["pod/p1", "pod/p2"]  # the valid ones applied, the invalid one not


def test_apply_lines_say_created_then_unchanged(cli: Cli, tmp_path: Path) -> None:
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text(_pod("one"))
    two.write_text(_pod("two"))
    first = cli.apply("-f", str(one), "-f", str(two))
    assert first.returncode == 0, first.stderr
    assert [ln for ln in first.stdout.splitlines() if ln.startswith("pod/")] == ["pod/one created", "pod/two created"]
    again = cli.apply("-f", "-", stdin=_pod("one"))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == "pod/one unchanged"


def test_apply_of_nothing_is_refused(cli: Cli, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, stdin in ((("-f", "-"), ""), (("-f", str(empty)), None)):
        r = cli.apply(*args, stdin=stdin)
        assert (r.returncode, r.stderr) == (1, "error: no objects passed to apply\n")
    assert cli.ok("get", "pods", "-A", "-o", "name") == ""


# --- namespaces -------------------------------------------------------------------------------------------


def test_a_pod_in_another_namespace_is_reachable(cli: Cli, manifests: Path) -> None:
    cli.apply("-f", str(manifests))
    assert "p1" not in cli.ok("get", "pods")  # default namespace only
    assert re.search(r"^p1\s+1/1\s+Running", cli.ok("-n", "team1", "get", "pods"), re.M)
    table = cli.ok("get", "pods", "-A").splitlines()
    assert table[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert sorted(line.split()[:2] for line in table[1:]) == [["default", "p2"], ["team1", "p1"]]
    assert cli.ok("exec", "p1", "-n", "team1", "-c", "shell", "--", "cat", "/volume/file") == "1\n"
    assert "Namespace:        team1" in cli.ok("describe", "pod", "p1", "--namespace", "team1")
    cli.ok("logs", "p1", "-n", "team1")
    missing = cli("delete", "pod", "p1")  # not in default
    assert (missing.returncode, missing.stderr) == (1, 'Error from server (NotFound): pods "p1" not found\n')
    assert cli.ok("delete", "pod", "p1", "-n", "team1") == 'pod "p1" deleted\n'
    assert cli.ok("get", "pods", "-A", "-o", "name") == "pod/p2\n"


# --- output shapes -----------------------------------------------------------------------------------------


def test_get_pod_yaml_is_shaped_like_the_kubernetes_api(cli: Cli, tmp_path: Path) -> None:
    assert cli.apply("-f", "-", stdin=_pod("web", "team1")).returncode == 0
    pod = yaml.safe_load(cli.ok("get", "pod", "web", "-n", "team1", "-o", "yaml"))
    assert (pod["apiVersion"], pod["kind"]) == ("v1", "Pod")
    meta = pod["metadata"]
    assert (meta["name"], meta["namespace"]) == ("web", "team1")
    assert re.fullmatch(r"[0-9a-f-]{36}", meta["uid"]) and RFC3339.match(meta["creationTimestamp"])
    assert pod["spec"]["volumes"][0]["image"] == {"reference": _REF, "pullPolicy": "IfNotPresent"}
    status = pod["status"]
    assert status["phase"] == "Running" and RFC3339.match(status["startTime"])
    conditions = {c["type"]: c for c in status["conditions"]}
    assert set(conditions) >= {"PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"}
    assert all(c["status"] == "True" and RFC3339.match(c["lastTransitionTime"]) for c in conditions.values())
    (shell,) = status["containerStatuses"]
    assert (shell["name"], shell["ready"], shell["started"], shell["restartCount"]) == ("shell", True, True, 0)
    assert RFC3339.match(shell["state"]["running"]["startedAt"])
    assert [m["mountPath"] for m in shell["volumeMounts"]] == ["/volume"]

    as_json = json.loads(cli.ok("get", "pods", "-n", "team1", "-o", "json"))
    assert (as_json["apiVersion"], as_json["kind"]) == ("v1", "List")
    assert [i["metadata"]["name"] for i in as_json["items"]] == ["web"]
    assert as_json["items"][0]["status"]["phase"] == "Running"


def test_table_shapes_of_pods_images_and_events(cli: Cli) -> None:
    assert cli.apply("-f", str(cli.demo / "pod.yaml")).returncode == 0
    wide = cli.ok("get", "pods", "-o", "wide").splitlines()
    assert re.split(r"\s{2,}", wide[0]) == [
        "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE", "READINESS GATES"]  # fmt: skip
    assert cli.ok("get", "pod", "image-volume", "-o", "name") == "pod/image-volume\n"

    images = cli.ok("get", "images").splitlines()
    assert re.split(r"\s{2,}", images[0].strip()) == ["IMAGE", "TAG", "IMAGE ID", "SIZE"]
    # The image volume's image and the container's own (the BusyBox stand-in for debian).
    assert sorted(row.split()[:2] for row in images[1:]) == [
        ["docker.io/library/debian", "latest"], ["quay.io/crio/artifact", "v2"]]  # fmt: skip
    listed = json.loads(cli.ok("get", "images", "-o", "json"))
    (image,) = [i for i in listed["images"] if i["repoTags"] == [_REF]]
    assert image["id"].startswith("sha256:") and int(image["size"]) > 0
    assert len(listed["images"]) == 2

    events = cli.ok("get", "events").splitlines()
    assert re.split(r"\s{2,}", events[0].strip()) == ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert any("Started" in line and "pod/image-volume" in line for line in events[1:])
    items = json.loads(cli.ok("get", "events", "-o", "json"))["items"]
    assert {"Pulled", "Created", "Started"} <= {e["reason"] for e in items}
    assert {e["involvedObject"]["name"] for e in items} == {"image-volume"}


def test_tree_and_describe_show_the_image_volume(cli: Cli) -> None:
    assert cli.apply("-f", str(cli.demo / "pod.yaml")).returncode == 0
    tree = cli.ok("tree", "image-volume", "-c", "shell")
    assert _REF in tree and 'sub path "dir"' in tree and "file" in tree and "[-rw-r--r--]" in tree
    described = cli.ok("describe", "pod", "image-volume")
    assert "Reference:   " + _REF in described and re.search(r"Digest:\s+sha256:[0-9a-f]{64}", described)
    # exec's exit status is the command's (docs/cli.md, "Exit status").
    assert cli("exec", "image-volume", "--", "ls", "/volume").returncode == 0
    missing = cli("exec", "image-volume", "--", "cat", "/volume/nope")
    # As kubectl prints it: the command's own stderr, then its trailer; the exit status is the command's.
    assert (missing.returncode, missing.stderr) == (
        1,
        "cat: /volume/nope: No such file or directory\ncommand terminated with exit code 1\n",
    )
    # cat goes on after an operand that fails, as cat does.
    both = cli("exec", "image-volume", "--", "cat", "/volume/nope", "/volume/file", "/volume/gone")
    assert (both.returncode, both.stdout) == (1, "1\n")
    assert both.stderr.splitlines() == [
        "cat: /volume/nope: No such file or directory",
        "cat: /volume/gone: No such file or directory",
        "command terminated with exit code 1",
    ]


# --- exit codes (docs/cli.md, "Exit status") ------------------------------------------------------------------


def test_exit_codes_0_1_2(cli: Cli) -> None:
    assert cli("get", "pods").returncode == 0
    nope = cli("get", "pod", "nope")
    assert (nope.returncode, nope.stderr) == (1, 'Error from server (NotFound): pods "nope" not found\n')
    usage = cli("get", "pods", "--no-such-option")
    assert usage.returncode == 2 and usage.stderr.startswith("usage: ")
    assert "unrecognized arguments: --no-such-option" in usage.stderr


@pytest.mark.parametrize(
    ("args", "ready"),
    [
        (("sync", "--watch", "--interval", "100ms"), "NAME"),
        (("serve-metrics", "--port", "0"), "serving metrics on http://127.0.0.1:"),
    ],
    ids=["sync --watch", "serve-metrics"],
)
def test_ctrl_c_ends_long_running_commands_quietly_with_130(cli: Cli, args: tuple[str, ...], ready: str) -> None:
    assert cli.apply("-f", str(cli.demo / "pod.yaml")).returncode == 0
    proc = subprocess.Popen(
        [*_WITH_SIGINT, IMAGEVOL, *args],
        env=_env(cli.root),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the command is running once it has said something
        assert first.startswith(ready), first
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert err == ""  # quiet: no traceback, no KeyboardInterrupt


def test_serve_metrics_stops_listening_after_ctrl_c(cli: Cli) -> None:
    proc = subprocess.Popen(
        [*_WITH_SIGINT, IMAGEVOL, "serve-metrics", "--port", "0"],
        env=_env(cli.root),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    port = int(re.search(r":(\d+)/metrics", line).group(1))  # type: ignore[union-attr]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                break
        time.sleep(0.05)
    else:
        pytest.fail("still listening after Ctrl-C")


# --- help ----------------------------------------------------------------------------------------------


@functools.cache
def _subparsers() -> dict[str, tuple[argparse.ArgumentParser, str]]:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: str(c.help or "") for c in sub._choices_actions}
    # Each command's parser stands in until the command is parsed: take the real one it builds.
    return {name: (p.parser(), helps.get(name, "")) for name, p in sub.choices.items()}


@pytest.mark.parametrize("name", sorted(_subparsers()))
def test_every_command_has_a_description_and_help_for_every_option(name: str) -> None:
    parser, summary = _subparsers()[name]
    assert summary.strip(), f"{name}: no one-line help in 'imagevol --help'"
    assert parser.description and len(parser.description) > len(name) + 10, f"{name}: no description"
    for action in parser._actions:
        what = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS and action.help.strip(), f"{name} {what}: no help"
    text = parser.format_help()
    # User-facing text: no requirement IDs, no tracebacks, no host paths.
    assert not re.search(r"\bR\d+\.\d+\b", text), text
    assert os.path.expanduser("~") not in text or os.path.expanduser("~") == "/"


def test_help_through_the_entry_point(tmp_path: Path) -> None:
    for args in (("--help",), ("apply", "--help"), ("get", "--help")):
        r = subprocess.run(
            [IMAGEVOL, *args], env=_env(tmp_path), capture_output=True, text=True, timeout=60, check=False
        )
        assert r.returncode == 0 and r.stdout.startswith("usage: imagevol") and r.stderr == "", r.stderr


# --- metrics where Prometheus lives -------------------------------------------------------------------------


def test_serve_metrics_negotiates_openmetrics(cli: Cli) -> None:
    proc = subprocess.Popen(
        [*_WITH_SIGINT, IMAGEVOL, "serve-metrics", "--address", "127.0.0.1", "--port", "0"],
        env=_env(cli.root),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
        assert m is not None, line
        url = f"http://127.0.0.1:{m.group(1)}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            assert b"kubelet_image_volume_requested_total 0.0" in r.read()
        ask = urllib.request.Request(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        with urllib.request.urlopen(ask, timeout=10) as r:
            assert r.headers["Content-Type"].startswith("application/openmetrics-text")
            body = r.read()
        assert body.endswith(b"# EOF\n") and b"kubelet_image_volume_requested_total 0.0" in body
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_documented_scrape_config_is_valid(tmp_path: Path) -> None:
    promtool = require("promtool")
    with open(os.path.join(REPO, "docs", "metrics.md")) as f:
        m = re.search(r"```yaml\n(scrape_configs:.*?)```", f.read(), re.S)
    assert m is not None, "docs/metrics.md lost its scrape config"
    config = tmp_path / "prometheus.yml"
    config.write_text(m.group(1))
    assert yaml.safe_load(m.group(1))["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:10255"]
    r = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("command", [["demo"], ["fixtures", "--demo"]])
def test_demo_without_busybox_is_one_line_and_writes_no_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    from imagevol.cli import main
    from imagevol.testing import images

    monkeypatch.setattr(images, "host_busybox", lambda path=images.HOST_BUSYBOX: None)
    target = tmp_path / "demo"
    code = main(["--root", str(tmp_path / "node"), *command, str(target)])
    err = capsys.readouterr().err
    assert (code, err) == (
        1,
        "error: cannot build the demo's debian stand-in: "
        f"no BusyBox at {images.HOST_BUSYBOX}: install busybox-static\n",
    )
    # Nothing half-built is left: no layout, no registries.conf or Pod, no staging directory.
    assert not target.exists() or not any(target.iterdir())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("demo")] in ([], ["demo"])
