"""Unpack speed and memory of imagevol against GNU tar, umoci and CPython tarfile, in one run.

    sudo .venv/bin/python benchmarks/unpack.py [--dir DIR] [--runs 3] [--scales 0.25,1]

Generates (seeded, untimed) the layer of oci-peers.md section 6: 20,000 small text files (512 B to
4 KiB, 200 directories) and three 50 MiB files (random, base64, words), ~219 MB of tar, gzip -6.
Every tool unpacks it into a fresh directory on a tmpfs (mounted here when run as root without
``--dir``; ext4 timings are dominated by the kernel reclaiming the previous tree) and runs in its own
process, so its peak RSS is its own (``wait4``). Times are the minimum of ``--runs``; the ratio is
against ``tar -xzf`` on the whole process (interpreter start and imports included for the Python
tools), with the in-process unpack time shown too. imagevol is measured in several configurations
(gzip backend, decompression thread) and its peak RSS is shown for two layer sizes.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence

import attrs

FIXED_MTIME = 1700000000
MiB = 1024 * 1024


# --- input ----------------------------------------------------------------------------------------


def generate(tar_path: str, scale: float = 1.0, seed: int = 4639) -> int:
    """Write the benchmark tar; return its number of entries."""
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    vocab = ["".join(rng.choices(letters, weights=range(26, 0, -1), k=rng.randint(1, 9))) for _ in range(8000)]
    weights = [1.0 / (i + 1) for i in range(len(vocab))]
    pool = " ".join(rng.choices(vocab, weights=weights, k=2_000_000)).encode()
    entries = 0
    n_dirs = max(1, int(200 * scale))
    big = int(50 * MiB * scale)
    with open(tar_path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:

        def add(name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE, mode: int = 0o644) -> None:
            nonlocal entries
            info = tarfile.TarInfo(name)
            info.mtime, info.type, info.mode = FIXED_MTIME, kind, mode
            if data is None:
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, _Bytes(data))
            entries += 1

        add("small/", kind=tarfile.DIRTYPE, mode=0o755)
        for d in range(n_dirs):
            add(f"small/d{d:03d}/", kind=tarfile.DIRTYPE, mode=0o755)
            for i in range(100):
                size = rng.randint(512, 4096)
                off = rng.randrange(len(pool) - size)
                add(f"small/d{d:03d}/f{i:03d}.txt", pool[off : off + size])
        add("random.bin", rng.randbytes(big))
        add("base64.txt", base64.b64encode(rng.randbytes(big * 3 // 4))[:big])
        parts, total = [], 0
        while total < big:
            off = rng.randrange(len(pool) - 65536)
            parts.append(pool[off : off + 65536])
            total += 65536
        add("words.txt", b"".join(parts)[:big])
    return entries


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        out = bytes(self.data[self.pos : end])
        self.pos += len(out)
        return out


def gzip_file(src: str, dst: str) -> None:
    if shutil.which("gzip"):
        with open(dst, "wb") as out:
            subprocess.run(["gzip", "-6", "-n", "-c", src], stdout=out, check=True)
        return
    import gzip

    with open(src, "rb") as fin, gzip.GzipFile(dst, "wb", compresslevel=6, mtime=0) as fout:
        shutil.copyfileobj(fin, fout, MiB)


def sha256_file(path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _descriptor(media_type: str, digest: str, size: int) -> dict[str, object]:
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": size}


def oci_layout(layout: str, gz: str, tar: str) -> None:
    """A one-layer OCI image layout (tag ``big``) around the gzip layer, for umoci."""
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs)

    def put(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return digest, len(data)

    layer_digest, layer_size = sha256_file(gz)
    os.link(gz, os.path.join(blobs, layer_digest))
    diff_id, _ = sha256_file(tar)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
    }
    cfg_digest, cfg_size = put(json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": f"sha256:{cfg_digest}",
            "size": cfg_size,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": f"sha256:{layer_digest}",
                "size": layer_size,
            }
        ],
    }
    m_digest, m_size = put(json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": f"sha256:{m_digest}",
                "size": m_size,
                "annotations": {"org.opencontainers.image.ref.name": "big"},
            }
        ],
    }
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')


# --- running ----------------------------------------------------------------------------------------

_IMAGEVOL = """
import sys, time
t0 = time.perf_counter()
from imagevol import decompress
from imagevol.layers import ApplyOptions, apply_layers
backend, threaded, src, dst = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4]
if backend == "zlib":
    import zlib
    decompress._gzip = zlib
t1 = time.perf_counter()
with open(src, "rb") as f:
    apply_layers(dst, [f], ApplyOptions(threaded=threaded))
print(time.perf_counter() - t1)
"""

_TARFILE = """
import sys, tarfile, time
src, dst = sys.argv[1], sys.argv[2]
t1 = time.perf_counter()
with tarfile.open(src, "r:gz") as tf:
    tf.extractall(dst, filter="data")
print(time.perf_counter() - t1)
"""


@attrs.define
class Result:
    name: str
    wall: float = float("inf")
    inner: float | None = None
    rss_kib: int = 0


GNU_TIME = shutil.which("time") if os.path.exists("/usr/bin/time") else None


def run_once(argv: Sequence[str]) -> tuple[float, float | None, int]:
    """(process wall time, time the process reported or None, peak RSS in KiB).

    A child's ``ru_maxrss`` starts at its parent's high-water mark (the kernel carries it over at
    exec), so the RSS is taken by GNU time (a tiny parent) when it is installed; otherwise by
    ``wait4`` from this deliberately small process (generation runs in a child of its own)."""
    rss_file = tempfile.NamedTemporaryFile(prefix="rss-", delete=False)  # noqa: SIM115
    rss_file.close()
    cmd = [GNU_TIME or "", "-f", "%M", "-o", rss_file.name, *argv] if GNU_TIME else list(argv)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stdout:
        proc.stdout.close()
    if proc.stderr:
        proc.stderr.close()
    proc.returncode = code
    if code != 0:
        raise RuntimeError(f"{argv[0]} failed: {err[-2000:]}")
    rss = usage.ru_maxrss
    if GNU_TIME:
        with open(rss_file.name) as f:
            rss = int(f.read().split()[-1])
    os.unlink(rss_file.name)
    inner = None
    with contextlib.suppress(ValueError, IndexError):
        inner = float(out.strip().splitlines()[-1])
    return wall, inner, rss


def measure(name: str, make_argv: Callable[[str], Sequence[str]], work: str, runs: int) -> Result:
    result = Result(name)
    for i in range(runs):
        dst = os.path.join(work, f"out-{i}")
        os.mkdir(dst)
        wall, inner, rss = run_once(make_argv(dst))
        if wall < result.wall:
            result.wall, result.inner = wall, inner
        result.rss_kib = max(result.rss_kib, rss)
        subprocess.run(["rm", "-rf", dst], check=True)
    return result


def on_tmpfs(path: str) -> bool:
    path = os.path.realpath(path)
    best, fstype = "", ""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            mnt = fields[1].replace("\\040", " ")
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, fstype = mnt, fields[2]
    return fstype == "tmpfs"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="work directory (a tmpfs); default: mount a 6 GiB tmpfs (root)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scales", default="0.25,1", help="layer sizes for the RSS comparison")
    parser.add_argument("--generate", nargs=2, metavar=("TAR", "SCALE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generate:
        print(generate(args.generate[0], float(args.generate[1])))
        return 0
    mounted = None
    work = args.dir
    if work is None:
        if os.geteuid() != 0:
            parser.error("not root: pass --dir pointing at a tmpfs")
        mounted = tempfile.mkdtemp(prefix="imagevol-bench-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6g", "imagevol-bench", mounted], check=True)
        work = mounted
    try:
        return bench(work, args.runs, [float(s) for s in args.scales.split(",")])
    finally:
        if mounted:
            subprocess.run(["umount", mounted], check=False)
            os.rmdir(mounted)


def _imagevol_argv(py: str, gz: str, backend: str = "isal", threaded: str = "1") -> Callable[[str], Sequence[str]]:
    return lambda d: [py, "-c", _IMAGEVOL, backend, threaded, gz, d]


def bench(work: str, runs: int, scales: list[float]) -> int:
    if not on_tmpfs(work):
        print(f"warning: {work} is not a tmpfs; timings will include filesystem reclaim noise", file=sys.stderr)
    py = sys.executable
    layers = {}
    for scale in sorted(set([*scales, 1.0])):
        tar = os.path.join(work, f"layer-{scale}.tar")
        # In a child: the big buffers never raise this process's RSS high-water mark.
        made = subprocess.run([py, __file__, "--generate", tar, str(scale)], check=True, capture_output=True, text=True)
        entries = int(made.stdout.split()[-1])
        gz = tar + ".gz"
        gzip_file(tar, gz)
        layers[scale] = (tar, gz, entries)
    tar, gz, entries = layers[1.0]
    layout = os.path.join(work, "layout")
    oci_layout(layout, gz, tar)
    from imagevol import decompress

    print(
        f"layer: {os.path.getsize(tar):,} B tar, {entries:,} entries, {os.path.getsize(gz):,} B gzip -6;"
        f" target: {'tmpfs' if on_tmpfs(work) else 'NOT tmpfs'}; {os.cpu_count()} CPUs;"
        f" min of {runs} runs; imagevol gzip backend: {decompress.GZIP_BACKEND}"
    )
    candidates: list[tuple[str, Callable[[str], Sequence[str]]]] = [
        ("tar -xzf", lambda d: ["tar", "-xzf", gz, "-C", d]),
        ("imagevol (isal, thread)", lambda d: [py, "-c", _IMAGEVOL, "isal", "1", gz, d]),
        ("imagevol (zlib, thread)", lambda d: [py, "-c", _IMAGEVOL, "zlib", "1", gz, d]),
        ("imagevol (isal, no thread)", lambda d: [py, "-c", _IMAGEVOL, "isal", "0", gz, d]),
        ("tarfile filter='data'", lambda d: [py, "-c", _TARFILE, gz, d]),
    ]
    umoci = shutil.which("umoci")
    if umoci:
        # umoci wants to create its rootfs itself.
        candidates.insert(
            1, ("umoci raw unpack", lambda d: [umoci, "raw", "unpack", "--image", f"{layout}:big", f"{d}/rootfs"])
        )
    else:
        print("umoci not installed: skipped", file=sys.stderr)
    if decompress.GZIP_BACKEND != "isal":
        candidates = [c for c in candidates if "isal" not in c[0]]
    results = [measure(name, make, work, runs) for name, make in candidates]
    base = results[0].wall
    print(f"{'tool':30} {'wall s':>8} {'ratio':>7} {'in-process s':>13} {'peak RSS':>10}")
    for r in results:
        inner = f"{r.inner:.2f}" if r.inner is not None else "-"
        print(f"{r.name:30} {r.wall:8.2f} {r.wall / base:7.2f} {inner:>13} {r.rss_kib / 1024:8.1f} MB")
    print("imagevol peak RSS by layer size:")
    for scale in scales:
        ltar, lgz, lentries = layers[scale]
        r = measure(f"scale {scale}", _imagevol_argv(py, lgz), work, 1)
        size = os.path.getsize(ltar) / 1e6
        print(f"  {size:7.1f} MB tar, {lentries:6,} entries: {r.rss_kib / 1024:6.1f} MB, {r.wall:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
