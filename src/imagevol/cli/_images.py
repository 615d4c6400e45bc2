"""Image commands: ``pull``, ``rmi``, ``gc``, ``fsck``, ``demo`` (the quick start's files) and
``fixtures`` (the project's deterministic OCI fixtures, for demos and tests)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, TextIO

from ..api.constants import PULL_POLICIES
from ._common import EXIT_FAIL, EXIT_OK, Command, CommandError, node_from_args, read_manifest, size

if TYPE_CHECKING:
    from ..cri import Keyring
    from ..node import Node


def _pull_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("reference", metavar="REF", help="the image or artifact to pull (name[:tag] or name@digest)")
    p.add_argument("--policy", choices=PULL_POLICIES, default="Always",
                   help="pull policy, as the kubelet applies it (default: %(default)s)")  # fmt: skip
    p.add_argument("--platform", default=argparse.SUPPRESS, help="os/arch[/variant] to pick from an index")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--creds", metavar="USER:PASS", help="credentials for the registry (and its mirrors)")
    who.add_argument("--pull-secret", metavar="FILE",
                     help="a kubernetes.io/dockerconfigjson Secret (YAML) or a .dockerconfigjson file")  # fmt: skip
    p.add_argument("--plain-http", action="store_true", help="talk HTTP, not HTTPS, to registries")
    p.add_argument("--max-blob-size", type=size, default=None, help="refuse blobs larger than this (e.g. 2GiB)")


def _pull_keyring(node: Node, args: argparse.Namespace) -> Keyring:
    """``--creds`` for every registry host the reference may be pulled from (mirrors included),
    or the entries of ``--pull-secret``. Nothing else: no ~/.docker/config.json."""
    from ..cri import Credentials, Keyring
    from ..errors import ImageVolError
    from ..oci.reference import parse_normalized

    if args.pull_secret:
        # The YAML decoder only for a pull secret: most pulls have none.
        from ..api.bounded_yaml import load_all
        from ..api.load import decode_text, load_documents
        from ..api.models import Secret
        from ..errors import DecodeError

        data, source = read_manifest(args.pull_secret)
        try:
            if data.lstrip().startswith(b"{"):
                list(load_all(decode_text(data)))  # the decoding bounds first (nesting, size)
                return Keyring.from_docker_config(data)
            secrets = [d for d in load_documents(data) if isinstance(d, Secret)]
        except DecodeError as exc:
            raise CommandError(f"error parsing {source}: {exc}") from None
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


def pull(args: argparse.Namespace, out: TextIO) -> int:
    """Pull with the kubelet's EnsureImageExists rules (policy, events, messages); print the
    digest the reference resolved to (an index's digest for a multi-platform image)."""
    from ..content.progress import ProgressBar
    from ..kubelet.events import EventRecorder
    from ..kubelet.image_manager import Backoff, ImageManager

    # A pull fills the content store and the image records: the trees are made by the first
    # command that mounts the image (and the snapshotter's crash recovery runs then).
    node = node_from_args(args, snapshots_on_demand=True)
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


def _rmi_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("reference", metavar="REF", help="the image's reference (as get images lists it) or image ID")


def rmi(args: argparse.Namespace, out: TextIO) -> int:
    """``crictl rmi``: remove an image no container mounts, then its unreachable blobs."""
    node = node_from_args(args)
    image = node.runtime.remove_image(args.reference)
    node.runtime.garbage_collect()
    out.write(f"Deleted: {image.reference}\n")
    return EXIT_OK


def _gc_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--high", type=int, default=85, help="start above this disk usage percent")
    p.add_argument("--low", type=int, default=80, help="free down to this disk usage percent")
    p.add_argument(
        "--capacity", type=int, default=None, help="image storage capacity in bytes (default: the filesystem's)"
    )
    p.add_argument("--all-unused", action="store_true", help="remove every unused image, whatever the usage")


def gc(args: argparse.Namespace, out: TextIO) -> int:
    """The kubelet's image GC: unused images, least recently used first, down to ``--low``."""
    from ..kubelet.image_gc import ImageGC

    node = node_from_args(args)
    collector = ImageGC(node.runtime, clock=node.now)
    capacity = args.capacity or collector.capacity()
    result = collector.collect(capacity=capacity, high_percent=args.high, low_percent=args.low, force=args.all_unused)
    out.write(result.describe())
    return EXIT_OK


def _fsck_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repair", action="store_true", help="remove corrupt and orphaned blobs and stale temp files")


def fsck(args: argparse.Namespace, out: TextIO) -> int:
    """Re-hash every blob of the content store; report (or with ``--repair`` remove) what is wrong."""
    node = node_from_args(args)
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


def _fixtures_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", metavar="DIR", help="where to write the OCI image layout")
    p.add_argument(
        "--demo",
        action="store_true",
        help="only the demo's images: quay.io/crio/artifact:v2 and the BusyBox stand-in for debian"
        " (what imagevol demo writes as DIR/oci-layout; the layout is replaced only when it differs)",
    )


def fixtures(args: argparse.Namespace, out: TextIO) -> int:
    """Write the project's deterministic OCI fixtures (or only the demo's) as one OCI layout."""
    from ..testing.images import build_demo_layout, build_fixtures

    if args.demo:
        for tag, desc in sorted(build_demo_layout(args.directory).items()):
            out.write(f"{tag}\t{desc.digest}\n")
    else:
        for tag, desc in sorted(build_fixtures(args.directory).items()):
            out.write(f"{tag}\t{desc.digest}\n")
    return EXIT_OK


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "directory", nargs="?", default="imagevol-demo", metavar="DIR", help="where to write it (default: %(default)s)"
    )


def demo(args: argparse.Namespace, out: TextIO) -> int:
    """Write the README's quick start: the demo images as an OCI layout, a registries.conf that
    mirrors them to it, and the blog's Pod; print the commands that run it."""
    import shlex

    from ..testing.demo import write_demo
    from ..testing.images import DEMO_IMAGES

    files = write_demo(args.directory)
    # Paths as the user gave the directory (relative stays relative), quoted for a shell.
    layout, registries, pod = (
        shlex.quote(os.path.join(args.directory, os.path.basename(p)))
        for p in (files.layout, files.registries, files.pod)
    )
    out.write(f"wrote {layout} ({', '.join(i.reference for i in DEMO_IMAGES)}), {registries} and {pod}\n")
    out.write("run the Pod offline and look at what its container sees:\n")
    out.write(f"  imagevol --registries {registries} apply -f {pod}\n")
    out.write("  imagevol exec image-volume -c shell -- cat /volume/file\n")
    out.write("  imagevol tree image-volume -c shell\n")
    return EXIT_OK


PULL = Command(
    "pull",
    "pull an image or artifact into the node's content store; print its digest",
    pull,
    _pull_arguments,
    description="Pull REF with the kubelet's rules (pull policy, credentials, mirrors, platform) into the node's "
    "content store, every byte verified, and print the digest it resolved to. Only --creds or --pull-secret are "
    "offered to registries; a pull over one second draws a progress bar on a terminal.",
)
RMI = Command(
    "rmi",
    "remove an image (refused while a container mounts it)",
    rmi,
    _rmi_arguments,
    description="Remove an image, as crictl rmi does; refused while a container mounts it. Blobs no other image "
    "needs are removed with it.",
)
GC = Command(
    "gc",
    "image garbage collection (never removes an image in use)",
    gc,
    _gc_arguments,
    description="Run the kubelet's image garbage collection: above --high percent of the capacity, remove unused "
    "images, least recently used first, until below --low. An image a container mounts is never removed.",
)
FSCK = Command(
    "fsck",
    "verify every blob of the content store; report corrupt and orphaned ones",
    fsck,
    _fsck_arguments,
    description="Re-hash every blob of the content store and report corrupt, orphaned, invalid and missing ones; "
    "--repair removes what is wrong (a later pull fetches what is missing). Exit status 0 when clean.",
)
DEMO = Command(
    "demo",
    "write the quick start's files: the demo images, their registries.conf and the Pod",
    demo,
    _demo_arguments,
    description="Write the README's quick start into DIR: the demo images as an OCI image layout (DIR/oci-layout), "
    "a registries.conf mirroring their repositories to it, and the image-volume Pod of the Kubernetes blog "
    "(DIR/pod.yaml). Then: imagevol --registries DIR/registries.conf apply -f DIR/pod.yaml.",
)
FIXTURES = Command(
    "fixtures",
    "write the project's deterministic OCI fixtures to a directory",
    fixtures,
    _fixtures_arguments,
    description="Write the project's deterministic OCI fixtures (images of every layer compression, a "
    "multi-platform index, artifacts) as one OCI image layout; print each tag and its digest.",
)
