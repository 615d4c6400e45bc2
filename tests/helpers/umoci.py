"""Applying a hostile layer stack (:func:`imagevol.testing.strategies.hostile_layer_stacks`) with
imagevol and with ``umoci raw unpack``, and folding the differences docs/security.md lists as
deliberate."""

from __future__ import annotations

import io
import os
import subprocess
import time

import attrs

from imagevol.errors import LayerError
from imagevol.testing.images import Layer, LayoutBuilder
from imagevol.testing.listing import Item, listing
from imagevol.testing.strategies import LayerStack
from imagevol.trees.layers import ApplyOptions, apply_layers


@attrs.frozen
class Outcome:
    error: str  # "" on success, else our LayerError kind or umoci's message
    items: dict[str, Item]


def run_imagevol(stack: LayerStack, root: str, options: ApplyOptions | None = None) -> Outcome:
    os.makedirs(root)
    try:
        apply_layers(root, [io.BytesIO(b) for b in stack.blobs()], options or ApplyOptions())
    except LayerError as exc:
        return Outcome(exc.kind, {})
    return Outcome("", listing(root))


def run_umoci(umoci: str, stack: LayerStack, workdir: str) -> Outcome:
    """``umoci raw unpack`` of the stack (as root it keeps owners; umask 022 as a shell has)."""
    layout = os.path.join(workdir, "layout")
    b = LayoutBuilder(layout)
    b.add_image(
        [Layer(entries, "gzip" if gz else "none") for entries, gz in zip(stack.layers, stack.gzip, strict=True)],
        tag="t",
    )
    b.save()
    rootfs = os.path.join(workdir, "rootfs")
    old = os.umask(0o022)
    try:
        proc = subprocess.run(
            [umoci, "--log", "error", "raw", "unpack", "--image", f"{layout}:t", rootfs],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.umask(old)
    if proc.returncode != 0:
        return Outcome(proc.stderr.strip() or f"exit {proc.returncode}", {})
    return Outcome("", listing(rootfs))


def now_ns() -> int:
    return time.time_ns() - 2_000_000_000
