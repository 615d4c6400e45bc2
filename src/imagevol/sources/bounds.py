"""Time bounds on network waits: deadlines and a low-speed limit, enforced by one watchdog.

A socket timeout only bounds *one* read: a registry that sends a byte every two seconds never
trips a 30-second read timeout and could hold a pull forever. So every request runs under a
:class:`Guard`: an absolute deadline and, once bytes flow, a :class:`SpeedMeter` (curl's
``--speed-limit``/``--speed-time``). A single daemon thread, the :class:`Watchdog`, wakes at each
guard's next due time; when a deadline has passed or a window closed with too few bytes it records
why and shuts the guard's sockets down, which ends whatever read, TLS handshake or header wait is
blocked on them (Go's ``context`` deadline does the same to a connection). The waiting thread then
reports the guard's reason instead of whatever error the shut socket produced.

The sockets come from :mod:`imagevol.sources.transport`, which registers every connection a guarded
request opens or reuses.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

import attrs


@attrs.frozen
class Timeouts:
    """How long a registry may keep a pull waiting (every field is documented, with its default,
    in docs/pulling.md).

    ``connect``: one TCP connect. ``read``: the longest silence inside one read. ``request``: one
    try of a request, from connect to the last byte of a manifest, token or ``/v2/`` answer, and to
    the response headers of a blob. ``low_speed_limit`` bytes per second over every
    ``low_speed_time`` window is the slowest body tolerated; a blob's window runs across its Range
    resumes. A blob of ``size`` bytes gets :meth:`blob_budget` seconds in all, resumes included.
    """

    connect: float = 5.0
    read: float = 30.0
    request: float = 30.0
    low_speed_limit: int = 1024
    low_speed_time: float = 30.0

    def blob_budget(self, size: int) -> float:
        """One request's allowance plus the time ``size`` bytes take at the lowest speed allowed."""
        return self.request + size / max(1, self.low_speed_limit)


def duration(seconds: float) -> str:
    """``seconds`` the way Go prints a ``time.Duration`` (``30s``, ``1m0s``, ``1.5s``, ``250ms``)."""
    if seconds < 1:
        return f"{seconds * 1000:.4g}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours >= 1:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes >= 1:
        return f"{int(minutes)}m{text}"
    return text


@attrs.frozen
class Deadline:
    """A point in time (on the watchdog's clock) and what to say when it passes."""

    at: float
    reason: str

    @classmethod
    def after(cls, seconds: float, reason: str, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(clock() + seconds, reason)

    def earliest(self, other: Deadline | None) -> Deadline:
        return other if other is not None and other.at < self.at else self


class SpeedMeter:
    """Bytes received against a minimum rate, in consecutive windows of ``window`` seconds: a
    window that closes with fewer than ``limit * window`` bytes fails the transfer. One meter
    may span several requests (a blob and its resumes), so time between them counts too."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._count = 0

    def add(self, n: int) -> None:
        with self._lock:
            self._count += n

    def due(self) -> float:
        """When the current window closes."""
        with self._lock:
            return self._start + self.window

    def roll(self, now: float) -> str:
        """At or after the window's end: why the transfer is too slow, or "" (and a new window)."""
        with self._lock:
            elapsed = now - self._start
            if elapsed < self.window:
                return ""
            if self._count < self.limit * elapsed:
                return f"transfer too slow: less than {self.limit} bytes/s over the last {duration(elapsed)}"
            self._start, self._count = now, 0
            return ""


class Interruptible(Protocol):
    """A connection the watchdog can cut (see :mod:`imagevol.sources.transport`)."""

    def interrupt(self, guard: Guard) -> None: ...

    def endpoints(self) -> str: ...


class Guard:
    """The bounds of one request: a :class:`Deadline` and, once the body flows, a meter.
    ``failure`` is set, once, to the reason the watchdog cut the request."""

    def __init__(self, deadline: Deadline, meter: SpeedMeter | None = None) -> None:
        self.deadline = deadline
        self.meter = meter
        self.failure = ""
        self.active = False
        self._lock = threading.Lock()
        self._conns: list[Interruptible] = []
        self._last: Interruptible | None = None

    def watch(self, conn: Interruptible) -> None:
        """``conn`` carries this request now; cut it if the guard fires (at once if it has)."""
        with self._lock:
            if conn not in self._conns:
                self._conns.append(conn)
            self._last = conn
            fired = bool(self.failure)
        if fired:
            conn.interrupt(self)

    def body_started(self, meter: SpeedMeter | None, deadline: Deadline | None = None) -> None:
        """Headers are in: measure the body's speed with ``meter`` (and move the deadline, for a
        blob whose body has its own budget)."""
        with self._lock:
            self.meter = meter
            if deadline is not None:
                self.deadline = deadline
        WATCHDOG.arm(self)

    def endpoints(self) -> str:
        """``local->peer`` of the connection this request used last ("" when none connected)."""
        last = self._last
        return last.endpoints() if last is not None else ""

    def remaining(self, now: float) -> float:
        return self.deadline.at - now

    def due(self) -> float:
        meter = self.meter
        return min(self.deadline.at, meter.due()) if meter is not None else self.deadline.at

    def check(self, now: float) -> str:
        """Why this request must stop now, or ""."""
        if now >= self.deadline.at:
            return self.deadline.reason
        meter = self.meter
        if meter is not None and now >= meter.due():
            return meter.roll(now)
        return ""

    def fire(self, reason: str) -> None:
        with self._lock:
            if not self.active or self.failure:
                return
            self.failure = reason
            conns = list(self._conns)
        for conn in conns:
            conn.interrupt(self)

    def release(self) -> None:
        """The request is over: never fire from now on."""
        with self._lock:
            self.active = False
            self._conns.clear()


class Watchdog:
    """One daemon thread that fires guards when they are due. Cheap when idle: it sleeps until
    the earliest due time; releasing a guard costs nothing (stale entries are skipped)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Guard]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, guard: Guard) -> None:
        """Start (or re-schedule) watching ``guard``."""
        with guard._lock:
            guard.active = True
        due = guard.due()
        if not math.isfinite(due):
            return
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), guard))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="imagevol-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > self.clock():
                    wait = self._heap[0][0] - self.clock() if self._heap else None
                    self._cond.wait(None if wait is None else max(0.0, min(wait, 3600.0)))
                _, _, guard = heapq.heappop(self._heap)
            if not guard.active:
                continue
            reason = guard.check(self.clock())
            if reason:
                guard.fire(reason)
                continue
            due = guard.due()
            if math.isfinite(due):
                with self._cond:
                    heapq.heappush(self._heap, (due, next(self._seq), guard))


#: The process's watchdog (one thread for every client).
WATCHDOG = Watchdog()

_current = threading.local()


def current() -> Guard | None:
    """The guard of the request this thread is sending, if any (for the transport's hooks)."""
    guard: Guard | None = getattr(_current, "guard", None)
    return guard


def bind(guard: Guard | None) -> None:
    """Make ``guard`` the current thread's (None: no request in flight)."""
    _current.guard = guard
