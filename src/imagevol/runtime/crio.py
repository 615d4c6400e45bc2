"""The CRI-O profile: images through pathrs' ``OpenInRoot`` (links re-rooted, files allowed), and
OCI artifacts laid out per file with a path-prefix sub-path filter."""

from __future__ import annotations

import os

import attrs

from .._text import goquote
from ..cri import Mount, MountStatus
from ..errors import ImageVolumeMountFailedError, SubPathError
from ..oci import Manifest
from ..trees import subpath as sp
from ..trees.artifacts import artifact_file_name, is_tar_layer
from .base import Runtime, _digest12


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
        prefix stripped, which is the prefix directory of the laid-out tree."""
        sub = base.sub_path
        if sub in ("", "."):
            return attrs.evolve(base, inode=os.fstat(root_fd).st_ino)
        assert mount.image is not None
        not_found = ImageVolumeMountFailedError(
            f"{ImageVolumeMountFailedError.sentinel}: sub path {goquote(sub)} does not exist in OCI "
            f"artifact volume {goquote(mount.image.image)}"
        )
        prefix = go_clean(sub) + "/"
        names = [artifact_file_name(layer) for layer in manifest.layers if not is_tar_layer(layer.media_type)]
        matched = any(name.startswith(prefix) for name in names)
        tar_layers = any(is_tar_layer(layer.media_type) for layer in manifest.layers)
        if not matched and not tar_layers:
            raise not_found
        try:
            resolved = sp.resolve(root_fd, prefix.rstrip("/"), self.policy, self.backend)
        except SubPathError:
            raise not_found from None
        try:
            # A tar-layer artifact is laid out by extraction (artifacts.py): there the prefix must
            # name a directory holding at least one regular file.
            if not resolved.is_dir or (not matched and not _holds_a_file(resolved.fd)):
                raise not_found
            real_path = resolved.relative_path(root_fd)
        finally:
            resolved.close()
        return attrs.evolve(base, real_path=real_path, is_dir=True, inode=resolved.ino)


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


def _holds_a_file(dir_fd: int) -> bool:
    """Whether a directory has a regular file somewhere below it; links are never followed and the
    search stops at the first file."""
    pending = [os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)]
    try:
        while pending:
            fd = pending.pop()
            try:
                with os.scandir(fd) as it:
                    for entry in it:
                        if entry.is_file(follow_symlinks=False):
                            return True
                        if entry.is_dir(follow_symlinks=False):
                            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                            pending.append(os.open(entry.name, flags, dir_fd=fd))
            finally:
                os.close(fd)
        return False
    finally:
        for fd in pending:
            os.close(fd)
