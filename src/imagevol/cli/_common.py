"""What every command shares: the command record, exit codes, the error a command words itself,
argument types, reading files named on the command line, and building the node from the global
options. Nothing here imports the node until a command asks for one, so ``imagevol --help`` and
argument errors stay cheap."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, TextIO

import attrs

from .._text import goquote, strerror
from ..api.limits import read_body
from ..node import default_root

if TYPE_CHECKING:
    from ..node import Node

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130

#: What a command runs: the parsed arguments and the output stream in, the exit status out.
Handler = Callable[[argparse.Namespace, TextIO], int]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    """A command without arguments of its own."""


@attrs.frozen
class Command:
    """One ``imagevol`` command: its name and one-line help, what it adds to its own argument
    parser, and the function that runs it."""

    name: str
    help: str
    run: Handler
    arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments


class CommandError(Exception):
    """A failure the CLI has already worded completely (kubectl's wording where it has one)."""

    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.code = code


# --- argument types ---------------------------------------------------------------------------------


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: must be 0 to 65535")
    return value


def duration(text: str) -> float:
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


def size(text: str) -> int:
    """``123``, ``10MiB``, ``2GiB``, ``500kB``."""
    m = re.fullmatch(r"(\d+)\s*([KMGT]i?B|[kKMGT]B?|B)?", text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}")
    unit = (m.group(2) or "B").upper().rstrip("B") or "B"
    powers = {"B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
              "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4}  # fmt: skip
    return int(m.group(1)) * powers[unit]


# --- files named on the command line ----------------------------------------------------------------


def open_input(path: str) -> BinaryIO:
    """Open a file named on the command line, failing the way kubectl words it."""
    try:
        if os.path.isdir(path):
            raise CommandError(f"the path {goquote(path)} is a directory: give a YAML or JSON file")
        return open(path, "rb")  # the caller closes it
    except FileNotFoundError:
        raise CommandError(f"the path {goquote(path)} does not exist") from None
    except OSError as exc:
        raise CommandError(f"open {path}: {strerror(exc)}") from None


def read_manifest(path: str) -> tuple[bytes, str]:
    """A request body from ``-f``: a file or ``-`` (standard input), read up to the API server's
    body limit and no further. Returns the bytes and the name kubectl would give the source."""
    if path == "-":
        return read_body(sys.stdin.buffer), "STDIN"
    with open_input(path) as f:
        try:
            return read_body(f), path
        except OSError as exc:  # EISDIR from a directory that appeared meanwhile, EIO, ...
            raise CommandError(f"read {path}: {strerror(exc)}") from None


# --- the node -----------------------------------------------------------------------------------------


def node_from_args(args: argparse.Namespace) -> Node:
    """The node the global options describe (``--root``, ``--registries``, ``--runtime``...)."""
    from ..content.sources.registry import RegistryAccess
    from ..node import Node, NodeConfig
    from ..oci import Platform

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
            lazy=getattr(args, "lazy", "off"),
            k8s_version=args.k8s_version,
            feature_gates=args.feature_gates,
            kubelet_feature_gates=args.kubelet_feature_gates,
            metrics_mode=args.metrics_mode,
            admission_plugins=tuple(p for p in args.enable_admission_plugins.split(",") if p),
            platform=platform,
            # The CLI's node reaches registries (oras-py, made safe: content/sources/registry.py);
            # library nodes only do when given a registry_factory, so they stay hermetic by default.
            registry_factory=RegistryAccess(plain_http=bool(getattr(args, "plain_http", False))),
            **({"max_blob_size": args.max_blob_size} if getattr(args, "max_blob_size", None) else {}),
        )
    )
