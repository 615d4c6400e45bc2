"""Pull a 200 MiB blob from a registry on 127.0.0.1: ``imagevol pull`` against curl, oras-py and skopeo.

Every tool runs as a whole process (interpreter start and imports included for the Python ones),
interleaved run by run with the others, each into a fresh directory: ``imagevol pull`` (the CLI, as
a user runs it: digest and size verified while streaming, temp file and rename into its content
store), ``curl -o`` (verifies nothing), oras-py's ``download_blob`` (verifies nothing) and
``skopeo copy`` to a ``dir:`` (verifies the digest). One more row, labelled in-process, times
imagevol's CLI entry point inside an interpreter that has already imported it.

    .venv/bin/python -m benchmarks.pull [--size-mib 200] [--runs 5] [--dir DIR] [--json PATH]

Targets (the project's performance goals): ``imagevol pull``, whole process, at most 2.0 x ``curl -o``;
peak RSS under 80 MB.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks import _measure, _results  # noqa: E402
from benchmarks._inputs import oci_layout  # noqa: E402
from benchmarks._measure import Candidate, Series  # noqa: E402
from tests.helpers import peers  # noqa: E402

TARGET_RATIO = 2.0
TARGET_RSS_MB = 80.0
LAYER = "application/vnd.oci.image.layer.v1.tar"

# oras-py's download_blob in a process of its own; prints the download alone.
_ORAS = """
import sys, time
import oras.provider
host, repo, digest, out = sys.argv[1:5]
registry = oras.provider.Registry(hostname=host, insecure=True)
start = time.perf_counter()
registry.download_blob(f"{host}/{repo}", digest, out)
print(time.perf_counter() - start)
"""

# imagevol's CLI (``imagevol.cli.main``: what the console script's ``run`` calls before it exits),
# called inside an interpreter that has already imported it; prints the call alone. The CLI imports a
# command's modules when the command runs, so the same command runs first with --policy Never,
# which fails before any transfer having imported the command and the node; the registry source,
# which the node imports when its first pull reaches a registry, is imported next.
_IMAGEVOL_IN_PROCESS = """
import contextlib, importlib, io, sys, time
from imagevol.cli import main
with contextlib.redirect_stderr(io.StringIO()):
    main([*sys.argv[1:], "--policy", "Never"])
importlib.import_module("imagevol.content.sources.registry")
start = time.perf_counter()
status = main(sys.argv[1:])
elapsed = time.perf_counter() - start
if status:
    sys.exit(status)
print(elapsed)
"""


def build(layout: str, size: int) -> str:
    """An image whose one layer is ``size`` random bytes (seeded: the same blob every run); returns
    the layer's digest."""
    blob = os.path.join(layout + ".blob")
    with open(blob, "wb") as f:
        f.write(random.Random(4639).randbytes(size))
    with open(blob, "rb") as f:
        hexdigest = hashlib.file_digest(f, "sha256").hexdigest()
    oci_layout(layout, blob, hexdigest, media_type=LAYER)
    os.unlink(blob)
    return f"sha256:{hexdigest}"


def scratch_root() -> str:
    """A tmpfs when there is one (disk noise would swamp a 0.2 s transfer), else the temp dir."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pull", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5, help="runs per tool, interleaved; the median counts")
    parser.add_argument("--dir", default=None, help="where the tools write (default: /dev/shm if present)")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the results document to PATH")
    args = parser.parse_args(argv)
    if args.size_mib < 1:
        parser.error("--size-mib must be positive")
    _measure.check_runs(args.runs)
    size = args.size_mib * 1024 * 1024
    curl, skopeo = peers.require("curl"), peers.require("skopeo")
    imagevol = _measure.imagevol_command()
    _measure.compile_imagevol()
    work = tempfile.mkdtemp(prefix="imagevol-bench-")
    target = args.dir or scratch_root()
    scratch = tempfile.mkdtemp(prefix="imagevol-bench-", dir=target)
    py = sys.executable
    try:
        layout = os.path.join(work, "layout")
        digest = build(layout, size)
        with peers.registry(access_log=False) as reg:
            peers.skopeo_copy(layout, "big", reg, "bench/big")
            ref = f"{reg.host}/bench/big:v1"
            url = f"http://{reg.host}/v2/bench/big/blobs/{digest}"
            pull = ["pull", ref, "--plain-http"]
            copy = [skopeo, "--insecure-policy", "copy", "-q", "--preserve-digests", "--src-tls-verify=false"]
            copy.append(f"docker://{ref}")
            tools = [
                Candidate("curl -o", lambda d: [curl, "-sf", "-o", f"{d}/blob", url]),
                Candidate("imagevol pull", lambda d: [*imagevol, "--root", f"{d}/node", *pull]),
                Candidate(
                    "oras-py download_blob", lambda d: [py, "-c", _ORAS, reg.host, "bench/big", digest, f"{d}/blob"]
                ),
                Candidate("skopeo copy", lambda d: [*copy, f"dir:{d}/copy"]),
                Candidate(
                    "imagevol pull, in process",
                    lambda d: [py, "-c", _IMAGEVOL_IN_PROCESS, "--root", f"{d}/node", *pull],
                ),
            ]
            print(f"blob: {args.size_mib} MiB from {reg.host}; {args.runs} interleaved runs; writing to {target}")
            with _measure.load_window() as load:
                series = _measure.interleave(tools, args.runs, scratch=scratch)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    result = _document(args, series, load.span, target)
    for row in result.sections[0].rows:
        print(f"  {row.tool:28} {row.seconds:7.3f} s  ({row.low:.3f}-{row.high:.3f})  {row.note}")
    missed = [t for t in result.sections[0].targets if not t.met]
    for t in result.sections[0].targets:
        print(f"  {'PASS' if t.met else 'MISS'} {t.what}: {t.value:.2f} {t.unit} (target {t.design})")
    if args.json:
        _results.write(args.json, result)
    return 1 if missed else 0


def _document(
    args: argparse.Namespace, series: dict[str, Series], load: tuple[float, float], target: str
) -> _results.Result:
    whole = series["imagevol pull"]
    inner = series["imagevol pull, in process"]
    inner_values = [s.inner for s in inner.samples if s.inner is not None]
    oras_alone = series["oras-py download_blob"].inner
    notes = {
        "curl -o": "verifies nothing",
        "imagevol pull": "digest and size verified while streaming, temp file and rename into the content store",
        "oras-py download_blob": "verifies nothing" + (f"; download alone {oras_alone:.2f} s" if oras_alone else ""),
        "skopeo copy": "to a dir:, digest verified",
    }
    rows = [
        series[name].row(imagevol=name.startswith("imagevol"), note=notes[name])
        for name in ("imagevol pull", "curl -o", "oras-py download_blob", "skopeo copy")
    ]
    if inner_values:
        rows.append(
            _results.Row(
                "imagevol pull, in process",
                statistics.median(inner_values),
                imagevol=True,
                note="the CLI's entry point timed inside a process that has already imported it"
                " (no interpreter start, no imports)",
                low=min(inner_values),
                high=max(inner_values),
                runs=len(inner_values),
            )
        )
    ratio = _measure.paired(whole, series["curl -o"])
    start_up = ""
    if inner_values:
        alone = statistics.median(inner_values)
        start_up = (
            f"the start-up work: the pull itself takes {alone:.2f} s ({alone / series['curl -o'].wall:.2f} × curl),"
            f" interpreter start and imports the other {max(0.0, whole.wall - alone):.2f} s"
        )
    rss = (whole.rss_mib or 0.0) * 1024 * 1024 / 1e6
    section = _results.Section(
        id="blob",
        title=f"Pull and verify a {args.size_mib} MiB blob from the loopback registry",
        text=(
            f"One uncompressed {args.size_mib} MiB layer pushed with skopeo to a `docker-registry` on 127.0.0.1;"
            f" each tool fetches it {args.runs} times, as a process of its own, interleaved run by run with the"
            f" others, into a fresh directory on {target}. imagevol's time is the whole `imagevol pull` command"
            " (interpreter start and imports included), as curl's is curl's."
        ),
        unit="s",
        primary="imagevol pull",
        rows=tuple(rows),
        targets=(
            ratio.target(
                "imagevol pull ÷ curl -o, whole processes",
                f"≤ {TARGET_RATIO:g} × curl",
                TARGET_RATIO,
                note=start_up,
            ),
            _results.Target("imagevol pull peak RSS", "peak RSS < 80 MB", rss, TARGET_RSS_MB, unit="MB", op="<"),
        ),
        load=load,
    )
    names = ("curl -o", "imagevol pull", "oras-py download_blob", "skopeo copy")
    plot = _results.Plot(
        id="pull",
        section="blob",
        title=f"Pulling a {args.size_mib} MiB blob, whole processes (median, fastest–slowest)",
        x_label="tool",
        y_label="wall time (s)",
        x=tuple(float(i) for i in range(len(names))),
        x_labels=names,
        kind="bar",
        lines=(_measure.line("whole process", [series[n] for n in names]),),
    )
    return _results.Result(
        "pull",
        f"python -m benchmarks.pull --size-mib {args.size_mib} --runs {args.runs}",
        (section,),
        plots=(plot,),
        raw={name: _measure.raw(s) for name, s in series.items()},
    )


if __name__ == "__main__":
    sys.exit(main())
