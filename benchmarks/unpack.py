"""Unpack speed and memory of imagevol against GNU tar, umoci and CPython tarfile, in one run.

    sudo .venv/bin/python benchmarks/unpack.py [--dir DIR] [--runs 3] [--scales 0.25,1]

Generates (seeded, untimed) the benchmark layer: 20,000 small text files (512 B to
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

if __package__ in (None, ""):  # run as a script (benchmarks/unpack.py): make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _results

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
from imagevol.trees import _decompress as decompress
from imagevol.trees.layers import ApplyOptions, apply_layers
from imagevol.oci import Digest
# backend: "zlib" forces plain zlib, "default" keeps imagevol's choice (ISA-L, zlib-ng or zlib);
# diff: the layer's diff ID, verified while unpacking as a node does, or "-" to skip the hash
backend, threaded, src, dst, diff = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4], sys.argv[5]
if backend == "zlib":
    import zlib
    decompress._gzip = zlib
diff_ids = None if diff == "-" else [Digest.parse(diff)]
t1 = time.perf_counter()
with open(src, "rb") as f:
    apply_layers(dst, [f], ApplyOptions(threaded=threaded), diff_ids)
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


TAR = "tar -xzf"
UMOCI = "umoci raw unpack"
DEFAULT_SCALES = "0.125,0.25,0.5,1,2"
TARGET_RATIO = 1.0  # the goal: materialise the 219 MB layer into tmpfs in at most 1.0 x GNU tar's time


@attrs.define
class LayerFiles:
    scale: float
    tar: str
    gz: str
    entries: int
    layout: str = ""
    #: sha256 of the uncompressed tar: the diff ID imagevol verifies while unpacking.
    diff_id: str = "-"

    @property
    def tar_mb(self) -> float:
        return os.path.getsize(self.tar) / 1e6

    @property
    def gz_mb(self) -> float:
        return os.path.getsize(self.gz) / 1e6


@attrs.define
class Candidate:
    name: str
    make_argv: Callable[[str], Sequence[str]]
    imagevol: bool = False
    note: str = ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="work directory (a tmpfs); default: mount a 6 GiB tmpfs (root)")
    parser.add_argument("--runs", type=int, default=3, help="runs per tool and layer size; the minimum counts")
    parser.add_argument(
        "--scales",
        default=DEFAULT_SCALES,
        help="layer sizes, as multiples of the 219 MB layer, at which imagevol, GNU tar and umoci are"
        f" compared and imagevol's peak RSS is shown (default {DEFAULT_SCALES})",
    )
    parser.add_argument(
        "--main-scale", type=float, default=1.0, help="size of the layer every tool is compared on (default 1)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH as JSON (benchmarks/run)")
    parser.add_argument("--generate", nargs=2, metavar=("TAR", "SCALE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generate:
        print(generate(args.generate[0], float(args.generate[1])))
        return 0
    scales = [float(s) for s in args.scales.split(",") if s.strip()]
    if args.runs < 1 or args.main_scale <= 0 or any(s <= 0 for s in scales):
        parser.error("--runs, --scales and --main-scale must be positive")
    mounted = None
    work = args.dir
    if work is None:
        if os.geteuid() != 0:
            parser.error("not root: pass --dir pointing at a tmpfs")
        mounted = tempfile.mkdtemp(prefix="imagevol-bench-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6g", "imagevol-bench", mounted], check=True)
        work = mounted
    command = f"benchmarks/unpack.py --runs {args.runs} --scales {args.scales}"
    if args.main_scale != 1.0:
        command += f" --main-scale {args.main_scale:g}"
    try:
        result = bench(work, args.runs, scales, args.main_scale, command)
    finally:
        if mounted:
            subprocess.run(["umount", mounted], check=False)
            os.rmdir(mounted)
    if args.json:
        _results.write(args.json, result)
    return 0


def prepare(work: str, scale: float, with_layout: bool) -> LayerFiles:
    """Generate the layer at ``scale`` (and an OCI layout around it for umoci): untimed."""
    tar = os.path.join(work, f"layer-{scale:g}.tar")
    # In a child: the big buffers never raise this process's RSS high-water mark.
    made = subprocess.run(
        [sys.executable, __file__, "--generate", tar, str(scale)], check=True, capture_output=True, text=True
    )
    layer = LayerFiles(scale, tar, tar + ".gz", int(made.stdout.split()[-1]))
    layer.diff_id = "sha256:" + sha256_file(tar)[0]
    gzip_file(tar, layer.gz)
    if with_layout:
        layer.layout = os.path.join(work, f"layout-{scale:g}")
        oci_layout(layer.layout, layer.gz, tar)
    return layer


def bench(work: str, runs: int, scales: Sequence[float], main_scale: float = 1.0, command: str = "") -> _results.Result:
    """Measure every tool on the layer at ``main_scale`` and imagevol, GNU tar and umoci at each of
    ``scales``, in a fresh directory under ``work`` (removed afterwards)."""
    tmpfs = on_tmpfs(work)
    if not tmpfs:
        print(f"warning: {work} is not a tmpfs; timings will include filesystem reclaim noise", file=sys.stderr)
    base = tempfile.mkdtemp(prefix="unpack-", dir=work)
    try:
        return _bench(base, runs, sorted(set(scales)), main_scale, command, tmpfs)
    finally:
        subprocess.run(["rm", "-rf", base], check=False)


def _candidates(layer: LayerFiles, umoci: str | None, backend: str, everything: bool) -> list[Candidate]:
    py, gz, diff = sys.executable, layer.gz, layer.diff_id
    primary = Candidate(
        f"imagevol ({backend}, thread)",
        lambda d: [py, "-c", _IMAGEVOL, "default", "1", gz, d, diff],
        imagevol=True,
        note="decompression and diff ID hash in a thread, as a node unpacks",
    )
    out = [Candidate(TAR, lambda d: ["tar", "-xzf", gz, "-C", d], note="GNU tar, gzip in a child process")]
    if umoci:
        # umoci wants to create its rootfs itself.
        out.append(
            Candidate(UMOCI, lambda d: [umoci, "raw", "unpack", "--image", f"{layer.layout}:big", f"{d}/rootfs"])
        )
    out.append(primary)
    if not everything:
        return out
    if backend != "zlib":
        out.append(
            Candidate(
                "imagevol (zlib, thread)",
                lambda d: [py, "-c", _IMAGEVOL, "zlib", "1", gz, d, diff],
                imagevol=True,
                note=f"zlib instead of {backend}",
            )
        )
    out.append(
        Candidate(
            f"imagevol ({backend}, no thread)",
            lambda d: [py, "-c", _IMAGEVOL, "default", "0", gz, d, diff],
            imagevol=True,
            note="decompression and diff ID hash inline",
        )
    )
    out.append(
        Candidate(
            f"imagevol ({backend}, thread, no diff ID)",
            lambda d: [py, "-c", _IMAGEVOL, "default", "1", gz, d, "-"],
            imagevol=True,
            note="the uncompressed stream not hashed (what the diff ID costs)",
        )
    )
    out.append(Candidate("tarfile filter='data'", lambda d: [py, "-c", _TARFILE, gz, d], note="CPython tarfile"))
    return out


def _version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.splitlines()[0].split()[-1] if out.strip() else "?"


def _bench(work: str, runs: int, scales: list[float], main_scale: float, command: str, tmpfs: bool) -> _results.Result:
    from imagevol.trees import _decompress as decompress

    umoci = shutil.which("umoci")
    if not umoci:
        print("umoci not installed: skipped", file=sys.stderr)
    layers = {scale: prepare(work, scale, umoci is not None) for scale in sorted({*scales, main_scale})}
    layer = layers[main_scale]
    backend = decompress.GZIP_BACKEND
    print(
        f"layer: {os.path.getsize(layer.tar):,} B tar, {layer.entries:,} entries, {os.path.getsize(layer.gz):,} B"
        f" gzip -6; target: {'tmpfs' if tmpfs else 'NOT tmpfs'}; {os.cpu_count()} CPUs; min of {runs} runs;"
        f" imagevol gzip backend: {backend}"
    )
    candidates = _candidates(layer, umoci, backend, everything=True)
    results = [measure(c.name, c.make_argv, work, runs) for c in candidates]
    base = results[0].wall
    print(f"{'tool':36} {'wall s':>8} {'ratio':>7} {'in-process s':>13} {'peak RSS':>10}")
    for r in results:
        inner = f"{r.inner:.2f}" if r.inner is not None else "-"
        print(f"{r.name:36} {r.wall:8.2f} {r.wall / base:7.2f} {inner:>13} {r.rss_kib / 1024:8.1f} MB")

    by_name = {r.name: r for r in results}
    sweep: dict[float, dict[str, Result]] = {}
    print("by layer size (imagevol, GNU tar, umoci; min of runs; peak RSS of imagevol):")
    for scale in scales:
        if scale == main_scale:
            sweep[scale] = by_name
        else:
            small = _candidates(layers[scale], umoci, backend, everything=False)
            sweep[scale] = {c.name: measure(c.name, c.make_argv, work, runs) for c in small}
        ltar = layers[scale]
        times = "  ".join(f"{c.name} {sweep[scale][c.name].wall:6.2f} s" for c in candidates[: 2 + bool(umoci)])
        primary = sweep[scale][candidates[1 + bool(umoci)].name]
        print(
            f"  {ltar.tar_mb:7.1f} MB tar, {ltar.entries:6,} entries: {times};"
            f" imagevol peak RSS {primary.rss_kib / 1024:6.1f} MB"
        )
    return _document(layers, results, candidates, sweep, scales, main_scale, runs, command, tmpfs, backend, umoci)


def _document(
    layers: dict[float, LayerFiles],
    results: list[Result],
    candidates: list[Candidate],
    sweep: dict[float, dict[str, Result]],
    scales: list[float],
    main_scale: float,
    runs: int,
    command: str,
    tmpfs: bool,
    backend: str,
    umoci: str | None,
) -> _results.Result:
    layer = layers[main_scale]
    primary = next(c.name for c in candidates if c.imagevol)
    rows = []
    for c, r in zip(candidates, results, strict=True):
        note = c.note
        if r.inner is not None:
            note += ("; " if note else "") + f"unpack alone {r.inner:.2f} s"
        rows.append(_results.Row(c.name, r.wall, imagevol=c.imagevol, rss_mib=r.rss_kib / 1024, note=note))
    by_name = {r.name: r for r in results}
    target = _results.Target(
        what="imagevol ÷ GNU tar",
        design=f"≤ {TARGET_RATIO:g} × GNU tar",
        value=by_name[primary].wall / by_name[TAR].wall,
        limit=TARGET_RATIO,
    )
    where = "a tmpfs" if tmpfs else "a filesystem that is NOT a tmpfs (timings include reclaim noise)"
    best = f"the minimum of {runs} runs" if runs > 1 else "one run"
    text = (
        f"Input (generated, seeded, untimed): the benchmark layer, {layer.scale:g} ×:"
        f" small text files of 512 B–4 KiB in directories of 100 plus three large files (random, base64,"
        f" words); {os.path.getsize(layer.tar):,} B of tar, {layer.entries:,} entries,"
        f" {os.path.getsize(layer.gz):,} B with `gzip -6`. Each tool unpacks it into a fresh directory on"
        f" {where}, in a process of its own: the time is that process's wall time, {best}"
        " (interpreter start and imports included for the Python tools; the note gives their unpack alone),"
        " and the peak RSS its maximum, taken by GNU time."
    )
    tools = [TAR, *([UMOCI] if umoci else []), primary]
    columns = ["tar (MB)", "entries", "gzip (MB)", *(f"{t} (s)" for t in tools), "imagevol ÷ GNU tar"]
    if umoci:
        columns.append("imagevol ÷ umoci")
    columns.append("imagevol peak RSS")
    table_rows = []
    for scale in scales:
        ltar, measured = layers[scale], sweep[scale]
        row = [f"{ltar.tar_mb:,.1f}", f"{ltar.entries:,}", f"{ltar.gz_mb:,.1f}"]
        row += [f"{measured[t].wall:.2f}" for t in tools]
        row.append(f"{measured[primary].wall / measured[TAR].wall:.2f}")
        if umoci:
            row.append(f"{measured[primary].wall / measured[UMOCI].wall:.2f}")
        row.append(f"{measured[primary].rss_kib / 1024:.1f} MiB")
        table_rows.append(tuple(row))
    labels = {TAR: "GNU tar -xzf", UMOCI: "umoci raw unpack", primary: primary}
    plot = _results.Plot(
        id="unpack",
        section="layer",
        title=f"Materialising a gzip layer into {'tmpfs' if tmpfs else 'a directory'} ({best})",
        x_label="layer size (MB of uncompressed tar; entries grow with it)",
        y_label="wall time (s)",
        x=tuple(layers[s].tar_mb for s in scales),
        lines=tuple(_results.Line(labels[t], tuple(sweep[s][t].wall for s in scales)) for t in [primary, *tools[:-1]]),
    )
    versions = [("GNU tar", _version(["tar", "--version"]))]
    if umoci:
        versions.append(("umoci", _version([umoci, "--version"])))
    versions.append(("imagevol gzip backend", backend))
    raw = {
        "runs": runs,
        "main_scale": main_scale,
        "layers": {
            f"{scale:g}": {
                "tar_bytes": os.path.getsize(layers[scale].tar),
                "gzip_bytes": os.path.getsize(layers[scale].gz),
                "entries": layers[scale].entries,
                "tools": {
                    name: {"wall_s": r.wall, "unpack_s": r.inner, "peak_rss_kib": r.rss_kib}
                    for name, r in (by_name if scale == main_scale else sweep[scale]).items()
                },
            }
            for scale in sorted({*scales, main_scale})
        },
    }
    return _results.Result(
        benchmark="unpack",
        command=command,
        sections=(
            _results.Section(
                id="layer",
                title=f"Materialise a {layer.tar_mb:.0f} MB / {layer.entries:,}-entry gzip layer into"
                f" {'tmpfs' if tmpfs else 'a directory'}",
                text=text,
                unit="s",
                primary=primary,
                rows=tuple(rows),
                targets=(target,),
                tables=(
                    _results.Table(
                        "By layer size: each tool in a fresh directory, minimum of the runs",
                        tuple(columns),
                        tuple(table_rows),
                    ),
                ),
            ),
        ),
        plots=(plot,) if len(scales) > 1 else (),
        versions=tuple(versions),
        raw=raw,
    )


if __name__ == "__main__":
    sys.exit(main())
