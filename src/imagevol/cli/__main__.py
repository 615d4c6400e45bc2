"""``python -m imagevol.cli``: the ``imagevol`` command."""

from __future__ import annotations

from ._main import run

run()
