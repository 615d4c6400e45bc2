"""Containers that really run (node option ``run_containers``): what the kubelet learns from the
runtime's ``ContainerStatus`` and how it restarts them.

The kubelet maps an exited container to ``Terminated`` (``Completed`` for exit code 0, ``Error``
otherwise, or the runtime's own reason), and decides with the Pod's ``restartPolicy`` whether to
start it again (``Always``; ``OnFailure`` on a non-zero exit; never for ``Never``). Restarts go
through the kubelet's crash-loop backoff (``kuberuntime_manager.doBackOff`` with
``flowcontrol.Backoff``: 10 s doubling to 300 s per container, forgotten after 10 minutes without a
crash), measured on the node's clock; while backing off the container waits with reason
``CrashLoopBackOff`` and the ``BackOff`` event is recorded.
"""

from __future__ import annotations

from typing import Protocol

from ..api.models import Pod
from ..cri import ContainerStatus
from .events import WARNING, EventRecorder, container_field_path
from .image_manager import Backoff

#: ``kubelet.go``: ``backOffPeriod`` and ``MaxContainerBackOff``.
INITIAL_CONTAINER_BACKOFF = 10.0
MAX_CONTAINER_BACKOFF = 300.0
EXITED = "CONTAINER_EXITED"


class StateLike(Protocol):
    """The fields of a container state the restart rules read and update."""

    name: str
    kind: str
    state: str
    reason: str
    message: str
    container_id: str
    exit_code: int
    finished_at: float


def container_backoff(entries: Backoff | None = None) -> Backoff:
    """A backoff with the kubelet's container settings (persisted entries kept)."""
    return Backoff(
        INITIAL_CONTAINER_BACKOFF,
        MAX_CONTAINER_BACKOFF,
        dict(entries.entries) if entries is not None else {},
    )


def observe(state: StateLike, status: ContainerStatus | None) -> None:
    """Fold the runtime's status of ``state``'s container into the state: an exit becomes
    ``Terminated`` with ``Completed``/``Error`` (or the runtime's reason) and its exit code."""
    if status is None or status.state != EXITED or state.state == "terminated":
        return
    state.state = "terminated"
    state.exit_code = status.exit_code
    state.finished_at = status.finished_at
    state.reason = status.reason or ("Completed" if status.exit_code == 0 else "Error")
    state.message = status.message


def should_restart(pod: Pod, state: StateLike) -> bool:
    """``ShouldContainerBeRestarted`` for a terminated container."""
    if state.kind == "initContainers" and state.reason == "Completed":
        return False
    policy = pod.spec.restart_policy or "Always"
    if policy == "Never":
        return False
    if policy == "OnFailure":
        return state.exit_code != 0
    return True


def pod_text(pod: Pod) -> str:
    """``format.Pod``: ``name_namespace(uid)``."""
    return f"{pod.name}_{pod.namespace or 'default'}({pod.uid})"


def in_backoff(pod: Pod, state: StateLike, backoff: Backoff, now: float, recorder: EventRecorder) -> bool:
    """``doBackOff``: True (and the container waiting in ``CrashLoopBackOff``) while the last
    exit is more recent than the current backoff; otherwise the backoff steps and the restart may go."""
    key = f"{pod.name}_{pod.namespace or 'default'}_{pod.uid}_{state.name}"
    entry = backoff.entries.get(key)
    # ``IsInBackOffSince``: an entry whose last step is more than twice the maximum before this
    # exit has expired (the container ran for ten minutes): no backoff, and ``Next`` restarts at 10 s.
    expired = entry is not None and state.finished_at - entry[1] > 2 * backoff.maximum
    if entry is not None and not expired and now - state.finished_at < entry[0]:
        field = container_field_path(state.name, state.kind)
        recorder.record(
            WARNING, "BackOff", f"Back-off restarting failed container {state.name} in pod {pod_text(pod)}", field
        )
        state.state, state.reason = "waiting", "CrashLoopBackOff"
        state.message = f"back-off {go_duration(entry[0])} restarting failed container={state.name} pod={pod_text(pod)}"
        return True
    backoff.next(key, state.finished_at)
    return False


def go_duration(seconds: float) -> str:
    """Go's ``time.Duration.String`` for whole seconds: ``10s``, ``1m20s``, ``5m0s``."""
    total = int(seconds)
    minutes, secs = divmod(total, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
