"""The uncompressed bytes of a layer blob, in bounded chunks, optionally from a thread or a child process.

* The compression is sniffed from the magic bytes, as containerd does, so a mislabelled media type
  cannot smuggle another format past: gzip (``1f 8b``), zstd (``28 b5 2f fd``), else plain tar.
* Every decompressor call is bounded (``max_length`` / ``read(n)``): one small compressed chunk can
  never expand into more than :data:`CHUNK` bytes of memory, and the running total is checked against
  the layer's byte limit, so a decompression bomb stops with ``too_large`` after at most
  ``limit + CHUNK`` bytes and memory stays flat whatever the layer's size.
* gzip uses ISA-L (``isal``) when installed, else zlib-ng, else the standard ``zlib``: the same
  deflate with the same checks (header, CRC-32 and length trailer of every member), 2-2.5x faster.
  Multi-member gzip streams are read to the end (as ``gzip -d`` does); NUL padding after a member
  is skipped and anything else after it is an error.
* :class:`ChunkPipe` hands out the chunks after reading, hashing (the caller's verifying reader, and
  the diff ID of the uncompressed stream when asked) and decompressing them: inline, in a thread
  that feeds a queue of at most ``depth`` chunks, or in a forked child process that writes them to
  a pipe (:mod:`imagevol.trees._forked`). The C calls release the GIL, but a thread needs it back
  between them, and CPython hands it back to the applier, which releases it only for the few
  microseconds of each system call: a thread overlaps little with the applier. A child process
  overlaps fully on a second CPU, as GNU tar's ``gzip -d`` child does, so that is what ``auto``
  (``ApplyOptions.decompress``'s default) picks when it can.
"""

from __future__ import annotations

import os
import queue
import threading
import zlib
from collections.abc import Callable, Generator, Iterator
from types import ModuleType
from typing import IO, Any

from ..errors import LayerError
from ._forked import ForkedChunks, fork_is_safe

CHUNK = 256 * 1024  # small enough that the bounded queue and allocator stay a few MiB
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _gzip_backend() -> tuple[str, ModuleType]:
    try:
        from isal import isal_zlib

        return "isal", isal_zlib
    except ImportError:
        pass
    try:  # pragma: no cover - depends on what is installed
        from zlib_ng import zlib_ng

        return "zlib-ng", zlib_ng
    except ImportError:  # pragma: no cover
        return "zlib", zlib


GZIP_BACKEND, _gzip = _gzip_backend()
_GZIP_ERRORS: tuple[type[BaseException], ...] = tuple({zlib.error, getattr(_gzip, "error", zlib.error)})


def sniff(head: bytes) -> str:
    """``gzip``, ``zstd`` or ``none`` for the first bytes of a blob."""
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    if head[:4] == ZSTD_MAGIC:
        return "zstd"
    return "none"


def _read_full(blob: IO[bytes], n: int) -> bytes:
    data = blob.read(n)
    if not data or len(data) == n:
        return data
    parts = [data]
    have = len(data)
    while have < n:
        more = blob.read(n - have)
        if not more:
            break
        parts.append(more)
        have += len(more)
    return b"".join(parts)


def _gunzip(blob: IO[bytes], head: bytes, module: ModuleType) -> Iterator[bytes]:
    pending = head
    d: Any = module.decompressobj(wbits=31)
    at_eof = False
    while True:
        if not pending and not at_eof:
            pending = blob.read(CHUNK)
            at_eof = not pending
        try:
            # Bounded output: the decompressor may still hold output after all input went in, so at
            # the end of the input it is called with nothing until it has no more to give.
            out = d.decompress(pending, CHUNK)
        except _GZIP_ERRORS as exc:
            raise LayerError("invalid_archive", f"corrupt layer stream: {exc}") from None
        if out:
            yield out
        pending = d.unconsumed_tail
        if not d.eof:
            if at_eof and not out and not pending:
                raise LayerError("invalid_archive", "corrupt layer stream: truncated gzip data")
            continue
        rest = d.unused_data + pending
        # A new member may follow; NUL padding may too (as gzip(1) accepts).
        while True:
            rest = rest.lstrip(b"\0")
            if rest:
                break
            rest = blob.read(CHUNK)
            if not rest:
                return
        if len(rest) < 2:
            rest += blob.read(1)
        if rest[:2] != GZIP_MAGIC:
            raise LayerError("invalid_archive", "corrupt layer stream: trailing garbage after gzip data")
        d = module.decompressobj(wbits=31)
        pending = rest
        at_eof = False


def _unzstd(blob: IO[bytes], head: bytes) -> Iterator[bytes]:
    import zstandard

    frames = ZstdFrames()
    source: Any = _Prefixed(head, blob, frames.feed)
    reader: Any = zstandard.ZstdDecompressor().stream_reader(source, read_size=CHUNK, read_across_frames=True)
    try:
        while True:
            try:
                out = reader.read(CHUNK)
            except zstandard.ZstdError as exc:
                raise LayerError("invalid_archive", f"corrupt layer stream: {exc}") from None
            if not out:
                break
            yield out
    finally:
        reader.close()
    # The stream reader stops quietly at the end of its input, even inside a frame.
    if not frames.complete():
        raise LayerError("invalid_archive", "corrupt layer stream: truncated zstd data")


class ZstdFrames:
    """Follows the frame and block structure of a zstd stream as its bytes go by (RFC 8878 3.1), so
    that a stream cut inside a frame is detected; it never decodes anything."""

    def __init__(self) -> None:
        self._pending = b""  # bytes of a structure not complete yet
        self._need = 4  # size of the structure being collected
        self._state = "magic"
        self._skip = 0  # content bytes to pass over
        self._checksum = False

    def complete(self) -> bool:
        return self._state == "magic" and not self._pending and not self._skip

    def feed(self, data: bytes) -> None:
        pos = 0
        n = len(data)
        while pos < n:
            if self._skip:
                step = min(self._skip, n - pos)
                self._skip -= step
                pos += step
                continue
            take = min(self._need - len(self._pending), n - pos)
            self._pending += data[pos : pos + take]
            pos += take
            if len(self._pending) == self._need:
                unit, self._pending = self._pending, b""
                self._step(unit)

    def _step(self, unit: bytes) -> None:
        state = self._state
        if state == "magic":
            magic = int.from_bytes(unit, "little")
            if magic == 0xFD2FB528:
                self._state, self._need = "descriptor", 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._need = "skippable", 4
            else:
                raise LayerError("invalid_archive", "corrupt layer stream: bad zstd frame magic")
        elif state == "skippable":
            self._skip = int.from_bytes(unit, "little")
            self._state, self._need = "magic", 4
        elif state == "descriptor":
            d = unit[0]
            single = (d >> 5) & 1
            self._checksum = bool((d >> 2) & 1)
            fcs = (1 if single else 0, 2, 4, 8)[d >> 6]
            self._skip = (0 if single else 1) + (0, 1, 2, 4)[d & 3] + fcs
            self._state, self._need = "block", 3
        else:  # block header
            header = int.from_bytes(unit, "little")
            kind = (header >> 1) & 3
            if kind == 3:
                raise LayerError("invalid_archive", "corrupt layer stream: reserved zstd block type")
            self._skip = 1 if kind == 1 else header >> 3
            if header & 1:  # last block of the frame
                self._skip += 4 if self._checksum else 0
                self._state, self._need = "magic", 4


class _Prefixed:
    """``head`` followed by the rest of ``inner`` (the sniffed bytes put back), shown to ``tap``."""

    def __init__(self, head: bytes, inner: IO[bytes], tap: Callable[[bytes], None]) -> None:
        self.head = head
        self.inner = inner
        self.tap = tap

    def read(self, n: int = -1) -> bytes:
        if self.head:
            cut = len(self.head) if n < 0 else n
            out, self.head = self.head[:cut], self.head[cut:]
        else:
            out = self.inner.read(n)
        self.tap(out)
        return out


def decompressed(
    blob: IO[bytes], limit: int, gzip_module: ModuleType | None = None, *, hasher: Any = None, head: bytes = b""
) -> Generator[bytes, None, None]:
    """The uncompressed chunks of ``blob`` (each at most :data:`CHUNK` bytes), raising
    ``LayerError("too_large")`` as soon as more than ``limit`` bytes came out. Every chunk goes
    into ``hasher`` (a ``hashlib`` object) before it is yielded: the layer's diff ID. ``head`` is
    the blob's first bytes if the caller has read them already."""
    if len(head) < 4:
        head += _read_full(blob, 4 - len(head))
    kind = sniff(head)
    chunks: Iterator[bytes]
    if kind == "gzip":
        chunks = _gunzip(blob, head, gzip_module or _gzip)
    elif kind == "zstd":
        chunks = _unzstd(blob, head)
    else:
        chunks = _plain(blob, head)
    total = 0
    update = hasher.update if hasher is not None else None
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise LayerError("too_large", f"layer expands beyond the {limit}-byte limit")
        if update is not None:
            update(chunk)
        yield chunk


def _plain(blob: IO[bytes], head: bytes) -> Iterator[bytes]:
    for at in range(0, len(head), CHUNK):
        yield head[at : at + CHUNK]
    while chunk := blob.read(CHUNK):
        yield chunk


_END = b""

#: ``auto`` forks a producer only for a blob longer than this: a fork and its reaping take a few
#: milliseconds (3 ms measured, in a process of 40 MiB), the inline work of a smaller layer less.
FORK_ABOVE = 4 * CHUNK

#: How :class:`ChunkPipe` runs the producer: ``inline`` (in the caller's reads), ``thread`` (a
#: thread beside the caller), ``process`` (a forked child beside the caller), or ``auto``.
MODES = ("auto", "inline", "thread", "process")


def cpus() -> int:
    """How many CPUs this process may run on now (its affinity mask, which ``taskset`` and cgroup
    cpusets narrow), not how many the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - Linux has it
        return os.cpu_count() or 1


def _worker(mode: str, head: bytes) -> str:
    """The producer's place for ``mode``, given the blob's first bytes.

    ``auto`` forks a producer when it can overlap with the caller: the process may use a second CPU,
    runs one thread (:func:`fork_is_safe`), and the blob is longer than :data:`FORK_ABOVE` (for a
    small layer the fork costs more than it saves). Otherwise inline: a thread overlaps too little with
    the applier to pay its hand-overs (see the module's docstring), so it runs only when asked for,
    and only with a second CPU. ``process`` forks whenever forking is safe."""
    if mode == "auto":
        return "process" if len(head) == FORK_ABOVE and cpus() > 1 and fork_is_safe() else "inline"
    if mode == "thread":
        return "thread" if cpus() > 1 else "inline"
    if mode == "process":
        return "process" if fork_is_safe() else "inline"
    if mode == "inline":
        return "inline"
    raise ValueError(f"unknown decompression mode {mode!r} (one of {', '.join(MODES)})")


class ChunkPipe:
    """The chunks of :func:`decompressed`, produced inline, by a daemon thread into a bounded queue,
    or by a forked child through a pipe (``mode``, see :func:`_worker`).

    ``read()`` returns the next chunk (``b""`` at the end) and raises whatever the producer raised
    (a ``LayerError``, a digest mismatch from a verifying reader, an ``OSError``). After the end,
    :meth:`hexdigest` is the digest of the uncompressed stream (``hasher``'s). ``close()`` stops the
    producer early and waits for it, so no thread or process outlives the layer."""

    def __init__(self, blob: IO[bytes], limit: int, *, depth: int = 4, mode: str = "auto", hasher: Any = None) -> None:
        head = _read_full(blob, FORK_ABOVE)
        self.mode = _worker(mode, head)
        # The hash is updated by the producer, where it runs (hashlib releases the GIL on large
        # buffers; in a child it is the child's copy of ``hasher``, whose hex comes back).
        self._hasher = hasher
        self._chunks = decompressed(blob, limit, hasher=hasher, head=head)
        self._done = False
        self._forked: ForkedChunks | None = None
        if self.mode == "process":
            try:
                self._forked = ForkedChunks(self._chunks, hasher.hexdigest if hasher is not None else str)
            except OSError:  # no process to be had (EAGAIN, ENOMEM): the same work, inline
                self.mode = "inline"
        if self.mode == "thread":
            self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._produce, name="imagevol-decompress", daemon=True)
            self._thread.start()

    def hexdigest(self) -> str:
        """The hex digest of every chunk returned (``hasher``'s), once ``read()`` returned the end."""
        if self._forked is not None:
            return self._forked.result
        return str(self._hasher.hexdigest()) if self._hasher is not None else ""

    def _produce(self) -> None:
        try:
            for chunk in self._chunks:
                if not self._put(chunk):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, re-raised there
            self._put(exc)
        finally:
            self._chunks.close()

    def _put(self, item: bytes | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read(self) -> bytes:
        if self._done:
            return _END
        if self._forked is not None:
            return self._forked.read()
        if self.mode == "inline":
            try:
                return next(self._chunks)
            except StopIteration:
                self._done = True
                return _END
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if not item:
            self._done = True
        return item

    def close(self) -> None:
        if self._forked is not None:
            self._forked.close()
            return
        if self.mode == "inline":
            self._chunks.close()
            return
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a producer waiting on a full queue
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(0.05)
        self._thread.join()

    def __enter__(self) -> ChunkPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
