"""Containers on a real OCI runtime: the bundle of one container built from its CRI records.

:class:`BundleBuilder` turns what ``CreateContainer`` recorded (the container's image, its mounted
image volumes, the saved :class:`~imagevol.cri.ContainerConfig` process fields) into an OCI bundle
for :class:`~imagevol.runtime.runc.Runc`: the container image's published tree (leased to the
container) becomes the root filesystem; each image-volume mount becomes a staged source (the
snapshot tree, the recorded symlink-free path and inode, re-opened and bound by fd by the staging
helper) and the profile's OCI mounts on it (:meth:`Runtime.volume_mounts`).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Sequence
from typing import Any, Protocol

from .._text import goquote, strerror
from ..content.image_db import ImageRecord
from ..content.pull import ImagePuller
from ..cri import ContainerConfig, ContainerStatus, ImageSpec, MountStatus
from ..errors import CreateContainerError, ImageVolError
from ..oci import MAX_CONFIG_BYTES, Manifest
from ..trees import subpath as sp
from ..trees.snapshots import Snapshot, SnapshotKey, Snapshots
from . import oci_spec
from .runc import RUNNING, Runc


class Runtime(Protocol):
    """What a bundle needs of the runtime (:class:`imagevol.runtime.base.Runtime` and profiles)."""

    puller: ImagePuller

    @property
    def snapshots(self) -> Snapshots:
        """The node's trees."""

    @property
    def oci(self) -> Runc:
        """The OCI runtime driver."""

    def _find_local(self, spec: ImageSpec) -> ImageRecord | None: ...

    def _acquire(self, record: ImageRecord, holder: str) -> tuple[Snapshot, Manifest]: ...

    def not_local_message(self, ref: str) -> str:
        """The message for a container image that is not in the store."""

    def snapshot_key(self, record: ImageRecord) -> SnapshotKey | None:
        """The key of the image's published tree, None for an artifact."""

    def open_mount(self, status: MountStatus) -> int:
        """An O_PATH fd of the mount's resolved source."""

    def volume_mounts(
        self, mount: MountStatus, source: str, propagation: str, files: tuple[str, ...], empty: str
    ) -> list[oci_spec.VolumeMount]:
        """The OCI mounts of one image-volume mount, the profile's way."""


class BundleBuilder:
    """Builds bundles for ``runtime``'s containers."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def build(
        self, bundle_id: str, container: ContainerStatus, saved: dict[str, Any], argv: Sequence[str] | None = None
    ) -> str:
        """Lease the container image's tree to ``bundle_id`` and write its bundle. ``argv`` replaces
        the container's process (a one-off container for ``exec --real``). The caller releases the
        lease with :meth:`release` when the bundle goes."""
        runtime = self.runtime
        record = runtime._find_local(ImageSpec(container.image_id, container.image))
        if record is None or record.artifact:
            raise CreateContainerError(runtime.not_local_message(container.image))
        snap, manifest = runtime._acquire(record, bundle_id)
        try:
            image = oci_spec.ImageConfig.parse(runtime.puller.store.read_verified(manifest.config, MAX_CONFIG_BYTES))
            root_fd = sp.open_root(snap.path)
            try:
                user = oci_spec.resolve_user(
                    image.user, oci_spec.read_etc_file(root_fd, "passwd"), oci_spec.read_etc_file(root_fd, "group")
                )
            finally:
                os.close(root_fd)
            process = list(argv) if argv else oci_spec.process_args(image, saved["command"], saved["args"])
            envs = [(str(k), str(v)) for k, v in saved.get("envs", [])]
            bundle = runtime.oci.bundle(bundle_id)
            stages: list[dict[str, Any]] = []
            volumes: list[oci_spec.VolumeMount] = []
            propagation = dict(saved.get("propagation", {}))
            for n, mount in enumerate(container.mounts):
                tree = runtime.snapshots.get(SnapshotKey.parse(mount.snapshot))
                if tree is None:
                    raise CreateContainerError(f"the image volume mounted at {mount.container_path} is gone")
                name = str(n)
                stages.append(
                    {
                        "tree": tree,
                        "real_path": mount.real_path,
                        "inode": mount.inode,
                        "is_dir": mount.is_dir,
                        "name": name,
                        "container_path": mount.container_path,
                    }
                )
                source = os.path.join(bundle, "stage", name)
                files = _artifact_files(runtime, mount) if mount.artifact else ()
                prop = str(propagation.get(mount.container_path, "PROPAGATION_PRIVATE"))
                volumes += runtime.volume_mounts(mount, source, prop, files, os.path.join(bundle, "empty"))
            config = oci_spec.generate(
                argv=process,
                env=oci_spec.merge_env(image.env, envs),
                cwd=str(saved.get("working_dir") or image.working_dir or "/"),
                user=user,
                hostname=str(saved.get("hostname") or "imagevol"),
                volumes=volumes,
            )
            plan = {"rootfs": {"lower": snap.path, "readonly": False}, "stages": stages}
            return runtime.oci.create(bundle_id, config, plan)
        except BaseException:
            runtime.snapshots.release(snap.key, bundle_id)
            raise

    def create(self, container: ContainerStatus, saved: dict[str, Any]) -> None:
        """``CreateContainer``'s part on a node that runs containers: the container's bundle, or
        :class:`CreateContainerError` (no OCI runtime here, a local failure) and nothing held."""
        reason = self.runtime.oci.unavailable()
        if reason is not None:
            raise CreateContainerError(reason)
        try:
            self.build(container.id, container, saved)
        except OSError as exc:
            raise CreateContainerError(
                f"failed to create container {goquote(container.name)}: {strerror(exc)}"
            ) from None

    def exec(self, container: ContainerStatus, saved: dict[str, Any], argv: Sequence[str]) -> int:
        """``exec --real``: ``runc exec`` into the container when the OCI runtime runs it, else a
        one-off container from the same records with ``argv`` as its process, removed afterwards."""
        oci = self.runtime.oci
        reason = oci.unavailable()
        if reason is not None:
            raise ImageVolError(reason)
        if container.state == RUNNING and os.path.isdir(oci.bundle(container.id)):
            return oci.exec(container.id, argv)
        one_off = secrets.token_hex(32)
        try:
            self.build(one_off, container, saved, argv)
            return oci.run(one_off)
        finally:
            oci.remove(one_off, grace=0)
            self.release(one_off, container)

    def release(self, bundle_id: str, container: ContainerStatus) -> None:
        """Release the container image's tree leased to ``bundle_id``."""
        runtime = self.runtime
        record = runtime._find_local(ImageSpec(container.image_id, container.image))
        if record is None:
            return
        key = runtime.snapshot_key(record)
        if key is not None:
            runtime.snapshots.release(key, bundle_id)


def save_process(path: str, config: ContainerConfig) -> None:
    """Keep what the OCI config is generated from (the process part of the CRI's container config)."""
    obj = {
        "command": list(config.command),
        "args": list(config.args),
        "envs": [list(e) for e in config.envs],
        "working_dir": config.working_dir,
        "hostname": config.hostname,
        "propagation": {m.container_path: m.propagation for m in config.mounts},
    }
    with open(path, "w") as f:
        json.dump(obj, f)


def load_process(path: str) -> dict[str, Any]:
    """The process part of a container (command, args, env) as create recorded it."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except FileNotFoundError:
        obj = {}
    return {"command": [], "args": [], "envs": [], **obj}


def _artifact_files(runtime: Runtime, mount: MountStatus) -> tuple[str, ...]:
    """The regular files below an artifact mount (one per blob, CRI-O binds each on its own),
    relative to it, listed by fd."""
    try:
        fd = runtime.open_mount(mount)
    except ImageVolError as exc:
        raise CreateContainerError(str(exc)) from None
    out: list[str] = []

    def walk(dir_fd: int, prefix: str) -> None:
        for name in sorted(os.listdir(dir_fd)):
            child = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                mode = os.fstat(child).st_mode
                if stat.S_ISDIR(mode):
                    sub = os.open(f"/proc/self/fd/{child}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                    try:
                        walk(sub, prefix + name + "/")
                    finally:
                        os.close(sub)
                elif stat.S_ISREG(mode):
                    out.append(prefix + name)
            finally:
                os.close(child)

    try:
        top = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    finally:
        os.close(fd)
    try:
        walk(top, "")
    finally:
        os.close(top)
    return tuple(out)
