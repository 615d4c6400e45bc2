"""What an unpack imports, counted, so that its start-up cannot grow back silently.

A process that only unpacks layers (``from imagevol import apply_layers``, as a node's snapshotter
or the unpack benchmark calls it) pays for every module it imports before the first byte is
written: the applier must not pull in the lazy-pull machinery (TOC parsers, the merged index,
fetchers), the registry stack or ``logging``. Each case runs in a fresh interpreter and lists the
modules the import and one real unpack added. Nothing here is timed: docs/benchmarks.md has the
times (``benchmarks/unpack.py``, the start-up row of the one-CPU section).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

#: Imports the applier as the benchmark does, unpacks the layer given on stdin (checking its diff
#: ID) into ARGV[1], and prints the modules that added, as JSON on the last line.
_PROBE = """
import json, sys
before = set(sys.modules)
from imagevol import ApplyOptions, Digest, apply_layers
stats = apply_layers(sys.argv[1], [sys.stdin.buffer], ApplyOptions(), [Digest.parse(sys.argv[2])])
assert stats[0].files == 2, stats
print(json.dumps(sorted(set(sys.modules) - before)))
"""

#: Every imagevol module an unpack needs: the package, the error types and text helpers, the OCI
#: model (the diff ID is a Digest), the name rules shared with the lazy index, and the applier (with
#: the decompressing child it forks for a layer larger than 1 MiB).
UNPACK = {
    "imagevol", "imagevol._exports", "imagevol._text", "imagevol.errors", "imagevol.lazy", "imagevol.lazy.rules",
    "imagevol.oci", "imagevol.oci._model", "imagevol.trees", "imagevol.trees._decompress", "imagevol.trees._forked",
    "imagevol.trees._inroot",
    "imagevol.trees._layer_changeset", "imagevol.trees._layer_metadata", "imagevol.trees._layer_primitives",
    "imagevol.trees._layer_tree", "imagevol.trees._openat2", "imagevol.trees._remove_tree",
    "imagevol.trees._tarstream", "imagevol.trees.layers",
}  # fmt: skip
#: Outside the standard library: attrs (the value classes), and the decompressor of the layer's
#: format (ISA-L or zlib-ng for gzip when installed, python-zstandard for zstd).
THIRD_PARTY = {"attr", "attrs", "isal", "zlib_ng"}
#: Standard-library modules an unpack never needs.
NOT_FOR_AN_UNPACK = ("logging", "tarfile", "subprocess", "socket", "ssl", "http", "email", "asyncio", "uuid",
                     "tomllib", "datetime", "calendar", "dataclasses", "argparse", "shutil")  # fmt: skip


def _layer() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("etc/hostname", b"node\n"), ("bin/tool", b"#!/bin/sh\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _compress(tar: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(tar, mtime=0)
    if kind == "zstd":
        zstandard = pytest.importorskip("zstandard")
        return bytes(zstandard.ZstdCompressor().compress(tar))
    return tar


def _unpack_modules(blob: bytes, diff_id: str, root: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, root, diff_id], input=blob, capture_output=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    modules: list[str] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return modules


@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
def test_an_unpack_imports_only_what_an_unpack_needs(tmp_path: pytest.TempPathFactory, kind: str) -> None:
    tar = _layer()
    root = f"{tmp_path}/root"
    os.mkdir(root)
    modules = _unpack_modules(_compress(tar, kind), f"sha256:{hashlib.sha256(tar).hexdigest()}", root)
    # It did unpack (the probe checked the stats): the files are there.
    with open(f"{root}/etc/hostname", "rb") as f:
        assert f.read() == b"node\n"
    assert {m for m in modules if m.startswith("imagevol")} == UNPACK
    outside = {m.split(".")[0] for m in modules if not m.startswith("imagevol")} - set(sys.stdlib_module_names)
    assert outside <= THIRD_PARTY | ({"zstandard"} if kind == "zstd" else set())
    heavy = [m for m in modules if m.split(".")[0] in NOT_FOR_AN_UNPACK]
    assert heavy == []


def test_the_budget_sees_the_lazy_pull_machinery() -> None:
    """The probe can fail: importing a name of :mod:`imagevol.lazy` loads what the list above
    leaves out."""
    script = "import json, sys; from imagevol.lazy import build_index; print(json.dumps(list(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    loaded = set(json.loads(done.stdout))
    assert {"imagevol.lazy.index", "imagevol.lazy.toc"} <= loaded
    assert "imagevol.lazy.fetch" not in loaded  # each name loads its own module only


def test_the_lazy_package_exports_every_name_it_lists() -> None:
    from imagevol import lazy

    for name in lazy.__all__:
        assert getattr(lazy, name) is not None, name
    assert sorted(lazy.__all__) == sorted(n for n in dir(lazy) if not n.startswith("_") and n in lazy.__all__)
    with pytest.raises(AttributeError):
        _ = lazy.no_such_name


def test_lazy_resolve_stays_the_function_whoever_loads_its_module_first() -> None:
    """``resolve`` is a submodule and the function the package exports; loading the submodule
    (which binds its name in the package) must leave the function there, in any order."""
    script = """
import sys
import imagevol.lazy.resolve
from imagevol import lazy
assert callable(lazy.resolve) and not isinstance(lazy.resolve, type(sys)), lazy.resolve
assert lazy.resolve is sys.modules["imagevol.lazy.resolve"].resolve
assert lazy.closure is sys.modules["imagevol.lazy.resolve"].closure
"""
    for first in ("", "from imagevol.lazy import Policy\n", "from imagevol.lazy import resolve\n"):
        done = subprocess.run(
            [sys.executable, "-c", first + script], capture_output=True, text=True, check=False, timeout=120
        )
        assert done.returncode == 0, (first, done.stderr)
