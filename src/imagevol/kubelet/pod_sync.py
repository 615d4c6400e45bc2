"""The kubelet's pod sync (sections 3 to 6 of docs/requirements.md, R11.1).

One ``sync_pod`` pass does what ``kuberuntime_manager.SyncPod`` does for a Pod with image volumes:
pull every image volume in spec order through the image manager (failures are kept, not raised,
R3.9), then start init containers in order (a failing non-sidecar init container blocks the rest,
R5.7), then regular containers. Each container start is ``startContainer``'s: build the container's
image-volume map (a failed volume pull surfaces here, R4.2), pull the container's own image through
the same image manager (``EnsureImageExists``, events against the container), build mounts
(``subPathExpr`` expansion and re-validation, R4.4/R4.5), call the runtime's ``CreateContainer``
with the pulled image and the mounts, and then count metrics (R6.3/R6.4). Containers already running
are left alone; failed ones are retried on the next pass (R5.6), a failed image pull under the
image backoff.

A Pod with nothing to start (:attr:`PodRecord.settled`) is left alone entirely when containers are
simulated: no pull, no event (k/k PR #138655).

What the record keeps of a container is the API's ``containerStatuses[]`` entry, see
:class:`ContainerState`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .._text import goquote, strerror
from ..api.defaults import default_pull_policy
from ..api.dump import pod_to_dict
from ..api.features import FeatureGates
from ..api.load import pod_from_dict
from ..api.models import Container, Pod
from ..cri import (
    PROPAGATION,
    ContainerConfig,
    ContainerLifecycle,
    ContainerStatus,
    ImageSpec,
    Keyring,
    Mount,
    RuntimeService,
)
from ..errors import CreateContainerConfigError, CreateContainerError, ImageVolError, ImageVolumeMountFailedError
from . import restarts
from ._envvars import container_env, effective_sub_path
from .events import NORMAL, WARNING, Event, EventRecorder, container_field_path
from .image_manager import Backoff, ImageManager
from .metrics import METRICS_MODES, KubeletMetrics


@attrs.define
class ContainerState:
    """One entry of the Pod's ``status.containerStatuses`` / ``initContainerStatuses``.

    ``state``, ``reason`` and ``message`` are ``state.{waiting,running,terminated}`` with its reason
    and message; ``container_id`` is ``containerID`` (without the ``<runtime>://`` prefix);
    ``image`` is ``image`` (the spec's image until the runtime created the container, then the
    runtime's name for it, ``docker.io/library/debian:latest``); ``image_id`` is ``imageID``
    (``<repository>@<digest>`` of the image the container runs from); ``volume_mounts`` is
    ``volumeMounts`` in the API's JSON shape (``name``, ``mountPath``, ``readOnly`` and, for an image
    volume, ``volumeStatus.image.imageRef``), reported with ``ImageVolumeWithDigest`` only (R11.9)."""

    name: str
    kind: str  # initContainers | containers | ephemeralContainers
    state: str = "waiting"  # waiting | running | terminated
    reason: str = "ContainerCreating"
    message: str = ""
    container_id: str = ""
    started_at: float = 0.0
    sidecar: bool = False
    attempts: int = 0
    image: str = ""
    image_id: str = ""
    volume_mounts: list[dict[str, Any]] = attrs.field(factory=list)
    #: Containers run for real (``restarts``): the last exit, ``restartCount``, and the exited
    #: container kept for ``logs --previous``.
    exit_code: int = 0
    finished_at: float = 0.0
    restart_count: int = 0
    previous_id: str = ""

    @property
    def done(self) -> bool:
        """Run to completion, or running where that is enough: a regular or sidecar container (a
        non-sidecar init container that runs for real is done only when it completed)."""
        if self.state == "running":
            return self.kind != "initContainers" or self.sidecar
        return self.state == "terminated" and self.reason == "Completed"


@attrs.define
class VolumeResult:
    """The pod-level pull result of one image volume (R3.8): an image ref, or an error."""

    volume: str
    user_image: str
    image_ref: str = ""
    reason: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        """Whether the volume's image was pulled."""
        return not self.reason


@attrs.define
class PodRecord:
    """What the node knows about one Pod: its admitted spec and its status."""

    pod: Pod
    containers: list[ContainerState]
    volumes: dict[str, VolumeResult] = attrs.field(factory=dict)
    events: list[Event] = attrs.field(factory=list)
    created_at: float = 0.0
    syncs: int = 0

    @classmethod
    def new(cls, pod: Pod, now: float) -> PodRecord:
        """The record of a Pod just admitted at ``now``: every container waiting."""
        states = [
            ContainerState(
                c.name, "initContainers", sidecar=c.restart_policy == "Always", reason="PodInitializing", image=c.image
            )
            for c in pod.spec.init_containers
        ]
        states += [ContainerState(c.name, "containers", image=c.image) for c in pod.spec.containers]
        return cls(pod, states, created_at=now)

    @property
    def sandbox_id(self) -> str:
        """The ID of the Pod's sandbox (derived from its UID)."""
        return hashlib.sha256(f"sandbox/{self.pod.uid}".encode()).hexdigest()

    @property
    def settled(self) -> bool:
        """Synced at least once and every container started (init containers done): a kubelet
        pass has nothing to start, so it pulls nothing and records nothing (k/k PR #138655)."""
        return self.syncs > 0 and not any(_needs_start(s) for s in self.containers)

    def state(self, name: str) -> ContainerState:
        """The state of the container ``name`` (``KeyError`` if the Pod has none)."""
        for s in self.containers:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def phase(self) -> str:
        """``Running`` when every regular container runs, else ``Pending``."""
        regular = [s for s in self.containers if s.kind == "containers"]
        if regular and all(s.state == "terminated" for s in regular):
            return "Succeeded" if all(s.reason == "Completed" for s in regular) else "Failed"
        return "Running" if regular and all(s.state == "running" for s in regular) else "Pending"

    @property
    def status_text(self) -> str:
        """The STATUS column of ``kubectl get pod``."""
        inits = [s for s in self.containers if s.kind == "initContainers"]
        for i, s in enumerate(inits):
            if not s.done and not s.sidecar:
                reason = s.reason if s.reason not in ("PodInitializing", "ContainerCreating") else ""
                return f"Init:{reason}" if reason else f"Init:{i}/{len(inits)}"
        for s in self.containers:
            if s.kind == "containers" and s.state == "waiting" and s.reason not in ("ContainerCreating",):
                return s.reason
        if self.phase in ("Succeeded", "Failed"):
            return next(s.reason for s in reversed(self.containers) if s.kind == "containers")
        return self.phase if self.phase == "Running" else "ContainerCreating"

    def to_json(self) -> dict[str, Any]:
        """The record as node state stores it."""
        return {
            "pod": pod_to_dict(self.pod),
            "containers": [attrs.asdict(s) for s in self.containers],
            "volumes": {k: attrs.asdict(v) for k, v in self.volumes.items()},
            "events": [e.to_json() for e in self.events],
            "created_at": self.created_at,
            "syncs": self.syncs,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> PodRecord:
        """The record :meth:`to_json` stored."""
        return cls(
            pod=pod_from_dict(obj["pod"]),
            containers=[ContainerState(**s) for s in obj["containers"]],
            volumes={k: VolumeResult(**v) for k, v in obj.get("volumes", {}).items()},
            events=[Event.from_json(e) for e in obj.get("events", [])],
            created_at=float(obj.get("created_at", 0.0)),
            syncs=int(obj.get("syncs", 0)),
        )


# --- environment and subPathExpr --------------------------------------------------------------------
# ``expand``, ``container_env`` and ``effective_sub_path`` live in envvars.py (re-exported here).


# --- the kubelet ---------------------------------------------------------------------------------


class Kubelet:
    """The pod sync of one node. It reaches the runtime through the CRI only (:mod:`imagevol.cri`):
    ``CreateContainer`` on ``runtime``, and the image service through ``image_manager``."""

    def __init__(
        self,
        runtime: RuntimeService,
        image_manager: ImageManager,
        metrics: KubeletMetrics,
        gates: FeatureGates,
        *,
        clock: Callable[[], float] = time.time,
        metrics_mode: str = "upstream",
        node_name: str = "imagevol-node",
        lifecycle: ContainerLifecycle | None = None,
        container_backoff: Backoff | None = None,
    ) -> None:
        if metrics_mode not in METRICS_MODES:
            raise ValueError(f"metrics mode must be one of {METRICS_MODES}")
        self.runtime = runtime
        self.images = image_manager
        self.metrics = metrics
        self.gates = gates
        self.clock = clock
        self.metrics_mode = metrics_mode
        self.node_name = node_name
        #: ``StartContainer`` when the node runs containers for real (None: simulated, a created
        #: container is running and never exits).
        self.lifecycle = lifecycle
        self.container_backoff = container_backoff or restarts.container_backoff()

    def sync_pod(self, record: PodRecord, keyring: Keyring | None = None) -> PodRecord:
        """One SyncPod pass over ``record`` (mutated in place and returned)."""
        if record.settled and self.lifecycle is None:
            # The steady state: no container to start, so the pass stops before the sandbox
            # config and the image volumes (k/k PR #138655, which ended an event per image volume
            # per sync). The record is left as it was, byte for byte: nothing to write back.
            # Containers run for real are observed on every pass instead: they may have exited.
            return record
        keyring = keyring or Keyring()
        recorder = EventRecorder(record.events, clock=self.clock)
        record.syncs += 1
        pod = record.pod
        if self.lifecycle is not None:
            for st in record.containers:
                if st.container_id:
                    restarts.observe(st, self.runtime.container_status(st.container_id))
        # R3.1/R3.11: every pass that reaches container start resolves every image volume, in order.
        record.volumes = self._pull_volumes(pod, keyring, recorder) if self.gates.enabled("ImageVolume") else {}
        for state in record.containers:
            if state.kind != "initContainers":
                continue
            if state.done or not self._may_start(pod, state, recorder):
                if not state.done and not state.sidecar:
                    return record
                continue
            self._start(record, self._spec(pod, state), state, recorder, keyring)
            if not state.done and not state.sidecar:
                return record  # R5.7: a failing init container blocks the Pod
        for state in record.containers:
            if state.kind == "containers" and state.state != "running" and self._may_start(pod, state, recorder):
                self._start(record, self._spec(pod, state), state, recorder, keyring)
        return record

    def _may_start(self, pod: Pod, state: ContainerState, recorder: EventRecorder) -> bool:
        """Whether a container that is not running starts on this pass: always in the simulation
        and before its first start; after an exit, by ``restartPolicy`` and the crash-loop backoff.
        A restart keeps the exited container as the previous one (its log) and removes the one
        before."""
        if self.lifecycle is None or not state.container_id:
            return True
        if state.state != "terminated" and state.reason != "CrashLoopBackOff":
            return state.state != "running"
        if not restarts.should_restart(pod, state):
            return False
        if restarts.in_backoff(pod, state, self.container_backoff, self.clock(), recorder):
            return False
        if state.previous_id:
            self.runtime.remove_container(state.previous_id)
        state.previous_id, state.container_id = state.container_id, ""
        state.restart_count += 1
        return True

    @staticmethod
    def _spec(pod: Pod, state: ContainerState) -> Container:
        group = pod.spec.init_containers if state.kind == "initContainers" else pod.spec.containers
        return next(c for c in group if c.name == state.name)

    def _pull_volumes(self, pod: Pod, keyring: Keyring, recorder: EventRecorder) -> dict[str, VolumeResult]:
        results: dict[str, VolumeResult] = {}
        for volume in pod.spec.volumes:
            if volume.image is None:
                continue
            res = self.images.ensure(pod.uid, volume.image.reference, volume.image.pull_policy, keyring, recorder)
            results[volume.name] = VolumeResult(
                volume.name, volume.image.reference, res.image_ref, res.reason, res.message
            )
        return results

    def _image_volumes(
        self, record: PodRecord, container: Container, state: ContainerState, recorder: EventRecorder
    ) -> dict[str, VolumeResult] | None:
        """``toKubeContainerImageVolumes`` (R4.2): the container's image volumes, or None after
        recording one event per failing mount and the last failure on the container."""
        mine: dict[str, VolumeResult] = {}
        last: VolumeResult | None = None
        field = container_field_path(container.name, state.kind)
        for m in container.volume_mounts:
            res = record.volumes.get(m.name)
            if res is None:
                continue
            if not res.ok:
                recorder.record(WARNING, "Failed", f"Error: {res.reason}", field)
                last = res
                continue
            mine[m.name] = res
        if last is not None:
            _wait(state, last.reason, last.message)
            return None
        return mine

    def _mounts(self, pod: Pod, container: Container, volumes: Mapping[str, VolumeResult]) -> tuple[Mount, ...]:
        """``makeMounts`` for image volumes (R4.3 to R4.7)."""
        env = container_env(pod, container, self.node_name)
        mounts = []
        for m in container.volume_mounts:
            vol = pod.spec.volume(m.name)
            if vol is None:
                raise CreateContainerConfigError(
                    f"cannot find volume {goquote(m.name)} to mount into container {goquote(container.name)}"
                )
            sub = effective_sub_path(m, env)
            res = volumes.get(m.name)
            if res is None:
                if vol.image is not None:
                    # R5.8: the kubelet gate is off; the API accepted the volume, the generic path
                    # has no host path to offer.
                    mounts.append(Mount(m.mount_path, "", m.read_only, None, sub, PROPAGATION[m.mount_propagation]))
                continue
            spec = ImageSpec(res.image_ref, res.user_image, annotations=dict(pod.metadata.annotations))
            mounts.append(Mount(m.mount_path, "", True, spec, sub, PROPAGATION[m.mount_propagation]))
        return tuple(mounts)

    def _start(
        self, record: PodRecord, container: Container, state: ContainerState, recorder: EventRecorder, keyring: Keyring
    ) -> None:
        """``startContainer`` for one container, then ``incrementImageVolumeMetrics``."""
        pod = record.pod
        field = container_field_path(container.name, state.kind)
        state.attempts += 1
        volumes = self._image_volumes(record, container, state, recorder)
        if volumes is None:
            return  # R6.3: nothing is counted before the image-volume map exists
        # Step 1 of startContainer: the container's own image, through the image manager, with
        # its events on the container. A failure stops the start before CreateContainer.
        policy = container.image_pull_policy or default_pull_policy(container.image)
        pulled = self.images.ensure(pod.uid, container.image, policy, keyring, recorder, field)
        if not pulled.ok:
            recorder.record(WARNING, "Failed", f"Error: {pulled.reason}", field)
            _wait(state, pulled.reason, pulled.message)
            self._count(container, volumes, failed=True, mount_failed=False, called_runtime=False)
            return
        called_runtime = False
        error: ImageVolError | None = None
        try:
            mounts = self._mounts(pod, container, volumes)
            image = ImageSpec(pulled.image_ref, container.image, annotations=dict(pod.metadata.annotations))
            config = ContainerConfig(
                container.name,
                image,
                mounts,
                envs=tuple(container_env(pod, container, self.node_name).items()),
                command=container.command,
                args=container.args,
                # ``truncatePodHostnameIfNeeded``: a hostname is at most 63 bytes.
                hostname=pod.name[:63].rstrip("-."),
            )
            called_runtime = True
            missing = [mt for mt in mounts if mt.image is None and not mt.host_path]
            if missing:
                raise _KubeletGateOffError(self.runtime.name, missing[0].container_path)
            created = self.runtime.create_container(record.sandbox_id, config)
            if self.lifecycle is not None:
                self.lifecycle.start_container(created.id)
        except CreateContainerConfigError as exc:
            error = exc
            recorder.record(WARNING, "Failed", f"Error: {exc}", field)
            _wait(state, "CreateContainerConfigError", str(exc))
        except (ImageVolError, OSError) as raised:
            # A local failure of the runtime (disk full while building a tree, a read-only store)
            # is reported like any CreateContainerError, without the host path Python attaches.
            error = raised if isinstance(raised, ImageVolError) else _local_create_error(container.name, raised)
            recorder.record(WARNING, "Failed", f"Error: {error}", field)
            _wait(state, "CreateContainerError", str(error))
        else:
            recorder.record(NORMAL, "Created", f"Created container: {container.name}", field)
            recorder.record(NORMAL, "Started", f"Started container {container.name}", field)
            state.container_id = created.id
            state.started_at = self.clock()
            state.image, state.image_id = created.image or container.image, created.image_ref
            state.volume_mounts = self._volume_mount_statuses(container, volumes, created) if self._with_digest else []
            if state.kind == "initContainers" and not state.sidecar and self.lifecycle is None:
                # The simulator runs no processes: an init container that starts, completes.
                state.state, state.reason, state.message = "terminated", "Completed", ""
            else:
                state.state, state.reason, state.message = "running", "", ""
        self._count(
            container,
            volumes,
            failed=error is not None,
            mount_failed=isinstance(error, ImageVolumeMountFailedError),
            called_runtime=called_runtime,
        )

    @property
    def _with_digest(self) -> bool:
        """R11.9: the kubelet reports image-volume digests with both gates on."""
        return self.gates.enabled("ImageVolume") and self.gates.enabled("ImageVolumeWithDigest")

    @staticmethod
    def _volume_mount_statuses(
        container: Container, volumes: Mapping[str, VolumeResult], created: ContainerStatus
    ) -> list[dict[str, Any]]:
        """``containerStatuses[].volumeMounts`` (API JSON shape): every mount of the container, and
        for an image volume ``volumeStatus.image.imageRef``, the exact image the runtime mounted
        (``<repository>@<digest>``, as ``imageID`` names the container's image; R11.9)."""
        mounted = {m.container_path: m for m in created.mounts}
        out: list[dict[str, Any]] = []
        for m in container.volume_mounts:
            entry: dict[str, Any] = {"name": m.name, "mountPath": m.mount_path}
            status = mounted.get(m.mount_path) if m.name in volumes else None
            entry["readOnly"] = True if m.name in volumes else m.read_only
            if status is not None and status.image_ref:
                entry["volumeStatus"] = {"image": {"imageRef": status.image_ref}}
            out.append(entry)
        return out

    def _count(
        self,
        container: Container,
        volumes: Mapping[str, VolumeResult],
        *,
        failed: bool,
        mount_failed: bool,
        called_runtime: bool,
    ) -> None:
        """``incrementImageVolumeMetrics`` (R6.3), per mount per start attempt. Upstream counts
        every start attempt that had an image-volume map, and only a runtime image-volume mount
        failure as an error: an attempt that failed before ``CreateContainer`` (the container's
        image failed to pull, a config error) is a "success" (R6.4, kubernetes PR #138460). The
        fixed mode counts only attempts that reached ``CreateContainer``, and any failure there as
        an error."""
        if self.metrics_mode == "fixed" and not called_runtime:
            return
        for m in container.volume_mounts:
            if m.name not in volumes:
                continue
            self.metrics.requested += 1
            if mount_failed if self.metrics_mode == "upstream" else failed:
                self.metrics.errors += 1
            else:
                self.metrics.succeeded += 1


class _KubeletGateOffError(ImageVolError):
    """R5.8: the kubelet's gate is off, so no image was pulled and the runtime gets an image-volume
    mount with neither host path nor image; runtimes refuse it."""

    reason = "CreateContainerError"

    def __init__(self, runtime: str, container_path: str) -> None:
        if runtime == "crio":
            msg = "mount.HostPath is empty"
        else:
            msg = f"failed to generate spec: host path is not set for mount {goquote(container_path)}"
        super().__init__(msg)


def _local_create_error(name: str, exc: OSError) -> CreateContainerError:
    return CreateContainerError(f"failed to create container {goquote(name)}: {strerror(exc)}")


def _needs_start(state: ContainerState) -> bool:
    """Whether a pass starts this container: an init container until it is done, a regular one
    until it runs."""
    if state.kind == "initContainers":
        return not state.done
    return state.kind == "containers" and state.state != "running"


def _wait(state: ContainerState, reason: str, message: str) -> None:
    state.state, state.reason, state.message = "waiting", reason, message
