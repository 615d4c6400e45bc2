"""Read-only materialised trees, one per manifest digest, shared by every mount.

* **Built in private, published by rename.** A tree is built in ``.staging/<hex>.<pid>.<nonce>``
  (mode 0700, so nobody else looks in), every layer is applied and its blob re-hashed while it is
  read, files are created without write bits and directories lose theirs at the end; only then is
  the directory renamed to ``<hex>``. A tree under its final name is therefore always complete and
  read-only, and a failed build (a bad layer, a corrupt blob) removes its staging directory and
  publishes nothing.
* **Single flight.** A build holds the flock ``snapshot-<hex>`` for its whole duration: concurrent
  materialisations of one image, from threads or processes, wait for it and then find the tree.
* **Crash recovery.** A builder that dies leaves only its staging directory, and the kernel drops its
  flock. :meth:`Snapshots.recover` (run on every start) removes each staging directory whose digest
  lock it can take: nobody is building it, so it is debris (this also holds when the dead builder's
  pid has been reused).
* **Leases.** A mount holds a tree with a lease (an empty file ``.leases/<hex>/<holder>``), taken and
  checked under the same lock as removal: a tree is removed only when no lease holds it, and a lease
  is never granted on a tree being removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import uuid
from collections.abc import Callable
from typing import IO, Any, TypeVar

import attrs

from .artifacts import lay_out_artifact
from .errors import DigestMismatchError, ImageInUseError, ImageVolError
from .layers import ApplyOptions, BuildState, Tree, apply_layer_fd, rmtree
from .locks import NamedLocks
from .oci import Descriptor, Digest, Manifest
from .store import ContentStore

_WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


@attrs.frozen
class Snapshot:
    digest: Digest
    path: str
    artifact: bool
    warnings: tuple[str, ...] = ()


class _VerifyingReader(io.RawIOBase):
    """Hashes a blob while it is read and fails at EOF if it does not match: a blob corrupted on
    disk after ingest can never become a published tree."""

    def __init__(self, inner: IO[bytes], desc: Descriptor) -> None:
        self.inner = inner
        self.desc = desc
        self.hasher: Any = desc.digest.hasher()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        n = len(data)
        if n:
            self.count += n
            if self.count > self.desc.size:
                raise DigestMismatchError(f"blob {self.desc.digest} in the content store is larger than its descriptor")
            self.hasher.update(data)
            buffer[:n] = data
            return n
        if self.count != self.desc.size or self.hasher.hexdigest() != self.desc.digest.hex:
            raise DigestMismatchError(f"blob {self.desc.digest} in the content store is corrupt")
        return 0

    def close(self) -> None:
        self.inner.close()
        super().close()


class Snapshots:
    """The ``snapshots/`` directory of a node."""

    def __init__(
        self,
        root: str,
        store: ContentStore,
        *,
        options: ApplyOptions | None = None,
        verify: bool = True,
    ) -> None:
        self.root = os.path.abspath(root)
        self.store = store
        base = options or ApplyOptions()
        self.options = attrs.evolve(base, strip_write_bits=True)
        self.verify = verify
        self._staging = os.path.join(self.root, ".staging")
        self._leases = os.path.join(self.root, ".leases")
        for d in (self.root, self._staging, self._leases):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self.locks = NamedLocks(os.path.join(self.root, ".locks"))
        self.recover()

    # --- lookup ---------------------------------------------------------------------------------

    def path(self, digest: Digest) -> str:
        return os.path.join(self.root, digest.hex)

    def get(self, digest: Digest) -> str | None:
        p = self.path(digest)
        return p if os.path.isdir(p) else None

    def digests(self) -> list[Digest]:
        out = []
        for name in sorted(os.listdir(self.root)):
            if name.startswith("."):
                continue
            with contextlib.suppress(Exception):
                out.append(Digest.parse(f"sha256:{name}"))
        return out

    def _lock(self, digest: Digest, *, blocking: bool = True) -> contextlib.AbstractContextManager[bool]:
        return self.locks.hold(f"snapshot-{digest.hex}", blocking=blocking)

    # --- build --------------------------------------------------------------------------------

    def _open_blob(self, desc: Descriptor) -> IO[bytes]:
        blob = self.store.open_blob(desc.digest)
        if not self.verify:
            return blob
        return io.BufferedReader(_VerifyingReader(blob, desc), buffer_size=1024 * 1024)

    def materialise(
        self,
        digest: Digest,
        manifest: Manifest,
        on_build: Callable[[Digest], None] | None = None,
    ) -> Snapshot:
        """The published tree of ``manifest`` (its digest is ``digest``), building it if needed."""
        artifact = not manifest.is_image
        existing = self.get(digest)
        if existing is not None:
            return Snapshot(digest, existing, artifact)
        with self._lock(digest):
            existing = self.get(digest)
            if existing is not None:
                return Snapshot(digest, existing, artifact)
            if on_build is not None:
                on_build(digest)
            staging = os.path.join(self._staging, f"{digest.hex}.{os.getpid()}.{uuid.uuid4().hex}")
            state = BuildState()
            warnings = publish_tree(
                self.path(digest), staging, lambda root_fd: self._build(root_fd, manifest, state), state=state
            )
            return Snapshot(digest, self.path(digest), artifact, tuple(warnings))

    def _build(self, root_fd: int, manifest: Manifest, state: BuildState) -> list[str]:
        if not manifest.is_image:
            warnings = lay_out_artifact(root_fd, manifest, self._open_blob, self.options, state)
        else:
            warnings = []
            for layer in manifest.layers:
                with self._open_blob(layer) as blob:
                    stats = apply_layer_fd(root_fd, blob, self.options, state)
                if stats.skipped_devices:
                    warnings.append(
                        f"layer {layer.digest}: skipped {len(stats.skipped_devices)} device node(s)"
                        f" ({', '.join(stats.skipped_devices[:3])})"
                    )
        return warnings

    def acquire(self, digest: Digest, manifest: Manifest, holder: str) -> Snapshot:
        """Materialise (if needed) and lease in one step, so that no removal can slip in between
        (``materialise`` then ``lease`` leaves that window; ``lease`` then fails cleanly)."""
        while True:
            snap = self.materialise(digest, manifest)
            try:
                self.lease(digest, holder)
            except ImageVolError:
                if self.get(digest) is None:
                    continue  # removed in between: build it again
                raise
            return snap

    # --- crash recovery ---------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Remove staging directories nobody is building (their builder crashed)."""
        removed = []
        for name in sorted(os.listdir(self._staging)):
            hex_ = name.split(".", 1)[0]
            try:
                digest: Digest | None = Digest.parse(f"sha256:{hex_}")
            except ImageVolError:
                digest = None
            if digest is None:
                rmtree(os.path.join(self._staging, name))
                removed.append(name)
                continue
            with self._lock(digest, blocking=False) as free:
                if free and os.path.lexists(os.path.join(self._staging, name)):
                    rmtree(os.path.join(self._staging, name))
                    removed.append(name)
        return removed

    # --- leases and removal -------------------------------------------------------------------------

    def _lease_dir(self, digest: Digest) -> str:
        return os.path.join(self._leases, digest.hex)

    def lease(self, digest: Digest, holder: str) -> None:
        """Hold the published tree of ``digest`` for ``holder`` (a container)."""
        with self._lock(digest):
            if self.get(digest) is None:
                raise ImageVolError(f"snapshot {digest} is not materialised")
            d = self._lease_dir(digest)
            os.makedirs(d, mode=0o700, exist_ok=True)
            with open(os.path.join(d, _safe(holder)), "w"):
                pass

    def release(self, digest: Digest, holder: str) -> None:
        with self._lock(digest):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._lease_dir(digest), _safe(holder)))
            with contextlib.suppress(OSError):
                os.rmdir(self._lease_dir(digest))

    def holders(self, digest: Digest) -> list[str]:
        try:
            return sorted(os.listdir(self._lease_dir(digest)))
        except FileNotFoundError:
            return []

    def remove(self, digest: Digest) -> bool:
        """Delete a published tree; refused while any lease holds it."""
        with self._lock(digest):
            holders = self.holders(digest)
            if holders:
                raise ImageInUseError(f"snapshot {digest} is in use by {', '.join(holders)}")
            path = self.get(digest)
            if path is None:
                return False
            # Rename first so that nobody ever sees a half-deleted tree under the digest.
            doomed = os.path.join(self._staging, f"{digest.hex}.{os.getpid()}.{uuid.uuid4().hex}")
            os.rename(path, doomed)
            rmtree(doomed)
            return True


T = TypeVar("T")


def publish_tree(
    dest: str,
    staging: str,
    build: Callable[[int], T],
    *,
    read_only: bool = True,
    state: BuildState | None = None,
) -> T:
    """Build a tree in the new private directory ``staging`` with ``build(root_fd)``, seal it
    (``read_only``), apply the modes ``state`` deferred, and rename it to ``dest``. On any error the
    staging directory is removed and nothing appears at ``dest``. ``staging`` must be on the same
    filesystem as ``dest``."""
    os.mkdir(staging, 0o700)
    try:
        os.chmod(staging, 0o755)  # an image root is 0755 unless a layer says otherwise
        root_fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            result = build(root_fd)
            if read_only:
                seal(staging, skip_root=True)
            root_mode = stat.S_IMODE(os.fstat(root_fd).st_mode)
            if state is not None:
                root_mode = state.deferred.pop((), root_mode)
                state.finish(root_fd, strip_write=read_only)
            if read_only:
                root_mode &= ~_WRITE_BITS
            # Moving a directory to another parent needs write permission on it (its ".." entry
            # changes) unless one is privileged. Root seals the tree's root before the rename, so
            # nothing writable ever appears under the final name; an unprivileged builder must do
            # it just after (for that instant the root is writable by the builder alone).
            privileged = os.geteuid() == 0
            if privileged:
                os.fchmod(root_fd, root_mode)
            os.rename(staging, dest)
            if not privileged:
                os.fchmod(root_fd, root_mode)
        finally:
            os.close(root_fd)
        return result
    finally:
        rmtree(staging)  # a no-op after the rename


def _safe(holder: str) -> str:
    return hashlib.sha256(holder.encode()).hexdigest()[:32] if "/" in holder or holder.startswith(".") else holder


def seal(root: str, *, skip_root: bool = False) -> None:
    """Remove the write bits of every directory of the tree (C2.11). Files, FIFOs and artifact
    files were created without them (``strip_write_bits``); symlinks have no mode of their own.

    Directories are reached from the root one component at a time without following symlinks and
    handled deepest first, so none is reopened after losing its bits (it does not matter to root,
    but keeps the walk correct for an unprivileged builder too)."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        tree = Tree(root_fd)
        order: list[tuple[str, ...]] = []
        pending: list[tuple[str, ...]] = [()]
        while pending:
            parts = pending.pop()
            fd = tree.open_real(parts)
            if fd is None:  # pragma: no cover - nothing changes a staging tree under us
                continue
            try:
                with os.scandir(fd) as it:
                    pending.extend((*parts, e.name) for e in it if e.is_dir(follow_symlinks=False))
            finally:
                os.close(fd)
            order.append(parts)
        for parts in reversed(order):
            if skip_root and not parts:
                continue
            fd = tree.open_real(parts)
            if fd is None:  # pragma: no cover
                continue
            try:
                mode = stat.S_IMODE(os.fstat(fd).st_mode)
                if mode & _WRITE_BITS:
                    os.fchmod(fd, mode & ~_WRITE_BITS)
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)
