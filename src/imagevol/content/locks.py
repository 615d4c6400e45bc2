"""Named locks that exclude threads of this process and other processes sharing one node root.

A lock is an ``flock`` on a file in a local directory. ``flock`` locks belong to the open file
description, so two threads that each open the file exclude each other just as two processes do;
the kernel drops the lock when a process dies, so a crash never leaves a lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from collections.abc import Iterator

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")


class NamedLocks:
    """Exclusive locks by name. With ``directory=None`` they only exclude threads (for stores that
    live on a non-local filesystem in a single process, such as fsspec's memory filesystem)."""

    def __init__(self, directory: str | None) -> None:
        self.directory = directory
        self._mutex = threading.Lock()
        self._thread_locks: dict[str, threading.Lock] = {}
        if directory is not None:
            os.makedirs(directory, mode=0o700, exist_ok=True)

    @contextlib.contextmanager
    def hold(self, name: str, *, blocking: bool = True, shared: bool = False) -> Iterator[bool]:
        """Hold ``name`` for the duration of the block. With ``blocking=False`` yields ``False``
        immediately when somebody else holds it. ``shared`` holders exclude only exclusive ones
        (many pulls at once, but never while a garbage collection runs)."""
        if not _SAFE_NAME.match(name):
            raise ValueError(f"invalid lock name {name!r}")
        if self.directory is None:
            if shared:
                # In-process stores: pulls and GC of one process are serialised by the caller's
                # own structure; a shared hold is a no-op.
                yield True
                return
            with self._mutex:
                lock = self._thread_locks.setdefault(name, threading.Lock())
            acquired = lock.acquire(blocking)
            try:
                yield acquired
            finally:
                if acquired:
                    lock.release()
            return
        fd = os.open(
            os.path.join(self.directory, name + ".lock"),
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
            0o600,
        )
        try:
            try:
                mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
                fcntl.flock(fd, mode | (0 if blocking else fcntl.LOCK_NB))
                acquired = True
            except BlockingIOError:
                acquired = False
            yield acquired
        finally:
            os.close(fd)  # closing the last fd of the description releases the flock

    def is_held(self, name: str) -> bool:
        """True when somebody (another thread or process) holds ``name`` right now."""
        with self.hold(name, blocking=False) as acquired:
            return not acquired


def process_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists: the owner of a temporary file or staging
    directory named after its pid. A dead owner means a crash whose leftovers may be removed."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
