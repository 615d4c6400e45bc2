"""Decompression in a forked child process (``ApplyOptions(decompress="process")``, and what ``auto``
picks on a node with a second CPU): the same tree and the same typed errors as inline, every child
reaped, a dead or silent child a clear error, and a status record that cannot name code to run."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from imagevol.errors import DigestMismatchError, LayerError
from imagevol.testing.tarbuild import build_layer, gzip_bytes, zstd_bytes
from imagevol.trees import _decompress, _forked
from imagevol.trees._decompress import CHUNK, FORK_ABOVE, ChunkPipe
from imagevol.trees._forked import ForkedChunks
from imagevol.trees.layers import ApplyOptions, LayerEntryError, LayerLimits, apply_layers
from imagevol.trees.snapshots import Snapshots
from tests.helpers.layerkit import D, F, Sandbox
from tests.helpers.snapshots import GOOD, image_plan

PROCESS = ApplyOptions(decompress="process")


@pytest.fixture(autouse=True)
def _fork_anyway(monkeypatch: pytest.MonkeyPatch) -> None:
    # Earlier tests in this process may have left idle threads of their own behind (watchdogs of
    # their own, servers), which would make "process" fall back to inline here.
    monkeypatch.setattr(_decompress, "fork_is_safe", lambda: True)


@pytest.fixture
def box(tmp_path: object) -> Sandbox:
    return Sandbox.make(str(tmp_path))


def _gone(pid: int) -> bool:
    """Reaped: no such child, and no zombie left in the process table."""
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return not os.path.exists(f"/proc/{pid}")


def _read_all(chunks: ForkedChunks) -> bytes:
    out = []
    while data := chunks.read():
        out.append(data)
    return b"".join(out)


# --- the same trees and errors as inline -----------------------------------------------------------


@pytest.mark.parametrize("compress", [gzip_bytes, zstd_bytes, bytes])
def test_a_large_layer_unpacks_the_same_in_a_child(box: Sandbox, compress: object) -> None:
    big = os.urandom(3 * CHUNK + 7)
    entries = [D("d"), F("d/big", big), *(F(f"d/f{i}", f"file {i}\n" * i) for i in range(300))]
    tar = build_layer(entries)
    blob = compress(tar)  # type: ignore[operator]
    stats = box.apply(blob, options=PROCESS)
    with open(os.path.join(box.root, "d/big"), "rb") as f:
        assert f.read() == big
    assert box.read("d/f299") == "file 299\n" * 299
    assert stats[0].entries == 302


@pytest.mark.parametrize(
    "blob",
    [
        gzip_bytes(build_layer([F("f", "x" * 100_000)]))[:-20],
        gzip_bytes(build_layer([F("f", "x" * 100_000)])) + b"garbage",
        zstd_bytes(build_layer([F("f", "x" * 100_000)]))[:-10],
    ],
    ids=["truncated", "garbage", "zstd-truncated"],
)
def test_a_corrupt_stream_is_the_same_typed_error(box: Sandbox, blob: bytes) -> None:
    err = box.fails("invalid_archive", blob, options=PROCESS)
    assert "corrupt layer stream" in str(err)


def test_a_bomb_stops_at_the_limit_in_the_child(box: Sandbox) -> None:
    tar = build_layer([F("zeros", bytes(32 << 20))])
    options = ApplyOptions(limits=LayerLimits(max_bytes=4 << 20), decompress="process")
    err = box.fails("too_large", gzip_bytes(tar), options=options)
    assert "limit" in str(err)
    assert not os.path.exists(os.path.join(box.root, "zeros")) or os.path.getsize(box.root + "/zeros") <= 4 << 20


def test_the_diff_id_comes_back_from_the_child(tmp_path: object) -> None:
    tar = build_layer([F("a", os.urandom(2 * CHUNK))]) + b"\0" * 4096
    want = hashlib.sha512(tar).hexdigest()
    pipe = ChunkPipe(io.BytesIO(gzip_bytes(tar)), 1 << 30, mode="process", hasher=hashlib.sha512())
    try:
        assert pipe.mode == "process"
        got = b"".join(iter(pipe.read, b""))
        assert got == tar and pipe.hexdigest() == want
    finally:
        pipe.close()


@pytest.mark.parametrize("mode", ["process", "inline"])
def test_a_corrupt_stored_blob_publishes_nothing(tmp_path: object, mode: str) -> None:
    store, plan = image_plan(f"{tmp_path}/layout", GOOD, [F("big", os.urandom(2 * CHUNK))])
    blob = store.blob_path(plan.manifest.layers[-1].digest)
    with open(blob, "r+b") as f:
        f.seek(-5, os.SEEK_END)
        last = f.read(1)
        f.seek(-5, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))  # the gzip trailer: caught by the child, reported here
    snaps = Snapshots(f"{tmp_path}/snaps", store, options=ApplyOptions(decompress=mode))
    with pytest.raises((DigestMismatchError, LayerError)):
        snaps.materialise(plan)
    assert snaps.get(plan.key) is None and not os.path.exists(snaps.path(plan.key))
    assert os.listdir(os.path.join(snaps.root, ".staging")) == []


# --- the child's errors, crossing the pipe -----------------------------------------------------


def _failing(exc: BaseException) -> Iterator[bytes]:
    yield b"some bytes"
    raise exc


@pytest.mark.parametrize(
    "exc",
    [
        LayerError("invalid_archive", "corrupt layer stream: bad"),
        LayerEntryError("notdir", "applying layer at 'a/b': Not a directory", "a/b"),
        DigestMismatchError("blob sha256:abc in the content store is corrupt"),
        FileNotFoundError(errno.ENOENT, "No such file or directory", "blob"),
        OSError(errno.EIO, "Input/output error"),
    ],
    ids=["layer", "entry", "digest", "notfound", "eio"],
)
def test_the_producers_error_is_raised_here_as_itself(exc: Exception) -> None:
    chunks = ForkedChunks(_failing(exc), str)
    pid = chunks._pid
    try:
        assert chunks.read() == b"some bytes"
        with pytest.raises(type(exc)) as raised:
            _read_all(chunks)
    finally:
        chunks.close()
    got = raised.value
    assert type(got) is type(exc) and str(got) == str(exc) and got.args == exc.args
    assert vars(got) == vars(exc) or isinstance(exc, OSError)
    if isinstance(exc, OSError) and isinstance(got, OSError):
        assert (got.errno, got.strerror, got.filename) == (exc.errno, exc.strerror, exc.filename)
    assert _gone(pid)


def test_another_error_becomes_a_layer_error() -> None:
    chunks = ForkedChunks(_failing(ValueError("odd")), str)
    with pytest.raises(LayerError, match="decompressing the layer: ValueError: odd") as raised:
        _read_all(chunks)
    chunks.close()
    assert raised.value.kind == "io"


def test_a_child_that_dies_is_an_error_not_an_end() -> None:
    def suicide() -> Iterator[bytes]:
        yield b"x" * 1000
        os.kill(os.getpid(), signal.SIGKILL)
        yield b"never"

    chunks = ForkedChunks(suicide(), str)
    pid = chunks._pid
    with pytest.raises(LayerError, match="ended without a result"):
        _read_all(chunks)
    chunks.close()
    assert _gone(pid)


def test_a_child_interrupted_leaves_no_result() -> None:
    chunks = ForkedChunks(_failing(KeyboardInterrupt()), str)
    with pytest.raises(LayerError, match="ended without a result"):
        _read_all(chunks)
    chunks.close()


def test_closing_early_stops_and_reaps_the_child() -> None:
    def endless() -> Iterator[bytes]:
        while True:
            yield b"\0" * CHUNK

    chunks = ForkedChunks(endless(), str)
    pid = chunks._pid
    assert chunks.read()
    chunks.close()
    assert _gone(pid)
    chunks.close()  # twice is harmless


def test_the_result_comes_back() -> None:
    chunks = ForkedChunks(iter([b"a", b"b" * CHUNK]), lambda: "the result")
    assert _read_all(chunks) == b"a" + b"b" * CHUNK
    assert chunks.result == "the result"
    chunks.close()


@pytest.mark.parametrize(
    "record",
    [
        {"module": "os", "name": "system", "args": ["touch /tmp/pwned"]},
        {"module": "builtins", "name": "eval", "args": ["1"]},
        {"module": "builtins", "name": "ValueError", "args": ["x"]},
        {"module": "subprocess", "name": "CalledProcessError", "args": [1, "x"]},
        {"module": None, "name": None, "args": "not a list", "attrs": []},
    ],
)
def test_a_status_record_names_only_imagevols_errors_or_oserror(record: dict[str, object]) -> None:
    exc = _forked._rebuild(record)
    assert type(exc) is LayerError and exc.kind == "io"


def test_a_status_record_sets_plain_attributes_only() -> None:
    record: dict[str, object] = {
        "module": "imagevol.errors",
        "name": "LayerError",
        "args": ["corrupt layer stream: bad"],
        "attrs": {"kind": "invalid_archive", "__class__": "x", "__dict__": {}, "_private": 1},
    }
    exc = _forked._rebuild(record)
    assert type(exc) is LayerError and exc.kind == "invalid_archive" and str(exc) == "corrupt layer stream: bad"
    assert vars(exc) == {"kind": "invalid_archive"}


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'{"result": 1}', b'{"error": "x"}', b"x" * (2 << 20)])
def test_an_unreadable_status_is_an_error(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    def child(chunks: object, result: object, data: int, status: int) -> int:
        os.close(data)
        view = memoryview(raw)
        while view:
            view = view[os.write(status, view) :]
        return 0

    monkeypatch.setattr(_forked, "_child", child)
    chunks = ForkedChunks(iter([]), str)
    pid = chunks._pid
    with pytest.raises(LayerError, match="ended without a result"):
        _read_all(chunks)
    assert _gone(pid)


def test_without_a_process_to_be_had_the_layer_unpacks_inline(box: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[int] = []
    real_pipe = os.pipe

    def pipe() -> tuple[int, int]:
        fds = real_pipe()
        opened.extend(fds)
        return fds

    def no_fork() -> int:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "pipe", pipe)
    monkeypatch.setattr(os, "fork", no_fork)
    box.apply(gzip_bytes(build_layer([D("d"), F("d/f", os.urandom(2 * CHUNK))])), options=PROCESS)
    assert os.path.getsize(os.path.join(box.root, "d/f")) == 2 * CHUNK
    assert len(opened) == 4
    for fd in opened:  # the pipes made for the child were closed again
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)


def test_a_blob_that_fails_at_once_leaves_no_descriptor_open(box: Sandbox) -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: object) -> int:
            raise OSError(errno.EIO, "Input/output error")

    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(LayerError, match="Input/output error") as raised:
        apply_layers(box.root, [io.BufferedReader(Broken())], PROCESS)
    assert raised.value.kind == "io"
    assert set(os.listdir("/proc/self/fd")) == before


def test_a_process_that_ignores_sigchld_still_gets_its_layer(box: Sandbox) -> None:
    # With SIGCHLD ignored the kernel reaps children itself; waiting for one is then an error.
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        box.apply(gzip_bytes(build_layer([F("f", os.urandom(2 * CHUNK))])), options=PROCESS)
    finally:
        signal.signal(signal.SIGCHLD, old)
    assert os.path.getsize(os.path.join(box.root, "f")) == 2 * CHUNK


# --- a node that pulled from a registry ------------------------------------------------------------

#: ``imagevol apply`` of the Pod file ARGV[2] on the node root ARGV[1] (registries.conf ARGV[3]),
#: recording where each layer was decompressed; prints the modes as JSON on its last line.
_APPLY_PROBE = """
import json, sys
from imagevol.cli import main
from imagevol.trees import _decompress
seen = []
real = _decompress.ChunkPipe.__init__
def spy(self, *args, **kwargs):
    real(self, *args, **kwargs)
    seen.append(self.mode)
_decompress.ChunkPipe.__init__ = spy
code = main(["--root", sys.argv[1], "--registries", sys.argv[3], "apply", "-f", sys.argv[2]])
print(json.dumps([code, seen]))
"""


def test_a_node_that_pulled_from_a_registry_still_decompresses_in_a_child(tmp_path: object) -> None:
    """The registry client's watchdog thread ends with the pull, so the same process may fork for
    the unpack (it would fall back to inline beside a live thread)."""
    from imagevol.testing.images import Layer, LayoutBuilder
    from imagevol.testing.pods import container, image_volume, pod_doc, to_yaml
    from tests.helpers import peers
    from tests.helpers.fixture_node import container_image_registries

    big = os.urandom(2 * FORK_ABOVE)
    layout = f"{tmp_path}/layout"
    builder = LayoutBuilder(layout)
    builder.add_image([Layer((F("big", big), F("small", "small\n")))], tag="big")
    builder.save()
    with peers.registry() as reg:
        peers.skopeo_copy(layout, "big", reg, "forked/big")
        conf = f"{tmp_path}/registries.conf"
        with open(conf, "w") as f:
            f.write(f'[[registry]]\nlocation = "{reg.host}"\ninsecure = true\n' + container_image_registries())
        pod = pod_doc("p", [container("shell", ("v", "/volume", ""))], [image_volume("v", f"{reg.host}/forked/big:v1")])
        manifest = f"{tmp_path}/pod.yaml"
        with open(manifest, "w") as f:
            f.write(to_yaml(pod))
        root = f"{tmp_path}/node"
        probe = [sys.executable, "-c", _APPLY_PROBE, root, manifest, conf]
        done = subprocess.run(probe, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    code, modes = json.loads(done.stdout.strip().splitlines()[-1])
    assert code == 0, done.stdout
    # The image volume's layer, larger than FORK_ABOVE, in a child.
    assert "process" in modes, modes
    cli = [sys.executable, "-m", "imagevol.cli", "--root", root, "--registries", conf]
    run = subprocess.run([*cli, "exec", "p", "--", "cat", "/volume/small"], check=False, capture_output=True, text=True)
    assert run.stdout == "small\n", run.stderr
