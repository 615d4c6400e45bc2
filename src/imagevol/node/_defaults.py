"""Defaults of a node's configuration that the CLI needs before it builds a node (cheap to import)."""

from __future__ import annotations

import os

#: The CLI's default gates: a 1.33 node with image volumes enabled, as in the 1.33 announcement
#: (upstream's 1.33 default is off, R0.1; pass ``--feature-gates ImageVolume=false`` to see R2.8).
DEFAULT_FEATURE_GATES = "ImageVolume=true"


def default_root() -> str:
    """``$IMAGEVOL_ROOT``, else ``$XDG_DATA_HOME/imagevol``, else ``~/.local/share/imagevol``."""
    if os.environ.get("IMAGEVOL_ROOT"):
        return os.environ["IMAGEVOL_ROOT"]
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "imagevol")
