"""Unpack speed and memory of imagevol against GNU tar, umoci and CPython tarfile, whole processes.

    sudo .venv/bin/python -m benchmarks.unpack [--dir DIR] [--runs 5] [--scales 0.125,0.25,0.5,1,2] [--json PATH]

Generates (seeded, untimed) the benchmark layer: 20,000 small text files (512 B to 4 KiB, 200
directories) and three 50 MiB files (random, base64, words), ~219 MB of tar, compressed with
``gzip -6`` and ``zstd -3``. Every tool unpacks it into a fresh directory on a tmpfs (mounted here
when run as root without ``--dir``; on a disk filesystem the kernel reclaiming the previous tree
dominates the timings), each in a process of its own, interleaved run by run with the others
(``benchmarks/_measure.py``). imagevol runs as a whole process too (``python -c`` over the public
``imagevol.apply_layers``, verifying the layer's diff ID as a node does): interpreter start and
imports are part of its time, and the note gives the unpack alone.

Sections: the gzip layer on two CPUs (and by layer size); the same with both tools pinned to one CPU
(``taskset``: tar's gzip child has to share it), compared on CPU time;
zstd and uncompressed layers against ``tar --zstd -xf`` and ``tar -xf``; and the Python work per tar
entry, in process, against a bare loop making the same system calls.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence

import attrs

if __package__ in (None, ""):  # run as a script (benchmarks/unpack.py): make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _measure, _results
from benchmarks._inputs import FIXED_MTIME, Bytes, generate, gzip_file, oci_layout, sha256_file, zstd_file
from benchmarks._measure import Candidate, Series

# --- the processes ------------------------------------------------------------------------------------

# imagevol as a node unpacks a layer, through the public API only (so that it does not depend on
# where the modules live). Arguments: gzip backend ("zlib" forces plain zlib, "default" keeps
# imagevol's choice), where to decompress (ApplyOptions.decompress; "-": the default a node uses), layer, target
# directory, diff ID or "-" (no hash).
# Prints the unpack's wall and CPU time alone (a decompressing child's included).
_IMAGEVOL = """
import os, sys, time
from imagevol import ApplyOptions, Digest, apply_layers
backend, mode, src, dst, diff = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
if backend == "zlib":
    import zlib
    for name, module in list(sys.modules.items()):
        if name.startswith("imagevol.") and name.endswith("decompress"):
            module._gzip = zlib
diff_ids = None if diff == "-" else [Digest.parse(diff)]
cpu = lambda: sum(os.times()[:4])
t1, c1 = time.perf_counter(), cpu()
with open(src, "rb") as f:
    apply_layers(dst, [f], ApplyOptions() if mode == "-" else ApplyOptions(decompress=mode), diff_ids)
print(time.perf_counter() - t1, cpu() - c1)
"""

# The gzip backend the applier picked (its module is found by name, as above: loaded by apply_layers).
#: What the unpack process imports, alone: its start-up.
_IMPORTS = "from imagevol import ApplyOptions, Digest, apply_layers"

_BACKEND = """
import sys
from imagevol import apply_layers
print(next((m.GZIP_BACKEND for n, m in list(sys.modules.items())
            if n.startswith("imagevol.") and n.endswith("decompress")), "?"))
"""

_TARFILE = """
import sys, tarfile, time
src, dst = sys.argv[1], sys.argv[2]
t1 = time.perf_counter()
with tarfile.open(src, "r:*") as tf:
    tf.extractall(dst, filter="data")
print(time.perf_counter() - t1)
"""

# The Python work per tar entry, in process: one layer of small files applied with imagevol
# (uncompressed, no thread: the applier alone) against a bare Python loop making the same system
# calls per file (mkdir and open per directory; open, write, futimens, close per file). CPU time of
# the process (user + system), alternated round by round; prints the rounds as JSON.
_ENTRIES = """
import io, json, os, shutil, sys, time
from imagevol import ApplyOptions, apply_layers
src, work, rounds, dirs, per_dir, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), *map(int, sys.argv[4:7])
data = open(src, "rb").read()
payload = b"x" * size
def applied():
    dst = os.path.join(work, "applied"); os.mkdir(dst)
    t = time.process_time()
    apply_layers(dst, [io.BytesIO(data)], ApplyOptions(decompress="inline"))
    took = time.process_time() - t
    shutil.rmtree(dst)
    return took
def bare():
    dst = os.path.join(work, "bare"); os.mkdir(dst)
    root = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    t = time.process_time()
    for d in range(dirs):
        os.mkdir(f"d{d:04d}", 0o755, dir_fd=root)
        sub = os.open(f"d{d:04d}", os.O_RDONLY | os.O_DIRECTORY, dir_fd=root)
        for i in range(per_dir):
            fd = os.open(f"f{i:03d}", flags, 0o644, dir_fd=sub)
            os.write(fd, payload)
            os.utime(fd, ns=(1700000000 * 10**9, 1700000000 * 10**9))
            os.close(fd)
        os.close(sub)
    took = time.process_time() - t
    os.close(root)
    shutil.rmtree(dst)
    return took
out = {"applied": [], "bare": []}
for r in range(rounds):
    for name, fn in (("applied", applied), ("bare", bare))[:: 1 if r % 2 == 0 else -1]:
        out[name].append(fn())
print(json.dumps(out))
"""

TAR = "tar -xzf"
TAR_ZSTD = "tar --zstd -xf"
TAR_PLAIN = "tar -xf"
UMOCI = "umoci raw unpack"
TARFILE = "tarfile filter='data'"
DEFAULT_SCALES = "0.125,0.25,0.5,1,2"
# The goals: materialise the 219 MB layer into tmpfs in at most 0.7 x GNU tar's wall time and 0.8 x
# its CPU time; a zstd layer in at most 1.0 x `tar --zstd`; peak RSS flat with layer size.
TARGET_WALL = 0.7
TARGET_CPU = 0.8
TARGET_ZSTD = 1.0
TARGET_RSS_GROWTH = 1.25
IDLE_CPU = (
    "the applier's work per entry and the start-up work (interpreter start and imports are part of the time),"
    " and a second CPU free for the decompressing child (tar's and imagevol's)"
)


@attrs.define
class LayerFiles:
    scale: float
    tar: str
    gz: str
    entries: int
    zst: str = ""
    layout: str = ""
    #: sha256 of the uncompressed tar: the diff ID imagevol verifies while unpacking.
    diff_id: str = "-"

    @property
    def tar_mb(self) -> float:
        return os.path.getsize(self.tar) / 1e6

    @property
    def gz_mb(self) -> float:
        return os.path.getsize(self.gz) / 1e6


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


def prepare(work: str, scale: float, umoci: bool, zstd: bool) -> LayerFiles:
    """Generate the layer at ``scale`` (and an OCI layout around it for umoci): untimed."""
    tar = os.path.join(work, f"layer-{scale:g}.tar")
    # In a child: the big buffers never raise this process's RSS high-water mark.
    made = subprocess.run(
        [sys.executable, "-m", "benchmarks.unpack", "--generate", tar, str(scale)],
        check=True,
        capture_output=True,
        text=True,
        cwd=_REPO,
    )
    layer = LayerFiles(scale, tar, tar + ".gz", int(made.stdout.split()[-1]))
    layer.diff_id = "sha256:" + sha256_file(tar)[0]
    gzip_file(tar, layer.gz)
    if zstd:
        layer.zst = tar + ".zst"
        zstd_file(tar, layer.zst)
    if umoci:
        layer.layout = os.path.join(work, f"layout-{scale:g}")
        oci_layout(layer.layout, layer.gz, layer.diff_id.removeprefix("sha256:"))
    return layer


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _imagevol(blob: str, diff: str, *, backend: str = "default", mode: str = "-") -> Candidate:
    """imagevol as a process; ``mode`` is ``ApplyOptions.decompress`` (``-``: the options a node uses)."""
    py = sys.executable
    return Candidate("", lambda d: [py, "-c", _IMAGEVOL, backend, mode, blob, d, diff])


def _named(name: str, c: Candidate) -> Candidate:
    return attrs.evolve(c, name=name)


@attrs.frozen
class Tool:
    candidate: Candidate
    imagevol: bool = False
    note: str = ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.unpack", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="work directory (a tmpfs); default: mount a 6 GiB tmpfs (root)")
    parser.add_argument("--runs", type=int, default=5, help="runs per tool, interleaved; the median counts")
    parser.add_argument(
        "--scales",
        default=DEFAULT_SCALES,
        help="layer sizes, as multiples of the 219 MB layer, at which imagevol, GNU tar and umoci are"
        f" compared and imagevol's peak RSS is shown (default {DEFAULT_SCALES})",
    )
    parser.add_argument(
        "--main-scale", type=float, default=1.0, help="size of the layer every tool is compared on (default 1)"
    )
    parser.add_argument("--entries", type=int, default=20000, help="small files in the per-entry benchmark")
    parser.add_argument("--cpu", help="the CPU the pinned variant runs on (default: the last one we may use)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH as JSON (benchmarks/run)")
    parser.add_argument("--generate", nargs=2, metavar=("TAR", "SCALE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generate:
        print(generate(args.generate[0], float(args.generate[1])))
        return 0
    scales = sorted({float(s) for s in args.scales.split(",") if s.strip()})
    if args.runs < 1 or args.main_scale <= 0 or any(s <= 0 for s in scales) or args.entries < 100:
        parser.error("--runs, --scales and --main-scale must be positive, --entries at least 100")
    _measure.check_runs(args.runs)
    cpu = args.cpu or str(sorted(os.sched_getaffinity(0))[-1])
    mounted = None
    work = args.dir
    if work is None:
        if os.geteuid() != 0:
            parser.error("not root: pass --dir pointing at a tmpfs")
        mounted = tempfile.mkdtemp(prefix="imagevol-bench-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6g", "imagevol-bench", mounted], check=True)
        work = mounted
    command = f"python -m benchmarks.unpack --runs {args.runs} --scales {args.scales}"
    if args.main_scale != 1.0:
        command += f" --main-scale {args.main_scale:g}"
    if args.entries != 20000:
        command += f" --entries {args.entries}"
    try:
        result = bench(work, args.runs, scales, args.main_scale, command, cpu, args.entries)
    finally:
        if mounted:
            subprocess.run(["umount", mounted], check=False)
            os.rmdir(mounted)
    if args.json:
        _results.write(args.json, result)
    missed = [t.what for s in result.sections for t in s.targets if not t.met]
    print("targets missed: " + "; ".join(missed) if missed else "every target met")
    return 1 if missed else 0


def bench(
    work: str,
    runs: int,
    scales: Sequence[float],
    main_scale: float = 1.0,
    command: str = "",
    cpu: str = "0",
    entries: int = 20000,
) -> _results.Result:
    """Measure everything in a fresh directory under ``work`` (removed afterwards)."""
    tmpfs = on_tmpfs(work)
    if not tmpfs:
        print(f"warning: {work} is not a tmpfs; timings will include filesystem reclaim noise", file=sys.stderr)
    base = tempfile.mkdtemp(prefix="unpack-", dir=work)
    try:
        return _Bench(base, runs, list(scales), main_scale, command, tmpfs, cpu, entries).run()
    finally:
        subprocess.run(["rm", "-rf", base], check=False)


@attrs.define
class _Bench:
    work: str
    runs: int
    scales: list[float]
    main_scale: float
    command: str
    tmpfs: bool
    cpu: str
    entries: int
    umoci: str | None = None
    backend: str = "?"
    layers: dict[float, LayerFiles] = attrs.field(factory=dict)
    raw: dict[str, object] = attrs.field(factory=dict)
    primary: str = ""
    gzip_series: dict[str, Series] = attrs.field(factory=dict)

    def run(self) -> _results.Result:
        _measure.compile_imagevol()  # start-up is measured with bytecode, as an installed wheel has it
        self.umoci = shutil.which("umoci")
        if not self.umoci:
            print("umoci not installed: its rows are skipped", file=sys.stderr)
        probe = subprocess.run([sys.executable, "-c", _BACKEND], capture_output=True, text=True, check=True)
        self.backend = probe.stdout.strip() or "?"
        for scale in sorted({*self.scales, self.main_scale}):
            self.layers[scale] = prepare(self.work, scale, self.umoci is not None, zstd=scale == self.main_scale)
        layer = self.layers[self.main_scale]
        print(
            f"layer: {os.path.getsize(layer.tar):,} B tar, {layer.entries:,} entries, {os.path.getsize(layer.gz):,} B"
            f" gzip -6, {os.path.getsize(layer.zst):,} B zstd -3; target: {'tmpfs' if self.tmpfs else 'NOT tmpfs'};"
            f" {os.cpu_count()} CPUs; median of {self.runs} interleaved runs; imagevol gzip backend: {self.backend}",
            flush=True,
        )
        sections = [self.layer_section(), self.pinned_section(), self.formats_section(), self.entries_section()]
        versions = [("GNU tar", _measure.versions_of(["tar", "--version"]))]
        if self.umoci:
            versions.append(("umoci", _measure.versions_of([self.umoci, "--version"])))
        versions.append(("imagevol gzip backend", self.backend))
        return _results.Result(
            benchmark="unpack",
            command=self.command,
            sections=tuple(s for s, _ in sections),
            plots=tuple(p for _, plots in sections for p in plots),
            versions=tuple(versions),
            raw=self.raw,
        )

    # --- helpers ----------------------------------------------------------------------------------

    def _tools(self, layer: LayerFiles, everything: bool) -> list[Tool]:
        gz, diff = layer.gz, layer.diff_id
        primary = f"imagevol ({self.backend})"
        out = [Tool(Candidate(TAR, lambda d: ["tar", "-xzf", gz, "-C", d]), note="GNU tar, gzip in a child process")]
        umoci = self.umoci
        if umoci:
            # umoci wants to create its rootfs itself.
            out.append(
                Tool(
                    Candidate(
                        UMOCI, lambda d: [umoci, "raw", "unpack", "--image", f"{layer.layout}:big", f"{d}/rootfs"]
                    )
                )
            )
        out.append(
            Tool(
                _named(primary, _imagevol(gz, diff)),
                imagevol=True,
                note="diff ID verified; the options a node uses (decompression and hashing in a child process)",
            )
        )
        if not everything:
            return out
        if self.backend != "zlib":
            out.append(
                Tool(
                    _named("imagevol (zlib)", _imagevol(gz, diff, backend="zlib")),
                    imagevol=True,
                    note=f"zlib instead of {self.backend}",
                )
            )
        for mode, where in (("inline", "inline"), ("thread", "in a thread beside the applier")):
            out.append(
                Tool(
                    _named(f"imagevol ({self.backend}, {mode})", _imagevol(gz, diff, mode=mode)),
                    imagevol=True,
                    note=f'decompression and hashing {where} (ApplyOptions(decompress="{mode}"))',
                )
            )
        out.append(
            Tool(
                _named(f"imagevol ({self.backend}, no diff ID)", _imagevol(gz, "-")),
                imagevol=True,
                note="the uncompressed stream not hashed (what the diff ID costs)",
            )
        )
        py = sys.executable
        out.append(Tool(Candidate(TARFILE, lambda d: [py, "-c", _TARFILE, gz, d]), note="CPython tarfile"))
        return out

    def _measure(self, title: str, tools: Sequence[Tool]) -> tuple[dict[str, Series], tuple[float, float]]:
        print(f"{title}:", flush=True)
        with _measure.load_window() as load:
            series = _measure.interleave([t.candidate for t in tools], self.runs, scratch=self.work)
        return series, load.span

    @staticmethod
    def _rows(tools: Sequence[Tool], series: dict[str, Series]) -> tuple[_results.Row, ...]:
        rows = []
        for t in tools:
            s = series[t.candidate.name]
            note = t.note
            if s.inner is not None:
                alone = f"unpack alone {s.inner:.2f} s"
                if s.inner_cpu is not None:
                    alone += f", {s.inner_cpu:.2f} s CPU"
                note += ("; " if note else "") + alone + " (in process)"
            rows.append(s.row(imagevol=t.imagevol, note=note))
        return tuple(rows)

    def _describe(self, layer: LayerFiles) -> str:
        return (
            f"{os.path.getsize(layer.tar):,} B of tar, {layer.entries:,} entries (small text files of 512 B–4 KiB"
            " in directories of 100, and three large files: random, base64, words)"
        )

    def _raw(self, key: str, series: dict[str, Series]) -> None:
        self.raw[key] = {name: _measure.raw(s) for name, s in series.items()}

    # --- sections -----------------------------------------------------------------------------------

    def layer_section(self) -> tuple[_results.Section, list[_results.Plot]]:
        layer = self.layers[self.main_scale]
        tools = self._tools(layer, everything=True)
        series, load = self._measure("gzip layer, two CPUs", tools)
        self._raw("gzip", series)
        primary = next(t.candidate.name for t in tools if t.imagevol)
        self.primary = primary
        self.gzip_series = series
        # The sweep by layer size: imagevol, GNU tar and umoci at each scale.
        sweep: dict[float, dict[str, Series]] = {}
        for scale in self.scales:
            if scale == self.main_scale:
                sweep[scale] = series
                continue
            small = self._tools(self.layers[scale], everything=False)
            sweep[scale], _ = self._measure(f"gzip layer at {scale:g} x", small)
            self._raw(f"gzip@{scale:g}", sweep[scale])
        names = [t.candidate.name for t in self._tools(layer, everything=False)]
        peers = [n for n in names if n != primary]
        columns = ["tar (MB)", "entries", "gzip (MB)", *(f"{n} (s)" for n in peers), f"{primary} (s)"]
        columns += [f"imagevol ÷ {n}" for n in peers] + ["imagevol peak RSS"]
        table_rows = []
        for scale in self.scales:
            lt, measured = self.layers[scale], sweep[scale]
            row = [f"{lt.tar_mb:,.1f}", f"{lt.entries:,}", f"{lt.gz_mb:,.1f}"]
            row += [f"{measured[n].wall:.2f}" for n in [*peers, primary]]
            row += [f"{_measure.paired(measured[primary], measured[n]).median:.2f}" for n in peers]
            rss = measured[primary].rss_mib
            row.append(f"{rss:.1f} MiB" if rss else "—")
            table_rows.append(tuple(row))
        wall = _measure.paired(series[primary], series[TAR])
        targets = [
            wall.target(
                "imagevol ÷ GNU tar, wall, 2 CPUs", f"≤ {TARGET_WALL:g} × GNU tar wall", TARGET_WALL, note=IDLE_CPU
            )
        ]
        peaks = [sweep[s][primary].rss_mib or 0.0 for s in self.scales]
        if len(self.scales) > 1 and all(peaks):
            growth = peaks[-1] / peaks[0]
            targets.append(
                _results.Target(
                    f"imagevol peak RSS, {self.layers[self.scales[-1]].tar_mb:,.0f} MB ÷"
                    f" {self.layers[self.scales[0]].tar_mb:,.0f} MB layer",
                    "peak RSS stays flat with layer size (read as ≤ 1.25 ×)",
                    growth,
                    TARGET_RSS_GROWTH,
                )
            )
        where = "a tmpfs" if self.tmpfs else "a filesystem that is NOT a tmpfs (timings include reclaim noise)"
        text = (
            f"Input (generated, seeded, untimed): {self._describe(layer)}; {os.path.getsize(layer.gz):,} B with"
            f" `gzip -6`. Each tool unpacks it into a fresh directory on {where}, as a process of its own, all"
            f" tools in turn for {self.runs} rounds on two CPUs: the time is the process's wall time (interpreter"
            " start and imports included for the Python tools), the CPU time its user + system time with its"
            " children's (gzip under tar), the peak RSS its maximum (GNU time)."
        )
        labels = {TAR: "GNU tar -xzf", UMOCI: "umoci raw unpack", primary: primary}
        plot = _results.Plot(
            id="unpack",
            section="layer",
            title=f"Unpacking a gzip layer into {'tmpfs' if self.tmpfs else 'a directory'} (median, fastest–slowest)",
            x_label="layer size (MB of uncompressed tar; entries grow with it)",
            y_label="wall time (s)",
            x=tuple(self.layers[s].tar_mb for s in self.scales),
            lines=tuple(_measure.line(labels[n], [sweep[s][n] for s in self.scales]) for n in [primary, *peers]),
        )
        section = _results.Section(
            id="layer",
            title=f"Unpack a {layer.tar_mb:.0f} MB / {layer.entries:,}-entry gzip layer into"
            f" {'tmpfs' if self.tmpfs else 'a directory'}, two CPUs",
            text=text,
            unit="s",
            primary=primary,
            rows=self._rows(tools, series),
            targets=tuple(targets),
            tables=(
                _results.Table(
                    "By layer size: median of the interleaved runs at each size",
                    tuple(columns),
                    tuple(table_rows),
                ),
            ),
            load=load,
        )
        return section, [plot] if len(self.scales) > 1 else []

    def pinned_section(self) -> tuple[_results.Section, list[_results.Plot]]:
        layer = self.layers[self.main_scale]
        gz, diff = layer.gz, layer.diff_id
        cpu = self.cpu
        tar = Candidate(f"{TAR} on one CPU", lambda d: _measure.pinned(["tar", "-xzf", gz, "-C", d], cpu))
        iv = _imagevol(gz, diff)
        primary = f"imagevol ({self.backend}) on one CPU"
        mine = Candidate(primary, lambda d: _measure.pinned(iv.argv(d), cpu))
        py = sys.executable
        imports = Candidate(f"python -c '{_IMPORTS}' on one CPU", lambda d: _measure.pinned([py, "-c", _IMPORTS], cpu))
        tools = [
            Tool(tar, note="gzip shares the CPU with tar"),
            Tool(mine, imagevol=True, note="diff ID verified; decompression and hashing inline (one CPU: no child)"),
            Tool(
                imports,
                imagevol=True,
                note="interpreter start and the imports of the row above, alone",
            ),
        ]
        series, load = self._measure(f"gzip layer, pinned to CPU {cpu}", tools)
        self._raw("gzip-pinned", series)
        cpu_ratio = _measure.paired(series[primary], series[tar.name], "cpu")
        wall_ratio = _measure.paired(series[primary], series[tar.name])
        start_up = series[imports.name].cpu
        share = start_up / series[primary].cpu
        text = (
            f"The layer above, with both tools pinned to one CPU (`taskset -c {cpu}`): tar's gzip child can no"
            " longer run beside tar (imagevol decompresses inline: with one CPU it forks no child), so the times"
            " show the work each does. Compared on CPU time (user + system, children included), the median of"
            f" the per-round ratios of {self.runs} interleaved rounds; wall time shown too"
            f" ({wall_ratio.median:.2f} × GNU tar's)."
            f" Interpreter start and imports take {start_up:.2f} s of imagevol's {series[primary].cpu:.2f} s of CPU"
            f" ({share:.0%}; the `python -c '{_IMPORTS}'` row)."
        )
        section = _results.Section(
            id="pinned",
            title="The same layer on one CPU: CPU time",
            text=text,
            unit="s",
            primary=primary,
            rows=self._rows(tools, series),
            targets=(
                cpu_ratio.target(
                    "imagevol ÷ GNU tar, CPU time, one CPU",
                    f"≤ {TARGET_CPU:g} × GNU tar CPU time",
                    TARGET_CPU,
                    note=f"the start-up work: interpreter start and imports are {share:.0%} of imagevol's CPU time",
                ),
            ),
            load=load,
        )
        return section, []

    def formats_section(self) -> tuple[_results.Section, list[_results.Plot]]:
        layer = self.layers[self.main_scale]
        tar, zst, diff = layer.tar, layer.zst, layer.diff_id
        primary = "imagevol, zstd"
        tools = [
            Tool(Candidate(TAR_ZSTD, lambda d: ["tar", "--zstd", "-xf", zst, "-C", d]), note="zstd in a child process"),
            Tool(
                _named(primary, _imagevol(zst, diff)), imagevol=True, note="diff ID verified; zstd in a child process"
            ),
            Tool(Candidate(TAR_PLAIN, lambda d: ["tar", "-xf", tar, "-C", d]), note="uncompressed"),
            Tool(
                _named("imagevol, uncompressed", _imagevol(tar, diff)),
                imagevol=True,
                note="uncompressed; diff ID verified",
            ),
        ]
        series, load = self._measure("zstd and uncompressed layers", tools)
        self._raw("formats", series)
        zstd = _measure.paired(series[primary], series[TAR_ZSTD])
        plain = _measure.paired(series["imagevol, uncompressed"], series[TAR_PLAIN])
        gz = self.gzip_series
        text = (
            f"The same {layer.tar_mb:.0f} MB layer compressed with `zstd -3` ({os.path.getsize(zst):,} B) and"
            f" uncompressed, against GNU tar; {self.runs} interleaved rounds on two CPUs, whole processes."
            f" Uncompressed, imagevol takes {plain.median:.2f} × GNU tar's time."
        )
        plot = _results.Plot(
            id="unpack-format",
            section="formats",
            title=f"Unpacking the {layer.tar_mb:.0f} MB layer by format (median, fastest–slowest)",
            x_label="layer format",
            y_label="wall time (s)",
            x=(0.0, 1.0, 2.0),
            x_labels=("gzip -6", "zstd -3", "uncompressed"),
            kind="bar",
            lines=(
                _measure.line("GNU tar", [gz[TAR], series[TAR_ZSTD], series[TAR_PLAIN]]),
                _measure.line("imagevol", [gz[self.primary], series[primary], series["imagevol, uncompressed"]]),
            ),
        )
        section = _results.Section(
            id="formats",
            title="Unpack the same layer compressed with zstd, and uncompressed",
            text=text,
            unit="s",
            primary=primary,
            rows=self._rows(tools, series),
            targets=(
                zstd.target(
                    "imagevol ÷ tar --zstd, wall, 2 CPUs", f"≤ {TARGET_ZSTD:g} × tar --zstd", TARGET_ZSTD, note=IDLE_CPU
                ),
            ),
            load=load,
        )
        return section, [plot]

    def entries_section(self) -> tuple[_results.Section, list[_results.Plot]]:
        per_dir = 100
        dirs = max(1, self.entries // per_dir)
        size = 1024
        path = os.path.join(self.work, "entries.tar")
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
            payload = b"x" * size
            for d in range(dirs):
                info = tarfile.TarInfo(f"d{d:04d}")
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, FIXED_MTIME
                tf.addfile(info)
                for i in range(per_dir):
                    info = tarfile.TarInfo(f"d{d:04d}/f{i:03d}")
                    info.size, info.mode, info.mtime = size, 0o644, FIXED_MTIME
                    tf.addfile(info, Bytes(payload))
        n = dirs * (per_dir + 1)
        scratch = tempfile.mkdtemp(prefix="entries-", dir=self.work)
        print("per-entry work, in process:", flush=True)
        with _measure.load_window() as load:
            done = subprocess.run(
                [sys.executable, "-c", _ENTRIES, path, scratch, str(self.runs), str(dirs), str(per_dir), str(size)],
                check=True,
                capture_output=True,
                text=True,
            )
        os.unlink(path)
        shutil.rmtree(scratch, ignore_errors=True)
        rounds = json.loads(done.stdout.strip().splitlines()[-1])
        applied = [t / n for t in rounds["applied"]]
        bare = [t / n for t in rounds["bare"]]
        python = [a - b for a, b in zip(applied, bare, strict=True)]
        self.raw["entries"] = {"entries": n, "applied_s_per_entry": applied, "bare_s_per_entry": bare}

        def row(name: str, values: list[float], imagevol: bool, note: str) -> _results.Row:
            return _results.Row(
                name,
                statistics.median(values),
                imagevol=imagevol,
                note=note,
                low=min(values),
                high=max(values),
                runs=len(values),
            )

        primary = "imagevol applier, per entry"
        text = (
            f"In process (labelled as such: no peer runs here). A {n:,}-entry uncompressed layer of {size} B files"
            f" in directories of {per_dir}, applied by `imagevol.apply_layers` with nothing decompressed beside"
            " it (inline), against a bare Python loop making the same system calls per file (open with"
            " `O_CREAT|O_EXCL`, write, futimens, close; mkdir and open per directory). CPU time (user + system)"
            f" per entry, the median of {self.runs} rounds alternating the two. The difference is the Python work"
            " imagevol does per entry: parsing and checking the header, validating the name, resolving the parent,"
            " dispatching."
        )
        section = _results.Section(
            id="entries",
            title="Python work per tar entry (in process)",
            text=text,
            unit="µs",
            primary=primary,
            rows=(
                row(primary, applied, True, "header parsed and checked, name validated, file written"),
                row(
                    "imagevol Python work, per entry",
                    [max(p, 1e-9) for p in python],
                    True,
                    "the applier less the bare loop",
                ),
                row("bare loop, same system calls", bare, False, "the floor for any Python applier"),
            ),
            load=load.span,
        )
        return section, []


if __name__ == "__main__":
    sys.exit(main())
