"""Byte ranges of a blob, and the one thing lazy readers ask of wherever a blob lives.

A :class:`RangedReader` answers byte ranges of one blob: a registry through HTTP ``Range``
requests (:mod:`imagevol.content.sources.ranged`), a file of an OCI layout or of the content
store (:class:`FileReader`), bytes in memory (:class:`BytesReader`). Nothing a reader answers is
trusted: the lazy package checks every answer's length before parsing it, and every byte it keeps
against a digest the manifest pins.

These live here, below :mod:`imagevol.lazy`, because the registry and layout sources implement
them and the content layer may not import the lazy one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import attrs


@attrs.frozen(slots=True, order=True)
class ByteRange:
    """``length`` bytes of a blob from ``offset`` (HTTP ``bytes=offset-(offset+length-1)``)."""

    offset: int = attrs.field()
    length: int = attrs.field()

    @offset.validator
    def _check_offset(self, _: object, value: int) -> None:
        if value < 0:
            raise ValueError(f"negative range offset {value}")

    @length.validator
    def _check_length(self, _: object, value: int) -> None:
        if value <= 0:
            raise ValueError(f"empty or negative range length {value}")

    @property
    def end(self) -> int:
        """The first offset after the range."""
        return self.offset + self.length

    def header(self) -> str:
        """The range as an HTTP ``Range`` value element (``a-b``, both ends included)."""
        return f"{self.offset}-{self.end - 1}"


def coalesce(ranges: Sequence[ByteRange], *, gap: int = 1024) -> list[ByteRange]:
    """The ranges sorted and merged where they overlap or lie less than ``gap`` bytes apart (the
    bytes in between are cheaper than another range; containers/storage merges below 1 KiB)."""
    merged: list[ByteRange] = []
    for r in sorted(ranges):
        if merged and r.offset - merged[-1].end < gap:
            last = merged[-1]
            merged[-1] = ByteRange(last.offset, max(last.end, r.end) - last.offset)
        else:
            merged.append(r)
    return merged


@runtime_checkable
class RangedReader(Protocol):
    """A blob that can be read by byte ranges. ``read_ranges`` returns one ``bytes`` per range,
    in the order asked, each exactly as long as its range (implementations may merge, split or
    reorder the requests they make; callers check the answer)."""

    @property
    def size(self) -> int:
        """The size of the blob in bytes."""

    def read_ranges(self, ranges: Sequence[ByteRange]) -> list[bytes]:
        """The bytes of each range, in the order asked, each exactly as long as its range."""


class BytesReader:
    """A blob held in memory (tests, and TOCs already in hand)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        #: Every range asked for, in order (tests use it to prove what was fetched).
        self.requests: list[tuple[ByteRange, ...]] = []

    @property
    def size(self) -> int:
        """The size of the blob in bytes."""
        return len(self._data)

    def read_ranges(self, ranges: Sequence[ByteRange]) -> list[bytes]:
        """The bytes of each range, in order (recorded in :attr:`requests`)."""
        self.requests.append(tuple(ranges))
        return [self._data[r.offset : r.end] for r in ranges]

    @property
    def bytes_read(self) -> int:
        """How many bytes were read so far."""
        return sum(r.length for batch in self.requests for r in batch)


class FileReader:
    """A blob in a file (the content store, an OCI layout), read with ``pread``: no shared file
    position, so one reader may serve several threads."""

    def __init__(self, fd: int, on_read: Callable[[int], None] | None = None) -> None:
        self._fd = fd
        self._size = os.fstat(fd).st_size
        #: Told the bytes of every answer (the lazy-fetch metric counts an OCI layout's too).
        self.on_read = on_read

    @classmethod
    def open(cls, path: str, on_read: Callable[[int], None] | None = None) -> FileReader:
        """A reader of the file at ``path``; ``on_read`` is told how many bytes each read took."""
        return cls(os.open(path, os.O_RDONLY | os.O_CLOEXEC), on_read)

    @property
    def size(self) -> int:
        """The size of the file in bytes."""
        return self._size

    def read_ranges(self, ranges: Sequence[ByteRange]) -> list[bytes]:
        """The bytes of each range, in order (short when the file shrank: :func:`read_exact` refuses that)."""
        out = []
        for r in ranges:
            parts = []
            pos, left = r.offset, r.length
            while left:
                piece = os.pread(self._fd, min(left, 1 << 20), pos)
                if not piece:
                    break  # the file is shorter than it was: the caller refuses the short answer
                parts.append(piece)
                pos += len(piece)
                left -= len(piece)
            out.append(b"".join(parts))
        if self.on_read is not None:
            self.on_read(sum(len(data) for data in out))
        return out

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)

    def __enter__(self) -> FileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
