"""The ``imagevol`` command: drive a simulated node and see what a Pod would see.

:func:`main` builds the parser (the global options here, each command's own arguments in its
module) and dispatches through :data:`COMMANDS` to one small function per command, grouped by noun:
applying files (:mod:`._apply`), Pods (:mod:`._pods`), ``exec`` and ``tree`` (:mod:`._exec`),
images and fixtures (:mod:`._images`), metrics (:mod:`._metrics`); output shapes are
:mod:`._output`. Command modules import the node and the rest of imagevol only when their command
runs, so ``imagevol --help`` stays cheap. Every failure becomes one line on standard error
(:mod:`._errors`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from .. import __version__
from ..api.constants import DEFAULT_VERSION
from ..node import DEFAULT_FEATURE_GATES, default_root
from ..runtime import DEFAULT_PROFILE, PROFILE_NAMES
from . import _apply, _errors, _exec, _images, _metrics, _pods
from ._common import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_USAGE, Command, CommandError

#: The dispatch table: every command, in the order ``--help`` lists them.
COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        _apply.APPLY,
        _pods.GET,
        _pods.DESCRIBE,
        _pods.DELETE,
        _pods.LOGS,
        _exec.EXEC,
        _exec.TREE,
        _pods.SYNC,
        _metrics.METRICS,
        _metrics.SERVE_METRICS,
        _images.GC,
        _images.RMI,
        _images.PULL,
        _images.FSCK,
        _images.DEMO,
        _images.FIXTURES,
    )
}

#: The global options: ``(flags, keyword arguments)``; the default is the parser's own and is
#: suppressed when an option is repeated after the command.
_GLOBAL_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (
        ("--root",),
        {"default": None, "metavar": "DIR",
         "help": "node state directory (default: $IMAGEVOL_ROOT, else $XDG_DATA_HOME/imagevol)"},
    ),
    (
        ("--registries",),
        {"default": None, "metavar": "FILE",
         "help": "registries.conf(5)-style mirror configuration (default: $IMAGEVOL_REGISTRIES, "
                 "else ROOT/registries.conf if present)"},
    ),
    (
        ("--runtime",),
        {"choices": PROFILE_NAMES, "default": DEFAULT_PROFILE, "help": "runtime profile (default: %(default)s)"},
    ),
    (
        ("--k8s-version",),
        {"default": DEFAULT_VERSION, "metavar": "VERSION",
         "help": "Kubernetes version to simulate (default: %(default)s)"},
    ),
    (
        ("--feature-gates",),
        {"default": DEFAULT_FEATURE_GATES, "metavar": "GATES",
         "help": "feature gates of the API server and kubelet, A=true,B=false (default: %(default)s)"},
    ),
    (
        ("--kubelet-feature-gates",),
        {"default": None, "metavar": "GATES",
         "help": "the kubelet's gates when they differ from the API server's, e.g. ImageVolume=false"},
    ),
    (
        ("--metrics-mode",),
        {"choices": ("upstream", "fixed"), "default": "upstream",
         "help": "count image-volume mounts as upstream does (start failures other than mount failures count "
                 "as successes) or corrected (only attempts that reached the runtime count)"},
    ),
    (
        ("--enable-admission-plugins",),
        {"default": "", "metavar": "PLUGINS",
         "help": "the API server's mutating admission plugins, comma-separated: AlwaysPullImages "
                 "(also forces pullPolicy: Always on image volumes)"},
    ),
    (
        ("--platform",),
        {"default": None, "metavar": "OS/ARCH[/VARIANT]", "help": "node platform (default: the host's)"},
    ),
    (
        ("-n", "--namespace"),
        {"default": None, "metavar": "NS", "help": "the namespace of the objects named (default: default)"},
    ),
)  # fmt: skip


def _add_global_options(p: argparse.ArgumentParser, *, after_command: bool) -> None:
    """The global options; after the command (``imagevol get pods -n x``) they default to nothing,
    so that a value given before the command stands, and a command's own option of the same name
    (``pull --platform``) wins."""
    target: Any = p.add_argument_group("global options (also accepted before the command)") if after_command else p
    for flags, options in _GLOBAL_OPTIONS:
        kwargs = options
        if after_command:
            # argparse drops a suppressed default from the help's fields: spell the real one out.
            shown = str(options["help"]).replace("%(default)s", str(options["default"]))
            kwargs = {**options, "default": argparse.SUPPRESS, "help": shown}
        with contextlib.suppress(argparse.ArgumentError):  # the command defines it itself
            target.add_argument(*flags, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the global options and of every command in :data:`COMMANDS`."""
    p = argparse.ArgumentParser(
        prog="imagevol",
        description="Simulate a Kubernetes node's image volumes (KEP-4639): pull, mount, sub paths, events, metrics.",
        epilog="Run 'imagevol COMMAND --help' for a command's options. Global options may come before or after "
        "the command. Exit status: 0 success, 1 failure, 2 usage error, 130 interrupted (docs/cli.md).",
    )
    p.add_argument("--version", action="version", version=f"imagevol {__version__}", help="print the version and exit")
    _add_global_options(p, after_command=False)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    for command in COMMANDS.values():
        sp = sub.add_parser(command.name, help=command.help, description=command.description or command.help)
        command.arguments(sp)
        _add_global_options(sp, after_command=True)
    return p


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run one command; return its exit status. Every failure is one line on standard error
    (kubectl's wording where it has one), never a traceback, an ``[Errno N]`` or a host path of
    the node's root; Ctrl-C ends any command quietly with status 130."""
    for stream in (sys.stdout, sys.stderr):
        # Text from Pod files may hold anything (a lone surrogate from a YAML escape): print it
        # escaped rather than fail half-way through the output.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    out = out or sys.stdout
    try:
        args = _parse(build_parser(), list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
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
    except Exception as exc:  # the last line of defence: one line, no traceback
        return _errors.report(exc, root)


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    # `exec POD [-c C] -- CMD ARGS`: everything after `--` belongs to the command, not to us.
    command: list[str] = []
    if "exec" in argv and "--" in argv[argv.index("exec") :]:
        cut = argv.index("--", argv.index("exec"))
        argv, command = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    if args.command == "exec":
        args.argv = command or [a for a in args.argv if a != "--"]
    return args


def _run(args: argparse.Namespace, out: TextIO) -> int:
    """Dispatch to the command's function."""
    command = COMMANDS.get(args.command)
    if command is None:
        raise CommandError(f"unknown command {args.command}", EXIT_USAGE)
    return command.run(args, out)
