"""Output in the shapes kubectl and crictl print: tables (``get pods``, ``get events``, ``get
images``), ``describe pod``, the lines of ``apply``, and objects as JSON, YAML or names.

Tables are computed from the API objects (:mod:`imagevol.kubelet.status`), as kubectl's printers
compute them from the objects the API server returns, so ``-o yaml`` and the table never disagree.
Only the standard library is imported at module level (YAML when ``-o yaml`` asks for it).
"""

from __future__ import annotations

import calendar
import functools
import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..cri import Image, MountStatus
    from ..kubelet.events import Event
    from ..kubelet.pod_sync import PodRecord


# --- durations and tables ------------------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    """apimachinery's ``HumanDuration``: ``45s``, ``3m20s``, ``2h5m``, ``3d4h``, ``2y10d``."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes, hours = s // 60, s // 3600
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = hours // 24 % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def since(stamp: str | None, now: float) -> str:
    """``translateTimestampSince``: the age of an RFC 3339 time, ``<unknown>`` without one."""
    if not stamp:
        return "<unknown>"
    return human_duration(now - _parse_time(stamp))


@functools.lru_cache(maxsize=1024)
def _parse_time(stamp: str) -> float:
    # Memoised: a list of 5,000 Pods applied together holds a handful of distinct seconds, and
    # strptime costs more than the rest of a table row.
    return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))


def table(rows: Sequence[Sequence[str]], *, min_width: int = 6, padding: int = 3) -> str:
    """Rows as Go's tabwriter lays them out: every column but the last padded to its widest cell
    plus ``padding``, at least ``min_width`` (kubectl's printers: 6 and 3; crictl: 10 and 3;
    ``kubectl describe``: 0 and 2)."""
    if not rows:
        return ""
    widths = [max(max(len(r[i]) for r in rows) + padding, min_width) for i in range(len(rows[0]) - 1)]
    return "".join("".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + r[-1] + "\n" for r in rows)


# --- objects -----------------------------------------------------------------------------------------


def dump(obj: Any, fmt: str) -> str:
    """``-o json`` (four-space indent, keys sorted, as kubectl prints an object) or ``-o yaml``."""
    if fmt == "yaml":
        import yaml

        return str(yaml.safe_dump(obj, sort_keys=True, default_flow_style=False, allow_unicode=True))
    return json.dumps(obj, indent=4, sort_keys=True, ensure_ascii=False) + "\n"


def as_list(items: Sequence[Any], kind: str = "List") -> dict[str, Any]:
    """What kubectl prints for several objects: a ``v1 List`` (or the API's list ``kind``)."""
    return {"apiVersion": "v1", "kind": kind, "items": list(items), "metadata": {"resourceVersion": ""}}


# --- pods ----------------------------------------------------------------------------------------------


def _terminated_reason(state: Mapping[str, Any], prefix: str = "") -> str:
    if state.get("reason"):
        return prefix + str(state["reason"])
    if state.get("signal"):
        return f"{prefix}Signal:{state['signal']}"
    return f"{prefix}ExitCode:{state.get('exitCode', 0)}"


def pod_row(pod: Mapping[str, Any], now: float, *, wide: bool = False) -> list[str]:
    """kubectl's ``printPod``: NAME READY STATUS RESTARTS AGE (and IP NODE NOMINATED NODE
    READINESS GATES when wide), computed from the Pod object."""
    spec, status = pod.get("spec", {}), pod.get("status", {})
    restartable = {c["name"] for c in spec.get("initContainers", ()) if c.get("restartPolicy") == "Always"}
    total = len(spec.get("containers", ())) + len(restartable)
    ready = restarts = 0
    reason = status.get("reason") or status.get("phase", "")
    initializing = False
    inits = spec.get("initContainers", ())
    for i, c in enumerate(status.get("initContainerStatuses", ())):
        restarts += int(c.get("restartCount", 0))
        state = c.get("state", {})
        if "terminated" in state and state["terminated"].get("exitCode", 0) == 0:
            continue
        if c["name"] in restartable and c.get("started"):
            ready += bool(c.get("ready"))
            continue
        initializing = True
        if "terminated" in state:
            reason = _terminated_reason(state["terminated"], "Init:")
        elif state.get("waiting", {}).get("reason", "") not in ("", "PodInitializing"):
            reason = "Init:" + state["waiting"]["reason"]
        else:
            reason = f"Init:{i}/{len(inits)}"
        break
    if not initializing:
        has_running = False
        for c in reversed(status.get("containerStatuses", ())):
            restarts += int(c.get("restartCount", 0))
            state = c.get("state", {})
            if state.get("waiting", {}).get("reason"):
                reason = state["waiting"]["reason"]
            elif "terminated" in state:
                reason = _terminated_reason(state["terminated"])
            elif c.get("ready") and "running" in state:
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            reason = "Running"
    row = [
        pod["metadata"]["name"],
        f"{ready}/{total}",
        reason,
        str(restarts),
        since(pod["metadata"].get("creationTimestamp"), now),
    ]
    if wide:
        ip = (status.get("podIPs") or [{}])[0].get("ip") or "<none>"
        gates = spec.get("readinessGates") or ()
        row += [ip, spec.get("nodeName") or "<none>", status.get("nominatedNodeName") or "<none>",
                ", ".join(g.get("conditionType", "") for g in gates) or "<none>"]  # fmt: skip
    return row


def pods_table(pods: Sequence[Mapping[str, Any]], now: float, *, wide: bool = False, namespaces: bool = False) -> str:
    """``kubectl get pods`` (``-o wide``, ``-A`` adds NAMESPACE first)."""
    header = ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    if wide:
        header += ["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]
    rows = [(["NAMESPACE"] if namespaces else []) + header]
    for pod in pods:
        rows.append(([pod["metadata"]["namespace"]] if namespaces else []) + pod_row(pod, now, wide=wide))
    return table(rows)


# --- events --------------------------------------------------------------------------------------------


def events_table(
    events: Sequence[Mapping[str, Any]], now: float, *, wide: bool = False, namespaces: bool = False
) -> str:
    """``kubectl get events``: LAST SEEN TYPE REASON OBJECT MESSAGE (wide: SUBOBJECT, SOURCE,
    FIRST SEEN, COUNT and NAME too)."""
    header = ["LAST SEEN", "TYPE", "REASON", "OBJECT"]
    header += ["SUBOBJECT", "SOURCE", "MESSAGE", "FIRST SEEN", "COUNT", "NAME"] if wide else ["MESSAGE"]
    rows = [(["NAMESPACE"] if namespaces else []) + header]
    for e in events:
        first = since(e.get("firstTimestamp"), now)
        last = since(e.get("lastTimestamp"), now) if e.get("lastTimestamp") else first
        involved = e["involvedObject"]
        target = f"{involved['kind'].lower()}/{involved['name']}" if involved.get("name") else involved["kind"].lower()
        message = str(e.get("message", "")).strip()
        row = [last, e.get("type", ""), e.get("reason", ""), target]
        if wide:
            source = e.get("source", {})
            origin = ", ".join(x for x in (source.get("component", ""), source.get("host", "")) if x)
            row += [
                involved.get("fieldPath", ""),
                origin,
                message,
                first,
                str(e.get("count") or 1),
                e["metadata"]["name"],
            ]
        else:
            row.append(message)
        rows.append(([e["metadata"]["namespace"]] if namespaces else []) + row)
    return table(rows)


def format_event_line(event: Event, record: PodRecord) -> str:
    """One event in ``apply``'s report: type, reason, object and message."""
    count = f" (x{event.count})" if event.count > 1 else ""
    target = f"pod/{record.pod.name}" + (f" {event.field_path}" if event.field_path else "")
    return f"{event.type:<8}{event.reason:<18}{target:<40} {event.message}{count}"


# --- images (crictl) -----------------------------------------------------------------------------------


def human_size(size: int) -> str:
    """go-units' ``HumanSizeWithPrecision(size, 3)``, as crictl prints sizes: ``1.23MB``."""
    value, unit = float(size), 0
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
    while value >= 1000 and unit < len(units) - 1:
        value /= 1000
        unit += 1
    return f"{value:.3g}{units[unit]}"


def _repo_tags(image: Image) -> list[tuple[str, str]]:
    """crictl's ``normalizeRepoTagPair``: (repository, tag) per tag, ``<none>`` without one."""
    name = image.repo_digests[0].partition("@")[0] if image.repo_digests else "<none>"
    if not image.repo_tags:
        return [(name, "<none>")]
    return [(t.rpartition(":")[0] or name, t.rpartition(":")[2]) if ":" in t else ("errorRepoTag", "errorRepoTag")
            for t in image.repo_tags]  # fmt: skip


def images_table(images: Sequence[Image], *, wide: bool = False) -> str:
    """``crictl images``: IMAGE TAG IMAGE ID SIZE, IDs cut to 13 characters; wide adds the
    DIGEST column (``--digests``) and PINNED (``--pinned``)."""
    header = ["IMAGE", "TAG"] + (["DIGEST"] if wide else []) + ["IMAGE ID", "SIZE"] + (["PINNED"] if wide else [])
    rows = [header]
    for image in sorted(images, key=_image_order):
        ident = image.id.removeprefix("sha256:")[:13]
        digest = image.digest.removeprefix("sha256:")[:13] if image.repo_digests else "<none>"
        for repo, tag in _repo_tags(image):
            row = [repo, tag] + ([digest] if wide else []) + [ident, human_size(image.size)]
            rows.append(row + ([str(image.pinned).lower()] if wide else []))
    return table(rows, min_width=10)


def _image_order(image: Image) -> tuple[str, str]:
    """crictl's ``imageByRef``: by first tag, else first digest, else ID."""
    return (image.repo_tags or image.repo_digests or (image.id,))[0], image.id


def images_object(images: Sequence[Image]) -> dict[str, Any]:
    """``crictl images -o json``: the CRI ``ListImagesResponse`` as protojson prints it (``size``
    a string, as a 64-bit integer is in protobuf's JSON)."""
    return {
        "images": [
            {
                "id": i.id,
                "repoTags": list(i.repo_tags),
                "repoDigests": list(i.repo_digests),
                "size": str(i.size),
                "username": "",
                "pinned": i.pinned,
            }
            for i in sorted(images, key=_image_order)
        ]
    }


# --- describe pod --------------------------------------------------------------------------------------

_PROPAGATION = {None: "rprivate", "None": "rprivate", "HostToContainer": "rslave", "Bidirectional": "rshared"}


def _time(stamp: str | None) -> str:
    """A time as ``kubectl describe`` prints it (RFC 1123 with a numeric zone)."""
    if not stamp:
        return "<unset>"
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(_parse_time(stamp)))


def _map(values: Mapping[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(values.items())] or ["<none>"]


def describe_pod(
    record: PodRecord,
    pod: Mapping[str, Any],
    now: float,
    mounts: Mapping[str, Sequence[MountStatus]],
    digests: Mapping[str, str],
) -> str:
    """``kubectl describe pod``, from the record and its API object; ``mounts`` are the runtime's
    mount statuses per container, ``digests`` what each image volume's reference resolved to."""
    spec, status, meta = record.pod.spec, pod["status"], pod["metadata"]
    labels, annotations = _map(record.pod.metadata.labels), _map(record.pod.metadata.annotations)
    lines = [
        f"Name:             {meta['name']}",
        f"Namespace:        {meta['namespace']}",
        f"Node:             {pod['spec'].get('nodeName', '<none>')}",
        f"Start Time:       {_time(status.get('startTime'))}",
        f"Labels:           {labels[0]}",
        *[f"                  {x}" for x in labels[1:]],
        f"Annotations:      {annotations[0]}",
        *[f"                  {x}" for x in annotations[1:]],
        f"UID:              {meta.get('uid', '')}",
        f"Status:           {status['phase']}",
    ]
    statuses = {c["name"]: c for key in ("initContainerStatuses", "containerStatuses") for c in status.get(key, ())}
    for kind, title in (("initContainers", "Init Containers"), ("containers", "Containers")):
        specs = spec.init_containers if kind == "initContainers" else spec.containers
        if specs:
            lines.append(f"{title}:")
        for c in specs:
            lines += _describe_container(
                c.name, c.image, c.volume_mounts, statuses.get(c.name, {}), mounts.get(c.name, ())
            )
    lines.append("Conditions:")
    conditions = [(c["type"], c["status"]) for c in status.get("conditions", ())]
    lines += ["  " + line for line in table([("Type", "Status"), *conditions], min_width=0, padding=2).splitlines()]
    lines.append("Volumes:")
    for v in spec.volumes:
        lines.append(f"  {v.name}:")
        if v.image is None:
            lines.append(f"    Type:        {', '.join(v.other_sources) or '<unknown>'} (not modelled)")
            continue
        lines.append("    Type:        Image (a container image or OCI artifact)")
        lines.append(f"    Reference:   {v.image.reference}")
        lines.append(f"    PullPolicy:  {v.image.pull_policy}")
        lines.append(f"    Digest:      {digests.get(v.name) or '<not pulled>'}")
        users = _volume_users(record, v.name, mounts)
        lines += [f"    Mounted:     {users[0]}", *[f"                 {u}" for u in users[1:]]]
    lines.append("QoS Class:        BestEffort")
    lines.append("Events:")
    lines += _describe_events(record.events, now)
    return "\n".join(lines) + "\n"


def _describe_container(
    name: str,
    image: str,
    volume_mounts: Sequence[Any],
    st: Mapping[str, Any],
    mounted: Sequence[MountStatus] = (),
) -> list[str]:
    lines = [f"  {name}:"]
    if st.get("containerID"):
        lines.append(f"    Container ID:   {st['containerID']}")
    lines.append(f"    Image:          {image}")
    lines.append(f"    Image ID:       {st.get('imageID', '')}")
    state = st.get("state", {"waiting": {"reason": ""}})
    kind, detail = next(iter(state.items()))
    lines.append(f"    State:          {kind.capitalize()}")
    if detail.get("reason"):
        lines.append(f"      Reason:       {detail['reason']}")
    if detail.get("message"):
        lines.append(f"      Message:      {detail['message']}")
    # kubectl's order (describeContainerState): Exit Code before Started and Finished.
    if "exitCode" in detail:
        lines.append(f"      Exit Code:    {detail['exitCode']}")
    if detail.get("startedAt"):
        lines.append(f"      Started:      {_time(detail['startedAt'])}")
    if detail.get("finishedAt"):
        lines.append(f"      Finished:     {_time(detail['finishedAt'])}")
    for kind, last in st.get("lastState", {}).items():
        lines.append(f"    Last State:     {kind.capitalize()}")
        lines.append(f"      Reason:       {last.get('reason', '')}")
        if "exitCode" in last:
            lines.append(f"      Exit Code:    {last['exitCode']}")
    lines.append(f"    Ready:          {'True' if st.get('ready') else 'False'}")
    lines.append(f"    Restart Count:  {st.get('restartCount', 0)}")
    lines.append("    Mounts:")
    # ImageVolumeWithDigest: the exact image each image-volume mount shows (R11.9).
    refs = {v["mountPath"]: v["volumeStatus"]["image"]["imageRef"] for v in st.get("volumeMounts", ())
            if "image" in v.get("volumeStatus", {})}  # fmt: skip
    if not volume_mounts:
        lines.append("      <none>")
    for m in volume_mounts:
        # kubectl's flags: ro/rw, then path="..." for a sub path (the image volume is always ro).
        flags = ["ro"]
        if m.sub_path:
            flags.append(f"path={json.dumps(m.sub_path, ensure_ascii=False)}")
        if m.sub_path_expr:
            flags.append(f"pathExpr={json.dumps(m.sub_path_expr, ensure_ascii=False)}")
        lines.append(f"      {m.mount_path} from {m.name} ({','.join(flags)})")
        if m.mount_path in refs:
            lines.append(f"        Image Ref:  {refs[m.mount_path]}")
        # A mount served lazily shows its trust level and how it was served (docs/lazy.md).
        status = next((s for s in mounted if s.container_path == m.mount_path), None)
        if status is not None and (status.lazy or status.trust != "verified"):
            lines.append(f"        Trust:      {status.trust}")
            if status.lazy:
                lines.append(f"        Lazy:       {status.lazy}")
    return lines


def _volume_users(record: PodRecord, volume: str, mounts: Mapping[str, Sequence[MountStatus]]) -> list[str]:
    """Where the volume is mounted: per container mount, the sub path it shows and the mount
    options (the runtime's view when the container exists, the spec's otherwise)."""
    out = []
    for c in record.pod.spec.all_containers():
        for m in c.volume_mounts:
            if m.name != volume:
                continue
            options = ["ro", "nosuid", "nodev", _PROPAGATION.get(m.mount_propagation, "rprivate")]
            if m.recursive_read_only in ("Enabled", "IfPossible"):
                options.append("rro")
            mounted = next((s for s in mounts.get(c.name, ()) if s.container_path == m.mount_path), None)
            if mounted is not None:
                sub = f'sub path "{mounted.sub_path}"' if mounted.sub_path else "whole image"
                at = mounted.image_ref.rpartition("@")[2] if mounted.image_ref else ""
                sub += f", {at}" if at else ""
            elif m.sub_path_expr:
                sub = f'sub path expression "{m.sub_path_expr}", not mounted'
            else:
                sub = (f'sub path "{m.sub_path}"' if m.sub_path else "whole image") + ", not mounted"
            out.append(f"{c.name}: {m.mount_path} ({sub}; {','.join(options)})")
    return out or ["<not mounted>"]


def _describe_events(events: Sequence[Event], now: float) -> list[str]:
    if not events:
        return ["  <none>"]
    rows = [("Type", "Reason", "Age", "From", "Message"), ("----", "------", "----", "----", "-------")]
    for e in events:
        age = human_duration(now - e.last_timestamp)
        if e.count > 1:
            age = f"{age} (x{e.count} over {human_duration(now - e.first_timestamp)})"
        rows.append((e.type, e.reason, age, e.source, e.message))
    return ["  " + line for line in table(rows, min_width=0, padding=2).splitlines()]
