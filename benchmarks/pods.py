"""Pods per node: ``imagevol get pods`` and a ``sync`` that has nothing to change, by number of Pods.

For each number of Pods, a fresh node root on a tmpfs gets that many Pods, each mounting a sub path
of one image volume (the demo image, from an OCI layout on disk: no network), applied with
``imagevol apply`` in batches (timed, one run). Then ``imagevol get pods`` and ``imagevol sync`` run
as whole processes, interleaved run by run; an extra ``sync`` counts the files it created, replaced
or removed under the root (it had nothing to change, so it should write nothing).

    .venv/bin/python -m benchmarks.pods [--pods 1,100,1000,5000] [--runs 5] [--dir DIR] [--json PATH]

Targets (the project's performance goals): with 5,000 Pods, ``get pods`` and a no-change ``sync`` under 1 s each; a
no-change ``sync`` writes nothing. The peer is the same node with one Pod.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _measure, _results
from benchmarks._measure import Candidate, Series
from imagevol.testing.demo import registries_conf
from imagevol.testing.pods import container, image_volume, pod_doc, to_yaml

TARGET_SECONDS = 1.0
DESIGN_PODS = 5000
BATCH = 1000  # Pods per `apply` (a request body is bounded: 3 MiB)
IMAGE = "quay.io/crio/artifact:v2"


def pods_yaml(first: int, count: int) -> str:
    """Pods ``pod-NNNNN`` from ``first``, each mounting the sub path ``dir`` of :data:`IMAGE`."""
    volume = image_volume("volume", IMAGE, "IfNotPresent")
    shell = container("shell", ("volume", "/volume", "dir"))
    return to_yaml(*(pod_doc(f"pod-{i:05d}", [shell], [volume]) for i in range(first, first + count)))


def _pods(n: int) -> str:
    return f"{n:,} Pod" + ("" if n == 1 else "s")


def _command(name: str, argv: list[str]) -> Candidate:
    return Candidate(name, lambda _: argv)


def snapshot(root: str) -> dict[str, tuple[int, int, int]]:
    """Every file (and link) under ``root``: (inode, mtime in ns, size), never following links.
    Directories are left out: a file renamed into one changes its time, and that file counts."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[path] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def changed(before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]) -> int:
    """How many paths appeared, disappeared or were rewritten (a new inode, time or size)."""
    return len(set(before) ^ set(after)) + sum(1 for p in set(before) & set(after) if before[p] != after[p])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pods", description=__doc__.splitlines()[0])
    parser.add_argument("--pods", default=f"1,100,1000,{DESIGN_PODS}", help="numbers of Pods (comma-separated)")
    parser.add_argument("--runs", type=int, default=5, help="runs per command, interleaved; the median counts")
    parser.add_argument("--dir", default=None, help="where the node roots live (default: /dev/shm if present)")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the results document to PATH")
    args = parser.parse_args(argv)
    counts = sorted({int(n) for n in args.pods.split(",") if n.strip()})
    if not counts or counts[0] < 1:
        parser.error("--pods takes positive numbers")
    _measure.check_runs(args.runs)
    imagevol = _measure.imagevol_command()
    base = args.dir or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir())
    work = tempfile.mkdtemp(prefix="imagevol-bench-pods-", dir=base)
    measured: dict[int, dict[str, Series]] = {}
    applied: dict[int, float] = {}
    writes: dict[int, int] = {}
    loads: list[tuple[float, float]] = []
    try:
        layout = os.path.join(work, "layout")
        subprocess.run([*imagevol, "fixtures", "--demo", layout], check=True, capture_output=True)
        for count in counts:
            root = os.path.join(work, f"node-{count}")
            os.makedirs(root)
            conf = os.path.join(root, "registries.conf")
            with open(conf, "w") as f:
                f.write(registries_conf(layout))
            # The registries named explicitly: an IMAGEVOL_REGISTRIES in the environment must not win.
            node = [*imagevol, "--root", root, "--registries", conf]
            start = time.perf_counter()
            for first in range(0, count, BATCH):
                manifest = os.path.join(work, "pods.yaml")
                with open(manifest, "w") as f:
                    f.write(pods_yaml(first, min(BATCH, count - first)))
                subprocess.run(
                    [
                        *node,
                        "apply",
                        "-f",
                        manifest,
                    ],
                    check=True,
                    capture_output=True,
                )
            applied[count] = time.perf_counter() - start
            tools = [
                _command(
                    f"get pods, {_pods(count)}",
                    [*node, "get", "pods"],
                ),
                _command(
                    f"sync, {_pods(count)}",
                    [*node, "sync"],
                ),
            ]
            print(f"{_pods(count)} (applied in {applied[count]:.1f} s):", flush=True)
            with _measure.load_window() as load:
                measured[count] = _measure.interleave(tools, args.runs)
            loads.append(load.span)
            before = snapshot(root)
            subprocess.run(
                [*node, "sync"],
                check=True,
                capture_output=True,
            )
            writes[count] = changed(before, snapshot(root))
            print(f"  a no-change sync wrote {writes[count]:,} files", flush=True)
            shutil.rmtree(root, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = _document(args, counts, measured, applied, writes, (loads[0][0], loads[-1][1]))
    for t in result.sections[0].targets:
        print(f"  {'PASS' if t.met else 'MISS'} {t.what}: {t.value:.2f} {t.unit} (target {t.design})")
    if args.json:
        _results.write(args.json, result)
    return 0 if all(t.met for t in result.sections[0].targets) else 1


def _document(
    args: argparse.Namespace,
    counts: list[int],
    measured: dict[int, dict[str, Series]],
    applied: dict[int, float],
    writes: dict[int, int],
    load: tuple[float, float],
) -> _results.Result:
    most, one = counts[-1], counts[0]

    def get(n: int) -> Series:
        return measured[n][f"get pods, {_pods(n)}"]

    def sync(n: int) -> Series:
        return measured[n][f"sync, {_pods(n)}"]

    rows = [
        get(most).row(imagevol=True, note="lists every Pod (kubectl's columns)"),
        sync(most).row(imagevol=True, note=f"nothing to change; wrote {writes[most]:,} files"),
    ]
    if one != most:
        rows += [
            get(one).row(imagevol=True, note=f"the same node with {_pods(one)}"),
            sync(one).row(imagevol=True, note=f"nothing to change; wrote {writes[one]:,} files"),
        ]
    scale = f"{most:,} Pods" + ("" if most == DESIGN_PODS else f" (the goal is for {DESIGN_PODS:,})")

    def start_up(series: Series) -> str:
        """What the target depends on: the same command on the node with the fewest Pods."""
        return (
            f"the start-up work and the load: the same command with {_pods(one)} takes {series.wall:.2f} s"
            f" ({series.cpu:.2f} s CPU)"
        )

    targets = (
        _results.Target(
            f"get pods, {scale}",
            "under 1 s",
            get(most).wall,
            TARGET_SECONDS,
            unit="s",
            op="<",
            low=get(most).low,
            high=get(most).high,
            note=start_up(get(one)) if one != most else "",
        ),
        _results.Target(
            f"no-change sync, {scale}",
            "under 1 s",
            sync(most).wall,
            TARGET_SECONDS,
            unit="s",
            op="<",
            low=sync(most).low,
            high=sync(most).high,
            note=start_up(sync(one)) if one != most else "",
        ),
        _results.Target(
            f"files written by a no-change sync, {scale}", "writes nothing", float(writes[most]), 0.0, unit="files"
        ),
    )
    table = _results.Table(
        "By number of Pods: whole processes, median (fastest–slowest)",
        (
            "Pods",
            "apply, one run (s)",
            "get pods (s)",
            "get pods, CPU (s)",
            "no-change sync (s)",
            "sync, CPU (s)",
            "files written by that sync",
        ),
        tuple(
            (
                f"{n:,}",
                f"{applied[n]:.2f}",
                f"{get(n).wall:.3f} ({get(n).low:.3f}–{get(n).high:.3f})",
                f"{get(n).cpu:.3f}",
                f"{sync(n).wall:.3f} ({sync(n).low:.3f}–{sync(n).high:.3f})",
                f"{sync(n).cpu:.3f}",
                f"{writes[n]:,}",
            )
            for n in counts
        ),
    )
    section = _results.Section(
        id="node",
        title=f"{most:,} Pods on one node: get pods and a sync with nothing to change",
        text=(
            f"A fresh node root on a tmpfs per number of Pods ({', '.join(f'{n:,}' for n in counts)}); every Pod mounts"
            " a sub path of one image volume, pulled once from an OCI layout on disk. `imagevol get pods` and"
            f" `imagevol sync` run as whole processes, {args.runs} interleaved runs each; the files written are"
            " counted by comparing inode, modification time and size of everything under the root around one more"
            " sync. The CPU time (user + system, median) is beside each wall time: on a loaded machine it shows"
            " what the work costs; the 1-Pod row is interpreter start, imports and opening the node. The load"
            " average spans all the numbers of Pods."
        ),
        unit="s",
        primary=f"sync, {_pods(most)}",
        rows=tuple(rows),
        targets=targets,
        tables=(table,),
        load=load,
    )
    plot = _results.Plot(
        id="pods",
        section="node",
        title="Pods per node: whole processes, wall (median, fastest–slowest) and CPU time",
        x_label="Pods on the node",
        y_label="time per call (s)",
        x=tuple(float(n) for n in counts),
        lines=(
            _measure.line("sync, nothing to change", [sync(n) for n in counts]),
            _measure.line("get pods", [get(n) for n in counts]),
            _results.Line("sync, CPU time", tuple(sync(n).cpu for n in counts)),
            _results.Line("get pods, CPU time", tuple(get(n).cpu for n in counts)),
        ),
    )
    return _results.Result(
        "pods",
        f"python -m benchmarks.pods --pods {','.join(map(str, counts))} --runs {args.runs}",
        (section,),
        plots=(plot,),
        raw={
            "apply_s": {str(n): applied[n] for n in counts},
            "writes": {str(n): writes[n] for n in counts},
            "runs": {str(n): {name: _measure.raw(s) for name, s in measured[n].items()} for n in counts},
        },
    )


if __name__ == "__main__":
    sys.exit(main())
