"""The OCI runtime config (``config.json``) of a container, generated the way containerd's CRI plugin
generates its own (``internal/cri/server/container_create_linux.go``, ``pkg/oci`` defaults) with the
image-volume mounts each profile makes.

Pure functions over values: nothing here touches the filesystem except :func:`read_etc_file`, which
reads ``/etc/passwd`` and ``/etc/group`` of a root filesystem through the in-root resolver (a hostile
image's ``/etc/passwd`` may be a symlink to the host's: it is resolved inside the image's tree).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..errors import CreateContainerError, ImageVolError
from ..trees import subpath as sp

OCI_VERSION = "1.0.2"

#: containerd's default capability set (``pkg/oci`` ``defaultUnixCaps``), which the CRI keeps for
#: a container without a security context.
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
)  # fmt: skip

#: Paths the CRI masks and makes read-only by default (``DefaultMaskedPaths``/``DefaultReadonlyPaths``).
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)  # fmt: skip
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

#: The default mounts of ``pkg/oci`` plus the CRI's ``/sys/fs/cgroup``.
_DEFAULT_MOUNTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),
    ("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
    ("/dev/pts", "devpts", "devpts", ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5")),
    ("/dev/shm", "tmpfs", "shm", ("nosuid", "noexec", "nodev", "mode=1777", "size=65536k")),
    ("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
    ("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", "ro")),
    ("/sys/fs/cgroup", "cgroup", "cgroup", ("nosuid", "noexec", "nodev", "relatime", "ro")),
)

#: The CRI's propagation values as OCI mount options (containerd ``WithMounts``).
PROPAGATION_OPTION = {
    "PROPAGATION_PRIVATE": "rprivate",
    "PROPAGATION_HOST_TO_CONTAINER": "rslave",
    "PROPAGATION_BIDIRECTIONAL": "rshared",
}

_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@attrs.frozen
class ImageConfig:
    """What a container takes from its image's config (``config`` of the OCI image config)."""

    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""

    @classmethod
    def parse(cls, raw: bytes) -> ImageConfig:
        """Parse an image config blob; fields of the wrong type are refused, not guessed at."""
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CreateContainerError("failed to read the image config: not valid JSON") from None
        section = obj.get("config") if isinstance(obj, dict) else None
        if section is None:
            return cls()
        if not isinstance(section, dict):
            raise CreateContainerError("failed to read the image config: config is not an object")

        def strings(name: str) -> tuple[str, ...]:
            value = section.get(name)
            if value is None:
                return ()
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise CreateContainerError(f"failed to read the image config: {name} is not a list of strings")
            return tuple(value)

        def text(name: str) -> str:
            value = section.get(name) or ""
            if not isinstance(value, str):
                raise CreateContainerError(f"failed to read the image config: {name} is not a string")
            return value

        return cls(strings("Env"), strings("Entrypoint"), strings("Cmd"), text("WorkingDir"), text("User"))


@attrs.frozen
class VolumeMount:
    """One image-volume mount of the generated config: ``source`` is the staged bind (a path in the
    container's bundle that the staging helper bound from the resolved fd)."""

    destination: str
    source: str
    options: tuple[str, ...]
    type: str = "bind"


@attrs.frozen
class User:
    """The process's user: uid, gid and additional groups, as resolved in the image."""

    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()


def process_args(image: ImageConfig, command: Sequence[str], args: Sequence[str]) -> list[str]:
    """The container's argv by the Kubernetes rules (``kuberuntime`` + ``containerd``): ``command``
    replaces the image's Entrypoint and drops its Cmd; ``args`` alone replaces Cmd."""
    if command:
        argv = [*command, *args]
    elif args:
        argv = [*image.entrypoint, *args]
    else:
        argv = [*image.entrypoint, *image.cmd]
    if not argv:
        raise CreateContainerError("failed to generate spec: no command specified")
    return argv


def merge_env(image_env: Sequence[str], envs: Sequence[tuple[str, str]]) -> list[str]:
    """The image's Env, then the container's: a later value of a name replaces an earlier one in
    place (containerd ``WithEnv``); ``PATH`` defaults to the usual one when neither sets it."""
    order: list[str] = []
    values: dict[str, str] = {}
    for item in [*image_env, *(f"{k}={v}" for k, v in envs)]:
        name = item.partition("=")[0]
        if name not in values:
            order.append(name)
        values[name] = item
    if "PATH" not in values:
        order.insert(0, "PATH")
        values["PATH"] = f"PATH={_DEFAULT_PATH}"
    return [values[n] for n in order]


def read_etc_file(root_fd: int, name: str, limit: int = 1 << 20) -> str:
    """``/etc/<name>`` of a root filesystem, resolved inside the tree (symlinks re-rooted), or ``""``
    when absent or not a regular file."""
    try:
        found = sp.lookup(root_fd, f"etc/{name}", sp.Policy.IN_ROOT)
    except ImageVolError:
        return ""
    try:
        fd = os.open(found.proc_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    finally:
        found.close()
    try:
        if not _is_regular(fd):
            return ""
        return os.read(fd, limit).decode(errors="replace")
    finally:
        os.close(fd)


def _is_regular(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


def resolve_user(spec: str, passwd: str, group: str) -> User:
    """The image's ``User`` (``name``, ``uid``, ``name:group``, ``uid:gid``) against the image's own
    ``/etc/passwd`` and ``/etc/group`` (containerd ``WithUser``): a name that is not there fails the
    create; a numeric uid absent from passwd runs with gid 0."""
    if not spec:
        spec = "0"
    user, _, grp = spec.partition(":")
    users = [line.split(":") for line in passwd.splitlines() if line.count(":") >= 3]
    groups = [line.split(":") for line in group.splitlines() if line.count(":") >= 3]
    uid: int | None = int(user) if user.isdigit() else None
    gid = 0
    entry = next((u for u in users if (u[0] == user if uid is None else u[2] == str(uid))), None)
    if uid is None:
        if entry is None or not entry[2].isdigit():
            raise CreateContainerError(f"failed to generate spec: no users found for {user!r} in the image")
        uid = int(entry[2])
    if entry is not None and entry[3].isdigit():
        gid = int(entry[3])
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            found = next((g for g in groups if g[0] == grp and g[2].isdigit()), None)
            if found is None:
                raise CreateContainerError(f"failed to generate spec: no groups found for {grp!r} in the image")
            gid = int(found[2])
    name = entry[0] if entry is not None else None
    extra = sorted(
        {int(g[2]) for g in groups if g[2].isdigit() and name is not None and name in g[3].split(",")} - {gid}
    )
    return User(uid, gid, tuple(extra))


def generate(
    *,
    argv: Sequence[str],
    env: Sequence[str],
    cwd: str,
    user: User,
    hostname: str,
    volumes: Sequence[VolumeMount],
    readonly_rootfs: bool = False,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The OCI runtime config of one container (root filesystem at ``rootfs`` in its bundle)."""
    caps = list(DEFAULT_CAPABILITIES)
    mounts: list[dict[str, Any]] = [
        {"destination": d, "type": t, "source": s, "options": list(o)} for d, t, s, o in _DEFAULT_MOUNTS
    ]
    taken = {m.destination for m in volumes}
    mounts = [m for m in mounts if m["destination"] not in taken]  # a volume replaces a default mount
    mounts += [
        {"destination": v.destination, "type": v.type, "source": v.source, "options": list(v.options)} for v in volumes
    ]
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.additional_gids)},
            "args": list(argv),
            "env": list(env),
            "cwd": cwd or "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": False,
        },
        "root": {"path": "rootfs", "readonly": readonly_rootfs},
        "hostname": hostname,
        "mounts": mounts,
        "annotations": dict(annotations or {}),
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }
