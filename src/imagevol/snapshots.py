"""Read-only materialised trees, one per manifest digest, shared by every mount.

A tree is built in a private staging directory (``.staging/<hex>.<pid>.<nonce>``), every layer is
applied and verified there, write bits are removed, and only then is it renamed to ``<hex>``: a tree
under its final name is always complete. A crash mid-build leaves only a staging directory, which
:meth:`Snapshots.recover` removes on the next start (its owner process is gone). Concurrent builds of
one digest, from threads or processes, are single-flighted by a named lock.

A tree is removed only when no lease holds it; a lease is an empty file
``.leases/<hex>/<holder>`` created by the runtime for each container mount.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import uuid
from collections.abc import Callable
from typing import IO, Any

import attrs

from .artifacts import lay_out_artifact
from .errors import ContentError, DigestMismatchError, ImageInUseError, LayerError
from .layers import ApplyOptions, apply_layer_fd, rmtree
from .locks import NamedLocks, process_alive
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
            self.hasher.update(data)
            self.count += n
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
        self.options = options or ApplyOptions()
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
        with self.locks.hold(f"snapshot-{digest.hex}"):
            existing = self.get(digest)
            if existing is not None:
                return Snapshot(digest, existing, artifact)
            if on_build is not None:
                on_build(digest)
            staging = os.path.join(self._staging, f"{digest.hex}.{os.getpid()}.{uuid.uuid4().hex}")
            os.mkdir(staging, 0o700)
            os.chmod(staging, 0o755)  # an image root is 0755 unless a layer says otherwise
            try:
                warnings = self._build(staging, manifest)
                _make_read_only(staging)
                os.rename(staging, self.path(digest))
            except BaseException:
                rmtree(staging)
                raise
            return Snapshot(digest, self.path(digest), artifact, tuple(warnings))

    def _build(self, staging: str, manifest: Manifest) -> list[str]:
        root_fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if not manifest.is_image:
                return lay_out_artifact(root_fd, manifest, self._open_blob, self.options)
            for layer in manifest.layers:
                with self._open_blob(layer) as blob:
                    apply_layer_fd(root_fd, blob, self.options)
            return []
        except (ContentError, LayerError):
            raise
        finally:
            os.close(root_fd)

    # --- crash recovery ---------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Remove staging directories whose builder process is gone."""
        removed = []
        for name in os.listdir(self._staging):
            parts = name.split(".")
            pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else -1
            if pid == os.getpid() or process_alive(pid):
                continue
            rmtree(os.path.join(self._staging, name))
            removed.append(name)
        return removed

    # --- leases and removal -------------------------------------------------------------------------

    def _lease_dir(self, digest: Digest) -> str:
        return os.path.join(self._leases, digest.hex)

    def lease(self, digest: Digest, holder: str) -> None:
        d = self._lease_dir(digest)
        os.makedirs(d, mode=0o700, exist_ok=True)
        with open(os.path.join(d, _safe(holder)), "w"):
            pass

    def release(self, digest: Digest, holder: str) -> None:
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
        with self.locks.hold(f"snapshot-{digest.hex}"):
            if self.holders(digest):
                raise ImageInUseError(f"snapshot {digest} is in use by {', '.join(self.holders(digest))}")
            path = self.get(digest)
            if path is None:
                return False
            # Rename first so that nobody ever sees a half-deleted tree under the digest.
            doomed = os.path.join(self._staging, f"{digest.hex}.0.{uuid.uuid4().hex}")
            os.rename(path, doomed)
            rmtree(doomed)
            return True


def _safe(holder: str) -> str:
    return hashlib.sha256(holder.encode()).hexdigest()[:32] if "/" in holder or holder.startswith(".") else holder


def _make_read_only(root: str) -> None:
    """Remove every write bit in the tree (C2.11): published trees are shared read-only."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _strip_writes(root_fd)
    finally:
        os.close(root_fd)


def _strip_writes(dir_fd: int) -> None:
    with os.scandir(dir_fd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False), e.is_symlink()) for e in it]
    for name, is_dir, is_link in entries:
        if is_link:
            continue
        if is_dir:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not st.st_mode & stat.S_IRUSR or not st.st_mode & stat.S_IXUSR:
                os.chmod(name, st.st_mode | stat.S_IRUSR | stat.S_IXUSR, dir_fd=dir_fd, follow_symlinks=True)
                restore: int | None = st.st_mode
            else:
                restore = None
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                _strip_writes(fd)
                mode = (restore if restore is not None else os.fstat(fd).st_mode) & 0o7777
                os.fchmod(fd, mode & ~_WRITE_BITS)
            finally:
                os.close(fd)
        else:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                mode = os.fstat(fd).st_mode
                if mode & _WRITE_BITS:
                    # chmod through the O_PATH handle's magic link: the inode we just checked,
                    # not whatever a name might point to now.
                    os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(mode) & ~_WRITE_BITS)
            finally:
                os.close(fd)
    st = os.fstat(dir_fd)
    os.fchmod(dir_fd, stat.S_IMODE(st.st_mode) & ~_WRITE_BITS)
