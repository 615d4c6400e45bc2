"""Laying out OCI artifacts as CRI-O does (R9.10).

A manifest is an *artifact* unless it is an image by R9.1 (:attr:`imagevol.oci.Manifest.is_image`).
Each of its layers is handled on its own, in manifest order:

* a layer whose media type names a tar (``.tar``, ``.tar+gzip``, ``.tar+zstd``; the compression is
  sniffed) is applied like an image layer, with every rule of :mod:`imagevol.trees.layers`;
* any other layer becomes one regular file named by its ``org.opencontainers.image.title``
  annotation (else ``org.cncf.model.filepath``). The name may contain ``/`` (directories are
  created, 0755) but is validated like a tar member name and resolved in root, so no title can climb
  out of the tree; ``..`` is refused (CRI-O clamps it instead). The file's mode is 0644: exec bits
  are always stripped (CRI-O's ``mode &^ 0111``), and write bits too when the tree will be published
  read-only. A later layer with the same name replaces the earlier file.
* a layer with neither annotation is skipped, with a warning.

The blob is streamed to the file (never held in memory) and hashed on the way by the caller's
verifying reader.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO

from ..errors import LayerError
from ..oci import ANNOTATION_MODEL_FILEPATH, ANNOTATION_TITLE, Descriptor, Manifest
from .layers import ApplyOptions, BuildState, Tree, apply_layer_fd, clean_name, write_all

_CHUNK = 1024 * 1024
ARTIFACT_FILE_MODE = 0o644
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def artifact_file_name(layer: Descriptor) -> str:
    """The file name an artifact layer gets in its tree (its title annotation, checked)."""
    return layer.annotations.get(ANNOTATION_TITLE) or layer.annotations.get(ANNOTATION_MODEL_FILEPATH, "")


def is_tar_layer(media_type: str) -> bool:
    """CRI-O extracts a layer whose media type names a tar (``.tar``, ``.tar+gzip``, ``.tar+zstd``)."""
    return ".tar" in media_type


def lay_out_artifact(
    root_fd: int,
    manifest: Manifest,
    open_blob: Callable[[Descriptor], IO[bytes]],
    options: ApplyOptions | None = None,
    state: BuildState | None = None,
) -> list[str]:
    """Write the artifact's files below ``root_fd``; return warnings for skipped layers."""
    options = options or ApplyOptions()
    own = state is None
    state = state or BuildState()
    mode = ARTIFACT_FILE_MODE & ~0o111 & ~(0o222 if options.strip_write_bits else 0)
    warnings: list[str] = []
    for layer in manifest.layers:
        if is_tar_layer(layer.media_type):
            with open_blob(layer) as blob:
                stats = apply_layer_fd(root_fd, blob, options, state)
            if stats.skipped_devices:
                warnings.append(f"layer {layer.digest}: skipped {len(stats.skipped_devices)} device node(s)")
            continue
        name = artifact_file_name(layer)
        if not name:
            warnings.append(f"layer {layer.digest} has no {ANNOTATION_TITLE} annotation: skipped")
            continue
        with open_blob(layer) as blob:
            _write_file(root_fd, name, blob, mode, options)
    if own:
        state.finish(root_fd)
    return warnings


def _write_file(root_fd: int, name: str, blob: IO[bytes], mode: int, options: ApplyOptions) -> None:
    parts = clean_name(name)
    if not parts:
        raise LayerError("invalid_name", f"artifact file name {name!r} names the root")
    tree = Tree(root_fd, max_depth=options.limits.max_depth)
    try:
        found = tree.parent(parts[:-1], create=True)
        assert found is not None
        dir_fd, _ = found
        tree.remove(dir_fd, parts[-1])  # whatever is there, never followed
        fd = os.open(parts[-1], _CREATE, 0o600, dir_fd=dir_fd)
        try:
            while chunk := blob.read(_CHUNK):
                write_all(fd, chunk)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    except OSError as exc:
        raise LayerError("io", f"artifact file {name!r}: {os.strerror(exc.errno or 0)}") from None
    finally:
        tree.close()
