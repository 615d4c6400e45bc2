"""Output formatting: Pods and events in kubectl's shapes (``get pods``, ``describe pod``, the event
lines of ``apply``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..cri import MountStatus
    from ..kubelet.events import Event
    from ..kubelet.pod_sync import PodRecord


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _object(event: Event, record: PodRecord) -> str:
    return f"pod/{record.pod.name}" + (f" {event.field_path}" if event.field_path else "")


def format_event_line(event: Event, record: PodRecord) -> str:
    count = f" (x{event.count})" if event.count > 1 else ""
    return f"{event.type:<8}{event.reason:<18}{_object(event, record):<40} {event.message}{count}"


def get_pods(records: Sequence[PodRecord]) -> str:
    rows = [("NAME", "READY", "STATUS", "RESTARTS")]
    for r in records:
        regular = [s for s in r.containers if s.kind == "containers"]
        ready = sum(1 for s in regular if s.state == "running")
        rows.append((r.pod.name, f"{ready}/{len(regular)}", r.status_text, "0"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "".join("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in rows)


def describe_pod(record: PodRecord, now: float, mounts: Mapping[tuple[str, str], MountStatus] | None = None) -> str:
    """``kubectl describe pod``. ``mounts``: the runtime's status of each image-volume mount by
    (container, mount path); a mount served lazily shows its trust level and how it was served."""
    pod = record.pod
    lines = [
        f"Name:             {pod.name}",
        f"Namespace:        {pod.namespace}",
        f"UID:              {pod.uid}",
        f"Status:           {record.phase}",
    ]

    def containers(kind: str, title: str) -> None:
        specs = pod.spec.init_containers if kind == "initContainers" else pod.spec.containers
        if not specs:
            return
        lines.append(f"{title}:")
        for c in specs:
            st = record.state(c.name)
            lines.append(f"  {c.name}:")
            if st.container_id:
                lines.append(f"    Container ID:   imagevol://{st.container_id}")
            lines.append(f"    Image:          {c.image}")
            lines.append(f"    State:          {st.state.capitalize()}")
            if st.reason:
                lines.append(f"      Reason:       {st.reason}")
            if st.message:
                lines.append(f"      Message:      {st.message}")
            lines.append(f"    Ready:          {'True' if st.state == 'running' else 'False'}")
            lines.append("    Mounts:")
            if not c.volume_mounts:
                lines.append("      <none>")
            for m in c.volume_mounts:
                extra = f' (path "{m.sub_path}")' if m.sub_path else ""
                extra = f' (path expr "{m.sub_path_expr}")' if m.sub_path_expr else extra
                lines.append(f"      {m.mount_path} from {m.name} (ro){extra}")
                status = (mounts or {}).get((c.name, m.mount_path))
                if status is not None and (status.lazy or status.trust != "verified"):
                    lines.append(f"        Trust:      {status.trust}")
                    if status.lazy:
                        lines.append(f"        Lazy:       {status.lazy}")

    containers("initContainers", "Init Containers")
    containers("containers", "Containers")
    lines.append("Volumes:")
    for v in pod.spec.volumes:
        lines.append(f"  {v.name}:")
        if v.image is not None:
            lines.append("    Type:        Image (a container image or OCI artifact)")
            lines.append(f"    Reference:   {v.image.reference}")
            lines.append(f"    PullPolicy:  {v.image.pull_policy}")
        else:
            lines.append(f"    Type:        {', '.join(v.other_sources) or '<unknown>'} (not modelled)")
    lines.append("Events:")
    if not record.events:
        lines.append("  <none>")
    else:
        header = ("Type", "Reason", "Age", "From", "Message")
        rows = []
        for e in record.events:
            age = _age(now - e.last_timestamp)
            if e.count > 1:
                age = f"{age} (x{e.count} over {_age(now - e.first_timestamp)})"
            rows.append((e.type, e.reason, age, e.source, e.message))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
        lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(header[:4], widths, strict=True)) + "  Message")
        lines.append(
            "  "
            + "  ".join("-" * len(h) + " " * (w - len(h)) for h, w in zip(header[:4], widths, strict=True))
            + "  -------"
        )
        for r in rows:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    return "\n".join(lines) + "\n"
