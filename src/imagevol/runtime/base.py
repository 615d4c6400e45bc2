"""The runtime's CRI services over one node root: :class:`Runtime`, the base of every profile.

:class:`Runtime` implements both services (``ImageService``, ``RuntimeService``) over the node's
content store, image records and snapshots; its image records are turned into CRI ``Image`` values
at the boundary, and nothing else of it reaches the kubelet side.

The kubelet hands ``create_container`` a config whose image-volume mounts carry an ``ImageSpec`` and
an ``image_sub_path`` (R8.1). The runtime materialises the image once (a shared read-only snapshot),
resolves the sub path safely from the snapshot's root fd, and records the mount. The profiles
(:mod:`imagevol.runtime.containerd`, :mod:`imagevol.runtime.crio`) override the hooks at the end of
the class where the real runtimes differ (sections 9 and 11 of docs/requirements.md).

Every runtime-side failure is an :class:`ImageVolumeMountFailedError`, whose message starts with the
CRI sentinel (R5.5). Messages name sub paths and images, never host paths of the node.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
import uuid
from collections.abc import Iterable
from typing import ClassVar

import attrs

from .._text import goquote
from ..content.image_db import ImageRecord
from ..content.pull import ImagePuller
from ..cri import (
    ContainerConfig,
    ContainerStatus,
    FilesystemIdentifier,
    FilesystemUsage,
    Image,
    ImageFsInfo,
    Keyring,
    Mount,
    MountStatus,
    PullImageResult,
)
from ..errors import (
    BlobNotFoundError,
    ImageInUseError,
    ImageVolError,
    ImageVolumeMountFailedError,
    PullError,
    RegistryUnavailableError,
    SubPathError,
)
from ..oci import Digest, Manifest
from ..oci.reference import parse_normalized
from ..trees import subpath as sp
from ..trees.snapshots import Snapshot, SnapshotKey, Snapshots

#: The name the container status had before it moved to the CRI module.
ContainerRecord = ContainerStatus


class Runtime:
    """The runtime's image and container services over one node root. Subclasses are profiles."""

    name: ClassVar[str] = "base"
    #: Resolution policy for ``image_sub_path`` on images.
    policy: ClassVar[sp.Policy] = sp.Policy.BENEATH
    supports_artifacts: ClassVar[bool] = False
    reports_registry_unavailable: ClassVar[bool] = False
    honours_sub_path: ClassVar[bool] = True

    def __init__(
        self, state_dir: str, puller: ImagePuller, snapshots: Snapshots, backend: sp.Backend = sp.Backend.AUTO
    ) -> None:
        self.state_dir = state_dir
        self.puller = puller
        self.snapshots = snapshots
        self.backend = backend
        self._containers = os.path.join(state_dir, "containers")
        os.makedirs(self._containers, mode=0o700, exist_ok=True)

    @property
    def resolver(self) -> ImagePuller:
        """The old name of :attr:`puller`."""
        return self.puller

    # --- image service -------------------------------------------------------------------------

    def pull_image(self, reference: str, keyring: Keyring | None = None) -> PullImageResult:
        """``PullImage``. Only runtimes that report the CRI ``RegistryUnavailable`` sentinel keep it
        (CRI-O); containerd reports an unreachable registry as a plain pull failure, which the
        kubelet shows as ``ErrImagePull`` (R3.6)."""
        try:
            result = self.puller.pull(reference, keyring)
        except RegistryUnavailableError as exc:
            if self.reports_registry_unavailable:
                raise
            raise PullError(str(exc).removeprefix("RegistryUnavailable: ")) from None
        return PullImageResult(result.record.image_id, _cri_image(result.record), result.duration)

    def image_status(self, reference: str) -> Image | None:
        """``ImageStatus``: the image ``reference`` names, when every blob it needs is present."""
        record = self.puller.lookup(reference)
        return _cri_image(record) if record is not None else None

    def list_images(self) -> list[Image]:
        """``ListImages``: one :class:`~imagevol.cri.Image` per pulled reference."""
        return [_cri_image(r) for r in self.puller.image_db.all()]

    def images_in_use(self) -> set[str]:
        """Image IDs that some container mounts (what the image GC learns from ContainerStatus)."""
        return {m.image_id for c in self.list_containers() for m in c.mounts}

    def remove_image(self, reference: str) -> Image:
        """``RemoveImage``: refused while a container mounts the image (R7.3, as CRI-O does). The
        record goes; its tree goes too unless another image has the same layer chain (or a
        container of an image pulled over it still holds the tree). Blobs stay until
        :meth:`garbage_collect`."""
        record = self.puller.image_db.lookup(reference) or _latest(self.puller.image_db.by_id(reference))
        if record is None:
            raise ImageVolError(f"image {goquote(reference)} not found")
        users = [c for c in self.list_containers() if any(m.image_id == record.image_id for m in c.mounts)]
        if users:
            raise ImageInUseError(f"image used by {users[0].id[:13]}: image is in use by a container")
        self.puller.image_db.remove(record.name)
        self.prune_snapshots()
        return _cri_image(record)

    def image_fs_info(self) -> ImageFsInfo:
        """``ImageFsInfo``: one image filesystem, the snapshots directory (containerd reports its
        snapshotter's root), whose usage is every blob of the content store plus every file of the
        snapshots directory (trees, builds in progress, leases). Nothing is followed or opened
        outside the two directories."""
        blob_bytes, blobs = self.puller.store.usage()
        tree_bytes, entries = self.snapshots.usage()
        usage = FilesystemUsage(
            timestamp=time.time_ns(),
            fs_id=FilesystemIdentifier(self.snapshots.root),
            used_bytes=blob_bytes + tree_bytes,
            inodes_used=blobs + entries,
        )
        return ImageFsInfo((usage,))

    def garbage_collect(self) -> int:
        """The runtime's garbage collector (an imagevol extension of the CRI): every tree no image
        record names and no container holds, then every blob no image record reaches. Returns the
        number of blobs removed. Both steps hold the exclusive ``gc`` lock, which a pull holds
        shared until its record is written: the blobs of a pull in progress are never taken."""
        self.prune_snapshots()
        return len(self.puller.store.garbage_collect())

    def snapshot_key(self, record: ImageRecord) -> SnapshotKey | None:
        """The tree ``record`` mounts (None when its manifest or config is unreadable: it could
        not be mounted anyway)."""
        try:
            return self.snapshots.plan(record.manifest_digest, self.puller.manifest_of(record)).key
        except ImageVolError:
            return None

    def prune_snapshots(self) -> list[SnapshotKey]:
        """Remove every tree that no image record names and no container holds: a chain shared by
        two images stays until neither is left; a tree still mounted stays until released. Runs
        under the exclusive ``gc`` lock, so no pull can write a record naming a tree meanwhile."""
        removed = []
        with self.puller.store.locks.hold("gc"):
            wanted = {self.snapshot_key(r) for r in self.puller.image_db.all()}
            for key in self.snapshots.published():
                if key in wanted:
                    continue
                try:
                    if self.snapshots.remove(key):
                        removed.append(key)
                except ImageInUseError:
                    continue  # a container still mounts it: the next prune takes it
        return removed

    # --- container service --------------------------------------------------------------------

    def create_container(self, sandbox_id: str, config: ContainerConfig) -> ContainerStatus:
        """``CreateContainer``: mount every image volume of ``config``, or fail and hold nothing."""
        container_id = secrets.token_hex(32)
        mounted: list[MountStatus] = []
        try:
            for mount in config.mounts:
                if mount.image is None:
                    continue  # other volume types are not modelled by this simulator
                mounted.append(self.mount_image_volume(sandbox_id, mount, container_id))
        except BaseException:
            for status in mounted:
                self.snapshots.release(SnapshotKey.parse(status.snapshot), container_id)
            raise
        record = ContainerStatus(container_id, sandbox_id, config.name, config.image, tuple(mounted), time.time())
        self._save(record)
        return record

    def remove_container(self, container_id: str) -> None:
        """``RemoveContainer``: release its mounts (leases on its snapshots) and forget it."""
        record = self.container_status(container_id)
        if record is None:
            return
        for status in record.mounts:
            self.snapshots.release(SnapshotKey.parse(status.snapshot), container_id)
        os.unlink(self._path(container_id))

    def container_status(self, container_id: str) -> ContainerStatus | None:
        """``ContainerStatus`` of the container, None if the runtime has no such container."""
        try:
            with open(self._path(container_id)) as f:
                return ContainerStatus.from_json(json.load(f))
        except FileNotFoundError:
            return None

    def list_containers(self) -> list[ContainerStatus]:
        """``ListContainers``, every container with its mounts."""
        out = []
        for name in sorted(os.listdir(self._containers)):
            if name.endswith(".json"):
                rec = self.container_status(name[: -len(".json")])
                if rec is not None:
                    out.append(rec)
        return out

    def _path(self, container_id: str) -> str:
        if not all(c in "0123456789abcdef" for c in container_id):
            raise ValueError("invalid container id")
        return os.path.join(self._containers, container_id + ".json")

    def _save(self, record: ContainerStatus) -> None:
        tmp = os.path.join(self._containers, f".{record.id}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "w") as f:
                json.dump(record.to_json(), f)
            os.rename(tmp, self._path(record.id))
        except BaseException:
            with contextlib.suppress(OSError):  # a full disk leaves no half-written record
                os.unlink(tmp)
            raise

    # --- image volumes ------------------------------------------------------------------------

    def _local_image(self, mount: Mount) -> ImageRecord:
        """The record of the image the kubelet pulled for this mount.

        ``image.image`` is the image ID the pull returned (R3.8) and ``user_specified_image`` the
        Pod's own reference. The record that reference names is used when it still has that ID:
        the Pod mounts the manifest its reference was pulled as, never whichever image happens to
        share the config. Only when the reference no longer names that ID (retagged since) or is
        absent (a bare CRI call) is the most recently pulled image with the ID taken, as
        containerd's image named by the ID points at the last one pulled. Every image with one ID
        has the same config, hence the same diff IDs and tree key: the choice can decide whether a
        missing tree can be built (its layers are verified), never what a mount contains."""
        assert mount.image is not None
        ref = mount.image.image
        record: ImageRecord | None = None
        if not _is_digest(ref):
            record = self.puller.lookup(ref)
        else:
            named = self.puller.lookup(mount.image.user_specified_image) if mount.image.user_specified_image else None
            if named is not None and named.answers_to(ref):
                record = named
            else:
                record = _latest(r for r in self.puller.image_db.by_id(ref) if self.puller.is_complete(r))
        if record is None:
            raise ImageVolumeMountFailedError(self.not_local_message(ref))
        return record

    def _acquire(self, record: ImageRecord, holder: str) -> tuple[Snapshot, Manifest]:
        """The image's published tree, leased to ``holder`` with no window for a removal."""
        try:
            manifest = self.puller.manifest_of(record)
            plan = self.snapshots.plan(record.manifest_digest, manifest)
            return self.snapshots.acquire(plan, holder), manifest
        except BlobNotFoundError as exc:
            raise ImageVolumeMountFailedError(self.not_local_message(record.name) + f": {exc}") from None
        except ImageVolError as exc:
            raise ImageVolumeMountFailedError(f"failed to unpack image volume {goquote(record.name)}: {exc}") from None

    def mount_image_volume(self, sandbox_id: str, mount: Mount, holder: str) -> MountStatus:
        """Mount one image volume for the container ``holder``: materialise its tree (once per
        image; a second mount only opens the published tree), lease it, and resolve the sub path
        from the tree's root fd. On failure the lease is released."""
        self.check_mount(mount)
        record = self._local_image(mount)
        if record.artifact and not self.supports_artifacts:
            raise ImageVolumeMountFailedError(self.artifact_message(record))
        snap, manifest = self._acquire(record, holder)
        try:
            return self._mount_leased(snap, manifest, record, mount)
        except BaseException:
            self.snapshots.release(snap.key, holder)
            raise

    def _mount_leased(self, snap: Snapshot, manifest: Manifest, record: ImageRecord, mount: Mount) -> MountStatus:
        assert mount.image is not None
        sub_path = mount.image_sub_path if self.honours_sub_path else ""
        base = MountStatus(
            container_path=mount.container_path,
            image_id=mount.image.image,
            user_specified_image=mount.image.user_specified_image,
            snapshot=str(snap.key),
            real_path=".",
            is_dir=True,
            sub_path=sub_path,
            artifact=record.artifact,
            image_ref=record.repo_digest,
        )
        root_fd = sp.open_root(snap.path)
        try:
            if record.artifact:
                return self.mount_artifact(base, root_fd, manifest, mount)
            return self.mount_image(base, root_fd, mount)
        finally:
            os.close(root_fd)

    def mount_image(self, base: MountStatus, root_fd: int, mount: Mount) -> MountStatus:
        """An image's sub path: resolved from the tree's root fd under the profile's policy; what
        is recorded (symlink-free path and inode) is read back from the resulting fd."""
        if sp.is_whole_volume(base.sub_path):
            return attrs.evolve(base, inode=os.fstat(root_fd).st_ino)
        try:
            resolved = sp.resolve(root_fd, base.sub_path, self.policy, self.backend)
        except SubPathError as exc:
            raise ImageVolumeMountFailedError(self.sub_path_message(exc, base, mount)) from None
        try:
            self.check_resolved(resolved, base, mount)
            real_path = resolved.relative_path(root_fd)
        finally:
            resolved.close()
        return attrs.evolve(base, real_path=real_path, is_dir=resolved.is_dir, inode=resolved.ino)

    def mount_artifact(self, base: MountStatus, root_fd: int, manifest: Manifest, mount: Mount) -> MountStatus:
        """Mount an artifact's file or directory (this profile's layout of an artifact)."""
        raise ImageVolumeMountFailedError("artifacts are not supported")

    def open_mount(self, status: MountStatus) -> int:
        """An ``O_PATH`` fd on what ``status`` mounts, re-opened from the snapshot's root along the
        recorded symlink-free path and checked to be the very inode that was resolved at create
        time (``RESOLVE_NO_SYMLINKS`` plus the inode: a swap since then fails instead of being
        followed). Raises :class:`ImageVolError`."""
        tree = self.snapshots.get(SnapshotKey.parse(status.snapshot))
        if tree is None:
            raise ImageVolError(f"the image volume mounted at {status.container_path} is gone")
        root_fd = sp.open_root(tree)
        try:
            return sp.reopen_beneath(root_fd, status.real_path, inode=status.inode)
        except OSError as exc:
            raise ImageVolError(
                f"{status.container_path}: the mounted entry changed since it was mounted "
                f"({os.strerror(exc.errno or 0).lower()})"
            ) from None
        finally:
            os.close(root_fd)

    # --- profile hooks ------------------------------------------------------------------------

    def where(self, base: MountStatus) -> str:
        """A node-independent stand-in for the host path upstream messages print (R5.5: messages
        reach Pod authors, host paths must not). containerd names the directory after the digest
        the image was pulled by (``Target().Digest``)."""
        return f"image-volumes/{_digest12(base)}"

    def check_mount(self, mount: Mount) -> None:
        """Refuse a mount this profile cannot create (per profile)."""
        if mount.image is None or not mount.image.image:
            raise ImageVolumeMountFailedError(f"invalid mount specified: {mount.proto_text()}")

    def check_resolved(self, resolved: sp.Resolved, base: MountStatus, mount: Mount) -> None:
        """Accept or refuse what a sub path resolved to (containerd refuses files)."""

    def not_local_message(self, ref: str) -> str:
        """The error text for an image that is not present locally (per profile)."""
        return f"failed to resolve image {goquote(ref)}: not found"

    def artifact_message(self, record: ImageRecord) -> str:
        """The error text for an artifact this profile cannot mount (per profile)."""
        return f"image volume {goquote(record.name)} is an OCI artifact, which this runtime cannot mount"

    def sub_path_message(self, exc: SubPathError, base: MountStatus, mount: Mount) -> str:
        """The error text for a sub path that cannot be resolved (per profile's wording)."""
        return str(exc)


def _is_digest(text: str) -> bool:
    try:
        Digest.parse(text)
    except ImageVolError:
        return False
    return True


def _cri_image(record: ImageRecord) -> Image:
    """The CRI ``Image`` of one image record: its reference goes to ``repo_tags`` when it is a tag
    and to ``repo_digests`` when it names a digest; otherwise ``repo_digests`` holds the digest it
    was pulled by (``<repository>@<digest>``)."""
    digests: tuple[str, ...]
    try:
        by_digest = bool(parse_normalized(record.name).digest)
        digests = (record.name,) if by_digest else (record.repo_digest,)
    except ImageVolError:  # a name some other tool wrote into index.json: shown as it is
        by_digest, digests = False, ()
    return Image(
        id=record.image_id,
        repo_tags=() if by_digest else (record.name,),
        repo_digests=digests,
        size=record.size,
        artifact=record.artifact,
        auth=record.auth,
        pulled_at=record.pulled_at,
    )


def _latest(records: Iterable[ImageRecord]) -> ImageRecord | None:
    """The most recently pulled record (by name when pulled at the same time)."""
    return max(records, key=lambda r: (r.pulled_at, r.name), default=None)


def _digest12(base: MountStatus) -> str:
    """Twelve hex digits of the digest the mounted image was pulled by (of its tree key for mounts
    recorded without one)."""
    _, _, digest = base.image_ref.rpartition("@")
    with contextlib.suppress(ImageVolError):
        return Digest.parse(digest).hex[:12]
    return SnapshotKey.parse(base.snapshot).short
