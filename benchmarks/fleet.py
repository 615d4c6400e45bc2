"""50 Pods starting at once on one image, against one Pod (the project's fleet goal).

A ~64 MiB image (four gzip layers) is pushed with skopeo to a ``docker-registry`` on 127.0.0.1. On a
fresh node, one Pod mounting it is applied and timed; on another fresh node, 50 Pods mounting it
(each with its own sub path) are applied from 50 threads at once and timed until all run. The
registry's access log counts the blob GETs of the fleet run. Targets: every blob fetched once; the
fleet's wall time at most 2x the single Pod's.

    .venv/bin/python -m benchmarks.fleet [--pods 50] [--rounds 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import yaml  # noqa: E402

from benchmarks import _results  # noqa: E402
from imagevol.api import load_documents  # noqa: E402
from imagevol.api.models import Pod  # noqa: E402
from imagevol.content.sources.registry import RegistryAccess  # noqa: E402
from imagevol.node import Node, NodeConfig  # noqa: E402
from imagevol.testing.images import Layer, LayoutBuilder  # noqa: E402
from imagevol.testing.tarbuild import TarEntry  # noqa: E402
from tests.helpers import peers  # noqa: E402

WALL_TARGET = 2.0


def build(layout: str, seed: int = 1) -> int:
    """The image: four layers of 32 directories holding 16 MiB of random files each."""
    rng = random.Random(seed)
    layers = []
    blobs = 1  # the config
    for n in range(4):
        entries = [TarEntry(f"l{n}/d{i}/", "dir") for i in range(32)]
        entries += [TarEntry(f"l{n}/d{i % 32}/f{i}", "file", rng.randbytes(64 * 1024)) for i in range(256)]
        layers.append(Layer(tuple(entries)))
        blobs += 1
    b = LayoutBuilder(layout)
    b.add_image(layers, tag="fleet")
    b.save()
    return blobs


def pod(name: str, ref: str, sub_path: str) -> Pod:
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "busybox",
                    "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": sub_path}],
                }
            ],
            "volumes": [{"name": "v", "image": {"reference": ref, "pullPolicy": "IfNotPresent"}}],
        },
    }
    (obj,) = load_documents(yaml.safe_dump(doc))
    assert isinstance(obj, Pod)
    return obj


def run_pods(root: str, ref: str, count: int) -> float:
    node = Node(NodeConfig(root=root, registry_factory=RegistryAccess(plain_http=True)))
    errors: list[str] = []

    def one(i: int) -> None:
        record = node.create_pod(pod(f"p{i}", ref, f"l{i % 4}/d{i % 32}"))
        if record.phase != "Running":
            errors.append(f"p{i}: {record.status_text}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"pods did not run: {errors[:3]}")
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5, help="rounds (one Pod, then the fleet); the median counts")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the results document to PATH")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="imagevol-bench-fleet-")
    try:
        blobs = build(os.path.join(work, "layout"))
        with peers.registry() as reg:
            peers.skopeo_copy(os.path.join(work, "layout"), "fleet", reg, "bench/fleet")
            ref = f"{reg.host}/bench/fleet:v1"
            single, fleet, gets = [], [], []
            load_start = os.getloadavg()[0]
            for r in range(args.rounds):
                single.append(run_pods(os.path.join(work, f"one{r}"), ref, 1))
                before = len([line for line in reg.requests() if "/blobs/" in line])
                fleet.append(run_pods(os.path.join(work, f"fleet{r}"), ref, args.pods))
                gets.append(len([line for line in reg.requests() if "/blobs/" in line]) - before)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = (load_start, os.getloadavg()[0])
    one, many = statistics.median(single), statistics.median(fleet)
    ratios = [f / o for f, o in zip(fleet, single, strict=True)]
    ratio = statistics.median(ratios)
    print(
        f"one pod: {one:.3f} s; {args.pods} pods at once: {many:.3f} s (x{ratio:.2f}, median of {args.rounds} rounds)"
    )
    print(f"blob GETs per fleet run: {gets} (the image has {blobs} blobs)")
    ok = ratio <= WALL_TARGET and all(g == blobs for g in gets)
    if args.json:
        section = _results.Section(
            id="pods",
            title=f"{args.pods} Pods starting at once on one image",
            text=(
                f"A {4 * 16} MiB image ({blobs} blobs) on a `docker-registry` on 127.0.0.1. One Pod on a fresh "
                f"node against {args.pods} Pods applied from {args.pods} threads on another fresh node (each "
                f"with its own sub path); in process, {args.rounds} rounds (one Pod, then the fleet), median and"
                " spread; the ratio target is the median of the per-round ratios. Blob GETs counted in the"
                " registry's access log."
            ),
            unit="s",
            primary=f"{args.pods} pods",
            rows=(
                _results.Row(
                    f"{args.pods} pods", many, imagevol=True, low=min(fleet), high=max(fleet), runs=len(fleet)
                ),
                _results.Row("1 pod", one, imagevol=True, low=min(single), high=max(single), runs=len(single)),
            ),
            load=load,
            targets=(
                _results.Target(
                    f"{args.pods} pods ÷ 1 pod",
                    "wall ≤ 2 × one pod",
                    ratio,
                    WALL_TARGET,
                    low=min(ratios),
                    high=max(ratios),
                ),
                _results.Target(
                    "blob GETs per blob", "every blob fetched once", max(gets) / blobs, 1.0, unit="×", op="<="
                ),
            ),
        )
        result = _results.Result(
            "fleet",
            f"python -m benchmarks.fleet --pods {args.pods} --rounds {args.rounds}",
            (section,),
            raw={"single_seconds": single, "fleet_seconds": fleet, "blob_gets": gets, "blobs": blobs},
        )
        _results.write(args.json, result)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
