"""Sub-path and mount benchmarks, as ratios measured in the same run.

1. Resolving a 10-component sub path: imagevol's resolver (kernel backend, and the userspace walk)
   against one bare ``openat2`` call with the same flags on the same path (a ctypes syscall with the
   ``open_how`` prebuilt: the floor for any Python caller). Target: at most 3x the bare call.
2. A second mount of an already materialised image: a 20,000-file image against a 1-file image,
   through the containerd profile's ``mount_image_volume`` (what ``CreateContainer`` does per
   volume) and a whole ``CreateContainer``/``RemoveContainer`` cycle. Target: under 5 ms, whatever
   the image size.

    .venv/bin/python -m benchmarks.subpath [--files N] [--json [PATH]]

``--json`` prints the raw numbers; ``--json PATH`` writes the document that ``benchmarks/run``
renders into docs/benchmarks.md (``benchmarks/_results.py``, raw numbers included).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks import _results
from imagevol.cri import ContainerConfig, ImageSpec, Mount
from imagevol.node import Node, NodeConfig
from imagevol.testing.images import Layer, LayoutBuilder
from imagevol.testing.tarbuild import TarEntry
from imagevol.trees import _openat2
from imagevol.trees import subpath as sp
from imagevol.trees.snapshots import SnapshotKey

DEPTH = 10
RESOLVE_TARGET = 3.0
MOUNT_TARGET_MS = 5.0
# The goal: a second mount is O(1), "independent of image size"; read here as the median second
# mount of the 20,000-file image taking at most twice the 1-file image's.
SIZE_RATIO_TARGET = 2.0
MOUNT_KEYS = ("small", "small_subpath", "big", "big_subpath")


def _rounds(fns: dict[str, tuple[Callable[[], object], int]], repeat: int) -> dict[str, list[float]]:
    """Seconds per call of each function: ``repeat`` rounds, each timing every function once over
    its number of calls, in turn (so that a change in the machine's load hits them alike)."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, (fn, number) in fns.items():
            out[name].append(timeit.timeit(fn, number=number) / number)
    return out


def _spread(values: Sequence[float], scale: float = 1.0) -> dict[str, float]:
    return {
        "median": statistics.median(values) * scale,
        "low": min(values) * scale,
        "high": max(values) * scale,
    }


def bench_resolve(number: int = 20000, repeat: int = 7) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="imagevol-bench-") as base:
        parts = [f"d{i}" for i in range(DEPTH)]
        os.makedirs(os.path.join(base, *parts))
        sub = "/".join(parts)
        root = sp.open_root(base)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            syscall = libc.syscall
            syscall.restype = ctypes.c_long
            how = _openat2._OpenHow(
                _openat2.O_PATH | os.O_CLOEXEC, 0, _openat2.RESOLVE_BENEATH | _openat2.RESOLVE_NO_MAGICLINKS
            )
            args = (437, root, sub.encode(), ctypes.byref(how), ctypes.sizeof(how))
            close = os.close

            def bare() -> None:
                close(syscall(*args))

            def kernel() -> None:
                sp.resolve(root, sub, sp.Policy.BENEATH, sp.Backend.KERNEL).close()

            def userspace() -> None:
                sp.resolve(root, sub, sp.Policy.BENEATH, sp.Backend.USERSPACE).close()

            load = os.getloadavg()[0]
            rounds = _rounds(
                {"bare": (bare, number), "kernel": (kernel, number), "user": (userspace, max(1, number // 4))}, repeat
            )
        finally:
            os.close(root)
    kernel_ratios = [k / b for k, b in zip(rounds["kernel"], rounds["bare"], strict=True)]
    user_ratios = [u / b for u, b in zip(rounds["user"], rounds["bare"], strict=True)]
    return {
        "openat2_us": statistics.median(rounds["bare"]) * 1e6,
        "imagevol_kernel_us": statistics.median(rounds["kernel"]) * 1e6,
        "imagevol_userspace_us": statistics.median(rounds["user"]) * 1e6,
        "kernel_ratio": statistics.median(kernel_ratios),
        "userspace_ratio": statistics.median(user_ratios),
        "spread_us": {name: _spread(values, 1e6) for name, values in rounds.items()},
        "kernel_ratio_spread": [min(kernel_ratios), max(kernel_ratios)],
        "repeat": repeat,
        "load": [load, os.getloadavg()[0]],
    }


def _build_layout(path: str, files: int) -> None:
    big = [TarEntry("data/", "dir")]
    per_dir = 1000
    for d in range((files + per_dir - 1) // per_dir):
        big.append(TarEntry(f"data/d{d:03}/", "dir"))
    big += [TarEntry(f"data/d{i // per_dir:03}/f{i:05}", "file", b"x") for i in range(files)]
    builder = LayoutBuilder(path)
    builder.add_image([Layer(tuple(big), compression="none")], tag="big")
    small = (TarEntry("data/", "dir"), TarEntry("data/f", "file", b"x"))
    builder.add_image([Layer(small, compression="none")], tag="small")
    builder.save()


def _timings(fn: Callable[[], object], number: int) -> list[float]:
    out = []
    for _ in range(number):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def bench_second_mount(files: int = 20000, number: int = 200) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="imagevol-bench-") as base:
        layout = os.path.join(base, "layout")
        _build_layout(layout, files)
        registries = os.path.join(base, "registries.conf")
        with open(registries, "w") as f:
            f.write('[[registry]]\nprefix = "bench.test/img"\nlocation = "bench.test/img"\n\n')
            f.write(f'[[registry.mirror]]\nlocation = "oci-layout:{layout}"\n')
        node = Node(
            NodeConfig(root=os.path.join(base, "node"), registries=registries, runtime="containerd", hermetic=True)
        )
        runtime = node.runtime
        result: dict[str, Any] = {"files": files, "load": [os.getloadavg()[0]]}
        for tag in ("small", "big"):
            image = runtime.pull_image(f"bench.test/img:{tag}").image_ref
            for sub_path in ("", "data"):
                mount = Mount("/data", image=ImageSpec(image, f"bench.test/img:{tag}"), image_sub_path=sub_path)
                config = ContainerConfig("c", "img", (mount,))
                start = time.perf_counter()
                first = runtime.create_container("sandbox", config)  # materialises the tree
                first_ms = (time.perf_counter() - start) * 1e3

                def second(m: Mount = mount) -> None:
                    status = runtime.mount_image_volume("sandbox", m, "bench-holder")
                    runtime.snapshots.release(SnapshotKey.parse(status.snapshot), "bench-holder")

                mounts = _timings(second, number)

                def cycle(c: ContainerConfig = config) -> None:
                    runtime.remove_container(runtime.create_container("sandbox", c).id)

                cycles = _timings(cycle, max(1, number // 4))
                runtime.remove_container(first.id)
                key = f"{tag}{'_subpath' if sub_path else ''}"
                result[key] = {
                    "first_mount_ms": first_ms,
                    "second_mount_ms_min": min(mounts) * 1e3,
                    "second_mount_ms_median": statistics.median(mounts) * 1e3,
                    "second_mount_ms_max": max(mounts) * 1e3,
                    "create_container_ms_median": statistics.median(cycles) * 1e3,
                }
        result["load"].append(os.getloadavg()[0])
        result["size_ratio_median"] = (
            result["big"]["second_mount_ms_median"] / result["small"]["second_mount_ms_median"]
        )
        return result


def document(resolve: dict[str, Any], mount: dict[str, Any], command: str, number: int, mounts: int) -> _results.Result:
    """The results as the document benchmarks/run renders."""
    files = mount["files"]
    spread = resolve["spread_us"]

    def resolve_row(tool: str, key: str, imagevol: bool, note: str = "") -> _results.Row:
        return _results.Row(
            tool,
            spread[key]["median"] / 1e6,
            imagevol=imagevol,
            note=note,
            low=spread[key]["low"] / 1e6,
            high=spread[key]["high"] / 1e6,
            runs=resolve["repeat"],
        )

    resolve_rows = (
        resolve_row("imagevol resolve, kernel backend", "kernel", True),
        resolve_row(
            "imagevol resolve, userspace walk",
            "user",
            True,
            "without openat2: one component at a time, containment checked",
        ),
        resolve_row("bare openat2", "bare", False, "ctypes syscall, open_how prebuilt: the floor in Python"),
    )
    resolve_section = _results.Section(
        id="resolve",
        title=f"Resolve a {DEPTH}-component sub path",
        text=(
            f"`subpath.resolve` of a {DEPTH}-component path beneath a directory fd (policy BENEATH), against one"
            " bare `openat2` call with the same flags on the same path. In process; per call, the median of"
            f" {resolve['repeat']} rounds timing {number:,} calls of each in turn (the userspace walk:"
            f" {max(1, number // 4):,} calls), with the spread of the rounds."
        ),
        unit="µs",
        primary="imagevol resolve, kernel backend",
        rows=resolve_rows,
        targets=(
            _results.Target(
                what="imagevol (kernel backend) ÷ bare openat2",
                design=f"≤ {RESOLVE_TARGET:g} × raw openat2",
                value=resolve["kernel_ratio"],
                limit=RESOLVE_TARGET,
                low=resolve["kernel_ratio_spread"][0],
                high=resolve["kernel_ratio_spread"][1],
            ),
        ),
        load=(resolve["load"][0], resolve["load"][1]),
    )

    def label(key: str) -> str:
        size = f"{files:,}-file image" if key.startswith("big") else "1-file image"
        return size + (", sub path" if key.endswith("subpath") else "")

    mount_rows = [
        _results.Row(
            f"second mount, {label(key)}",
            mount[key]["second_mount_ms_median"] / 1e3,
            imagevol=True,
            low=mount[key]["second_mount_ms_min"] / 1e3,
            high=mount[key]["second_mount_ms_max"] / 1e3,
            runs=mounts,
        )
        for key in ("big", "big_subpath", "small", "small_subpath")
    ]
    mount_rows += [
        _results.Row(
            f"first mount, {label(key)}",
            mount[key]["first_mount_ms"] / 1e3,
            imagevol=True,
            note="CreateContainer materialising the tree (one run)",
        )
        for key in ("big", "small")
    ]
    worst = max(mount[k]["second_mount_ms_median"] for k in MOUNT_KEYS)
    cycles = tuple(
        (label(key), f"{mount[key]['create_container_ms_median']:.3f}") for key in ("big", "big_subpath", "small")
    )
    mount_section = _results.Section(
        id="second-mount",
        title="Second mount of an already materialised image",
        text=(
            "`mount_image_volume` of the containerd profile (what `CreateContainer` does per image volume) on an"
            f" image whose tree is already materialised: a {files:,}-file image against a 1-file image, with and"
            " without a sub path, compared with the first mount that builds the tree. In process; times are"
            f" medians of {mounts} mounts, with the fastest and the slowest."
        ),
        unit="ms",
        primary=f"second mount, {label('big')}",
        rows=tuple(mount_rows),
        targets=(
            _results.Target(
                what="second mount, slowest median of the four cases",
                design=f"under {MOUNT_TARGET_MS:g} ms",
                value=worst,
                limit=MOUNT_TARGET_MS,
                unit="ms",
                op="<",
            ),
            _results.Target(
                what=f"second mount, {files:,}-file ÷ 1-file image (medians)",
                design=f"independent of image size (read as ≤ {SIZE_RATIO_TARGET:g} ×)",
                value=mount["size_ratio_median"],
                limit=SIZE_RATIO_TARGET,
            ),
        ),
        tables=(
            _results.Table(
                f"CreateContainer + RemoveContainer cycle, median of {max(1, mounts // 4)}",
                ("image", "cycle (ms)"),
                cycles,
            ),
        ),
        load=(mount["load"][0], mount["load"][1]),
    )
    return _results.Result(
        benchmark="subpath",
        command=command,
        sections=(resolve_section, mount_section),
        raw={"resolve": resolve, "second_mount": mount},
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.subpath", description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20000, help="files in the big image (default 20000)")
    parser.add_argument("--number", type=int, default=20000, help="calls per timing run of the resolver")
    parser.add_argument("--mounts", type=int, default=200, help="second mounts timed per image")
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="print the raw numbers as JSON; with PATH, write the results for benchmarks/run there instead",
    )
    args = parser.parse_args(argv)
    resolve = bench_resolve(args.number)
    mount = bench_second_mount(args.files, args.mounts)
    if args.json == "-":
        print(json.dumps({"resolve": resolve, "second_mount": mount}, indent=1))
    elif args.json:
        command = f"python -m benchmarks.subpath --files {args.files} --number {args.number} --mounts {args.mounts}"
        _results.write(args.json, document(resolve, mount, command, args.number, args.mounts))
    else:
        print(f"resolve a {DEPTH}-component sub path (median of {resolve['repeat']} rounds)")
        print(f"  bare openat2            {resolve['openat2_us']:8.2f} us")
        print(f"  imagevol, kernel        {resolve['imagevol_kernel_us']:8.2f} us  x{resolve['kernel_ratio']:.2f}")
        print(
            f"  imagevol, userspace     {resolve['imagevol_userspace_us']:8.2f} us  x{resolve['userspace_ratio']:.2f}"
        )
        print(f"second mount of an already materialised image ({args.mounts} mounts each)")
        for key in MOUNT_KEYS:
            row = mount[key]
            size = 1 if key.startswith("small") else args.files
            label = f"{size}-file image" + (", sub path" if "sub" in key else "")
            built = "" if "sub" in key else f"; first mount, building the tree: {row['first_mount_ms']:.1f} ms"
            print(
                f"  {label:28} median {row['second_mount_ms_median']:6.3f} ms  min {row['second_mount_ms_min']:6.3f} ms"
                f"  (CreateContainer+Remove {row['create_container_ms_median']:6.3f} ms{built})"
            )
        print(f"  big / small (median)         x{mount['size_ratio_median']:.2f}")
    ok = resolve["kernel_ratio"] <= RESOLVE_TARGET and all(
        mount[k]["second_mount_ms_median"] < MOUNT_TARGET_MS for k in MOUNT_KEYS
    )
    print("targets met" if ok else "TARGETS MISSED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
