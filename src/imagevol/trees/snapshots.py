"""Read-only materialised trees, shared by every mount, named by what they contain.

* **Keyed by content identity.** An image's tree is named by the ChainID of its layers (image spec,
  config.md), computed from the config's ``rootfs.diff_ids``: images whose layer stacks are
  identical share one tree whatever their manifests, tags or layer compressions, and no two
  different stacks ever share one. An artifact has no diff IDs and its layout depends on its
  manifest (file names come from layer annotations), so its tree is named by its manifest digest.
  Directory names: ``chain-<alg>-<hex>``, ``chain-empty`` (an image without layers),
  ``manifest-<alg>-<hex>``.
* **Verified while built.** Every blob is re-hashed while it is read (a blob corrupted on disk after
  ingest fails the build), and every image layer's *uncompressed* stream is hashed too and compared
  with its diff ID: a layer that is not the one the config names fails the build ("wrong diff id
  calculated on extraction", containerd's wording), so a tree under a chain key holds exactly the
  layers the chain names, and one image cannot change what another image's Pods see.
* **Built in private, published by rename.** A tree is built in ``.staging/<name>.<pid>.<nonce>``
  and only renamed to ``<name>`` once every layer applied; a failed build removes its staging
  directory and publishes nothing. Files and directories keep the modes their layers give them
  (0644 stays 0644, 0755 stays 0755), as the runtimes' snapshots do: read-only is the job of the
  mounts (``exec --real`` binds ``ro``, the ``exec`` view only reads), not of the modes.
* **Private.** The snapshots directory and everything under ``.staging``, ``.leases`` and
  ``.locks`` are 0700 and owned by the node's user: no other user can reach a published tree, let
  alone write to it, whatever modes and owners its layers give its files (a layer's 0666 file owned
  by uid 1000 is unreachable to uid 1000). Nothing in imagevol ever opens a published tree for
  writing: mounts, the view and the GC open it read-only, from directory fds.
* **Single flight.** A build holds the flock ``snapshot-<name>`` for its whole duration: concurrent
  materialisations of one key, from threads or processes, wait for it and then find the tree.
* **Crash recovery.** A builder that dies leaves only its staging directory, and the kernel drops its
  flock. :meth:`Snapshots.recover` (run on every start) removes each staging directory whose lock it
  can take: nobody is building it, so it is debris (this also holds when the dead builder's pid has
  been reused). Trees an earlier version keyed by manifest digest (a bare ``<hex>`` name) are never
  used for new mounts; they stay while a lease holds them and are removed once none does.
* **Leases.** A mount holds a tree with a lease (an empty file ``.leases/<name>/<holder>``), taken
  and checked under the same lock as removal: a tree is removed only when no lease holds it, and a
  lease is never granted on a tree being removed.

Size: over 500 lines, because building, leasing, publishing and removing a tree share one lock per
tree and one staging discipline; the code that writes trees lives in :mod:`imagevol.trees.layers`
and :mod:`imagevol.trees.artifacts`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import stat
from collections.abc import Callable
from typing import IO, Any, TypeVar

import attrs

from .._tempname import nonce
from .._text import goquote
from ..content.locks import NamedLocks
from ..content.store import ContentStore, mismatch
from ..errors import DiffIDMismatchError, DigestMismatchError, ImageInUseError, ImageVolError
from ..oci import MAX_CONFIG_BYTES, Descriptor, Digest, Manifest, chain_id, image_diff_ids
from .artifacts import lay_out_artifact
from .layers import ApplyOptions, BuildState, apply_layer_fd, rmtree

_KEY = re.compile(r"(chain|manifest|partial)-([a-z0-9]+)-([0-9a-f]+)")
_LEGACY = re.compile(r"(?:sha256:)?([0-9a-f]{64})")

CHAIN = "chain"
MANIFEST = "manifest"
#: A partial tree (one sub path of an image, :mod:`imagevol.trees.partial`): never a full tree.
PARTIAL = "partial"
#: Trees of an earlier version, named by a bare manifest digest: kept only while leased.
LEGACY = "legacy"


@attrs.frozen(order=True)
class SnapshotKey:
    """The name of a tree: the ChainID of an image's layers (``digest`` None for an image without
    layers), or an artifact's manifest digest."""

    kind: str
    digest: Digest | None = None

    @classmethod
    def for_chain(cls, diff_ids: tuple[Digest, ...]) -> SnapshotKey:
        """The key of an image's tree: the chain ID of its layers."""
        return cls(CHAIN, chain_id(diff_ids))

    @classmethod
    def for_manifest(cls, digest: Digest) -> SnapshotKey:
        """The key of an artifact's tree: its manifest digest."""
        return cls(MANIFEST, digest)

    @classmethod
    def for_partial(cls, digest: Digest) -> SnapshotKey:
        """The key of the partial tree named by ``digest`` (a digest of what it was built from)."""
        return cls(PARTIAL, digest)

    @classmethod
    def parse(cls, text: str) -> SnapshotKey:
        """A key from its name (or the ``sha256:<hex>`` an earlier version recorded). Only names of
        letters, digits and ``-`` parse, so a key never names a path outside ``snapshots/``."""
        if text == f"{CHAIN}-empty":
            return cls(CHAIN)
        m = _KEY.fullmatch(text)
        if m is not None:
            try:
                return cls(m.group(1), Digest.parse(f"{m.group(2)}:{m.group(3)}"))
            except ImageVolError:
                pass
        m = _LEGACY.fullmatch(text)
        if m is not None:
            return cls(LEGACY, Digest("sha256", m.group(1)))
        raise ImageVolError(f"invalid snapshot key {text!r}")

    @property
    def name(self) -> str:
        """The tree's directory name under ``snapshots/``."""
        if self.kind == LEGACY and self.digest is not None:
            return self.digest.hex
        if self.digest is None:
            return f"{self.kind}-empty"
        return f"{self.kind}-{self.digest.algorithm}-{self.digest.hex}"

    @property
    def short(self) -> str:
        """Twelve characters for messages."""
        return self.digest.hex[:12] if self.digest is not None else "empty"

    def __str__(self) -> str:
        return self.name


@attrs.frozen
class SnapshotPlan:
    """What a tree is built from: its key, the manifest, and for an image the diff ID of each layer
    (from its config)."""

    key: SnapshotKey
    manifest: Manifest
    diff_ids: tuple[Digest, ...] = ()

    @property
    def artifact(self) -> bool:
        """Whether the tree is an artifact's."""
        return not self.manifest.is_image


def plan_for(store: ContentStore, manifest_digest: Digest, manifest: Manifest) -> SnapshotPlan:
    """How to build the tree of ``manifest`` (whose digest is ``manifest_digest``): for an image,
    its config is read from ``store`` (size and digest checked) and its diff IDs give the chain
    key; an artifact's key is its manifest digest."""
    if not manifest.is_image:
        return SnapshotPlan(SnapshotKey.for_manifest(manifest_digest), manifest)
    config = store.read_verified(manifest.config, MAX_CONFIG_BYTES)
    diff_ids = image_diff_ids(manifest, config)
    return SnapshotPlan(SnapshotKey.for_chain(diff_ids), manifest, diff_ids)


@attrs.frozen
class Snapshot:
    """A published tree and its key."""

    key: SnapshotKey
    path: str
    artifact: bool
    warnings: tuple[str, ...] = ()


class _VerifyingReader(io.RawIOBase):
    """Hashes a blob while it is read and fails at EOF if it does not match: a blob corrupted on
    disk after ingest can never become a published tree. The size was checked against the
    descriptor before (``ContentStore.check_size``), so a mismatch here is the store's bytes having
    changed, never a descriptor lying."""

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
                raise DigestMismatchError(
                    f"{mismatch('digest', self.desc)}: blob {self.desc.digest} in the content store is corrupt: "
                    "it grew while it was read"
                )
            self.hasher.update(data)
            buffer[:n] = data
            return n
        if self.count != self.desc.size or self.hasher.hexdigest() != self.desc.digest.hex:
            got = Digest(self.desc.digest.algorithm, self.hasher.hexdigest())
            raise DigestMismatchError(
                f"{mismatch('digest', self.desc)}: blob {self.desc.digest} in the content store is corrupt: "
                f"{self.count} bytes hashing to {got}"
            )
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
        self.staging = self._staging = os.path.join(self.root, ".staging")
        self._leases = os.path.join(self.root, ".leases")
        for d in (self.root, self._staging, self._leases):
            os.makedirs(d, mode=0o700, exist_ok=True)
            _make_private(d)
        self.locks = NamedLocks(os.path.join(self.root, ".locks"))
        self.recover()

    # --- keys -----------------------------------------------------------------------------------

    def plan(self, manifest_digest: Digest, manifest: Manifest) -> SnapshotPlan:
        """:func:`plan_for` on this node's content store."""
        return plan_for(self.store, manifest_digest, manifest)

    # --- lookup ---------------------------------------------------------------------------------

    def path(self, key: SnapshotKey) -> str:
        """Where the tree ``key`` is (or would be) published."""
        return os.path.join(self.root, key.name)

    def get(self, key: SnapshotKey) -> str | None:
        """The path of the published tree ``key``, None if it is not built."""
        p = self.path(key)
        return p if os.path.isdir(p) else None

    def published(self) -> list[SnapshotKey]:
        """Every published tree (those of an earlier version included)."""
        out = []
        for name in sorted(os.listdir(self.root)):
            if name.startswith("."):
                continue
            with contextlib.suppress(ImageVolError):
                out.append(SnapshotKey.parse(name))
        return out

    def usage(self) -> tuple[int, int]:
        """Bytes and entries of the snapshots directory (trees, builds in progress, leases, locks):
        the apparent size of every file, symlink and special file (a hard link once per name) and
        one entry per name, directories included.

        The walk goes from directory fd to directory fd with ``O_NOFOLLOW``: a symlink in a tree
        is measured as a link and never followed, so nothing outside the directory is ever
        looked at, whatever an image's links point to. It holds one fd per level (trees nest
        deeper than any path the kernel accepts); a directory it may not read (a layer can ship
        mode 0000) is counted but not entered."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        total = entries = 0
        # Each frame: (fd of a directory already listed, names of its subdirectories still to visit).
        frames: list[tuple[int, list[str]]] = []

        def visit(fd: int) -> None:
            nonlocal total, entries
            subdirs: list[str] = []
            try:
                with os.scandir(fd) as it:
                    for entry in it:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue  # removed meanwhile
                        entries += 1
                        if stat.S_ISDIR(st.st_mode):
                            subdirs.append(entry.name)
                        else:
                            total += st.st_size
            except OSError:
                os.close(fd)
                return
            frames.append((fd, subdirs))

        try:
            visit(os.open(self.root, flags))
            while frames:
                fd, subdirs = frames[-1]
                if not subdirs:
                    frames.pop()
                    os.close(fd)
                    continue
                try:
                    child = os.open(subdirs.pop(), flags, dir_fd=fd)
                except OSError:
                    continue  # removed or replaced meanwhile, or not ours to read
                visit(child)
        finally:
            for fd, _ in frames:
                os.close(fd)
        return total, entries

    def _lock(self, key: SnapshotKey, *, blocking: bool = True) -> contextlib.AbstractContextManager[bool]:
        return self.locks.hold(f"snapshot-{key.name}", blocking=blocking)

    # --- build --------------------------------------------------------------------------------

    def open_layer(self, desc: Descriptor) -> IO[bytes]:
        """A stored blob, its size checked first and its digest verified as it is read."""
        return self._open_blob(desc)

    def _open_blob(self, desc: Descriptor) -> IO[bytes]:
        # A descriptor whose size differs from the stored blob lies (the blob was verified when it
        # was ingested): say so before reading, rather than blaming the store at the end.
        self.store.check_size(desc)
        blob = self.store.open_blob(desc.digest)
        if not self.verify:
            return blob
        return io.BufferedReader(_VerifyingReader(blob, desc), buffer_size=1024 * 1024)

    def materialise(self, plan: SnapshotPlan, on_build: Callable[[SnapshotKey], None] | None = None) -> Snapshot:
        """The published tree of ``plan``, building it if needed."""

        def build(root_fd: int, state: BuildState) -> list[str]:
            if on_build is not None:
                on_build(plan.key)
            return self._build(root_fd, plan, state)

        return self.materialise_tree(plan.key, build, artifact=plan.artifact)

    def materialise_tree(
        self, key: SnapshotKey, build: Callable[[int, BuildState], list[str]], *, artifact: bool = False
    ) -> Snapshot:
        """The published tree of ``key``, built by ``build(root_fd, state)`` (which returns its
        warnings) in a private staging directory when it is not published yet: single flight
        under the key's lock, published by rename, nothing visible on failure."""
        existing = self.get(key)
        if existing is not None:
            return Snapshot(key, existing, artifact)
        with self._lock(key):
            existing = self.get(key)
            if existing is not None:
                return Snapshot(key, existing, artifact)
            staging = os.path.join(self._staging, f"{key.name}.{os.getpid()}.{nonce()}")
            state = BuildState()
            warnings = publish_tree(self.path(key), staging, lambda root_fd: build(root_fd, state), state=state)
            return Snapshot(key, self.path(key), artifact, tuple(warnings))

    def _build(self, root_fd: int, plan: SnapshotPlan, state: BuildState) -> list[str]:
        manifest = plan.manifest
        if plan.artifact:
            return lay_out_artifact(root_fd, manifest, self._open_blob, self.options, state)
        if len(plan.diff_ids) != len(manifest.layers):  # plan() guarantees it; a hand-made plan may not
            raise DiffIDMismatchError(
                f"number of layers and diffIDs don't match: {len(manifest.layers)} != {len(plan.diff_ids)}"
            )
        warnings = []
        count = len(manifest.layers)
        for i, (layer, want) in enumerate(zip(manifest.layers, plan.diff_ids, strict=True)):
            with self._open_blob(layer) as blob:
                stats = apply_layer_fd(root_fd, blob, self.options, state, diff_algorithm=want.algorithm)
            if stats.diff_id != want:
                raise DiffIDMismatchError(
                    f"wrong diff id calculated on extraction {goquote(str(stats.diff_id))}: the image config "
                    f"names {goquote(str(want))} for layer {i + 1} of {count} ({layer.digest})"
                )
            if stats.skipped_devices:
                warnings.append(
                    f"layer {layer.digest}: skipped {len(stats.skipped_devices)} device node(s)"
                    f" ({', '.join(stats.skipped_devices[:3])})"
                )
        return warnings

    def acquire(self, plan: SnapshotPlan, holder: str) -> Snapshot:
        """Materialise (if needed) and lease in one step, so that no removal can slip in between
        (``materialise`` then ``lease`` leaves that window; ``lease`` then fails cleanly)."""
        return self._acquire(plan.key, lambda: self.materialise(plan), holder)

    def acquire_tree(self, key: SnapshotKey, build: Callable[[int, BuildState], list[str]], holder: str) -> Snapshot:
        """:meth:`materialise_tree` and lease in one step (see :meth:`acquire`)."""
        return self._acquire(key, lambda: self.materialise_tree(key, build), holder)

    def _acquire(self, key: SnapshotKey, materialise: Callable[[], Snapshot], holder: str) -> Snapshot:
        while True:
            snap = materialise()
            try:
                self.lease(key, holder)
            except ImageVolError:
                if self.get(key) is None:
                    continue  # removed in between: build it again
                raise
            return snap

    # --- crash recovery ---------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Remove staging directories nobody is building (their builder crashed), and trees of an
        earlier version (named by manifest digest) that no lease holds."""
        removed = []
        for name in sorted(os.listdir(self._staging)):
            try:
                key: SnapshotKey | None = SnapshotKey.parse(name.split(".", 1)[0])
            except ImageVolError:
                key = None
            if key is None:
                rmtree(os.path.join(self._staging, name))
                removed.append(name)
                continue
            with self._lock(key, blocking=False) as free:
                if free and os.path.lexists(os.path.join(self._staging, name)):
                    rmtree(os.path.join(self._staging, name))
                    removed.append(name)
        for key in self.published():
            if key.kind == LEGACY:
                with self._lock(key, blocking=False) as free:
                    if free and not self.holders(key) and self._remove_locked(key):
                        removed.append(key.name)
        return removed

    # --- leases and removal -------------------------------------------------------------------------

    def _lease_dir(self, key: SnapshotKey) -> str:
        return os.path.join(self._leases, key.name)

    def lease(self, key: SnapshotKey, holder: str) -> None:
        """Hold the published tree of ``key`` for ``holder`` (a container)."""
        with self._lock(key):
            if self.get(key) is None:
                raise ImageVolError(f"snapshot {key} is not materialised")
            d = self._lease_dir(key)
            os.makedirs(d, mode=0o700, exist_ok=True)
            with open(os.path.join(d, _safe(holder)), "w"):
                pass

    def release(self, key: SnapshotKey, holder: str) -> None:
        """Drop ``holder``'s lease on the tree ``key``."""
        with self._lock(key):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._lease_dir(key), _safe(holder)))
            with contextlib.suppress(OSError):
                os.rmdir(self._lease_dir(key))

    def holders(self, key: SnapshotKey) -> list[str]:
        """Who holds leases on the tree ``key``."""
        try:
            return sorted(os.listdir(self._lease_dir(key)))
        except FileNotFoundError:
            return []

    def remove(self, key: SnapshotKey) -> bool:
        """Delete a published tree; refused while any lease holds it."""
        with self._lock(key):
            holders = self.holders(key)
            if holders:
                raise ImageInUseError(f"snapshot {key} is in use by {', '.join(holders)}")
            return self._remove_locked(key)

    def _remove_locked(self, key: SnapshotKey) -> bool:
        path = self.get(key)
        if path is None:
            return False
        # Rename first so that nobody ever sees a half-deleted tree under the key.
        doomed = os.path.join(self._staging, f"{key.name}.{os.getpid()}.{nonce()}")
        os.rename(path, doomed)
        rmtree(doomed)
        return True


T = TypeVar("T")


def publish_tree(
    dest: str,
    staging: str,
    build: Callable[[int], T],
    *,
    state: BuildState | None = None,
) -> T:
    """Build a tree in the new private directory ``staging`` with ``build(root_fd)``, apply the
    modes ``state`` deferred, and rename it to ``dest``. On any error the staging directory is
    removed and nothing appears at ``dest``. ``staging`` must be on the same filesystem as
    ``dest``. The tree keeps the modes its layers gave it; its root is 0755 unless a layer says
    otherwise."""
    os.mkdir(staging, 0o700)
    try:
        root_fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fchmod(root_fd, 0o755)
            result = build(root_fd)
            root_mode = stat.S_IMODE(os.fstat(root_fd).st_mode)
            if state is not None:
                root_mode = state.deferred.pop((), root_mode)
                state.finish(root_fd)
            # Moving a directory to another parent needs write permission on it (its ".." entry
            # changes) unless one is privileged: a root mode without the owner's write bit is set
            # just after the rename by an unprivileged builder. The tree is below the 0700
            # snapshots directory either way, so nobody else can reach it in that instant.
            privileged = os.geteuid() == 0
            if privileged or root_mode & stat.S_IWUSR:
                os.fchmod(root_fd, root_mode)
                os.rename(staging, dest)
            else:
                os.rename(staging, dest)
                os.fchmod(root_fd, root_mode)
        finally:
            os.close(root_fd)
        return result
    finally:
        rmtree(staging)  # a no-op after the rename


def _safe(holder: str) -> str:
    return hashlib.sha256(holder.encode()).hexdigest()[:32] if "/" in holder or holder.startswith(".") else holder


def _make_private(path: str) -> None:
    """Mode 0700 on a directory of the node's own (an existing directory keeps a looser mode
    otherwise, and ``makedirs`` is subject to the umask). A directory someone else owns is left
    as it is: it is not ours to change, and the kernel refuses anyway."""
    st = os.stat(path, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700, follow_symlinks=False)
