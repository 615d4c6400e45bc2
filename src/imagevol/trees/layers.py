"""Applying OCI layer changesets to a directory, safely and fast: the public entry.

A layer blob is decompressed (:mod:`imagevol.trees._decompress`, sniffed, bounded, hashed for its diff ID),
read as tar (:mod:`imagevol.trees._tarstream`) and applied member by member by the changeset rules
(:mod:`imagevol.trees._layer_changeset`) to a tree addressed only through file descriptors
(:mod:`imagevol.trees._layer_tree`, over the in-root walker :mod:`imagevol.trees._inroot`); metadata is restored
by :mod:`imagevol.trees._layer_metadata`. Why nothing can be written outside the root is explained next
to the code that guarantees it, in those modules: every parent is resolved in root from the root's
fd, the final component is never followed, and no host path string is ever built.

This module keeps the public names: :func:`apply_layers`, :func:`apply_layer_fd`,
:class:`ApplyOptions`, :class:`LayerLimits`, :class:`LayerStats`, :class:`BuildState`,
:class:`LayerEntryError`, :func:`clean_name`, and the tree helpers other modules build on
(:class:`Tree`, :func:`rmtree`, :func:`lstat_at`, :func:`write_all`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from typing import IO

import attrs

from .._text import goquote
from ..errors import DiffIDMismatchError, LayerError
from ..lazy.rules import OPAQUE_WHITEOUT, WHITEOUT_PREFIX, clean_name
from ..oci import Digest
from . import _inroot
from ._decompress import MODES, ChunkPipe
from ._inroot import MAX_SYMLINK_FOLLOWS, NAME_MAX, PATH_MAX, lstat_at
from ._layer_changeset import ChangesetApplier, LayerEntryError, LayerStats
from ._layer_metadata import BuildState
from ._layer_primitives import write_all
from ._layer_tree import Tree
from ._remove_tree import rmtree
from ._tarstream import TarReader

__all__ = [
    "MAX_SYMLINK_FOLLOWS",
    "NAME_MAX",
    "OPAQUE_WHITEOUT",
    "PATH_MAX",
    "WHITEOUT_PREFIX",
    "ApplyOptions",
    "BuildState",
    "LayerEntryError",
    "LayerLimits",
    "LayerStats",
    "Tree",
    "apply_layer_fd",
    "apply_layers",
    "clean_name",
    "lstat_at",
    "rmtree",
    "write_all",
]


@attrs.frozen
class LayerLimits:
    """Bounds that stop decompression bombs and pathological archives."""

    max_entries: int = 2_000_000
    max_bytes: int = 64 * 1024**3  # uncompressed tar bytes, per layer
    max_depth: int = 512


@attrs.frozen
class ApplyOptions:
    """How layers are applied: ownership, limits, what to do with special files."""

    limits: LayerLimits = LayerLimits()
    #: Apply uid/gid from the headers (only possible, and only attempted, as root).
    preserve_owner: bool = attrs.field(factory=lambda: os.geteuid() == 0)
    #: Create files and FIFOs without write bits (a tree that will be published read-only).
    strip_write_bits: bool = False
    #: Where the blob is decompressed and hashed: ``auto`` (a forked child process beside the
    #: applier when the process may use a second CPU and runs a single thread, and the layer is
    #: larger than 1 MiB; else inline), ``inline``, ``thread`` or ``process``. A child runs on
    #: the second CPU while the applier works, as GNU tar's ``gzip -d`` does; a thread barely overlaps
    #: with the applier, because it needs the GIL back after each C call (docs/benchmarks.md).
    decompress: str = attrs.field(default="auto", validator=attrs.validators.in_(MODES))


# --- public entry points ------------------------------------------------------------------------


def apply_layers(
    root: str,
    layers: Iterable[IO[bytes]],
    options: ApplyOptions = ApplyOptions(),
    diff_ids: Sequence[Digest] | None = None,
) -> list[LayerStats]:
    """Apply layer blobs (compressed or not, sniffed) bottom first to the directory ``root``.
    With ``diff_ids`` (one per layer, as an image config lists them), each layer's uncompressed
    stream must hash to its diff ID, else :class:`DiffIDMismatchError` after that layer.

    On error the tree is left half-applied: callers build in a staging directory and discard it
    (see :mod:`imagevol.trees.snapshots`); nothing outside ``root`` is ever touched."""
    blobs = list(layers)
    if diff_ids is not None and len(diff_ids) != len(blobs):
        raise DiffIDMismatchError(f"number of layers and diffIDs don't match: {len(blobs)} != {len(diff_ids)}")
    root_fd = os.open(root, _inroot.READ_DIR)
    try:
        state = BuildState()
        stats = []
        for i, blob in enumerate(blobs):
            want = diff_ids[i] if diff_ids is not None else None
            one = apply_layer_fd(root_fd, blob, options, state, diff_algorithm=want.algorithm if want else None)
            if want is not None and one.diff_id != want:
                raise DiffIDMismatchError(f"wrong diff id calculated on extraction {goquote(str(one.diff_id))}")
            stats.append(one)
        state.finish(root_fd)
        return stats
    finally:
        os.close(root_fd)


def apply_layer_fd(
    root_fd: int,
    blob: IO[bytes],
    options: ApplyOptions = ApplyOptions(),
    state: BuildState | None = None,
    *,
    diff_algorithm: str | None = None,
) -> LayerStats:
    """Apply one layer blob below ``root_fd``. Pass one ``state`` to every layer of a build and call
    its ``finish`` after the last (without one, the layer is finished on its own). With
    ``diff_algorithm`` (``sha256``...), ``stats.diff_id`` is the digest of the whole uncompressed
    stream, end-of-archive padding and anything after it included, as containerd computes it."""
    if state is None:
        own = BuildState()
        stats = apply_layer_fd(root_fd, blob, options, own, diff_algorithm=diff_algorithm)
        own.finish(root_fd)
        return stats
    stats = LayerStats()
    limits = options.limits
    tree = Tree(root_fd, max_depth=limits.max_depth)
    hasher = hashlib.new(diff_algorithm) if diff_algorithm else None
    pipe: ChunkPipe | None = None
    applier: ChangesetApplier | None = None
    try:
        pipe = ChunkPipe(blob, limits.max_bytes, mode=options.decompress, hasher=hasher)
        reader = TarReader(pipe.read)
        applier = ChangesetApplier(
            tree,
            stats,
            state,
            preserve_owner=options.preserve_owner,
            strip_write_bits=options.strip_write_bits,
            max_entries=limits.max_entries,
            max_depth=limits.max_depth,
        )
        applier.run(reader)
        reader.drain()  # the rest of the blob is read too: it is hashed and gzip-checked to its end
    except OSError as exc:
        raise _os_error(exc, applier.current if applier else "") from None
    finally:
        if pipe is not None:
            pipe.close()
        tree.close()
    if diff_algorithm is not None:
        # The pipe has returned its end: the producer hashed every chunk before handing it over.
        stats.diff_id = Digest(diff_algorithm, pipe.hexdigest())
    if stats.skipped_devices:
        import logging  # here: an unpack that has nothing to report does not import logging

        logging.getLogger(__name__).info(
            "skipped %d device node(s), e.g. %r", len(stats.skipped_devices), stats.skipped_devices[0]
        )
    return stats


#: The walker's kinds that are layer kinds too; any other failure of the OS is ``io``.
_OS_KINDS = ("notdir", "loop", "toolong", "notfound")


def _os_error(exc: OSError, member: str) -> LayerError:
    kind = _inroot.errno_kind(exc.errno)
    kind = kind if kind in _OS_KINDS else "io"
    if member:
        return LayerEntryError(kind, f"applying layer at {member!r}: {os.strerror(exc.errno or 0)}", member)
    return LayerError(kind, f"applying layer: {os.strerror(exc.errno or 0)}")
