"""The ``imagevol`` command: drive a simulated node and see what a Pod would see."""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from . import __version__, mounts
from .api.features import DEFAULT_VERSION
from .describe import describe_pod, format_event_line, get_pods
from .errors import ImageVolError, PodNotFoundError, ValidationError
from .node import DEFAULT_FEATURE_GATES, Node, NodeConfig, default_root
from .oci import Platform
from .runtime import DEFAULT_PROFILE, PROFILES
from .view import ContainerView, ViewError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _duration(text: str) -> float:
    """Go-style durations: ``90s``, ``5m``, ``1h30m``, ``250ms``, or plain seconds."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    total = 0.0
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    pos = 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}")
    return total


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imagevol",
        description="Simulate a Kubernetes node's image volumes (KEP-4639): pull, mount, sub paths, events, metrics.",
    )
    p.add_argument("--version", action="version", version=f"imagevol {__version__}")
    p.add_argument("--root", default=None, help="node state directory (default: $IMAGEVOL_ROOT, else the XDG data dir)")
    p.add_argument("--registries", default=None, help="registries.conf(5)-style mirror configuration")
    p.add_argument("--runtime", choices=sorted(PROFILES), default=DEFAULT_PROFILE, help="runtime profile")
    p.add_argument("--k8s-version", default=DEFAULT_VERSION, help="Kubernetes version to simulate")
    p.add_argument("--feature-gates", default=DEFAULT_FEATURE_GATES, help="A=true,B=false (default: %(default)s)")
    p.add_argument(
        "--kubelet-feature-gates",
        default=None,
        help="the kubelet's gates when they differ from the API server's (R5.8), e.g. ImageVolume=false",
    )
    p.add_argument("--metrics-mode", choices=("upstream", "fixed"), default="upstream",
                   help="count image-volume metrics like upstream (R6.4 over-count) or corrected")  # fmt: skip
    p.add_argument("--platform", default=None, help="node platform os/arch[/variant] (default: the host's)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    a = sub.add_parser("apply", help="admit and run the Pods (and Secrets) of a YAML file")
    a.add_argument("-f", "--filename", required=True, help="YAML file, or - for standard input")

    g = sub.add_parser("get", help="list objects")
    g.add_argument("kind", choices=("pods", "pod", "po", "images"))

    d = sub.add_parser("describe", help="show a Pod as kubectl describe would")
    d.add_argument("kind", choices=("pod", "pods", "po"))
    d.add_argument("name")

    rm = sub.add_parser("delete", help="delete a Pod (its mounts are released)")
    rm.add_argument("kind", choices=("pod", "pods", "po"))
    rm.add_argument("name")

    e = sub.add_parser(
        "exec", help="run cat/ls/stat/readlink in a container's view of its mounts (or, with --real, any command)"
    )
    e.add_argument("pod")
    e.add_argument("-c", "--container", default=None)
    e.add_argument(
        "--real",
        action="store_true",
        help="run a real command with the image volumes bind-mounted ro,nosuid,nodev in a private mount "
        "namespace (root, or unprivileged user namespaces)",
    )
    # `main` cuts everything after `--` off before parsing, so options may follow POD (`-c`, `--real`).
    e.add_argument("argv", nargs="*", help="-- COMMAND ARGS...")

    s = sub.add_parser("sync", help="run one kubelet pass over every Pod (retries, backoff)")
    s.add_argument("--advance", type=_duration, default=0.0, help="advance the node clock first (e.g. 30s)")
    s.add_argument("--watch", action="store_true", help="keep syncing every --interval")
    s.add_argument("--interval", type=_duration, default=10.0)

    sub.add_parser("metrics", help="print the kubelet metrics (Prometheus text format)")

    sm = sub.add_parser("serve-metrics", help="serve /metrics on 127.0.0.1 (Prometheus text format)")
    sm.add_argument("--port", type=int, default=10255)

    gc = sub.add_parser("gc", help="image garbage collection (never removes an image in use)")
    gc.add_argument("--high", type=int, default=85, help="start above this disk usage percent")
    gc.add_argument("--low", type=int, default=80, help="free down to this disk usage percent")
    gc.add_argument(
        "--capacity", type=int, default=None, help="image storage capacity in bytes (default: the filesystem's)"
    )
    gc.add_argument("--all-unused", action="store_true", help="remove every unused image, whatever the usage")

    rmi = sub.add_parser("rmi", help="remove an image (refused while a container mounts it)")
    rmi.add_argument("reference")

    f = sub.add_parser("fixtures", help="write the project's deterministic OCI fixtures to a directory")
    f.add_argument("directory")
    f.add_argument("--demo", action="store_true", help="only the quay.io/crio/artifact:v2 image")
    return p


def _node(args: argparse.Namespace) -> Node:
    root = args.root or default_root()
    registries = args.registries or os.environ.get("IMAGEVOL_REGISTRIES")
    if registries is None and os.path.exists(os.path.join(root, "registries.conf")):
        registries = os.path.join(root, "registries.conf")
    platform = Platform.parse(args.platform) if args.platform else None
    return Node(
        NodeConfig(
            root=root,
            registries=registries,
            runtime=args.runtime,
            k8s_version=args.k8s_version,
            feature_gates=args.feature_gates,
            kubelet_feature_gates=args.kubelet_feature_gates,
            metrics_mode=args.metrics_mode,
            platform=platform,
        )
    )


def _cmd_apply(node: Node, args: argparse.Namespace, out: TextIO) -> int:
    if args.filename == "-":
        text = sys.stdin.read()
    else:
        with open(args.filename) as f:
            text = f.read()
    results = node.apply(text)
    code = EXIT_OK
    for what, record in results:
        out.write(what + "\n")
        if record is None:
            continue
        out.write("Events:\n")
        for event in record.events:
            out.write("  " + format_event_line(event, record) + "\n")
        out.write("Containers:\n")
        for state in record.containers:
            detail = state.reason + (f": {state.message}" if state.message else "")
            out.write(
                f"  {state.name}: {state.state.capitalize()}"
                + (f" ({detail})" if state.state != "running" and detail else "")
                + "\n"
            )
            if state.kind == "containers" and state.state != "running":
                code = EXIT_FAIL
    return code


def _cmd_exec(node: Node, args: argparse.Namespace, out: TextIO) -> int:
    argv = list(args.argv)
    record = node.get_pod(args.pod)
    name = args.container or record.pod.spec.containers[0].name
    try:
        state = record.state(name)
    except KeyError:
        raise ViewError(f"container {name} is not valid for pod {args.pod}") from None
    if state.state != "running" or not state.container_id:
        raise ViewError(
            f"container {name!r} is not running ({state.reason or state.state}"
            + (f": {state.message}" if state.message else "")
            + ")"
        )
    container = node.runtime.container_status(state.container_id)
    if container is None:
        raise ViewError(f"container {name!r} has no runtime record")
    if args.real:
        binds = [mounts.Bind(m.container_path, functools.partial(node.runtime.open_mount, m)) for m in container.mounts]
        out.flush()
        return mounts.run(binds, argv)
    view = ContainerView(name, container.mounts, node.runtime.open_mount)
    for chunk in view.run(argv):
        out.flush()
        sys.stdout.buffer.write(chunk) if out is sys.stdout else out.write(chunk.decode(errors="replace"))
    return EXIT_OK


def _cmd_sync(node: Node, args: argparse.Namespace, out: TextIO) -> int:
    while True:
        if args.advance:
            node.advance(args.advance)
        records = node.sync()
        out.write(get_pods(records))
        if not args.watch:
            return EXIT_OK if all(r.phase == "Running" for r in records) else EXIT_FAIL
        out.flush()
        time.sleep(args.interval)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `exec POD [-c C] -- CMD ARGS`: everything after `--` belongs to the command, not to us.
    command: list[str] = []
    if "exec" in argv and "--" in argv[argv.index("exec") :]:
        cut = argv.index("--", argv.index("exec"))
        argv, command = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    if args.command == "exec":
        args.argv = command or [a for a in args.argv if a != "--"]
    try:
        if args.command == "fixtures":
            from .testing.images import build_demo_layout, build_fixtures

            if args.demo:
                build_demo_layout(args.directory)
            else:
                for tag, desc in sorted(build_fixtures(args.directory).items()):
                    out.write(f"{tag}\t{desc.digest}\n")
            return EXIT_OK
        node = _node(args)
        if args.command == "apply":
            return _cmd_apply(node, args, out)
        if args.command == "get":
            if args.kind == "images":
                for rec in node.runtime.list_images():
                    out.write(f"{rec.name}\t{rec.image_id}\t{rec.size}\n")
                return EXIT_OK
            out.write(get_pods(node.pods()))
            return EXIT_OK
        if args.command == "describe":
            out.write(describe_pod(node.get_pod(args.name), node.now()))
            return EXIT_OK
        if args.command == "delete":
            node.delete_pod(args.name)
            out.write(f'pod "{args.name}" deleted\n')
            return EXIT_OK
        if args.command == "exec":
            return _cmd_exec(node, args, out)
        if args.command == "sync":
            return _cmd_sync(node, args, out)
        if args.command == "metrics":
            out.write(node.metrics().exposition().decode())
            return EXIT_OK
        if args.command == "serve-metrics":
            from .metrics import serve

            serve(node.metrics, args.port, out)
            return EXIT_OK
        if args.command == "gc":
            from .image_gc import ImageGC, filesystem_capacity

            gc = ImageGC(node.runtime, clock=node.now)
            capacity = args.capacity or filesystem_capacity(node.root)
            result = gc.collect(capacity=capacity, high_percent=args.high, low_percent=args.low, force=args.all_unused)
            out.write(result.describe())
            return EXIT_OK
        if args.command == "rmi":
            record = node.runtime.remove_image(args.reference)
            node.store.garbage_collect()
            out.write(f"Deleted: {record.name}\n")
            return EXIT_OK
    except ValidationError as exc:
        sys.stderr.write(f"The {exc}\n")
        return EXIT_FAIL
    except PodNotFoundError as exc:
        sys.stderr.write(f"Error from server (NotFound): {exc}\n")
        return EXIT_FAIL
    except mounts.RealExecError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except (ImageVolError, ValueError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_FAIL
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
