"""The ``imagevol`` command: drive a simulated node and see what a Pod would see."""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import BinaryIO, TextIO

from . import __version__, mounts
from ._text import goquote, strerror
from .api import Secret, load_documents
from .api.bounded_yaml import load_all
from .api.features import DEFAULT_VERSION
from .api.limits import read_body
from .api.load import decode_text
from .content.progress import ProgressBar
from .content.sources.registry import RegistryAccess
from .cri import Credentials, Keyring
from .describe import describe_pod, format_event_line, get_pods
from .errors import (
    DecodeError,
    ImageVolError,
    PodNotFoundError,
    RequestEntityTooLargeError,
    StorageTooLargeError,
    ValidationError,
)
from .events import EventRecorder
from .image_manager import PULL_POLICIES, Backoff, ImageManager
from .node import DEFAULT_FEATURE_GATES, Node, NodeConfig, default_root
from .oci import Platform
from .oci.reference import parse_normalized
from .runtime import DEFAULT_PROFILE, PROFILES
from .view import ContainerView, ViewError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


class _CommandError(Exception):
    """A failure the CLI has already worded completely (kubectl's wording where it has one)."""

    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.code = code


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: must be 0 to 65535")
    return port


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
    p.add_argument(
        "--enable-admission-plugins",
        default="",
        metavar="PLUGINS",
        help="the API server's mutating admission plugins, comma-separated: AlwaysPullImages (R3.12)",
    )
    p.add_argument("--platform", default=None, help="node platform os/arch[/variant] (default: the host's)")
    p.add_argument(
        "-n",
        "--namespace",
        default="default",
        help="namespace of the Pod for describe, delete and exec (default: %(default)s)",
    )
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
    sm.add_argument("--port", type=_port, default=10255)

    gc = sub.add_parser("gc", help="image garbage collection (never removes an image in use)")
    gc.add_argument("--high", type=int, default=85, help="start above this disk usage percent")
    gc.add_argument("--low", type=int, default=80, help="free down to this disk usage percent")
    gc.add_argument(
        "--capacity", type=int, default=None, help="image storage capacity in bytes (default: the filesystem's)"
    )
    gc.add_argument("--all-unused", action="store_true", help="remove every unused image, whatever the usage")

    rmi = sub.add_parser("rmi", help="remove an image (refused while a container mounts it)")
    rmi.add_argument("reference")

    pl = sub.add_parser("pull", help="pull an image or artifact into the node's content store; print its digest")
    pl.add_argument("reference")
    pl.add_argument("--policy", choices=PULL_POLICIES, default="Always",
                    help="pull policy, as the kubelet applies it (default: %(default)s)")  # fmt: skip
    pl.add_argument("--platform", default=argparse.SUPPRESS, help="os/arch[/variant] to pick from an index")
    who = pl.add_mutually_exclusive_group()
    who.add_argument("--creds", metavar="USER:PASS", help="credentials for the registry (and its mirrors)")
    who.add_argument("--pull-secret", metavar="FILE",
                     help="a kubernetes.io/dockerconfigjson Secret (YAML) or a .dockerconfigjson file")  # fmt: skip
    pl.add_argument("--plain-http", action="store_true", help="talk HTTP, not HTTPS, to registries")
    pl.add_argument("--max-blob-size", type=_size, default=None, help="refuse blobs larger than this (e.g. 2GiB)")

    fk = sub.add_parser("fsck", help="verify every blob of the content store; report corrupt and orphaned ones")
    fk.add_argument("--repair", action="store_true", help="remove corrupt and orphaned blobs and stale temp files")

    f = sub.add_parser("fixtures", help="write the project's deterministic OCI fixtures to a directory")
    f.add_argument("directory")
    f.add_argument("--demo", action="store_true", help="only the quay.io/crio/artifact:v2 image")
    return p


def _size(text: str) -> int:
    """``123``, ``10MiB``, ``2GiB``, ``500kB``."""
    m = re.fullmatch(r"(\d+)\s*([KMGT]i?B|[kKMGT]B?|B)?", text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}")
    unit = (m.group(2) or "B").upper().rstrip("B") or "B"
    powers = {"B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
              "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4}  # fmt: skip
    return int(m.group(1)) * powers[unit]


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
            admission_plugins=tuple(p for p in args.enable_admission_plugins.split(",") if p),
            platform=platform,
            # The CLI's node reaches registries (oras-py, made safe: sources/registry.py); library
            # nodes only do when given a registry_factory, so they stay hermetic by default.
            registry_factory=RegistryAccess(plain_http=bool(getattr(args, "plain_http", False))),
            **({"max_blob_size": args.max_blob_size} if getattr(args, "max_blob_size", None) else {}),
        )
    )


def _open_input(path: str) -> BinaryIO:
    """Open a file named on the command line, failing the way kubectl words it."""
    try:
        if os.path.isdir(path):
            raise _CommandError(f"the path {goquote(path)} is a directory: give a YAML or JSON file")
        return open(path, "rb")  # the caller closes it
    except FileNotFoundError:
        raise _CommandError(f"the path {goquote(path)} does not exist") from None
    except OSError as exc:
        raise _CommandError(f"open {path}: {strerror(exc)}") from None


def _read_manifest(path: str) -> tuple[bytes, str]:
    """A request body from ``-f``: a file or ``-`` (standard input), read up to the API server's
    body limit and no further. Returns the bytes and the name kubectl would give the source."""
    if path == "-":
        return read_body(sys.stdin.buffer), "STDIN"
    with _open_input(path) as f:
        try:
            return read_body(f), path
        except OSError as exc:  # EISDIR from a directory that appeared meanwhile, EIO, ...
            raise _CommandError(f"read {path}: {strerror(exc)}") from None


def _cmd_apply(node: Node, args: argparse.Namespace, out: TextIO) -> int:
    body, source = _read_manifest(args.filename)
    try:
        results = node.apply(body)
    except DecodeError as exc:
        raise _CommandError(f"error parsing {source}: {exc}") from None
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
    record = node.get_pod(args.pod, args.namespace)
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


def _pull_keyring(node: Node, args: argparse.Namespace) -> Keyring:
    """``--creds`` for every registry host the reference may be pulled from (mirrors included),
    or the entries of ``--pull-secret``. Nothing else: no ~/.docker/config.json."""
    if args.pull_secret:
        data, source = _read_manifest(args.pull_secret)
        try:
            if data.lstrip().startswith(b"{"):
                list(load_all(decode_text(data)))  # the decoding bounds first (nesting, size)
                return Keyring.from_docker_config(data)
            secrets = [d for d in load_documents(data) if isinstance(d, Secret)]
        except DecodeError as exc:
            raise _CommandError(f"error parsing {source}: {exc}") from None
        if not secrets:
            raise ValueError(f"{args.pull_secret}: no Secret found")
        return Keyring.from_secrets(secrets)
    if not args.creds:
        return Keyring()
    creds = Credentials.parse(args.creds)
    try:
        ref = parse_normalized(args.reference)
        hosts = [s.endpoint.location for s in node.puller.registries.pull_sources(ref) if not s.endpoint.is_layout]
    except ImageVolError:
        return Keyring()  # the pull reports the bad reference or the blocked registry
    return Keyring(tuple((h, creds) for h in dict.fromkeys(hosts)))


def _cmd_pull(node: Node, args: argparse.Namespace, out: TextIO) -> int:
    """Pull with the kubelet's EnsureImageExists rules (policy, events, messages); print the
    digest the reference resolved to (an index's digest for a multi-platform image)."""
    keyring = _pull_keyring(node, args)
    bar = ProgressBar(sys.stderr, args.reference) if sys.stderr.isatty() else None
    node.puller.progress = bar
    recorder = EventRecorder([], clock=node.now)
    manager = ImageManager(node.runtime, Backoff(), node.metrics(), clock=node.now)
    try:
        result = manager.ensure("imagevol-pull", args.reference, args.policy, keyring, recorder)
    finally:
        if bar is not None:
            bar.close()
        node.puller.progress = None
    if not result.ok or result.image is None:
        sys.stderr.write(f"error: {result.reason}: {result.message}\n")
        return EXIT_FAIL
    out.write(f"{result.image.digest}\n")
    return EXIT_OK


def _cmd_fsck(node: Node, args: argparse.Namespace, out: TextIO) -> int:
    report = node.store.fsck(repair=args.repair)
    verb = "removed" if args.repair else "found"
    out.write(f"checked {report.checked} blobs\n")
    for label, items in (("corrupt", report.corrupt), ("orphaned", report.orphaned),
                         ("stale ingest", report.stale_ingests), ("invalid", report.invalid)):  # fmt: skip
        for item in items:
            out.write(f"{verb} {label}: {item}\n")
    for item in report.missing:
        out.write(f"missing: {item}\n")
    if report.clean:
        out.write("content store is clean\n")
        return EXIT_OK
    return EXIT_OK if args.repair and not report.missing else EXIT_FAIL


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
    """Run one command; return its exit status. Every failure is one line on standard error
    (kubectl's wording where it has one), never a traceback, an ``[Errno N]`` or a host path of
    the node's root."""
    for stream in (sys.stdout, sys.stderr):
        # Text from Pod files may hold anything (a lone surrogate from a YAML escape): print it
        # escaped rather than fail half-way through the output.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
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
    root = os.path.abspath(args.root or default_root())
    try:
        return _run(args, out)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`imagevol get pods | head -1`): stop quietly, as Go tools do.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAIL
    except _CommandError as exc:
        return _fail(f"error: {exc}", root, exc.code)
    except ValidationError as exc:
        return _fail(f"The {exc}", root)
    except PodNotFoundError as exc:
        return _fail(f"Error from server (NotFound): {exc}", root)
    except RequestEntityTooLargeError as exc:
        return _fail(f"Error from server (RequestEntityTooLarge): {exc}", root)
    except StorageTooLargeError as exc:
        return _fail(f"Error from server: {exc}", root)
    except mounts.RealExecError as exc:
        return _fail(f"error: {exc}", root, exc.exit_code)
    except DecodeError as exc:
        return _fail(f"error: error parsing input: {exc}", root)
    except UnicodeDecodeError as exc:  # a configuration file (registries.conf, a docker config)
        return _fail(f"error: a configuration file is not valid UTF-8 (byte {exc.start}: {exc.reason})", root)
    except (ImageVolError, ValueError) as exc:
        return _fail(f"error: {exc}", root)
    except OSError as exc:
        return _fail(f"error: {_os_error_message(exc, root)}", root)
    except Exception as exc:  # the last line of defence: one line, no traceback
        if os.environ.get("IMAGEVOL_TRACEBACK"):
            raise
        return _fail(f"error: internal error ({type(exc).__name__}): {exc}", root)


def _fail(message: str, root: str, code: int = EXIT_FAIL) -> int:
    """Print one error line. The node root's host path never appears in it (messages are written
    not to contain it; this is the safety net for text that came from elsewhere)."""
    if len(root) > 1:
        message = message.replace(root, "<root>")
    sys.stderr.write(message.replace("\n", " ").rstrip() + "\n")
    return code


def _os_error_message(exc: OSError, root: str) -> str:
    """An OS error in Go's words (``open PATH: permission denied``), naming the file only when it
    is not node state (a file named on the command line)."""
    name = exc.filename if isinstance(exc.filename, str) else ""
    inside = bool(name) and (os.path.abspath(name) + "/").startswith(root.rstrip("/") + "/")
    if exc.errno == errno.EADDRINUSE:
        return f"listen: {strerror(exc)}"
    if inside or not name:
        return f"node state (--root): {strerror(exc)}"
    return f"{name}: {strerror(exc)}"


def _run(args: argparse.Namespace, out: TextIO) -> int:
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
            for image in node.runtime.list_images():
                out.write(f"{image.reference}\t{image.id}\t{image.size}\n")
            return EXIT_OK
        out.write(get_pods(node.pods()))
        return EXIT_OK
    if args.command == "describe":
        out.write(describe_pod(node.get_pod(args.name, args.namespace), node.now()))
        return EXIT_OK
    if args.command == "delete":
        node.delete_pod(args.name, args.namespace)
        out.write(f"pod {goquote(args.name)} deleted\n")
        return EXIT_OK
    if args.command == "exec":
        return _cmd_exec(node, args, out)
    if args.command == "sync":
        return _cmd_sync(node, args, out)
    if args.command == "pull":
        return _cmd_pull(node, args, out)
    if args.command == "fsck":
        return _cmd_fsck(node, args, out)
    if args.command == "metrics":
        out.write(node.metrics().exposition().decode())
        return EXIT_OK
    if args.command == "serve-metrics":
        from .metrics import serve

        try:
            serve(node.metrics, args.port, out)
        except OSError as exc:
            # The kubelet's words for the same failure: `listen tcp 127.0.0.1:10255: bind: ...`.
            raise _CommandError(f"listen tcp 127.0.0.1:{args.port}: bind: {strerror(exc)}") from None
        return EXIT_OK
    if args.command == "gc":
        from .image_gc import ImageGC

        gc = ImageGC(node.runtime, clock=node.now)
        capacity = args.capacity or gc.capacity()
        result = gc.collect(capacity=capacity, high_percent=args.high, low_percent=args.low, force=args.all_unused)
        out.write(result.describe())
        return EXIT_OK
    if args.command == "rmi":
        image = node.runtime.remove_image(args.reference)
        node.runtime.garbage_collect()
        out.write(f"Deleted: {image.reference}\n")
        return EXIT_OK
    raise _CommandError(f"unknown command {args.command}", EXIT_USAGE)


if __name__ == "__main__":
    sys.exit(main())
