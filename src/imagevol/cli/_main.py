"""The ``imagevol`` command: drive a simulated node and see what a Pod would see.

:func:`main` builds the parser (the global options here, each command's own arguments in its
module) and dispatches through :data:`COMMANDS` to one small function per command, grouped by noun:
Pods (:mod:`._pods`), ``exec`` (:mod:`._exec`), images (:mod:`._images`), metrics
(:mod:`._metrics`); output formatting is :mod:`._output`. Command modules import the node and the
rest of imagevol only when their command runs, so ``imagevol --help`` stays cheap. Every failure
becomes one line on standard error here.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from .. import __version__
from .._text import strerror
from ..api.features import DEFAULT_VERSION
from ..errors import (
    DecodeError,
    ImageVolError,
    PodNotFoundError,
    RequestEntityTooLargeError,
    StorageTooLargeError,
    ValidationError,
)
from ..node import DEFAULT_FEATURE_GATES, default_root
from ..runtime import DEFAULT_PROFILE, PROFILE_NAMES
from . import _exec, _images, _metrics, _pods
from ._common import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_USAGE, Command, CommandError

#: The dispatch table: every command, in the order ``--help`` lists them.
COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        _pods.APPLY,
        _pods.GET,
        _pods.DESCRIBE,
        _pods.DELETE,
        _exec.EXEC,
        _pods.SYNC,
        _metrics.METRICS,
        _metrics.SERVE_METRICS,
        _images.GC,
        _images.RMI,
        _images.PULL,
        _images.FSCK,
        _images.FIXTURES,
    )
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of the global options and of every command in :data:`COMMANDS`."""
    p = argparse.ArgumentParser(
        prog="imagevol",
        description="Simulate a Kubernetes node's image volumes (KEP-4639): pull, mount, sub paths, events, metrics.",
    )
    p.add_argument("--version", action="version", version=f"imagevol {__version__}")
    p.add_argument("--root", default=None, help="node state directory (default: $IMAGEVOL_ROOT, else the XDG data dir)")
    p.add_argument("--registries", default=None, help="registries.conf(5)-style mirror configuration")
    p.add_argument("--runtime", choices=PROFILE_NAMES, default=DEFAULT_PROFILE, help="runtime profile")
    p.add_argument(
        "--lazy",
        choices=("off", "toc", "toc+complete"),
        default="off",
        help="lazy sub paths: build only what a mount's subPath needs, fetching only its bytes from layers "
        "with a table of contents (toc); then fetch and verify the rest in the background (toc+complete)",
    )
    p.add_argument("--k8s-version", default=DEFAULT_VERSION, help="Kubernetes version to simulate")
    p.add_argument("--feature-gates", default=DEFAULT_FEATURE_GATES, help="A=true,B=false (default: %(default)s)")
    p.add_argument(
        "--kubelet-feature-gates",
        default=None,
        help="the kubelet's gates when they differ from the API server's, e.g. ImageVolume=false",
    )
    p.add_argument(
        "--metrics-mode",
        choices=("upstream", "fixed"),
        default="upstream",
        help="count image-volume mounts as upstream does (start failures other than mount failures count as "
        "successes) or corrected (only attempts that reached the runtime count)",
    )
    p.add_argument(
        "--enable-admission-plugins",
        default="",
        metavar="PLUGINS",
        help="the API server's mutating admission plugins, comma-separated: AlwaysPullImages "
        "(also forces pullPolicy: Always on image volumes)",
    )
    p.add_argument("--platform", default=None, help="node platform os/arch[/variant] (default: the host's)")
    p.add_argument(
        "-n",
        "--namespace",
        default="default",
        help="namespace of the Pod for describe, delete and exec (default: %(default)s)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        command.arguments(sub.add_parser(command.name, help=command.help))
    return p


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
    except CommandError as exc:
        return _fail(f"error: {exc}", root, exc.code)
    except ValidationError as exc:
        return _fail(f"The {exc}", root)
    except PodNotFoundError as exc:
        return _fail(f"Error from server (NotFound): {exc}", root)
    except RequestEntityTooLargeError as exc:
        return _fail(f"Error from server (RequestEntityTooLarge): {exc}", root)
    except StorageTooLargeError as exc:
        return _fail(f"Error from server: {exc}", root)
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
    """Dispatch to the command's function."""
    command = COMMANDS.get(args.command)
    if command is None:
        raise CommandError(f"unknown command {args.command}", EXIT_USAGE)
    return command.run(args, out)
