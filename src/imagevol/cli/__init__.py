"""The ``imagevol`` command line (``imagevol = "imagevol.cli:run"``; :func:`main` runs one command
and returns its status, for tests and callers that stay in their process).

:mod:`~imagevol.cli._main` builds the parser from a light table of the commands and dispatches to
one small function per command; the command modules (``_apply``, ``_pods``, ``_exec``, ``_images``,
``_metrics``) group them by noun, so commands and flags can be added side by side, and ``_output``
renders Pods and events the way kubectl does. A command's module is imported only when that command
runs, so ``imagevol --help`` stays cheap. The CLI sits on top of every other package (it builds a
node, and ``fixtures`` uses the test kit's image builder) and nothing imports it.

``COMMANDS`` (every command by name) is built on first use: it imports every command module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._main import build_parser, main, run

if TYPE_CHECKING:
    from ._common import Command

    COMMANDS: dict[str, Command]


def __getattr__(name: str) -> Any:
    if name == "COMMANDS":
        from ._main import all_commands

        value = globals()["COMMANDS"] = all_commands()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["COMMANDS", "build_parser", "main", "run"]
