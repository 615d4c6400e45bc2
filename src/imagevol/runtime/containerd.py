"""The containerd profiles: containerd 2.2's CRI plugin, and a runtime without ``image_sub_path``
support (containerd 2.1, the ``legacy`` profile)."""

from __future__ import annotations

from .._text import goquote
from ..content.image_db import ImageRecord
from ..cri import Mount, MountStatus
from ..errors import ImageVolumeMountFailedError, SubPathError
from ..trees import subpath as sp
from .base import Runtime


class ContainerdRuntime(Runtime):
    """containerd 2.2's CRI plugin (R9.15 to R9.18): ``os.OpenInRoot`` semantics, directories only.

    Upstream follows at most 8 symlinks (Go's ``os.Root``); the simulation keeps the project-wide
    budget of 40 so that one rule set (``src/imagevol/testing/data/subpath.json``) holds for every profile."""

    name = "containerd"
    policy = sp.Policy.BENEATH

    def check_mount(self, mount: Mount) -> None:
        """containerd refuses what its CRI plugin refuses before it resolves anything."""
        # R9.16: the kubelet always sends these; the checks guard the CRI contract.
        if mount.image is None:
            return
        if mount.host_path:
            raise ImageVolumeMountFailedError(f"hostpath must be empty while mount image: {mount.proto_text()}")
        if not mount.readonly:
            raise ImageVolumeMountFailedError(f"readonly must be true while mount image: {mount.proto_text()}")
        if not mount.image.image:
            raise ImageVolumeMountFailedError(f"image not specified in: {mount.image.proto_text()}")

    def sub_path_message(self, exc: SubPathError, base: MountStatus, mount: Mount) -> str:
        """containerd's wording of a sub-path failure."""
        # Upstream wraps as `failed to mount image volume: ImageVolumeMountFailed: failed to ensure
        # image subpath %q in %q: <os.OpenInRoot error>`; the outer "failed to mount image volume: "
        # is dropped so that the event starts with the CRI sentinel (R5.5), and the host mount point
        # is replaced by a node-independent name.
        return (
            f"failed to ensure image subpath {goquote(base.sub_path)} in {goquote(self.where(base))}: "
            f"openat {base.sub_path}: {_go_root_error(exc, base.sub_path)}"
        )

    def check_resolved(self, resolved: sp.Resolved, base: MountStatus, mount: Mount) -> None:
        """containerd's checks of a resolved sub path (its kind, what it may be)."""
        if not resolved.is_dir:
            where = goquote(self.where(base))
            raise ImageVolumeMountFailedError(
                f"failed to ensure image subpath {goquote(base.sub_path)} in {where}: "
                f"only directory subpath is supported, subpath: {goquote(base.sub_path)}, mountpoint: {where} "
            )

    def artifact_message(self, record: ImageRecord) -> str:
        """containerd's wording for an artifact it does not mount."""
        # An artifact has no rootfs diff IDs matching its layers (R9.18; exact upstream text for a
        # non-image config is unverified, Q8 in docs/requirements.md).
        return (
            f"failed to get diff IDs for image volume {goquote(record.name)}: "
            "mismatched image rootfs and manifest layers"
        )


class LegacyRuntime(ContainerdRuntime):
    """A runtime without ``image_sub_path`` support (containerd 2.1, R11.11): the sub path is
    silently ignored and the whole image is mounted."""

    name = "legacy"
    honours_sub_path = False


def _go_root_error(exc: SubPathError, sub_path: str) -> str:
    """What Go's ``os.OpenInRoot`` says: escapes (and the absolute or ``..`` names it treats as
    escapes) are ``path escapes from parent``; a NUL byte is an invalid argument."""
    if exc.kind == "invalid":
        return "invalid argument" if "\x00" in sub_path else sp.MESSAGES["escape"]
    return sp.MESSAGES.get(exc.kind) or str(exc).rpartition(": ")[2]
