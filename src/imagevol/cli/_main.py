"""The ``imagevol`` command: drive a simulated node and see what a Pod would see.

:func:`main` builds the parser (the global options here, each command's own arguments in its
module) and dispatches to one small function per command, grouped by noun: applying files
(:mod:`._apply`), Pods (:mod:`._pods`), ``exec`` and ``tree`` (:mod:`._exec`), images and fixtures
(:mod:`._images`), metrics (:mod:`._metrics`); output shapes are :mod:`._output`. Every failure
becomes one line on standard error (:mod:`._errors`).

Start-up is paid by every invocation, so nothing here imports a command module: the command list
is the light table :data:`COMMAND_TABLE`, and a command's module (its arguments, its description,
its function) is imported only when that command is parsed, that is when it runs or prints its own
``--help``. ``imagevol --help`` and ``--version`` import no command module at all; the command
modules in turn import the node and the rest of imagevol only inside the functions that need them.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from .. import __version__
from ..api.constants import DEFAULT_VERSION
from ..node import DEFAULT_FEATURE_GATES, default_root
from ..runtime import DEFAULT_PROFILE, PROFILE_NAMES
from ._common import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_USAGE, CommandError

if TYPE_CHECKING:
    from ._common import Command

#: Every command, in the order ``--help`` lists them: its name, the module of this package that
#: defines it (as a :class:`~._common.Command` named after it in capitals, ``-`` as ``_``) and
#: the one-line help of the command list, which must be the command's own (a test compares them).
COMMAND_TABLE: tuple[tuple[str, str, str], ...] = (
    ("apply", "_apply", "admit and run the Pods (and store the Secrets) of YAML or JSON files"),
    ("get", "_pods", "list Pods, images or events (tables, or -o json|yaml|wide|name)"),
    ("describe", "_pods", "show Pods as kubectl describe would, image volumes included"),
    ("delete", "_pods", "delete Pods (containers stopped, mounts released) or Secrets, by name, --all or -f"),
    ("logs", "_pods", "print a container's logs (empty for a simulated container)"),
    ("exec", "_exec", "run cat/ls/stat/readlink in a container's view of its mounts (or, with --real, any command)"),
    ("tree", "_exec", "draw what a container sees under its image-volume mounts"),
    ("sync", "_pods", "run one kubelet pass over every Pod (retries, backoff)"),
    ("metrics", "_metrics", "print the kubelet metrics (Prometheus text format)"),
    ("serve-metrics", "_metrics", "serve /metrics for Prometheus (127.0.0.1 by default; OpenMetrics when asked)"),
    ("gc", "_images", "image garbage collection (never removes an image in use)"),
    ("rmi", "_images", "remove an image (refused while a container mounts it)"),
    ("pull", "_images", "pull an image or artifact into the node's content store; print its digest"),
    ("fsck", "_images", "verify every blob of the content store; report corrupt and orphaned ones"),
    ("demo", "_images", "write the quick start's files: the demo images, their registries.conf and the Pod"),
    ("fixtures", "_images", "write the project's deterministic OCI fixtures to a directory"),
)  # fmt: skip

_MODULES = {name: module for name, module, _ in COMMAND_TABLE}


def command(name: str) -> Command:
    """The command ``name`` of :data:`COMMAND_TABLE`, importing its module (KeyError if unknown)."""
    module = importlib.import_module(f"{__package__}.{_MODULES[name]}")
    found: Command = getattr(module, name.upper().replace("-", "_"))
    return found


def all_commands() -> dict[str, Command]:
    """Every command by name, in the order ``--help`` lists them (imports every command module)."""
    return {name: command(name) for name, _, _ in COMMAND_TABLE}


def __getattr__(name: str) -> Any:
    # ``COMMANDS``, the dispatch table this module used to hold, built when asked for.
    if name == "COMMANDS":
        return all_commands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        ("--run-containers",),
        {"action": "store_true", "default": None,
         "help": "run the Pods' containers for real with runc (as root; also IMAGEVOL_RUN_CONTAINERS=1); "
                 "the default simulates them"},
    ),
    (
        ("--lazy",),
        {"choices": ("off", "toc", "toc+complete"), "default": "off",
         "help": "lazy sub paths: build only what a mount's subPath needs, fetching only its bytes from layers "
                 "with a table of contents (toc); then fetch and verify the rest on later syncs (toc+complete) "
                 "(default: %(default)s)"},
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


class _CommandParser:
    """Stands in for a command's parser until the command is parsed, when the real one is built
    with the arguments and description of the command's module: only the module of the command
    that runs is imported, and only its parser is built (each ``ArgumentParser`` costs a dozen
    message-catalog lookups). argparse asks a command's parser for nothing but to parse."""

    def __init__(self, *, command_name: str, **kwargs: Any) -> None:
        self._command_name = command_name
        self._kwargs = kwargs
        self._built: argparse.ArgumentParser | None = None

    def parser(self) -> argparse.ArgumentParser:
        """The command's parser, built on first use."""
        if self._built is None:
            found = command(self._command_name)
            self._built = argparse.ArgumentParser(description=found.description or found.help, **self._kwargs)
            found.arguments(self._built)
            _add_global_options(self._built, after_command=True)
        return self._built

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[Any, list[str]]:
        """What argparse calls when the command is on the command line."""
        return self.parser().parse_known_args(args, namespace)

    def format_help(self) -> str:
        """The command's ``--help``."""
        return self.parser().format_help()


def build_parser() -> argparse.ArgumentParser:
    """The parser of the global options and of every command in :data:`COMMAND_TABLE` (a command's
    own arguments are added when it is parsed)."""
    p = argparse.ArgumentParser(
        prog="imagevol",
        description="Simulate a Kubernetes node's image volumes (KEP-4639): pull, mount, sub paths, events, metrics.",
        epilog="Run 'imagevol COMMAND --help' for a command's options. Global options may come before or after "
        "the command. Exit status: 0 success, 1 failure, 2 usage error, 130 interrupted (docs/cli.md).",
    )
    p.add_argument("--version", action="version", version=f"imagevol {__version__}", help="print the version and exit")
    _add_global_options(p, after_command=False)
    # argparse calls parser_class for each command and asks the result only to parse.
    stand_in: Any = _CommandParser
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands", parser_class=stand_in)
    for name, _, help_text in COMMAND_TABLE:
        sub.add_parser(name, help=help_text, command_name=name)
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
        from ._errors import report

        return report(exc, root)


def run() -> NoReturn:
    """The ``imagevol`` command: :func:`main`, then exit with its status.

    When the command left no thread running that the interpreter would wait for, the process ends
    as soon as the exit handlers have run and the output is flushed: tearing down every imported
    module would add about 40 ms to each call, and nothing of the command is left to finish (its
    files are closed and renamed into place by then). A daemon thread (the registry client's
    watchdog, which a pull from a registry starts) is no reason to wait: the interpreter stops it
    at exit either way. A thread still running that is not a daemon gets the interpreter's own
    exit, which waits for it."""
    code = main()
    threading = sys.modules.get("threading")  # not imported: no thread was started
    if threading is not None and any(
        not t.daemon for t in threading.enumerate() if t is not threading.current_thread()
    ):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader that went away, a closed stream
            stream.flush()
    os._exit(code)


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
    if args.command not in _MODULES:
        raise CommandError(f"unknown command {args.command}", EXIT_USAGE)
    return command(args.command).run(args, out)
