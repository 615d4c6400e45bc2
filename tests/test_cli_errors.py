"""Every error path of the CLI, as a user meets it: a real ``imagevol`` process.

Each failure must be one plain line on standard error with the right exit status: no Python
traceback, no ``[Errno N]``, never the host path of the node's root, and the node unchanged. A
Hypothesis fuzz then throws hostile Pod files at ``apply`` with the same expectations.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from imagevol.cli import main
from imagevol.node import Node, NodeConfig
from imagevol.testing.pods import pod_doc
from tests.helpers.paths import EXAMPLES

IS_ROOT = os.geteuid() == 0
#: As root, drop the capabilities that bypass file permissions, so EACCES can happen.
NO_DAC = (
    ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]
    if IS_ROOT and shutil.which("setpriv")
    else []
)
POD = pod_doc("p")


@attrs.frozen
class Result:
    code: int
    out: str
    err: str


def imagevol(
    root: str, *args: str, stdin: bytes = b"", prefix: Sequence[str] = (), env: dict[str, str] | None = None
) -> Result:
    cmd = [*prefix, sys.executable, "-m", "imagevol.cli", "--root", root, *args]
    environ = {**os.environ, "HOME": os.path.dirname(root), **(env or {})}
    environ.pop("IMAGEVOL_TRACEBACK", None)
    proc = subprocess.run(cmd, input=stdin, capture_output=True, env=environ, timeout=120, check=False)
    return Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))


def assert_plain_failure(r: Result, root: str, code: int = 1, *, usage: bool = False) -> str:
    """The properties every failure has; returns the error line."""
    assert r.code == code, r
    for text in (r.out, r.err):
        assert "Traceback" not in text and "[Errno" not in text, text
        assert os.path.abspath(root) not in text, text
        assert "internal error" not in text, text
    # Lines end at "\n" only: str.splitlines() would also cut at U+0085 or U+2028 quoted from a file.
    lines = r.err.split("\n")[:-1] if r.err.endswith("\n") else r.err.split("\n")
    if usage:  # argparse: the usage line(s), then one error line
        assert lines[0].startswith("usage: imagevol") and lines[-1].startswith("imagevol"), r.err
        assert ": error: " in lines[-1]
        return lines[-1]
    assert len(lines) == 1 and r.err.endswith("\n"), r.err
    # Text quoted from a hostile file is escaped: no terminal escape, carriage return or U+0085.
    assert lines[0].isprintable(), r.err
    return lines[0]


def stored(root: str) -> list[str]:
    """Every file under the root except locks: what a failed command must not change."""
    out = []
    for dirpath, _, files in os.walk(root):
        out += [os.path.relpath(os.path.join(dirpath, f), root) for f in files if "/locks" not in dirpath]
    return sorted(out)


@pytest.fixture
def root(tmp_path: Any) -> str:
    path = os.path.join(str(tmp_path), "node")
    Node(NodeConfig(root=path, hermetic=True))  # an initialised, empty node
    return path


def write(tmp_path: Any, name: str, data: bytes | str) -> str:
    path = os.path.join(str(tmp_path), name)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return path


# --- one table of failures ---------------------------------------------------------------------------


def _laughs() -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return yaml.safe_dump(POD) + "\n".join(lines) + "\n"


@attrs.frozen
class Case:
    id: str
    args: Callable[[str, Any], list[str]]
    expect: str
    code: int = 1
    stdin: bytes = b""
    usage: bool = False


CASES = [
    Case("missing file", lambda r, t: ["apply", "-f", os.path.join(str(t), "nope.yaml")], "does not exist"),
    Case("directory without manifests", lambda r, t: ["apply", "-f", str(t)], "error: no objects passed to apply"),
    Case("empty standard input", lambda r, t: ["apply", "-f", "-"], "error: no objects passed to apply"),
    Case(
        "name too long for the OS",
        lambda r, t: ["apply", "-f", os.path.join(str(t), "x" * 300)],
        "file name too long",
    ),
    Case("path too long for the OS", lambda r, t: ["apply", "-f", "/" + "a/" * 2100 + "p.yaml"], "file name too long"),
    Case(
        "invalid UTF-8",
        lambda r, t: ["apply", "-f", write(t, "bad.yaml", b"kind: Pod\nname: \xfe\xff\n")],
        "yaml: invalid leading UTF-8 octet",
    ),
    Case("alias bomb", lambda r, t: ["apply", "-f", write(t, "lol.yaml", _laughs())], "excessive aliasing"),
    Case(
        "deep nesting",
        lambda r, t: ["apply", "-f", write(t, "deep.yaml", "a: " + "[" * 50_000 + "]" * 50_000)],
        "exceeded max depth of 10000",
    ),
    Case(
        "recursive alias",
        lambda r, t: ["apply", "-f", write(t, "rec.yaml", "a: &a [*a]\n")],
        "anchor 'a' value contains itself",
    ),
    Case("syntax", lambda r, t: ["apply", "-f", write(t, "s.yaml", "a: [1\n")], "error converting YAML to JSON"),
    Case(
        "too large",
        lambda r, t: ["apply", "-f", write(t, "big.yaml", "#" * (3 << 20) + "\n")],
        "Error from server (RequestEntityTooLarge): Request entity too large: limit is 3145728",
    ),
    Case(
        "too large on stdin",
        lambda r, t: ["apply", "-f", "-"],
        "Request entity too large: limit is 3145728",
        stdin=b" " * ((3 << 20) + 1),
    ),
    Case("garbage on stdin", lambda r, t: ["apply", "-f", "-"], "error parsing STDIN", stdin=b"{{{"),
    Case(
        "not a mapping",
        lambda r, t: ["apply", "-f", write(t, "l.yaml", "[1, 2]\n")],
        "a document must be a mapping",
    ),
    Case(
        "unknown kind",
        lambda r, t: ["apply", "-f", write(t, "k.yaml", "apiVersion: v1\nkind: [x]\n")],
        "unsupported object v1/<list>",
    ),
    Case(
        "control characters in the kind",
        lambda r, t: ["apply", "-f", write(t, "c.yaml", 'apiVersion: "v\\x1b1"\nkind: "Po\\u0085d\\r\\x1b[2J"\n')],
        "unsupported object v\\x1b1/Po\\u0085d\\r\\x1b[2J",
    ),
    Case(
        "invalid name",
        lambda r, t: ["apply", "-f", write(t, "n.yaml", json.dumps({**POD, "metadata": {"name": "a" * 254}}))],
        "must be no more than 253 characters",
    ),
    Case(
        "generate name",
        lambda r, t: ["apply", "-f", write(t, "g.yaml", json.dumps({**POD, "metadata": {"generateName": "g-"}}))],
        "error: from g-: cannot use generate name with apply",
    ),
    Case(
        "too large to store",
        lambda r, t: [
            "apply",
            "-f",
            write(t, "s.json", json.dumps({**POD, "spec": {"containers": [{"name": "c", "image": "x" * (2 << 20)}]}})),
        ],
        "Error from server: etcdserver: request is too large",
    ),
    Case("describe missing", lambda r, t: ["describe", "pod", "nope"], 'Error from server (NotFound): pods "nope"'),
    Case("describe odd name", lambda r, t: ["describe", "pod", "../" * 2000], "Error from server (NotFound)"),
    Case("delete missing", lambda r, t: ["-n", "other", "delete", "pod", "p"], "Error from server (NotFound)"),
    Case("exec missing", lambda r, t: ["exec", "nope", "--", "ls", "/"], "Error from server (NotFound)"),
    Case("rmi missing", lambda r, t: ["rmi", "example.test/x:1"], 'image "example.test/x:1" not found'),
    Case("pull bad reference", lambda r, t: ["pull", "::bad"], "InvalidImageName"),
    Case("gc thresholds", lambda r, t: ["gc", "--high", "10", "--low", "90"], "thresholds must satisfy"),
    Case("version", lambda r, t: ["--k8s-version", "9.9", "get", "pods"], "invalid Kubernetes version"),
    Case("gates", lambda r, t: ["--feature-gates", "junk", "get", "pods"], "invalid value of junk"),
    Case("platform", lambda r, t: ["--platform", "x", "get", "pods"], "is not of the form os/arch"),
    Case(
        "admission plugin",
        lambda r, t: ["--enable-admission-plugins", "Foo", "apply", "-f", write(t, "p.yaml", json.dumps(POD))],
        "unknown admission plugin",
    ),
    Case("registries missing", lambda r, t: ["--registries", "/nonexistent/r.conf", "get", "pods"], "no such file"),
    Case("registries directory", lambda r, t: ["--registries", str(t), "get", "pods"], "is a directory"),
    Case(
        "registries garbage",
        lambda r, t: ["--registries", write(t, "r.conf", b"[[registry\n"), "get", "pods"],
        "invalid TOML",
    ),
    Case(
        "registries not UTF-8",
        lambda r, t: ["--registries", write(t, "r.conf", b"[[registry]]\n\xff"), "get", "pods"],
        "a configuration file is not valid UTF-8 (byte 13: invalid start byte)",
    ),
    Case("pull secret missing", lambda r, t: ["pull", "x:1", "--pull-secret", "/nonexistent"], "does not exist"),
    Case(
        "pull secret nested",
        lambda r, t: ["pull", "x:1", "--pull-secret", write(t, "c.json", "{" + '"a": [' * 20000 + "]" * 20000 + "}")],
        "exceeded max depth of 10000",
    ),
    Case("fixtures under a file", lambda r, t: ["fixtures", os.path.join(write(t, "f", ""), "x")], "not a directory"),
    Case("exec no command", lambda r, t: ["exec", "nope"], "Error from server (NotFound)"),
    Case("bad runtime flag", lambda r, t: ["--runtime", "nope", "get", "pods"], "invalid choice", code=2, usage=True),
    Case("bad duration", lambda r, t: ["sync", "--advance", "5x"], "invalid duration", code=2, usage=True),
    Case("bad port", lambda r, t: ["serve-metrics", "--port", "70000"], "must be 0 to 65535", code=2, usage=True),
    Case("no command", lambda r, t: [], "required", code=2, usage=True),
    Case("unknown flag", lambda r, t: ["get", "pods", "--bogus"], "unrecognized arguments", code=2, usage=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_failure_is_one_plain_line(root: str, tmp_path: Any, case: Case) -> None:
    before = stored(root)
    r = imagevol(root, *case.args(root, tmp_path), stdin=case.stdin)
    line = assert_plain_failure(r, root, case.code, usage=case.usage)
    assert case.expect in line
    assert stored(root) == before


# --- the node's root itself --------------------------------------------------------------------------


def test_a_root_that_is_a_file(tmp_path: Any) -> None:
    path = write(tmp_path, "file", "")
    r = imagevol(path, "get", "pods")
    assert assert_plain_failure(r, path) == "error: cannot use the node state directory (--root): not a directory"


def test_a_root_past_path_max(tmp_path: Any) -> None:
    path = os.path.join(str(tmp_path), *(["r" * 250] * 17))
    r = imagevol(path, "get", "pods")
    assert assert_plain_failure(r, path) == "error: cannot use the node state directory (--root): file name too long"


@pytest.mark.skipif(IS_ROOT and not NO_DAC, reason="needs setpriv to drop CAP_DAC_OVERRIDE as root")
def test_an_unreadable_root_and_an_unreadable_file(root: str, tmp_path: Any) -> None:
    pod = write(tmp_path, "pod.yaml", json.dumps(POD))
    os.chmod(pod, 0)
    r = imagevol(root, "apply", "-f", pod, prefix=NO_DAC)
    assert assert_plain_failure(r, root) == f"error: open {pod}: permission denied"
    os.chmod(pod, 0o644)
    assert imagevol(root, "apply", "-f", pod).code == 0
    os.chmod(root, 0)
    try:
        for args in (["get", "pods"], ["describe", "pod", "p"], ["apply", "-f", pod], ["metrics"]):
            r = imagevol(root, *args, prefix=NO_DAC)
            assert "permission denied" in assert_plain_failure(r, root), args
        state = os.path.join(root, "pods")
        os.chmod(root, 0o700)
        os.chmod(state, 0o300)  # listable no more, but still writable
        r = imagevol(root, "get", "pods", prefix=NO_DAC)
        assert assert_plain_failure(r, root) == "error: cannot list node state pods/: permission denied"
    finally:
        os.chmod(root, 0o700)
        os.chmod(os.path.join(root, "pods"), 0o700)
    assert imagevol(root, "describe", "pod", "p").code == 0


def _unshare() -> list[str]:
    """A prefix that runs a command in a private mount namespace (where it may mount a tmpfs)."""
    unshare = ["unshare", "-m"] if IS_ROOT else ["unshare", "-rm"]
    if (
        shutil.which("unshare") is None
        or subprocess.run([*unshare, "true"], capture_output=True, check=False).returncode
    ):
        pytest.skip("no private mount namespaces here")
    return unshare


def _in_namespace(script: str, *args: str) -> Result:
    p = subprocess.run([*_unshare(), "sh", "-c", script, "sh", *args], capture_output=True, check=False, timeout=120)
    return Result(p.returncode, p.stdout.decode(), p.stderr.decode())


#: The CLI as a shell word list (the checkout may be anywhere, a path with spaces included).
CLI = f"{shlex.quote(sys.executable)} -m imagevol.cli"


def test_a_root_on_a_read_only_filesystem(tmp_path: Any) -> None:
    pod = write(tmp_path, "pod.yaml", json.dumps(POD))
    setup = f"mount -t tmpfs -o size=16m tmpfs /mnt && {CLI} --root /mnt/node apply -f {shlex.quote(pod)} >/dev/null"
    script = f'{setup} && mount -o remount,ro /mnt && exec {CLI} --root /mnt/node "$@"'
    r = _in_namespace(script, "get", "pods")
    assert r.code == 0 and r.out.splitlines()[1].split()[0] == "p", r
    # A pass over a node at rest, or applying its Pod again, has nothing to write: both work on a
    # read-only root too. Anything that has to write says why it cannot.
    r = _in_namespace(script, "sync")
    assert r.code == 0 and r.out.splitlines()[1].split()[:2] == ["default", "p"], r
    r = _in_namespace(script, "apply", "-f", pod)
    assert r.code == 0 and r.out.startswith("pod/p unchanged\n"), r
    other = write(tmp_path, "other.yaml", json.dumps(pod_doc("q")))
    for args in (["apply", "-f", other], ["delete", "pod", "p"], ["sync", "--advance", "1s"]):
        line = assert_plain_failure(_in_namespace(script, *args), "/mnt/node")
        assert line == "error: node state (--root): read-only file system", args
    r = _in_namespace(f"mount -t tmpfs -o ro tmpfs /mnt && exec {CLI} --root /mnt/node get pods")
    line = assert_plain_failure(r, "/mnt/node")
    assert line == "error: cannot use the node state directory (--root): read-only file system"


def test_a_full_filesystem_leaves_no_half_written_state() -> None:
    """ENOSPC wherever it strikes (state directories, content store, tree, Pod record): plain
    words on stderr or in the Pod's events, and no temporary file left behind."""
    pod = os.path.join(EXAMPLES, "image-volume.yaml")
    registries = os.path.join(EXAMPLES, "registries.conf")
    failures = 0
    for size in ("4k", "12k", "20k", "28k", "36k"):
        script = (
            f"mount -t tmpfs -o size={size} tmpfs /mnt && "
            f"{CLI} --root /mnt/node --registries {shlex.quote(registries)} apply -f {shlex.quote(pod)}; code=$?; "
            "echo; echo tmp: $(find /mnt/node -name '*.tmp'); exit $code"
        )
        r = _in_namespace(script)
        output, tmp = r.out.rsplit("tmp:", 1)
        assert tmp.strip() == "", tmp  # nothing half-written
        if r.code == 0:
            continue
        failures += 1
        res = Result(r.code, output, r.err)
        if r.err:
            assert "no space left on device" in assert_plain_failure(res, "/mnt/node")
        else:  # the node kept the Pod and says in its events why it is not running
            assert "no space left on device" in output and "[Errno" not in output and "/mnt/node" not in output
    assert failures  # the sizes do reach a full filesystem


def test_a_busy_metrics_port(root: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = imagevol(root, "serve-metrics", "--port", str(port))
    line = assert_plain_failure(r, root)
    assert line == f"error: listen tcp 127.0.0.1:{port}: bind: address already in use"


def test_corrupt_node_state(root: str, tmp_path: Any) -> None:
    assert imagevol(root, "apply", "-f", write(tmp_path, "p.yaml", json.dumps(POD))).code == 0
    with open(os.path.join(root, "metrics.json"), "w") as f:
        f.write("{not json")
    assert (
        assert_plain_failure(imagevol(root, "metrics"), root) == "error: node state metrics.json is corrupt (not JSON)"
    )
    (name,) = os.listdir(os.path.join(root, "pods"))
    with open(os.path.join(root, "pods", name), "w") as f:
        json.dump({"pod": "nonsense"}, f)
    line = assert_plain_failure(imagevol(root, "get", "pods"), root)
    assert line == f"error: node state pods/{name} is corrupt (not a Pod record)"


def test_no_traceback_even_for_a_bug(root: str) -> None:
    """The last line of defence: an unexpected exception is one line (set IMAGEVOL_TRACEBACK=1
    to see the traceback)."""
    code = "import imagevol.cli._main as c, sys; c._run = lambda a, o: 1 / 0; sys.exit(c.main(sys.argv[1:]))"
    p = subprocess.run(
        [sys.executable, "-c", code, "--root", root, "get", "pods"], capture_output=True, check=False, timeout=60
    )
    r = Result(p.returncode, p.stdout.decode(), p.stderr.decode())
    assert r.code == 1 and r.err == "error: internal error (ZeroDivisionError): division by zero\n"


# --- what Pods see of local failures --------------------------------------------------------------


def test_local_pull_and_create_failures_reach_events_without_host_paths(tmp_path: Any) -> None:
    """ENOSPC under the content store during a pull, then while the runtime builds the tree: the
    Pod's events and container state say so in plain words, without the node's root."""
    import errno

    from imagevol.api import Pod, load_documents

    root = os.path.join(str(tmp_path), "node")
    node = Node(NodeConfig(root=root, registries=os.path.join(EXAMPLES, "registries.conf"), hermetic=True))
    with open(os.path.join(EXAMPLES, "image-volume.yaml")) as f:
        (pod,) = load_documents(f.read())
    assert isinstance(pod, Pod)

    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", os.path.join(root, "content", "ingest", "x.part"))

    real_pull = node.runtime.pull_image
    node.runtime.pull_image = full  # type: ignore[method-assign,assignment]
    record = node.create_pod(pod)
    failed = [e.message for e in record.events if e.reason == "Failed"]
    assert failed[0] == (
        'Failed to pull image "quay.io/crio/artifact:v2": failed to pull and unpack image '
        '"quay.io/crio/artifact:v2": no space left on device'
    )
    node.runtime.pull_image = real_pull  # type: ignore[method-assign]
    node.runtime.create_container = full  # type: ignore[method-assign,assignment]
    node.advance(30)  # past the pull back-off
    record = node.sync_pod("image-volume")
    (state,) = record.containers
    assert (state.reason, state.message) == (
        "CreateContainerError",
        'failed to create container "shell": no space left on device',
    )
    out = io.StringIO()
    assert main(["--root", root, "describe", "pod", "image-volume"], out=out) == 0
    text = out.getvalue() + "".join(e.message for e in record.events)
    assert root not in text and "[Errno" not in text
    assert "no space left on device" in out.getvalue()


# --- fuzz: hostile Pod files through apply ------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(["", "..", "/etc/passwd", "a" * 254, "Ä", "\x00", "-", "a.b", "x" * 64]),
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, min_size=1, max_size=4) | st.dictionaries(st.text(max_size=8), inner, min_size=1, max_size=4)
    ),
)
_FIELDS = [
    ("metadata", "name"),
    ("metadata", "namespace"),
    ("metadata", "labels"),
    ("metadata", "annotations"),
    ("metadata", "generateName"),
    ("spec", "containers"),
    ("spec", "volumes"),
    ("spec", "imagePullSecrets"),
    ("spec", "restartPolicy"),
    ("kind",),
    ("apiVersion",),
    ("metadata",),
    ("spec",),
]


@st.composite
def hostile_files(draw: st.DrawFn) -> bytes:
    doc: dict[str, Any] = json.loads(json.dumps(POD))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_FIELDS))
        target = doc
        for key in path[:-1]:
            if not isinstance(target.get(key), dict):
                target[key] = {}
            target = target[key]
        target[path[-1]] = draw(_values)
    text = yaml.safe_dump(doc, allow_unicode=True).encode() if draw(st.booleans()) else json.dumps(doc).encode()
    mangle = draw(st.sampled_from(["none", "truncate", "bytes", "nest", "alias"]))
    if mangle == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif mangle == "bytes":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.binary(min_size=1, max_size=8)) + text[at:]
    elif mangle == "nest":
        depth = draw(st.sampled_from([10, 9_999, 10_001, 30_000]))
        text += b"\nextra: " + b"[" * depth + b"]" * depth + b"\n"
    elif mangle == "alias":
        text += b"\nx: &x [a, b]\ny: [" + b", ".join([b"*x"] * draw(st.integers(0, 3000))) + b"]\n"
    return text


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("fuzz"))


@settings(max_examples=150)
@given(text=hostile_files())
def test_fuzz_apply_never_crashes(fuzz_dir: str, text: bytes) -> None:
    root = os.path.join(fuzz_dir, "node")
    path = os.path.join(fuzz_dir, "pod.yaml")
    with open(path, "wb") as f:
        f.write(text)
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stderr
    sys.stderr = err
    try:
        code = main(["--root", root, "apply", "-f", path], out=out)
    finally:
        sys.stderr = saved
    r = Result(code, out.getvalue(), err.getvalue())
    if code == 0:
        assert r.err == ""
    else:
        # One plain line per document that failed (a stream that stops parsing after an invalid
        # document is two failures, as kubectl reports them).
        assert r.err.endswith("\n"), r.err
        for line in r.err[:-1].split("\n"):
            assert_plain_failure(attrs.evolve(r, err=line + "\n"), root)
    # Whatever was admitted can be described and deleted again.
    for record in Node(NodeConfig(root=root, hermetic=True)).pods():
        sub = io.StringIO()
        ns, name = record.pod.namespace, record.pod.name
        assert main(["--root", root, "-n", ns, "describe", "pod", name], out=sub) == 0
        assert main(["--root", root, "-n", ns, "delete", "pod", name], out=sub) == 0
    assert os.listdir(os.path.join(root, "pods")) == []
