"""A chunk producer run in a forked child process, its chunks read here through a pipe.

Why a process and not a thread: decompressing and hashing a layer are C calls that release the GIL,
but a thread needs the GIL back after every one of them, and the layer applier beside it holds the
GIL except for the few microseconds of each system call; the two barely overlap. A child process
has an interpreter of its own, so on a second CPU it runs entirely beside the applier, which is
what GNU tar does with its ``gzip -d`` or ``zstd -d`` child. The cost is one copy of the
uncompressed bytes through the pipe.

Why forking is safe here:

* It is done only while this process runs a single thread (:func:`fork_is_safe`): no lock another
  thread holds (the allocator's, a logging handler's, the import lock) can be copied into the child
  held, to deadlock it.
* The child runs only the producer (reading the blob through its copy of the caller's file object,
  hashing, decompressing), writes to the pipe and leaves with :func:`os._exit`: no ``atexit``
  handler, no finaliser and no flush of inherited ``stdio`` buffers runs twice, so nothing the parent
  owns is touched by the child. The parent does not use the blob object again, except to close it.
* The child ends when its work ends, when the parent closes the pipe (its next write fails), or when
  the parent kills it (:meth:`ForkedChunks.close`); the parent always reaps it.

What comes back besides the bytes is one status record on a second pipe, written after the data
pipe is closed: the producer's result (a digest's hex) or the exception it raised, as plain JSON.
The parent rebuilds the exception as the same class, looked up only among imagevol's own errors and
``OSError`` and its built-in subclasses, so the record can name no other code to run.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterable

from ..errors import ImageVolError, LayerError

#: What the parent asks of one read of the pipe. Reads of up to 256 KiB came back in every size,
#: and the allocator kept what they left between small objects: the applier's peak RSS varied by
#: up to 6 MiB from run to run on a 438 MB layer (21.4-21.7 MiB with 64 KiB reads, same speed).
READ_SIZE = 64 * 1024
#: The pipe's capacity asked for (the unprivileged maximum by default): the child runs ahead by this.
_PIPE_SIZE = 1024 * 1024
#: Bound of the status record (an error message quotes a member's name at most).
_MAX_STATUS = 1024 * 1024


def fork_is_safe() -> bool:
    """Whether this process may fork a producer now: it can fork, and it runs no other thread,
    neither one of Python's nor one a C library started (those only the kernel lists)."""
    if not hasattr(os, "fork") or threading.active_count() != 1:
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:  # no /proc: Python's own count is all there is
        return True


class ForkedChunks:
    """``chunks`` produced by a forked child. :meth:`read` returns the next bytes (``b""`` at the
    end) and raises what the producer raised; after the end, :attr:`result` is what ``result()``
    returned in the child. :meth:`close` stops the child if it is still running and reaps it."""

    def __init__(self, chunks: Iterable[bytes], result: Callable[[], str]) -> None:
        data_r, data_w = os.pipe()
        try:
            status_r, status_w = os.pipe()
        except OSError:
            os.close(data_r)
            os.close(data_w)
            raise
        with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size: the default size works too
            fcntl.fcntl(data_w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        try:
            pid = os.fork()
        except OSError:  # out of processes or memory: nothing was started
            for fd in (data_r, data_w, status_r, status_w):
                os.close(fd)
            raise
        if pid == 0:  # pragma: no cover - the child's coverage is not collected
            code = 1
            try:
                os.close(data_r)
                os.close(status_r)
                code = _child(chunks, result, data_w, status_w)
            finally:
                os._exit(code)
        os.close(data_w)
        os.close(status_w)
        self._pid = pid
        self._data = data_r
        self._status = status_r
        self._done = False
        self.result = ""

    def read(self) -> bytes:
        if self._done:
            return b""
        data = os.read(self._data, READ_SIZE)
        if data:
            return data
        self._done = True
        self.result = self._finish()
        return b""

    def _finish(self) -> str:
        parts = []
        size = 0
        while size <= _MAX_STATUS and (part := os.read(self._status, 65536)):
            parts.append(part)
            size += len(part)
        self._reap(kill=size > _MAX_STATUS)  # a child still writing an oversized record is stopped
        raw = b"".join(parts)
        import json  # here and in the child: an unpack that forks nothing does not import it

        try:
            status = json.loads(raw) if raw and size <= _MAX_STATUS else None
        except ValueError:
            status = None
        if isinstance(status, dict) and isinstance(status.get("result"), str):
            return str(status["result"])
        if isinstance(status, dict) and isinstance(status.get("error"), dict):
            raise _rebuild(status["error"]) from None
        raise LayerError("io", "decompressing the layer: the decompressing process ended without a result")

    def _reap(self, *, kill: bool) -> None:
        if self._pid == 0:
            return
        pid, self._pid = self._pid, 0
        if kill:
            import signal  # here: its enums cost a few milliseconds at start-up

            with contextlib.suppress(ProcessLookupError):  # it was already gone
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):  # reaped already: SIGCHLD is ignored in this process
            os.waitpid(pid, 0)
        os.close(self._data)
        os.close(self._status)

    def close(self) -> None:
        self._reap(kill=True)


def _child(chunks: Iterable[bytes], result: Callable[[], str], data: int, status: int) -> int:  # pragma: no cover
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(data, view) :]
        record: dict[str, object] = {"result": result()}
    except Exception as exc:  # every failure is the parent's to raise
        record = {"error": _describe(exc)}
    # Closed first: the parent reads the status once it has seen the end of the data.
    os.close(data)
    try:
        import json

        raw = json.dumps(record).encode()
        while raw:
            raw = raw[os.write(status, raw) :]
    except OSError:  # the parent is gone or stopped listening
        return 1
    return 0


def _plain(value: object) -> object:
    """``value`` if JSON carries it as it is, else its text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def _describe(exc: Exception) -> dict[str, object]:
    kind = type(exc)
    attrs = {k: _plain(v) for k, v in vars(exc).items() if not k.startswith("_")}
    if isinstance(exc, OSError):  # not in its args, nor in its __dict__
        attrs.update(filename=_plain(exc.filename), filename2=_plain(exc.filename2))
    return {"module": kind.__module__, "name": kind.__qualname__, "args": [_plain(a) for a in exc.args], "attrs": attrs}


def _error_classes() -> dict[tuple[str, str], type[BaseException]]:
    found: dict[tuple[str, str], type[BaseException]] = {}
    pending: list[type[BaseException]] = [ImageVolError]
    while pending:
        cls = pending.pop()
        found[(cls.__module__, cls.__qualname__)] = cls
        pending.extend(cls.__subclasses__())
    return found


def _rebuild(record: dict[str, object]) -> BaseException:
    module, name = record.get("module"), record.get("name")
    args = record.get("args")
    attrs = record.get("attrs")
    args = tuple(args) if isinstance(args, list) else ()
    attrs = attrs if isinstance(attrs, dict) else {}
    if module == "builtins" and isinstance(name, str):
        cls = getattr(builtins, name, None)
        if isinstance(cls, type) and issubclass(cls, OSError):
            names = [attrs.get("filename"), None, attrs.get("filename2")]
            names = names[:1] if names[2] is None else names
            # OSError's constructor sets errno, strerror and the file names from them.
            return cls(*args, *names) if len(args) == 2 and names[0] is not None else cls(*args)
    found = _error_classes().get((str(module), str(name)))
    if found is None:
        return LayerError("io", f"decompressing the layer: {name}: {' '.join(str(a) for a in args)}")
    # Built without __init__, whose signature each class chooses: the same args and attributes.
    exc = found.__new__(found)
    exc.args = args
    for key, value in attrs.items():
        if not str(key).startswith("_"):  # plain attributes only, as the child sends them
            setattr(exc, str(key), value)
    return exc
