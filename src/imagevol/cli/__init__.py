"""The ``imagevol`` command line (``imagevol = "imagevol.cli:main"``).

:mod:`~imagevol.cli._main` builds the parser and dispatches through a table to one small function
per command; the command modules (``_pods``, ``_exec``, ``_images``, ``_metrics``) group them by
noun, so commands and flags can be added side by side, and ``_output`` renders Pods and events the
way kubectl does. The CLI sits on top of every other package (it builds a node, and ``fixtures``
uses the test kit's image builder) and nothing imports it.
"""

from __future__ import annotations

from ._main import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
