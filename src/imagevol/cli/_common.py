"""What every command shares: the command record, exit codes, the error a command words itself,
argument types, output formats, namespaces, reading the files named on the command line, and
building the node from the global options.

Only the standard library is imported here at module level: the node, the API decoder and YAML are
imported by the functions that need them, so ``imagevol --help`` and argument errors stay cheap.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO, NamedTuple, TextIO

from .._text import goquote, strerror

if TYPE_CHECKING:
    from ..api.models import Pod, Secret
    from ..errors import ImageVolError
    from ..kubelet.pod_sync import PodRecord
    from ..node import Node

#: Exit statuses (docs/cli.md, "Exit status"): success, failure, usage error.
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130

#: What a command runs: the parsed arguments and the output stream in, the exit status out.
Handler = Callable[[argparse.Namespace, TextIO], int]

#: ``-o`` values of ``get`` and ``apply`` (kubectl's names).
OUTPUT_FORMATS = ("json", "yaml", "wide", "name")


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    """A command without arguments of its own."""


class Command(NamedTuple):
    """One ``imagevol`` command: its name, one-line help and longer description, what it adds to
    its own argument parser, and the function that runs it. (A named tuple, not a dataclass: the
    ``dataclasses`` module imports ``inspect``, a tenth of the CLI's start-up.)"""

    name: str
    help: str
    run: Handler
    arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments
    description: str = ""


class CommandError(Exception):
    """A failure the CLI has already worded completely (kubectl's wording where it has one),
    printed after ``prefix`` (``error: ``, or ``Error from server (REASON): `` for what the API
    server would have refused)."""

    def __init__(self, message: str, code: int = EXIT_FAIL, *, prefix: str = "error: ") -> None:
        super().__init__(message)
        self.code = code
        self.prefix = prefix


def server_error(reason: str, message: str) -> CommandError:
    """An error the API server would answer: ``Error from server (REASON): MESSAGE``."""
    return CommandError(message, prefix=f"Error from server ({reason}): ")


# --- argument types ---------------------------------------------------------------------------------


def port(text: str) -> int:
    """A TCP port, 0 (any free port) to 65535."""
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


def add_output_option(p: argparse.ArgumentParser, formats: Sequence[str] = OUTPUT_FORMATS) -> None:
    """``-o/--output`` with kubectl's formats."""
    p.add_argument(
        "-o",
        "--output",
        choices=formats,
        default="",
        metavar="FORMAT",
        help=f"output format: {', '.join(formats)} (default: a table, as kubectl prints it)",
    )


# --- namespaces ----------------------------------------------------------------------------------------


def namespace(args: argparse.Namespace) -> str:
    """The namespace ``-n`` names, ``default`` without one."""
    return str(getattr(args, "namespace", None) or "default")


def all_namespaces(args: argparse.Namespace) -> bool:
    """``-A``: every namespace (``-n`` is then ignored, as kubectl ignores it)."""
    return bool(getattr(args, "all_namespaces", False))


def no_all_namespaces(args: argparse.Namespace) -> None:
    """Refuse ``-A`` where a command names one object, in kubectl's words."""
    if all_namespaces(args):
        raise CommandError("a resource cannot be retrieved by name across all namespaces")


def split_kind(words: Sequence[str], kinds: dict[str, str]) -> tuple[str, list[str]]:
    """``KIND NAME...`` or ``KIND/NAME...`` (kubectl's two spellings): the canonical kind and the
    names. ``kinds`` maps every accepted spelling (``po``, ``pods``) to the canonical one."""
    if not words:
        raise CommandError(f"you must specify the type of resource: one of {', '.join(sorted(set(kinds.values())))}")
    first, _, name = words[0].partition("/")
    kind = kinds.get(first.lower())
    if kind is None:
        raise CommandError(f'the server doesn\'t have a resource type "{first}"')
    names = [name] if name else []
    for word in words[1:]:
        # A later KIND/NAME word of the same kind names an object; any other word is a name as
        # written (a name with a slash in it is simply not found).
        other, _, rest = word.partition("/")
        names.append(rest if rest and kinds.get(other.lower()) == kind else word)
    return kind, names


# --- files named on the command line ----------------------------------------------------------------

#: The files ``-f DIR`` reads, as kubectl's ``FileExtensions``.
MANIFEST_EXTENSIONS = (".json", ".yaml", ".yml")


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
    from ..api.limits import read_body

    if path == "-":
        return read_body(sys.stdin.buffer), "STDIN"
    with open_input(path) as f:
        try:
            return read_body(f), path
        except OSError as exc:  # EISDIR from a directory that appeared meanwhile, EIO, ...
            raise CommandError(f"read {path}: {strerror(exc)}") from None


def manifest_files(paths: Sequence[str], recursive: bool = False) -> list[str]:
    """What ``-f`` names, expanded as kubectl expands it: ``-`` and files as given, a directory
    as its ``.json``, ``.yaml`` and ``.yml`` files in name order (its subdirectories too with
    ``-R``; links to directories are not followed). Every path is checked before any is read."""
    out: list[str] = []
    for path in paths:
        if path == "-":
            out.append(path)
            continue
        try:
            is_dir = os.path.isdir(path)
            os.stat(path)
        except FileNotFoundError:
            raise CommandError(f"the path {goquote(path)} does not exist") from None
        except OSError as exc:
            raise CommandError(f"stat {path}: {strerror(exc)}") from None
        if not is_dir:
            out.append(path)
            continue
        out += _directory_manifests(path, recursive)
    return out


def _directory_manifests(path: str, recursive: bool) -> list[str]:
    found: list[str] = []

    def fail(exc: OSError) -> None:
        raise CommandError(f"open {exc.filename or path}: {strerror(exc)}")

    for dirpath, dirnames, filenames in os.walk(path, onerror=fail):
        dirnames.sort()
        if not recursive:
            dirnames.clear()
        found += [
            os.path.join(dirpath, f)
            for f in sorted(filenames)
            if f.endswith(MANIFEST_EXTENSIONS) and not os.path.isdir(os.path.join(dirpath, f))
        ]
    return found


class Document(NamedTuple):
    """One document of the files ``-f`` names: the object, or why it could not be decoded."""

    source: str
    obj: Pod | Secret | None = None
    error: ImageVolError | None = None


def read_documents(paths: Sequence[str], recursive: bool = False) -> Iterator[Document]:
    """Every document of every file ``-f`` names, in order. A file that cannot be read ends it all
    (a :class:`CommandError`, before anything is applied when the caller reads them all first);
    a document that does not decode is yielded with its error and the rest still come, as kubectl
    goes on past it."""
    from ..api.load import decode_documents
    from ..errors import DecodeError, ImageVolError

    for path in manifest_files(paths, recursive):
        body, source = read_manifest(path)
        for item in decode_documents(body):
            if isinstance(item, DecodeError):
                yield Document(source, error=DecodeError(f"error parsing {source}: {item}"))
            elif isinstance(item, ImageVolError):
                yield Document(source, error=item)
            else:
                yield Document(source, obj=item)


def object_namespace(obj: Pod | Secret, args: argparse.Namespace) -> str:
    """The namespace an object of a file goes to: its own, else ``-n``'s; an object naming
    another namespace than an explicit ``-n`` is refused, as kubectl refuses it."""
    own = obj.metadata.namespace
    given = getattr(args, "namespace", None)
    if own and given and own != given:
        raise CommandError(
            f"the namespace from the provided object {goquote(own)} does not match the namespace "
            f"{goquote(given)}. You must pass '--namespace={own}' to perform this operation."
        )
    return own or namespace(args)


# --- the node -----------------------------------------------------------------------------------------


def node_root(args: argparse.Namespace) -> str:
    """The node's root directory: ``--root``, else the default (``$IMAGEVOL_ROOT``...)."""
    from ..node import default_root

    return str(args.root or default_root())


def node_never_ran(args: argparse.Namespace) -> bool:
    """Whether the options describe a node that never ran: the default configuration (which is
    valid, so nothing is left to report about it) on a root that is empty or absent (then created,
    as building the node would create it). Such a node holds no Pod, image or event, whatever the
    layout of its state. Anything else is False, and building the node checks and reports it:
    other options, a root that cannot be read or created."""
    from ..api.constants import DEFAULT_VERSION
    from ..node import DEFAULT_FEATURE_GATES

    configured = (
        args.registries or os.environ.get("IMAGEVOL_REGISTRIES"),
        args.k8s_version != DEFAULT_VERSION,
        args.feature_gates != DEFAULT_FEATURE_GATES,
        args.kubelet_feature_gates,
        args.enable_admission_plugins,
        args.platform,
    )
    if any(configured):
        return False
    root = node_root(args)
    try:
        with os.scandir(root) as entries:
            return next(entries, None) is None
    except FileNotFoundError:
        pass
    except OSError:
        return False
    try:
        os.makedirs(root)  # what building the node does first; a link to nowhere fails here
    except OSError:
        return False
    return True


def node_from_args(args: argparse.Namespace, *, snapshots_on_demand: bool = False) -> Node:
    """The node the global options describe (``--root``, ``--registries``, ``--runtime``...);
    ``snapshots_on_demand`` for a command that may never use a tree (:class:`~imagevol.node.Node`)."""
    from ..content.sources.deferred import DeferredRegistryAccess
    from ..node import Node, NodeConfig
    from ..oci import Platform

    root = node_root(args)
    registries = args.registries or os.environ.get("IMAGEVOL_REGISTRIES")
    if registries is None and os.path.exists(os.path.join(root, "registries.conf")):
        registries = os.path.join(root, "registries.conf")
    platform = Platform.parse(args.platform) if args.platform else None
    config = NodeConfig(
        root=root,
        registries=registries,
        runtime=args.runtime,
        run_containers=bool(args.run_containers or os.environ.get("IMAGEVOL_RUN_CONTAINERS") == "1"),
        lazy=getattr(args, "lazy", "off"),
        k8s_version=args.k8s_version,
        feature_gates=args.feature_gates,
        kubelet_feature_gates=args.kubelet_feature_gates,
        metrics_mode=args.metrics_mode,
        admission_plugins=tuple(p for p in args.enable_admission_plugins.split(",") if p),
        platform=platform,
        # The CLI's node reaches registries (content/sources/registry.py, over http.client).
        registry_factory=DeferredRegistryAccess(plain_http=bool(getattr(args, "plain_http", False))),
        **({"max_blob_size": args.max_blob_size} if getattr(args, "max_blob_size", None) else {}),
    )
    return Node(config, snapshots_on_demand=snapshots_on_demand)


def get_pods(node: Node, args: argparse.Namespace, names: Sequence[str] = ()) -> list[PodRecord]:
    """The Pods ``names`` (of ``-n``'s namespace) or, without names, every Pod of the namespace
    (of every namespace with ``-A``)."""
    if names:
        no_all_namespaces(args)
        return [node.get_pod(n, namespace(args)) for n in names]
    return node.pods(None if all_namespaces(args) else namespace(args))


def default_container(record: PodRecord, name: str | None, err: TextIO | None = None) -> str:
    """The container ``-c`` names, else the Pod's default one: the
    ``kubectl.kubernetes.io/default-container`` annotation, else the first container (said on
    ``err`` when the Pod has several, as kubectl says it)."""
    if name:
        return name
    pod = record.pod
    annotated = pod.metadata.annotations.get("kubectl.kubernetes.io/default-container", "")
    names = [c.name for c in pod.spec.containers]
    if annotated in names:
        return annotated
    if len(names) > 1 and err is not None:
        err.write(f'Defaulted container "{names[0]}" out of: {", ".join(names)}\n')
    return names[0]
