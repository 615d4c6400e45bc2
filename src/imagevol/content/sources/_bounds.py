"""Time bounds on network waits: deadlines and a low-speed limit, enforced by one watchdog.

A socket timeout only bounds *one* read: a registry that sends a byte every two seconds never
trips a 30-second read timeout and could hold a pull forever. So every request runs under a
:class:`Guard`: an absolute deadline and, once bytes flow, a :class:`SpeedMeter` (curl's
``--speed-limit``/``--speed-time``). A single daemon thread, the :class:`Watchdog`, wakes at each
guard's next due time; when a deadline has passed or a window closed with too few bytes it records
why and shuts the guard's sockets down, which ends whatever read, TLS handshake or header wait is
blocked on them (Go's ``context`` deadline does the same to a connection). The waiting thread then
reports the guard's reason instead of whatever error the shut socket produced.

The sockets come from :mod:`imagevol.content.sources._transport`, which makes every socket of a
guarded request itself and registers it, and registers a kept-alive connection again each time it
serves another request.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

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


class Owner(Protocol):
    """A connection, which knows which request it serves now (see
    :mod:`imagevol.content.sources._transport`)."""

    def carries(self, guard: Guard) -> bool: ...


class Guard:
    """The bounds of one request: a :class:`Deadline` and, once the body flows, a meter.
    ``failure`` is set, once, to the reason the watchdog cut the request.

    The guard keeps its own duplicate of each socket the request uses, for as long as the request
    lasts: ``http.client`` may close a connection object while its response is still being read
    (``Connection: close``), and the duplicate still reaches the socket then. A duplicate is only
    shut down while its connection still serves this request, so a pooled connection handed to
    the next request is never cut by this one's watchdog."""

    def __init__(self, deadline: Deadline, meter: SpeedMeter | None = None) -> None:
        self.deadline = deadline
        self.meter = meter
        self.failure = ""
        self.active = False
        self._lock = threading.Lock()
        self._handles: list[tuple[Owner, socket.socket, int]] = []
        self._endpoints = ""
        self._dog: Watchdog | None = None  # the watchdog that armed it

    def watch(self, conn: Owner, sock: socket.socket) -> None:
        """``conn`` carries this request over ``sock`` now; cut it if the guard fires (at once if
        it has fired already)."""
        with self._lock:
            if any(seen == id(sock) for _, _, seen in self._handles):
                return
            with contextlib.suppress(OSError):
                self._endpoints = f"{_addr(sock.getsockname())}->{_addr(sock.getpeername())}"
            spare = socket.fromfd(sock.fileno(), sock.family, sock.type)  # a dup: ours to close
            self._handles.append((conn, spare, id(sock)))
            if self.failure:
                self._cut_locked()

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
        return self._endpoints

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
            self._cut_locked()

    def _cut_locked(self) -> None:
        # shutdown() ends any blocked connect, TLS handshake or read on the socket, plain or TLS.
        for conn, spare, _ in self._handles:
            if conn.carries(self):
                with contextlib.suppress(OSError):
                    spare.shutdown(socket.SHUT_RDWR)
            spare.close()
        self._handles.clear()

    def release(self) -> None:
        """The request is over: never fire from now on."""
        with self._lock:
            armed, self.active = self.active, False
            for _, spare, _ in self._handles:
                spare.close()
            self._handles.clear()
            dog = self._dog
        if armed and dog is not None:
            dog.released()


def _addr(address: Any) -> str:
    if not isinstance(address, tuple) or len(address) < 2:
        return str(address)  # not an internet socket (tests use socket pairs)
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


_COMPACT_AT = 1024


class Watchdog:
    """One daemon thread that fires guards when they are due. Cheap when idle: it sleeps until
    the earliest due time; releasing a guard costs nothing (stale entries are skipped). The thread
    ends when the last armed guard is released and starts again with the next: a process that is
    done with the network runs no thread of ours, so it may fork (a layer's decompressing child,
    :mod:`imagevol.trees._forked`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Guard]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._armed = 0  # guards armed and not released yet

    def arm(self, guard: Guard) -> None:
        """Start (or re-schedule) watching ``guard``."""
        with guard._lock:
            first, guard.active = not guard.active, True
            if first:  # counted by the watchdog that armed it first, which its release tells
                guard._dog = self
        if first:
            with self._cond:
                self._armed += 1
        due = guard.due()
        if not math.isfinite(due):
            return
        with self._cond:
            if len(self._heap) > _COMPACT_AT:
                # Released guards are skipped lazily; a long blob budget would keep them queued.
                self._heap = [entry for entry in self._heap if entry[2].active]
                heapq.heapify(self._heap)
            heapq.heappush(self._heap, (due, next(self._seq), guard))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="imagevol-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()

    def released(self) -> None:
        """One armed guard was released (:meth:`Guard.release`)."""
        with self._cond:
            self._armed -= 1
            if self._armed == 0:
                self._heap.clear()  # only released guards were left in it
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > self.clock():
                    if not self._heap and self._armed == 0:
                        self._thread = None  # under the lock: the next arm() starts another
                        return
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
    """The guard bound to this thread, if any (see :func:`bind`)."""
    guard: Guard | None = getattr(_current, "guard", None)
    return guard


def bind(guard: Guard | None) -> None:
    """Make ``guard`` the current thread's (None: no request in flight)."""
    _current.guard = guard
