"""A one-line progress bar for long pulls, on a terminal only.

It is a :data:`~imagevol.content.pull.ProgressFn`: the puller calls it with ``(done, total)`` bytes.
Nothing is drawn for the first ``delay`` seconds (short pulls stay quiet) nor more often than
``interval``; :meth:`close` erases the line, so the command's real output stays clean.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

_WIDTH = 30


class ProgressBar:
    """A one-line progress bar of a pull on a terminal (``stream``), drawn after half a second."""

    def __init__(
        self,
        stream: TextIO,
        label: str = "",
        *,
        delay: float = 0.5,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.label = label
        self.delay = delay
        self.interval = interval
        self.clock = clock
        self.start = clock()
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        """Report ``done`` of ``total`` bytes fetched (called from the puller's threads)."""
        now = self.clock()
        if now - self.start < self.delay or (now - self._last < self.interval and done < total):
            return
        self._last = now
        frac = done / total if total else 1.0
        filled = int(frac * _WIDTH)
        bar = "#" * filled + "-" * (_WIDTH - filled)
        rate = done / max(now - self.start, 1e-6)
        line = f"{self.label} [{bar}] {frac:4.0%} {_mib(done)}/{_mib(total)} MiB {_mib(int(rate))} MiB/s"
        self.stream.write("\r" + line.strip() + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Erase the bar."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f}"
