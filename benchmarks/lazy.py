"""Lazy sub paths: one Pod mounting a 10 KiB sub path of a large image, lazily against a full pull.

A generated image (8 layers, 20,480 files of text-like data, ``--scale`` GiB uncompressed; 2 by
default) is built once into a cache directory outside the repository (``--cache``, default
``$XDG_CACHE_HOME/imagevol-bench/lazy-<scale>``) in three variants: zstd:chunked, eStargz and plain
gzip. Each run pushes them with skopeo to a ``docker-registry`` on 127.0.0.1, then applies a Pod
mounting the 10 KiB directory ``srv/config`` (10 files in the sixth layer) in a whole ``imagevol
apply`` process on a fresh node, ``--lazy toc`` against ``--lazy off``, interleaved (variant by
variant, mode by mode, run after run). Per process: wall time to ``Running``, peak RSS, the bytes
the registry served (its access log), and the bytes the node wrote (the content store, the lazy
cache, the trees). Median and spread (min to max) of ``--runs`` runs; the load average before and
after is printed and kept. The Pod's container image is a one-file image in the same registry, so
that ``apply`` ends with the container running and nothing reaches the network; the package's
bytecode is written first (``_measure.compile_imagevol``), as an installed wheel has it.

Targets: for the TOC formats, at most 1 % of the full pull's bytes served and 10 % of its time; for
plain gzip (which must be pulled whole), the tree written cut to the sub path (at most 1 % of the
full tree's bytes).

    .venv/bin/python -m benchmarks.lazy [--scale 2] [--runs 5] [--cache DIR] [--json PATH]

Building the zstd:chunked variant computes tar-split's CRC-64 of every file: with the optional
``fastcrc`` package installed in the environment that takes seconds, without it (pure Python, about
1 MB/s) about half an hour at the default scale. The image is built once and reused.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks import _measure, _results  # noqa: E402
from imagevol.testing.images import Layer, LayoutBuilder  # noqa: E402
from imagevol.testing.lazy_layers import LazyLayer, add_lazy_image, estargz_layer, zstd_chunked_layer  # noqa: E402
from imagevol.testing.tarbuild import TarEntry  # noqa: E402
from tests.helpers import peers  # noqa: E402

VARIANTS = ("zstd:chunked", "estargz", "gzip")
LAYERS = 8
DIRS = 64
FILES_PER_DIR = 40  # 8 x 64 x 40 = 20,480 files
SUB_PATH = "srv/config"
SUB_FILES = 10
SUB_FILE_SIZE = 1024
BYTES_TARGET = 0.01
TIME_TARGET = 0.10
WRITE_TARGET = 0.01


def _tag(variant: str) -> str:
    return variant.replace(":", "-")


def _data(rng: random.Random, size: int) -> bytes:
    # Hex text: compresses about 2:1 like typical image content, and has no long zero runs.
    return rng.randbytes(size // 2 + 1).hex().encode()[:size]


def _entries(layer: int, file_size: int, seed: int) -> list[TarEntry]:
    rng = random.Random(seed * 1000 + layer)
    out = [TarEntry(f"l{layer}/", "dir")]
    for d in range(DIRS):
        out.append(TarEntry(f"l{layer}/d{d}/", "dir"))
        out += [TarEntry(f"l{layer}/d{d}/f{i}", "file", _data(rng, file_size)) for i in range(FILES_PER_DIR)]
    if layer == 5:
        out += [TarEntry("srv/", "dir"), TarEntry(SUB_PATH + "/", "dir")]
        out += [TarEntry(f"{SUB_PATH}/c{i}.conf", "file", _data(rng, SUB_FILE_SIZE)) for i in range(SUB_FILES)]
    return out


def build(cache: str, scale: float) -> str:
    """The layout with the three variants (tags ``zstd-chunked``, ``estargz``, ``gzip``), built
    once into ``cache``."""
    layout = os.path.join(cache, "layout")
    done = os.path.join(cache, "complete")
    if os.path.exists(done):
        return layout
    shutil.rmtree(layout, ignore_errors=True)
    os.makedirs(cache, exist_ok=True)
    file_size = max(1, int(scale * (1 << 30) / (LAYERS * DIRS * FILES_PER_DIR)))
    builder = LayoutBuilder(layout)
    for variant in VARIANTS:
        layers: list[LazyLayer | Layer] = []
        for n in range(LAYERS):
            entries = _entries(n, file_size, seed=1)
            if variant == "zstd:chunked":
                layers.append(zstd_chunked_layer(entries))
            elif variant == "estargz":
                layers.append(estargz_layer(entries))
            else:
                layers.append(Layer(tuple(entries), "gzip"))
            print(f"built {variant} layer {n + 1}/{LAYERS}", file=sys.stderr, flush=True)
        add_lazy_image(builder, layers, tag=_tag(variant))
        builder.save()
    with open(done, "w") as f:
        f.write(f"{scale}\n")
    return layout


APP_REPO = "bench/app"


def _app_layout(work: str) -> str:
    """A one-file image for the Pod's container (tag ``app``)."""
    layout = os.path.join(work, "app-layout")
    builder = LayoutBuilder(layout)
    builder.add_image([Layer((TarEntry("bin/", "dir"), TarEntry("bin/app", "file", b"app\n")))], tag="app")
    builder.save()
    return layout


def _pod(ref: str, app: str) -> str:
    return (
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bench\nspec:\n  containers:\n  - name: c\n"
        f"    image: {app}\n    volumeMounts:\n    - name: v\n      mountPath: /v\n"
        f"      subPath: {SUB_PATH}\n  volumes:\n  - name: v\n    image:\n"
        f"      reference: {ref}\n      pullPolicy: IfNotPresent\n"
    )


def _size(path: str) -> int:
    """Bytes of the regular files below ``path`` (each inode once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(top, name))
            if (st.st_dev, st.st_ino) not in seen and os.path.isfile(os.path.join(top, name)):
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def run_once(work: str, reg: peers.Registry, variant: str, mode: str, n: int) -> dict[str, float]:
    """One whole ``imagevol apply`` process on a fresh node."""
    root = os.path.join(work, f"node-{_tag(variant)}-{mode}-{n}")
    conf = root + ".registries.conf"
    with open(conf, "w") as f:
        f.write(f'[[registry]]\nlocation = "{reg.host}"\ninsecure = true\n')
    pod = root + ".pod.yaml"
    with open(pod, "w") as f:
        f.write(_pod(f"{reg.host}/bench/lazy:{_tag(variant)}", f"{reg.host}/{APP_REPO}:v1"))
    mark = reg.mark()
    cmd = [*_measure.imagevol_command(), "--root", root, "--registries", conf, "--lazy", mode, "apply", "-f", pod]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    if proc.stdout:
        proc.stdout.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{variant} {mode}: imagevol apply failed: {out[-2000:]}")
    served = sum(e.size for e in reg.access(mark) if e.method == "GET")
    written = _size(root)
    trees = _size(os.path.join(root, "snapshots"))
    shutil.rmtree(root, ignore_errors=True)
    return {
        "seconds": elapsed,
        "rss_mib": usage.ru_maxrss / 1024,
        "served": float(served),
        "written": float(written),
        "trees": float(trees),
    }


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _spread(values: Sequence[float]) -> str:
    return f"{min(values):.3g}–{max(values):.3g}"


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.2f} MiB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lazy", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=2.0, help="GiB of file data in the image (default 2)")
    parser.add_argument("--runs", type=int, default=5, help="runs per variant and mode (default 5, at least 5)")
    parser.add_argument("--cache", default=None, help="where the generated image is kept between runs")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the results document to PATH")
    args = parser.parse_args(argv)
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    cache = args.cache or os.path.join(cache_home, "imagevol-bench", f"lazy-{args.scale:g}")
    layout = build(cache, args.scale)
    _measure.compile_imagevol()
    load_before = os.getloadavg()
    work = tempfile.mkdtemp(prefix="imagevol-bench-lazy-")
    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        with peers.registry() as reg:
            for variant in VARIANTS:
                peers.skopeo_copy(layout, _tag(variant), reg, "bench/lazy", _tag(variant))
            peers.skopeo_copy(_app_layout(work), "app", reg, APP_REPO)
            for n in range(max(1, args.runs)):
                for variant in VARIANTS:
                    for mode in ("off", "toc"):
                        sample = run_once(work, reg, variant, mode, n)
                        samples.setdefault((variant, mode), []).append(sample)
                        print(
                            f"run {n + 1} {variant:13} {mode:4} {sample['seconds']:8.2f} s  "
                            f"served {_mib(sample['served']):>13}  trees {_mib(sample['trees']):>13}  "
                            f"rss {sample['rss_mib']:.0f} MiB",
                            file=sys.stderr,
                            flush=True,
                        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")

    def med(variant: str, mode: str, key: str) -> float:
        return _median([s[key] for s in samples[(variant, mode)]])

    def times(variant: str, mode: str) -> list[float]:
        return [s["seconds"] for s in samples[(variant, mode)]]

    sections = []
    misses = []
    for variant in VARIANTS:
        full_t, lazy_t = med(variant, "off", "seconds"), med(variant, "toc", "seconds")
        full_b, lazy_b = med(variant, "off", "served"), med(variant, "toc", "served")
        full_w, lazy_w = med(variant, "off", "trees"), med(variant, "toc", "trees")
        rows = (
            _results.Row("lazy (--lazy toc)", lazy_t, imagevol=True, rss_mib=med(variant, "toc", "rss_mib")),
            _results.Row("full pull (--lazy off)", full_t, imagevol=True, rss_mib=med(variant, "off", "rss_mib")),
        )
        targets: tuple[_results.Target, ...]
        if variant == "gzip":
            targets = (
                _results.Target(
                    "tree bytes lazy ÷ full", "writes cut to the sub path (≤ 1 %)", lazy_w / full_w, WRITE_TARGET
                ),
            )
        else:
            targets = (
                _results.Target("bytes served lazy ÷ full", "≤ 1 % of the bytes", lazy_b / full_b, BYTES_TARGET),
                _results.Target("time lazy ÷ full", "≤ 10 % of the time", lazy_t / full_t, TIME_TARGET),
            )
        misses += [f"{variant}: {t.what} = {t.value:.4f} > {t.limit}" for t in targets if t.value > t.limit]
        table = _results.Table(
            "Medians (spread min–max)",
            ("mode", "time to Running (s)", "served by the registry", "written by the node", "trees", "peak RSS (MiB)"),
            tuple(
                (
                    mode,
                    f"{med(variant, mode, 'seconds'):.2f} ({_spread(times(variant, mode))})",
                    _mib(med(variant, mode, "served")),
                    _mib(med(variant, mode, "written")),
                    _mib(med(variant, mode, "trees")),
                    f"{med(variant, mode, 'rss_mib'):.0f}",
                )
                for mode in ("toc", "off")
            ),
        )
        sections.append(
            _results.Section(
                id=_tag(variant),
                title=f"A 10 KiB sub path of a {args.scale:g} GiB {variant} image",
                text=(
                    f"{LAYERS} layers, {LAYERS * DIRS * FILES_PER_DIR:,} files; a Pod mounting `{SUB_PATH}` "
                    f"(10 KiB) applied by one `imagevol apply` process on a fresh node; median of {args.runs} "
                    "interleaved runs. Bytes served from the registry's access log."
                ),
                unit="s",
                primary="lazy (--lazy toc)",
                rows=rows,
                targets=targets,
                tables=(table,),
            )
        )
        print(
            f"{variant:13} time {lazy_t:.2f} s vs {full_t:.2f} s ({lazy_t / full_t:.1%}); served "
            f"{_mib(lazy_b)} vs {_mib(full_b)} ({lazy_b / full_b:.3%}); trees {_mib(lazy_w)} vs "
            f"{_mib(full_w)} ({lazy_w / full_w:.3%})"
        )
    for miss in misses:
        print(f"MISS {miss}")
    if args.json:
        result = _results.Result(
            "lazy",
            f"python -m benchmarks.lazy --scale {args.scale:g} --runs {args.runs}",
            tuple(sections),
            raw={
                "samples": {f"{v} {m}": s for (v, m), s in samples.items()},
                "load_before": list(load_before),
                "load_after": list(load_after),
                "misses": misses,
            },
        )
        _results.write(args.json, result)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
