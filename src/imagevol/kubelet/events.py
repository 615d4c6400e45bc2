"""Kubernetes events as the kubelet records them, with the API server's aggregation of repeats."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs

NORMAL = "Normal"
WARNING = "Warning"


@attrs.frozen
class Event:
    """One (possibly repeated) event about a Pod or one of its containers."""

    type: str
    reason: str
    message: str
    #: ``involvedObject.fieldPath``: empty for the Pod itself (pull events of image volumes, R5.2),
    #: ``spec.containers{NAME}`` for a container.
    field_path: str = ""
    count: int = 1
    first_timestamp: float = 0.0
    last_timestamp: float = 0.0
    source: str = "kubelet"

    def to_json(self) -> dict[str, Any]:
        """The event as node state stores it."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Event:
        """The event :meth:`to_json` stored."""
        return cls(**obj)


def container_field_path(name: str, kind: str = "containers") -> str:
    """``spec.containers{NAME}``: the ``fieldPath`` of a container's events."""
    return f"spec.{kind}{{{name}}}"


@attrs.define
class EventRecorder:
    """Appends events; an event identical to an earlier one (type, reason, message, object) bumps
    that one's count and last timestamp instead, as the event correlator does."""

    events: list[Event] = attrs.field(factory=list)
    clock: Callable[[], float] = attrs.field(default=lambda: 0.0)
    listeners: list[Callable[[Event], None]] = attrs.field(factory=list)

    def record(self, type_: str, reason: str, message: str, field_path: str = "") -> Event:
        """Record an event (or count a repeat of an identical one); return it."""
        now = self.clock()
        for i, e in enumerate(self.events):
            if (e.type, e.reason, e.message, e.field_path) == (type_, reason, message, field_path):
                event = attrs.evolve(e, count=e.count + 1, last_timestamp=now)
                del self.events[i]
                break
        else:
            event = Event(type_, reason, message, field_path, 1, now, now)
        self.events.append(event)
        for listener in self.listeners:
            listener(event)
        return event

    def extend(self, events: Iterable[Event]) -> None:
        """Append ``events`` as they are (no aggregation)."""
        self.events.extend(events)
