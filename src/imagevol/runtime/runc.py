"""The OCI runtime driver: bundles under the node root and ``runc`` (with a per-node ``--root``, so
``runc --root ... list`` shows this node's containers only) driven through the staging helper and
monitor of :mod:`imagevol.runtime._shim`.

A bundle (``runtime/oci/bundles/<id>/``, 0700) holds ``config.json`` (:mod:`.oci_spec`), the
helper's ``plan.json`` (what to mount where), the mount points ``rootfs`` and ``stage/``, the
overlay's ``upper``/``work``, the container's ``container.log`` and the monitor's ``status.json``.
Removing a container stops it (SIGTERM, a grace period, SIGKILL), waits for its monitor, asks runc
to forget it and removes the bundle: no mount was ever made in the host's namespace, so nothing is
left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from . import _shim

#: The states of CRI's ``ContainerState``.
CREATED, RUNNING, EXITED, UNKNOWN = "CONTAINER_CREATED", "CONTAINER_RUNNING", "CONTAINER_EXITED", "CONTAINER_UNKNOWN"


@attrs.frozen
class RunState:
    """What the monitor recorded: the CRI ``ContainerStatus`` fields of a container's process."""

    state: str = CREATED
    exit_code: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    reason: str = ""
    message: str = ""


def unavailable_reason(binary: str = "runc") -> str | None:
    """None when containers can run here, else why not (one sentence for the user)."""
    if os.geteuid() != 0:
        return "no OCI runtime can run containers here: imagevol runs them with runc as root, and this is not root"
    if shutil.which(binary) is None:
        return "no OCI runtime can run containers here: runc is not installed (Debian package runc)"
    return None


class Runc:
    """Bundles and runc containers under ``state_dir``."""

    def __init__(self, state_dir: str, binary: str | None = None) -> None:
        self.state_dir = state_dir
        self.binary = binary or shutil.which("runc") or "runc"
        self.runc_root = os.path.join(state_dir, "runc")
        self.bundles = os.path.join(state_dir, "bundles")

    def unavailable(self) -> str | None:
        """Why no container can run here, or None when runc can run them."""
        return unavailable_reason(self.binary)

    def bundle(self, container_id: str) -> str:
        """The container's bundle directory (the id is checked: hex only)."""
        if not container_id or not all(c in "0123456789abcdef" for c in container_id):
            raise ValueError("invalid container id")
        return os.path.join(self.bundles, container_id)

    def create(self, container_id: str, config: dict[str, Any], plan: dict[str, Any]) -> str:
        """Write the bundle of ``container_id``; returns its directory."""
        for d in (self.bundles, self.runc_root):
            os.makedirs(d, mode=0o700, exist_ok=True)
        bundle = self.bundle(container_id)
        os.mkdir(bundle, 0o700)
        try:
            for sub in ("rootfs", "upper", "work", "stage", "empty"):
                os.mkdir(os.path.join(bundle, sub), 0o755)
            plan = {**plan, "id": container_id, "runc": self.binary, "runc_root": self.runc_root}
            for name, obj in (("config.json", config), (_shim.PLAN, plan)):
                with open(os.path.join(bundle, name), "w") as f:
                    json.dump(obj, f, indent=1)
        except BaseException:
            shutil.rmtree(bundle, ignore_errors=True)
            raise
        return bundle

    def _shim(self, container_id: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "imagevol.runtime._shim", self.bundle(container_id), *extra]

    def run(self, container_id: str) -> int:
        """Run the container in the foreground with this process's stdio; returns its exit status."""
        env = dict(os.environ, PYTHONPATH=_import_path())
        return subprocess.run(self._shim(container_id), check=False, env=env).returncode

    def start(self, container_id: str) -> None:
        """Start the container under a detached monitor (``StartContainer``)."""
        env = dict(os.environ, PYTHONPATH=_import_path())
        null = subprocess.DEVNULL
        cmd = self._shim(container_id, "--monitor")
        subprocess.run(cmd, check=False, env=env, stdin=null, stdout=null, stderr=null)
        if self.status(container_id).state == CREATED:  # the monitor died before it recorded anything
            now = time.time()
            failed = {"exit_code": 128, "started_at": now, "finished_at": now, "reason": "StartError"}
            _shim.write_status(
                self.bundle(container_id), {**failed, "message": "the container's monitor did not start"}
            )

    def status(self, container_id: str) -> RunState:
        """The container's state as its monitor recorded it."""
        try:
            with open(os.path.join(self.bundle(container_id), _shim.STATUS)) as f:
                obj = json.load(f)
        except FileNotFoundError:
            return RunState(CREATED)
        if "finished_at" in obj:
            return RunState(
                EXITED,
                int(obj.get("exit_code", 0)),
                float(obj.get("started_at", obj["finished_at"])),
                float(obj["finished_at"]),
                str(obj.get("reason", "")),
                str(obj.get("message", "")),
            )
        if alive(int(obj.get("monitor_pid", 0)), int(obj.get("monitor_start", -1))):
            return RunState(RUNNING, started_at=float(obj.get("started_at", 0.0)))
        # The monitor died without recording an exit (killed, a crash, a reboot): whatever is left
        # of the container is killed and forgotten, and it is recorded as exited with the code
        # containerd gives a task it lost (255), so that the kubelet restarts it per policy.
        self._forget(container_id)
        obj.update(exit_code=255, finished_at=time.time(), reason="Unknown", message="the container's monitor died")
        _shim.write_status(self.bundle(container_id), obj)
        return self.status(container_id)

    def log_path(self, container_id: str) -> str:
        """Where the container's stdout and stderr go."""
        return os.path.join(self.bundle(container_id), "container.log")

    def exec(self, container_id: str, argv: Sequence[str]) -> int:
        """``runc exec`` into the running container with this process's stdio."""
        cmd = [self.binary, "--root", self.runc_root, "exec", container_id, *argv]
        return subprocess.run(cmd, check=False).returncode

    def stop(self, container_id: str, grace: float = 10.0, sleep: Callable[[float], None] = time.sleep) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds, and wait for the monitor to record the exit."""
        if self.status(container_id).state != RUNNING:
            return
        self._kill(container_id, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.status(container_id).state == RUNNING and time.monotonic() < deadline:
            sleep(0.05)
        while self.status(container_id).state == RUNNING:
            self._kill(container_id, signal.SIGKILL)
            sleep(0.05)

    def _kill(self, container_id: str, sig: signal.Signals) -> None:
        cmd = [self.binary, "--root", self.runc_root, "kill", container_id, sig.name.removeprefix("SIG")]
        subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def remove(self, container_id: str, grace: float = 10.0) -> None:
        """Stop the container, make runc forget it and remove the bundle (``RemoveContainer``)."""
        bundle = self.bundle(container_id)
        if not os.path.isdir(bundle):
            return
        self.stop(container_id, grace)
        self._forget(container_id)
        shutil.rmtree(bundle, ignore_errors=True)

    def _forget(self, container_id: str) -> None:
        """``runc delete --force``: kill what is left of the container and drop runc's state."""
        cmd = [self.binary, "--root", self.runc_root, "delete", "--force", container_id]
        with contextlib.suppress(OSError):
            subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def list(self) -> list[str]:
        """The ids of the containers that have a bundle."""
        try:
            return sorted(os.listdir(self.bundles))
        except FileNotFoundError:
            return []


def alive(pid: int, start: int) -> bool:
    """Whether ``pid`` is still the process that started at ``start`` and has not exited (a zombie
    nobody reaped yet has exited)."""
    if pid <= 0 or _shim._start_time(pid) != start:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _import_path() -> str:
    """The import path that finds this very ``imagevol`` (a checkout run without installing)."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    rest = os.environ.get("PYTHONPATH", "")
    return here + (os.pathsep + rest if rest else "")
