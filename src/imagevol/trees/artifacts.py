"""Laying out OCI artifacts as CRI-O mounts them (R9.10): one file per layer blob.

A manifest is an *artifact* unless it is an image by R9.1 (:attr:`imagevol.oci.Manifest.is_image`).
CRI-O bind-mounts every layer blob of an artifact, read-only, as the file its annotation names,
whatever the blob's media type: a layer typed ``application/vnd.oci.image.layer.v1.tar`` (what
``oras push`` of a directory makes) is mounted as the tar file itself, never extracted. So here:

* each layer, in manifest order, becomes one regular file named by its
  ``org.opencontainers.image.title`` annotation, else ``org.cncf.model.filepath``
  (:func:`artifact_file_name`), holding the blob's bytes;
* a layer with neither annotation is skipped, with a warning (CRI-O logs "Unable to find name for
  artifact layer which makes it not mountable");
* a name may contain ``/``: the directories are created (0755), as CRI-O's secure join of the mount
  path and the name creates mount points below the volume's mount path. The name is validated like
  a tar member name (:func:`imagevol.trees.layers.clean_name`) and every component is opened from
  the tree's root fd without following links, so no title can climb out of the tree or through a
  link: a ``..`` element is refused (CRI-O's secure join clamps it instead; imagevol refuses the
  artifact, ``docs/security.md``), a leading ``/`` is dropped as the secure join does;
* a later layer with the same name replaces the earlier file (the later bind mount hides the
  earlier one);
* the file's mode is 0644, never executable: CRI-O's artifact store writes each blob through
  containers/image's OCI-layout destination, which creates the blob file 0600 and makes it 0644,
  and binds that file as it is, so running a mounted artifact file fails (CRI-O's
  ``oci_artifacts.bats`` "should return error when running executable"). Read-only is the bind
  mount's job, not the file's.

The blob is streamed to the file (never held in memory) and hashed on the way by the caller's
verifying reader.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO

from ..errors import LayerError
from ..oci import ANNOTATION_MODEL_FILEPATH, ANNOTATION_TITLE, Descriptor, Manifest
from .layers import ApplyOptions, BuildState, Tree, clean_name, write_all

_CHUNK = 1024 * 1024
#: The mode of every artifact file (containers/image's OCI-layout blob files).
ARTIFACT_FILE_MODE = 0o644
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def artifact_file_name(layer: Descriptor) -> str:
    """CRI-O's ``artifactName``: the layer's title annotation, else its model file path, else
    empty (the layer is not mountable)."""
    return layer.annotations.get(ANNOTATION_TITLE) or layer.annotations.get(ANNOTATION_MODEL_FILEPATH, "")


def lay_out_artifact(
    root_fd: int,
    manifest: Manifest,
    open_blob: Callable[[Descriptor], IO[bytes]],
    options: ApplyOptions | None = None,
    state: BuildState | None = None,
) -> list[str]:
    """Write the artifact's files below ``root_fd``; return warnings for skipped layers.

    ``state`` is accepted for symmetry with the layer applier (a snapshot build passes one); an
    artifact defers no directory mode, every directory it makes is 0755."""
    options = options or ApplyOptions()
    del state
    warnings: list[str] = []
    for layer in manifest.layers:
        name = artifact_file_name(layer)
        if not name:
            warnings.append(
                f"layer {layer.digest} has no {ANNOTATION_TITLE} or {ANNOTATION_MODEL_FILEPATH} annotation: "
                "skipped, as it cannot be mounted"
            )
            continue
        with open_blob(layer) as blob:
            _write_file(root_fd, name, blob, options)
    return warnings


def _write_file(root_fd: int, name: str, blob: IO[bytes], options: ApplyOptions) -> None:
    parts = clean_name(name)
    if not parts:
        raise LayerError("invalid_name", f"artifact file name {name!r} names the root")
    tree = Tree(root_fd, max_depth=options.limits.max_depth)
    try:
        # Parents are created or opened one component at a time from the root fd, never through a
        # link; a component that exists as a file is ENOTDIR (LayerError "notdir").
        found = tree.parent(parts[:-1], create=True)
        assert found is not None
        dir_fd, _ = found
        tree.remove(dir_fd, parts[-1])  # whatever is there, never followed
        fd = os.open(parts[-1], _CREATE, 0o600, dir_fd=dir_fd)
        try:
            while chunk := blob.read(_CHUNK):
                write_all(fd, chunk)
            os.fchmod(fd, ARTIFACT_FILE_MODE)
        finally:
            os.close(fd)
    except OSError as exc:
        raise LayerError("io", f"artifact file {name!r}: {os.strerror(exc.errno or 0)}") from None
    finally:
        tree.close()
