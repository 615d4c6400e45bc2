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

On a node that runs containers (``run_containers``), ``CreateContainer`` also writes the container's
OCI bundle and ``ContainerStatus`` reads what its monitor recorded (:mod:`imagevol.runtime.real`,
:mod:`imagevol.runtime.runc`); ``exec_real`` runs a command inside the container.

Size: over 500 lines, because both CRI services over one node root share its records; what is not
the CRI's own bookkeeping (trees, sub paths, bundles, runc) lives in other modules, called from here.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from .._tempname import nonce
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
    ImageSpec,
    Keyring,
    Mount,
    MountStatus,
    PullImageResult,
)
from ..errors import (
    BlobNotFoundError,
    CreateContainerError,
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

if TYPE_CHECKING:
    # Imported where they are used: a node that only pulls or lists never loads the lazy-pull
    # machinery, the OCI runtime spec or runc's driver (about a tenth of a pull's start-up), nor
    # the snapshotter and the layer applier under it (a fifth of a pull's imports).
    from ..trees.partial import Label
    from ..trees.snapshots import Snapshot, SnapshotKey, Snapshots
    from ._lazy import LazyMounts
    from .oci_spec import VolumeMount
    from .real import BundleBuilder
    from .runc import Runc

#: The file beside a container's record that keeps its process fields (command, args, env...).
_PROCESS = ".process"

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
        self,
        state_dir: str,
        puller: ImagePuller,
        snapshots: Snapshots | Callable[[], Snapshots],
        backend: sp.Backend = sp.Backend.AUTO,
        *,
        run_containers: bool = False,
        lazy: str = "off",
        keychain: Callable[[], Keyring] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.puller = puller
        self._snapshots = snapshots
        self.backend = backend
        #: Containers run on the OCI runtime (``runc``) rather than being simulated.
        self.run_containers = run_containers
        self._containers = os.path.join(state_dir, "containers")
        os.makedirs(self._containers, mode=0o700, exist_ok=True)
        self._lazy_mode = lazy
        self._lazy_state = os.path.join(state_dir, "lazy.json")
        self._keychain = keychain
        #: Keyrings of the pulls made by this process, by image record name: layers a lazy pull
        #: left in the registry are fetched later with them (the lazy mode reads this mapping;
        #: kept here so that a pull records its keyring without loading the lazy mode).
        self.keyrings: dict[str, Keyring] = {}
        if lazy != "off":
            _ = self.lazy  # a lazy mode takes over the puller's layer pulls from the start

    @functools.cached_property
    def snapshots(self) -> Snapshots:
        """The node's trees: given, or made by the factory given on first use (a runtime that only
        pulls never needs them, nor loads the layer applier)."""
        given = self._snapshots
        return given() if callable(given) else given

    @property
    def lazy_in_use(self) -> bool:
        """Whether lazy mode is on, or was on for this node (its state is kept): without either,
        nothing of the lazy machinery needs loading."""
        if self._lazy_mode != "off":
            return True
        return os.path.exists(self._lazy_state)

    @functools.cached_property
    def lazy(self) -> LazyMounts:
        """Lazy sub paths (``--lazy``): partial trees, fetched by range (:mod:`._lazy`)."""
        from ._lazy import LazyMounts

        return LazyMounts(
            self._lazy_mode,
            self.puller,
            self.snapshots,
            self._lazy_state,
            keychain=self._keychain,
            keyrings=self.keyrings,
        )

    @functools.cached_property
    def oci(self) -> Runc:
        """The OCI runtime (``runc``) that runs real containers."""
        from .runc import Runc

        return Runc(os.path.join(self.state_dir, "oci"))

    @functools.cached_property
    def _bundles(self) -> BundleBuilder:
        from .real import BundleBuilder

        return BundleBuilder(self)

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
            # Layers a lazy pull left in the registry are fetched later with these credentials.
            self.keyrings[result.record.name] = keyring or Keyring()
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
        """Image IDs that some container runs from or mounts (what the image GC learns from the
        containers the runtime lists)."""
        return {image_id for c in self.list_containers() for image_id in _images_of(c)}

    def remove_image(self, reference: str) -> Image:
        """``RemoveImage``: refused while a container runs from the image or mounts it (R7.3, as
        CRI-O does). The record goes; its tree goes too unless another image has the same layer
        chain (or a container of an image pulled over it still holds the tree). Blobs stay until
        :meth:`garbage_collect`."""
        record = self.puller.image_db.lookup(reference) or _latest(self.puller.image_db.by_id(reference))
        if record is None:
            raise ImageVolError(f"image {goquote(reference)} not found")
        users = [c for c in self.list_containers() if record.image_id in _images_of(c)]
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
        removed = len(self.puller.store.garbage_collect())
        with self.puller.store.locks.hold("gc"):
            # Lazily fetched bytes are kept only for layers an image still needs and lacks.
            _, missing = self.puller.store.reachable()
            self.lazy.cache.prune(missing)
        return removed

    def complete_lazy(self) -> list[tuple[SnapshotKey, Label]]:
        """``--lazy toc+complete``: prove or revoke the partial trees of every image this node
        holds (:meth:`._lazy.LazyMounts.complete_all`). Runs on each ``sync``; a no-op otherwise,
        which does not make the lazy mode (its directories): a ``sync`` on a node at rest, even on
        a read-only root, writes nothing."""
        if self._lazy_mode != "toc+complete":
            return []
        return self.lazy.complete_all()

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
        from ..trees.snapshots import PARTIAL

        removed = []
        with self.puller.store.locks.hold("gc"):
            wanted = {self.snapshot_key(r) for r in self.puller.image_db.all()}
            names = {str(k) for k in wanted if k is not None}
            for key in self.snapshots.published():
                if key in wanted:
                    continue
                if key.kind == PARTIAL:
                    from ..trees.partial import REVOKED

                    label = self.lazy.partial.label(key)
                    if label is not None and label.image in names and label.trust != REVOKED:
                        continue  # a sub path of an image still pulled
                try:
                    if self.snapshots.remove(key):
                        removed.append(key)
                        self.lazy.partial.drop_label(key)
                except ImageInUseError:
                    continue  # a container still mounts it: the next prune takes it
        return removed

    # --- container service --------------------------------------------------------------------

    def create_container(self, sandbox_id: str, config: ContainerConfig) -> ContainerStatus:
        """``CreateContainer``: find the container's image in the store, mount every image volume
        of ``config``, or fail and hold nothing. The container's image is recorded in its status
        (``image``, ``image_ref``, ``image_id``); its root filesystem and process are the OCI
        runtime's business, when the node runs containers (``start_container``)."""
        import secrets

        from ..trees.snapshots import SnapshotKey

        image = self.container_image(config.image)
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
        record = ContainerStatus(
            container_id,
            sandbox_id,
            config.name,
            image.name,
            tuple(mounted),
            time.time(),
            image_ref=image.repo_digest,
            image_id=image.image_id,
            state="CONTAINER_CREATED" if self.run_containers else "CONTAINER_RUNNING",
        )
        try:
            self._save_process(container_id, config)
            if self.run_containers:
                self._create_bundle(record)
            self._save(record)
        except BaseException:
            if os.path.isdir(self.oci.bundle(container_id)):  # the record could not be saved
                self.oci.remove(container_id, grace=0)
                self._bundles.release(container_id, record)
            for status in mounted:
                self.snapshots.release(SnapshotKey.parse(status.snapshot), container_id)
            with contextlib.suppress(OSError):
                os.unlink(self._path(container_id, _PROCESS))
            raise
        return self.container_status(container_id) or record

    def _create_bundle(self, record: ContainerStatus) -> None:
        self._bundles.create(record, self._load_process(record.id))

    def start_container(self, container_id: str) -> None:
        """``StartContainer``: run the created container under its monitor (node option
        ``run_containers``; a simulated container is running from its creation)."""
        if os.path.isdir(self.oci.bundle(container_id)):
            self.oci.start(container_id)

    def stop_container(self, container_id: str, timeout: float = 10.0) -> None:
        """``StopContainer``: SIGTERM, ``timeout`` seconds, SIGKILL (nothing for a simulated one)."""
        if os.path.isdir(self.oci.bundle(container_id)):
            self.oci.stop(container_id, timeout)

    def exec_real(self, container_id: str, argv: list[str]) -> int:
        """Run ``argv`` for real with this process's stdio and return its exit status: ``runc exec``
        in the container when the OCI runtime runs it, else in a one-off container with the same
        root filesystem, mounts and environment (removed afterwards, as ``--rm`` does). Raises
        :class:`ImageVolError` when no OCI runtime can run here."""
        record = self.container_status(container_id)
        if record is None:
            raise ImageVolError(f"container {container_id[:13]} not found")
        return self._bundles.exec(record, self._load_process(container_id), argv)

    def remove_container(self, container_id: str) -> None:
        """``RemoveContainer``: release its mounts (leases on its snapshots) and forget it."""
        from ..trees.snapshots import SnapshotKey

        record = self.container_status(container_id)
        if record is None:
            return
        if os.path.isdir(self.oci.bundle(container_id)):
            self.oci.remove(container_id)
            self._bundles.release(container_id, record)
        for status in record.mounts:
            self.snapshots.release(SnapshotKey.parse(status.snapshot), container_id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(container_id, _PROCESS))
        os.unlink(self._path(container_id))

    def container_status(self, container_id: str) -> ContainerStatus | None:
        """``ContainerStatus`` of the container, None if the runtime has no such container."""
        try:
            with open(self._path(container_id)) as f:
                record = ContainerStatus.from_json(json.load(f))
        except FileNotFoundError:
            return None
        record = attrs.evolve(record, mounts=tuple(self._live(m) for m in record.mounts))
        if not os.path.isdir(self.oci.bundle(container_id)):
            return record
        run = self.oci.status(container_id)
        return attrs.evolve(
            record,
            state=run.state,
            exit_code=run.exit_code,
            started_at=run.started_at,
            finished_at=run.finished_at,
            reason=run.reason,
            message=run.message,
            log_path=self.oci.log_path(container_id),
        )

    def list_containers(self) -> list[ContainerStatus]:
        """``ListContainers``, every container with its mounts."""
        out = []
        for name in sorted(os.listdir(self._containers)):
            if name.endswith(".json"):
                rec = self.container_status(name[: -len(".json")])
                if rec is not None:
                    out.append(rec)
        return out

    def _path(self, container_id: str, suffix: str = ".json") -> str:
        if not all(c in "0123456789abcdef" for c in container_id):
            raise ValueError("invalid container id")
        return os.path.join(self._containers, container_id + suffix)

    def _save_process(self, container_id: str, config: ContainerConfig) -> None:
        from .real import save_process

        save_process(self._path(container_id, _PROCESS), config)

    def _load_process(self, container_id: str) -> dict[str, Any]:
        from .real import load_process

        return load_process(self._path(container_id, _PROCESS))

    def _save(self, record: ContainerStatus) -> None:
        tmp = os.path.join(self._containers, f".{record.id}.{nonce()}.tmp")
        try:
            with open(tmp, "w") as f:
                json.dump(record.to_json(), f)
            os.rename(tmp, self._path(record.id))
        except BaseException:
            with contextlib.suppress(OSError):  # a full disk leaves no half-written record
                os.unlink(tmp)
            raise

    def container_image(self, spec: ImageSpec) -> ImageRecord:
        """The record of a container's own image (``ContainerConfig.image``), as the kubelet pulled
        it. An OCI artifact has no rootfs: a container cannot run from one."""
        record = self._find_local(spec)
        if record is None or record.artifact:
            raise CreateContainerError(self.not_local_message(spec.image))
        return record

    # --- image volumes ------------------------------------------------------------------------

    def _local_image(self, mount: Mount) -> ImageRecord:
        """The record of the image the kubelet pulled for this mount (:meth:`_find_local`)."""
        assert mount.image is not None
        record = self._find_local(mount.image)
        if record is None:
            raise ImageVolumeMountFailedError(self.not_local_message(mount.image.image))
        return record

    def _find_local(self, spec: ImageSpec) -> ImageRecord | None:
        """The local record ``spec`` names, or None.

        ``image`` is the image ID the pull returned (R3.8) and ``user_specified_image`` the
        Pod's own reference. The record that reference names is used when it still has that ID:
        the Pod mounts the manifest its reference was pulled as, never whichever image happens to
        share the config. Only when the reference no longer names that ID (retagged since) or is
        absent (a bare CRI call) is the most recently pulled image with the ID taken, as
        containerd's image named by the ID points at the last one pulled. Every image with one ID
        has the same config, hence the same diff IDs and tree key: the choice can decide whether a
        missing tree can be built (its layers are verified), never what a mount contains."""
        ref = spec.image
        if not ref:
            return None
        if not _is_digest(ref):
            return self.puller.lookup(ref)
        named = self.puller.lookup(spec.user_specified_image) if spec.user_specified_image else None
        if named is not None and named.answers_to(ref):
            return named
        return _latest(r for r in self.puller.image_db.by_id(ref) if self.puller.is_complete(r))

    def _acquire(self, record: ImageRecord, holder: str) -> tuple[Snapshot, Manifest]:
        """The image's published tree, leased to ``holder`` with no window for a removal. Layers a
        lazy pull left in the registry are pulled first (and the full tree built as ever)."""
        try:
            manifest = self.puller.manifest_of(record)
            plan = self.snapshots.plan(record.manifest_digest, manifest)
            if self.snapshots.get(plan.key) is None:
                self.lazy.fetch_missing(record, manifest)
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
        sub_path = mount.image_sub_path if self.honours_sub_path else ""
        note = ""
        if self._lazy_mode != "off" and self.lazy.enabled and not record.artifact and not sp.is_whole_volume(sub_path):
            from ._lazy import FullTreeExistsError, one_line, reason_kind

            try:
                return self._mount_lazy(record, mount, holder)
            except ImageVolumeMountFailedError:
                raise
            except FullTreeExistsError:
                pass
            except (ImageVolError, OSError) as exc:
                # Never a mount failure of its own: the full pull decides, and the reason stays.
                self.lazy.count_fallback(exc)
                note = f"fell back to a full pull ({reason_kind(exc)}): {one_line(exc)}"
        snap, manifest = self._acquire(record, holder)
        try:
            status = self._mount_leased(snap, manifest, record, mount)
        except BaseException:
            self.snapshots.release(snap.key, holder)
            raise
        return attrs.evolve(status, lazy=note) if note else status

    def _mount_lazy(self, record: ImageRecord, mount: Mount, holder: str) -> MountStatus:
        """A partial tree of the sub path (:mod:`._lazy`), then the sub path resolved again on it
        by the fd-based resolver, as a second gate, and mounted from its handle."""
        from .. import lazy

        assert mount.image is not None
        manifest = self.puller.manifest_of(record)
        plan = self.snapshots.plan(record.manifest_digest, manifest)
        if self.snapshots.get(plan.key) is not None:
            from ._lazy import FullTreeExistsError

            raise FullTreeExistsError()
        try:
            result = self.lazy.mount(
                record, manifest, plan.diff_ids, plan.key, mount.image_sub_path, lazy.Policy(self.policy.value), holder
            )
        except SubPathError as exc:
            base = self._base_status(mount, record, plan.key)
            raise ImageVolumeMountFailedError(self.sub_path_message(exc, base, mount)) from None
        try:
            status = self._mount_leased(result.snapshot, manifest, record, mount)
        except BaseException:
            self.snapshots.release(result.snapshot.key, holder)
            raise
        notes = "; ".join(self.lazy.notes(manifest))
        text = f"partial tree of {len(manifest.layers)} layer(s)" + (f"; {notes}" if notes else "")
        return attrs.evolve(status, trust=result.label.trust, lazy=text)

    def _mount_leased(self, snap: Snapshot, manifest: Manifest, record: ImageRecord, mount: Mount) -> MountStatus:
        base = self._base_status(mount, record, snap.key)
        root_fd = sp.open_root(snap.path)
        try:
            if record.artifact:
                return self.mount_artifact(base, root_fd, manifest, mount)
            return self.mount_image(base, root_fd, mount)
        finally:
            os.close(root_fd)

    def _base_status(self, mount: Mount, record: ImageRecord, key: SnapshotKey) -> MountStatus:
        """The status of ``mount`` of ``record``'s tree ``key`` before its sub path is resolved:
        the whole tree, the sub path as this profile takes it (ignored by the legacy profile)."""
        assert mount.image is not None
        return MountStatus(
            container_path=mount.container_path,
            image_id=mount.image.image,
            user_specified_image=mount.image.user_specified_image,
            snapshot=str(key),
            real_path=".",
            is_dir=True,
            sub_path=mount.image_sub_path if self.honours_sub_path else "",
            artifact=record.artifact,
            image_ref=record.repo_digest,
        )

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

    def _live(self, status: MountStatus) -> MountStatus:
        """A mount's status as of now (:meth:`._lazy.LazyMounts.live`): only a partial tree's
        trust changes after its mount, so only such a mount makes the lazy mode to ask it."""
        return self.lazy.live(status) if _on_partial_tree(status) else status

    def open_mount(self, status: MountStatus) -> int:
        """An ``O_PATH`` fd on what ``status`` mounts, re-opened from the snapshot's root along the
        recorded symlink-free path and checked to be the very inode that was resolved at create
        time (``RESOLVE_NO_SYMLINKS`` plus the inode: a swap since then fails instead of being
        followed). Raises :class:`ImageVolError`; also for a lazily built tree a completion
        revoked (the container loses the view rather than keep reading unproven content)."""
        from ..trees.partial import REVOKED
        from ..trees.snapshots import SnapshotKey

        if _on_partial_tree(status) or status.trust == REVOKED:  # only lazy mode revokes a tree
            self.lazy.check_not_revoked(status)
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

    def volume_mounts(
        self, mount: MountStatus, source: str, propagation: str, files: tuple[str, ...], empty: str
    ) -> list[VolumeMount]:
        """The OCI mounts of one staged image volume: containerd binds it recursively, read-only,
        ``nosuid``/``nodev``, with the mount's propagation (``WithMounts``)."""
        from .oci_spec import PROPAGATION_OPTION, VolumeMount

        options = ("rbind", "ro", "nosuid", "nodev", PROPAGATION_OPTION.get(propagation, "rprivate"))
        return [VolumeMount(mount.container_path, source, options)]

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


def _on_partial_tree(status: MountStatus) -> bool:
    """Whether ``status`` mounts a partial tree (lazy mode's): the only kind whose trust changes."""
    from ..trees.snapshots import PARTIAL, SnapshotKey

    try:
        return SnapshotKey.parse(status.snapshot).kind == PARTIAL
    except ImageVolError:
        return False


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


def _images_of(container: ContainerStatus) -> set[str]:
    """The image IDs a container uses: its own image and the images it mounts."""
    used = {m.image_id for m in container.mounts}
    if container.image_id:
        used.add(container.image_id)
    return used


def _latest(records: Iterable[ImageRecord]) -> ImageRecord | None:
    """The most recently pulled record (by name when pulled at the same time)."""
    return max(records, key=lambda r: (r.pulled_at, r.name), default=None)


def _digest12(base: MountStatus) -> str:
    """Twelve hex digits of the digest the mounted image was pulled by (of its tree key for mounts
    recorded without one)."""
    from ..trees.snapshots import SnapshotKey

    _, _, digest = base.image_ref.rpartition("@")
    with contextlib.suppress(ImageVolError):
        return Digest.parse(digest).hex[:12]
    return SnapshotKey.parse(base.snapshot).short
