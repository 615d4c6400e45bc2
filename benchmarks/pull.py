"""Pull a 200 MiB blob from a registry on 127.0.0.1: imagevol against curl, oras-py and skopeo.

One run measures every tool on the same blob, in alternating rounds, and prints the best time of
each, its ratio to curl, and the peak RSS of the Python processes. imagevol verifies digest and size
while streaming and renames into its content store; curl and oras-py verify nothing; skopeo (to a
``dir:``) verifies the digest. Python tools are timed inside their own process (their import time
is reported apart); curl and skopeo are timed as whole processes.

    .venv/bin/python benchmarks/pull.py [--size-mib 200] [--rounds 3] [--dir DIR] [--json PATH]

With ``--json PATH`` it also writes the results document ``benchmarks/run`` renders into
docs/benchmarks.md (``benchmarks/_results.py``).

Target (docs/pulling.md): imagevol <= 2.5 x curl with verification on, peak RSS under 80 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks import _results  # noqa: E402
from imagevol.oci import OCI_CONFIG, OCI_LAYER, Digest, canonical_json  # noqa: E402
from imagevol.testing.images import LayoutBuilder  # noqa: E402
from tests.helpers import peers  # noqa: E402

# Each Python tool runs in a fresh interpreter and prints {"seconds", "import_seconds", "rss_mb"}.
_PY_PRELUDE = """
import json, sys, time
t0 = time.perf_counter()
"""
# Peak RSS from VmHWM: getrusage's ru_maxrss survives execve, so a child of a big parent would
# report the parent's size; VmHWM belongs to the process's own address space.
_PY_REPORT = """
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": elapsed, "import_seconds": imported - t0, "rss_mb": int(hwm.split()[1]) / 1024}))
"""
IMAGEVOL = (
    _PY_PRELUDE
    + """
from imagevol import Resolver
from imagevol.content.sources.registry import RegistryAccess
from imagevol.content.store import ContentStore
imported = time.perf_counter()
store = ContentStore(sys.argv[2])
resolver = Resolver(store, registry_factory=RegistryAccess(plain_http=True))
start = time.perf_counter()
record = resolver.pull(sys.argv[1]).record
elapsed = time.perf_counter() - start
"""
    + _PY_REPORT
)
ORAS = (
    _PY_PRELUDE
    + """
import oras.provider
imported = time.perf_counter()
host, repo, digest, out = sys.argv[1:5]
registry = oras.provider.Registry(hostname=host, insecure=True)
start = time.perf_counter()
registry.download_blob(f"{host}/{repo}", digest, out)
elapsed = time.perf_counter() - start
"""
    + _PY_REPORT
)


def build(layout: str, size: int) -> Digest:
    """An image whose one layer is ``size`` random bytes (seeded: the same blob every run)."""
    data = random.Random(4639).randbytes(size)
    b = LayoutBuilder(layout)
    layer = b.add_blob(data, OCI_LAYER)
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [str(layer.digest)]}}
    b.add_manifest(b.add_blob(canonical_json(config), OCI_CONFIG), [layer], tag="big")
    b.save()
    return layer.digest


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - start


def python_tool(script: str, *args: str) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], check=True, capture_output=True, text=True, timeout=600
    )
    report: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def scratch_root() -> str:
    """A tmpfs when there is one (disk noise would swamp a 0.2 s transfer), else the temp dir."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the tools write (default: /dev/shm if present)")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the results document to PATH")
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    curl, skopeo = peers.require("curl"), peers.require("skopeo")
    work = tempfile.mkdtemp(prefix="imagevol-bench-")
    target = args.dir or scratch_root()
    scratch = tempfile.mkdtemp(prefix="imagevol-bench-", dir=target)
    try:
        layout = os.path.join(work, "layout")
        digest = build(layout, size)
        with peers.registry(access_log=False) as reg:
            peers.skopeo_copy(layout, "big", reg, "bench/big")
            ref = f"{reg.host}/bench/big:v1"
            url = f"http://{reg.host}/v2/bench/big/blobs/{digest}"
            results: dict[str, list[float]] = {
                "curl": [],
                "imagevol": [],
                "imagevol-cli": [],
                "oras-py": [],
                "skopeo": [],
            }
            extra: dict[str, list[dict[str, float]]] = {"imagevol": [], "oras-py": []}

            def fresh(name: str) -> str:
                path = os.path.join(scratch, name)
                shutil.rmtree(path, ignore_errors=True)
                return path

            runs: list[tuple[str, Callable[[], float]]] = [
                ("curl", lambda: timed([curl, "-sf", "-o", fresh("curl.blob"), url])),
                ("imagevol", lambda: _py("imagevol", IMAGEVOL, extra, ref, fresh("store"))),
                ("imagevol-cli", lambda: timed([sys.executable, "-m", "imagevol.cli", "--root", fresh("node"),
                                                "pull", ref, "--plain-http"])),
                ("oras-py", lambda: _py("oras-py", ORAS, extra, reg.host, "bench/big", str(digest),
                                        fresh("oras.blob"))),
                ("skopeo", lambda: timed([skopeo, "--insecure-policy", "copy", "-q", "--preserve-digests",
                                          "--src-tls-verify=false", f"docker://{ref}", f"dir:{fresh('skopeo')}"])),
            ]  # fmt: skip
            for _ in range(args.rounds):
                for name, run in runs:
                    results[name].append(run())
            with open(os.path.join(scratch, "store", "blobs", "sha256", digest.hex), "rb") as f:
                assert os.fstat(f.fileno()).st_size == size  # the verified blob is in the store
        best = {name: min(times) for name, times in results.items()}
        rss = {name: max(r["rss_mb"] for r in reports) for name, reports in extra.items()}
        imports = {name: min(r["import_seconds"] for r in reports) for name, reports in extra.items()}
        print(f"blob: {args.size_mib} MiB, {args.rounds} rounds, best of each; target dir on {target}")
        print(f"{'tool':12} {'seconds':>8} {'x curl':>7} {'peak RSS':>9}  notes")
        notes = {
            "curl": "no verification",
            "imagevol": f"digest+size verified, temp+rename (imports {imports['imagevol']:.2f}s, not timed)",
            "imagevol-cli": "imagevol pull, whole process (interpreter start and imports included)",
            "oras-py": f"download_blob, no verification (imports {imports['oras-py']:.2f}s, not timed)",
            "skopeo": "copy to dir:, digest verified (whole process)",
        }
        for name in results:
            mem = f"{rss[name]:.1f} MB" if name in rss else "-"
            print(f"{name:12} {best[name]:8.3f} {best[name] / best['curl']:7.2f} {mem:>9}  {notes[name]}")
        ok = best["imagevol"] <= 2.5 * best["curl"] and rss["imagevol"] < 80
        print(f"target (<= 2.5 x curl, < 80 MB): {'met' if ok else 'NOT met'}")
        if args.json:
            _results.write(args.json, _report(args, best, rss, notes, target))
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


def _report(
    args: argparse.Namespace, best: dict[str, float], rss: dict[str, float], notes: dict[str, str], target: str
) -> _results.Result:
    mib = 1024 * 1024 / 1e6  # rss values are MB (VmHWM / 1024); the report wants MiB
    rows = tuple(
        _results.Row(
            name,
            seconds,
            imagevol=name.startswith("imagevol"),
            rss_mib=rss[name] / mib if name in rss else None,
            note=notes[name],
        )
        for name, seconds in best.items()
    )
    section = _results.Section(
        id="blob",
        title=f"Pull and verify a {args.size_mib} MiB blob from the loopback registry",
        text=(
            f"One uncompressed {args.size_mib} MiB layer pushed with skopeo to a `docker-registry` on "
            f"127.0.0.1; every tool fetches it {args.rounds} times in alternating rounds (best time "
            f"shown), writing to {target}. imagevol verifies digest and size while streaming and renames "
            "into its content store; curl and oras-py verify nothing."
        ),
        unit="s",
        primary="imagevol",
        rows=rows,
        targets=(
            _results.Target("imagevol ÷ curl", "≤ 2.5 × curl", best["imagevol"] / best["curl"], 2.5),
            _results.Target("imagevol peak RSS", "peak RSS < 80 MB", rss["imagevol"], 80, unit="MB", op="<"),
        ),
    )
    return _results.Result(
        "pull",
        f"python -m benchmarks.pull --size-mib {args.size_mib} --rounds {args.rounds}",
        (section,),
        raw={"best_seconds": best, "rss_mb": rss},
    )


def _py(name: str, script: str, extra: dict[str, list[dict[str, float]]], *args: str) -> float:
    report = python_tool(script, *args)
    extra[name].append(report)
    return report["seconds"]


if __name__ == "__main__":
    sys.exit(main())
