"""The CRI-O profile: images through pathrs' ``OpenInRoot`` (links re-rooted, files allowed), and
OCI artifacts laid out per file with a path-prefix sub-path filter."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import attrs

from .._text import goquote
from ..cri import Mount, MountStatus
from ..errors import ImageVolumeMountFailedError, SubPathError
from ..oci import Manifest
from ..trees import subpath as sp
from .base import Runtime, _digest12

if TYPE_CHECKING:
    from .oci_spec import VolumeMount


class CrioRuntime(Runtime):
    """CRI-O (R9.4 to R9.13): images through pathrs' ``OpenInRoot`` (links re-rooted, files
    allowed), artifacts per file with a path-prefix sub-path filter."""

    name = "crio"
    policy = sp.Policy.IN_ROOT
    supports_artifacts = True
    reports_registry_unavailable = True

    def where(self, base: MountStatus) -> str:
        """How CRI-O names the mounted image in messages."""
        # Upstream prints the c/storage mount point of the image, `<graphroot>/overlay/<id>/merged`.
        return f"overlay/{_digest12(base)}/merged"

    def not_local_message(self, ref: str) -> str:
        """CRI-O's wording for an image that is not present locally."""
        return f"image {goquote(ref)} does not exist locally"

    def volume_mounts(
        self, mount: MountStatus, source: str, propagation: str, files: tuple[str, ...], empty: str
    ) -> list[VolumeMount]:
        """CRI-O's mounts: an image directory as an overlay with lower dirs only (the staged source
        over an empty directory: read-only by construction, no upper dir); a file as a read-only
        bind; an artifact as one read-only bind per blob file."""
        from .oci_spec import PROPAGATION_OPTION, VolumeMount

        if mount.artifact:
            flags = ("bind", "ro", "nosuid", "nodev", "rprivate")
            return [VolumeMount(f"{mount.container_path.rstrip('/')}/{f}", f"{source}/{f}", flags) for f in files]
        if not mount.is_dir:
            prop = PROPAGATION_OPTION.get(propagation, "rprivate")
            return [VolumeMount(mount.container_path, source, ("bind", "ro", "nosuid", "nodev", prop))]
        options = ("ro", "nosuid", "nodev", f"lowerdir={_overlay_path(source)}:{_overlay_path(empty)}")
        return [VolumeMount(mount.container_path, "overlay", options, type="overlay")]

    def sub_path_message(self, exc: SubPathError, base: MountStatus, mount: Mount) -> str:
        """CRI-O's wording of a sub-path failure."""
        assert mount.image is not None
        if exc.kind == "notfound":
            # container_create_linux.go maps every ENOENT to this user-facing message.
            return f"sub path {goquote(base.sub_path)} does not exist in image volume {goquote(mount.image.image)}"
        # pathrs-lite reports the raw errno of openat2 on "<mount point>/<sub path>".
        return f"safe mount sub path: openat2 {self.where(base)}/{base.sub_path}: {_errno_text(exc)}"

    def mount_artifact(self, base: MountStatus, root_fd: int, manifest: Manifest, mount: Mount) -> MountStatus:
        """R9.11 (``FilterMountPathsBySubPath``): empty or ``.`` mounts every file; otherwise
        ``Clean(sub) + "/"`` must prefix at least one file name, and matching files appear with the
        prefix stripped. The tree holds exactly one file per named blob (artifacts.py), so the
        matching files are the contents of the prefix directory and it is that directory which is
        mounted."""
        sub = base.sub_path
        if sub in ("", "."):
            return attrs.evolve(base, inode=os.fstat(root_fd).st_ino)
        assert mount.image is not None
        not_found = ImageVolumeMountFailedError(
            f"{ImageVolumeMountFailedError.sentinel}: sub path {goquote(sub)} does not exist in OCI "
            f"artifact volume {goquote(mount.image.image)}"
        )
        from ..trees.artifacts import artifact_file_name

        prefix = go_clean(sub) + "/"
        # The filter works on the names as the annotations spell them, as CRI-O's does.
        if not any(artifact_file_name(layer).startswith(prefix) for layer in manifest.layers):
            raise not_found
        try:
            resolved = sp.resolve(root_fd, prefix.rstrip("/"), self.policy, self.backend)
        except SubPathError:
            raise not_found from None
        try:
            if not resolved.is_dir:  # pragma: no cover - a name with the prefix made it a directory
                raise not_found
            real_path = resolved.relative_path(root_fd)
        finally:
            resolved.close()
        return attrs.evolve(base, real_path=real_path, is_dir=True, inode=resolved.ino)


def _overlay_path(path: str) -> str:
    """A path in an overlayfs option: ``\\``, ``:`` and ``,`` escaped with a backslash (a node
    root whose path has them must not split the option)."""
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def go_clean(path: str) -> str:
    """Go's ``path.Clean``: lexical, ``..`` clamped at a leading ``/``, ``.`` for nothing."""
    rooted = path.startswith("/")
    out: list[str] = []
    for element in path.split("/"):
        if element in ("", "."):
            continue
        if element == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(element)
    cleaned = "/".join(out)
    return ("/" + cleaned) if rooted else (cleaned or ".")


#: Go's strerror for the errno behind each failure kind (what pathrs-lite reports verbatim).
_ERRNO_TEXT = {
    "escape": "invalid cross-device link",
    "loop": "too many levels of symbolic links",
    "notdir": "not a directory",
    "toolong": "file name too long",
    "denied": "permission denied",
    "invalid": "invalid argument",
    "notfound": "no such file or directory",
}


def _errno_text(exc: SubPathError) -> str:
    return _ERRNO_TEXT.get(exc.kind) or str(exc).rpartition(": ")[2]
