"""Laying out OCI artifacts as CRI-O does (R9.10, oci-peers.md section 3).

Each layer blob becomes a file named by its ``org.opencontainers.image.title`` annotation (else
``org.cncf.model.filepath``); names may contain ``/`` (sub-directories are created) but are validated
like tar member names, so none can climb out. Exec bits are stripped. Layers whose media type is a tar
changeset are extracted instead. Layers without a name are skipped, and reported.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import IO

from .errors import LayerError
from .layers import ApplyOptions, Tree, apply_layer_fd, clean_name, write_all
from .oci import ANNOTATION_MODEL_FILEPATH, ANNOTATION_TITLE, Descriptor, Manifest

_CHUNK = 1024 * 1024
ARTIFACT_FILE_MODE = 0o644


def artifact_file_name(layer: Descriptor) -> str:
    return layer.annotations.get(ANNOTATION_TITLE) or layer.annotations.get(ANNOTATION_MODEL_FILEPATH, "")


def is_tar_layer(media_type: str) -> bool:
    """CRI-O extracts a layer whose media type names a tar (``.tar``, ``.tar+gzip``, ``.tar+zstd``)."""
    return ".tar" in media_type


def lay_out_artifact(
    root_fd: int,
    manifest: Manifest,
    open_blob: Callable[[Descriptor], IO[bytes]],
    options: ApplyOptions | None = None,
) -> list[str]:
    """Write the artifact's files below ``root_fd``; return warnings for skipped layers."""
    options = options or ApplyOptions()
    warnings: list[str] = []
    for layer in manifest.layers:
        if is_tar_layer(layer.media_type):
            with open_blob(layer) as blob:
                apply_layer_fd(root_fd, blob, options)
            continue
        name = artifact_file_name(layer)
        if not name:
            warnings.append(f"layer {layer.digest} has no {ANNOTATION_TITLE} annotation: skipped")
            continue
        parts = clean_name(name)
        if not parts:
            raise LayerError("invalid_name", f"artifact file name {name!r} names the root")
        tree = Tree(root_fd)
        try:
            found = tree.parent(parts[:-1], create=True)
            assert found is not None
            dir_fd, _ = found
            with contextlib.suppress(FileNotFoundError):
                tree.remove(dir_fd, parts[-1])
            fd = os.open(
                parts[-1],
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
            try:
                with open_blob(layer) as blob:
                    while chunk := blob.read(_CHUNK):
                        write_all(fd, chunk)
                os.fchmod(fd, ARTIFACT_FILE_MODE)
            finally:
                os.close(fd)
        finally:
            tree.close()
    return warnings
