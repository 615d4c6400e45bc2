"""Byte ranges of a layer blob, and the one thing the format code asks of wherever the blob lives.

The format readers (:mod:`.zstdchunked`, :mod:`.estargz`, :mod:`.fetch`) never open a file or a
connection: they are handed a :class:`RangedReader` and ask it for byte ranges. Today that is a
blob in the content store (:class:`FileReader`) or bytes in memory (:class:`BytesReader`); the
registry client implements the same protocol with HTTP ``Range`` requests. Whatever a reader
answers is checked by :func:`read_exact` before a byte of it is parsed, so a reader that answers
too much, too little or the wrong number of pieces (a registry that ignores ``Range`` and sends
the whole blob, a truncated body) is refused, never trusted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import attrs

from ..errors import LazyFormatError


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


@runtime_checkable
class RangedReader(Protocol):
    """A blob that can be read by byte ranges. ``read_ranges`` returns one ``bytes`` per range,
    in the order asked, each exactly as long as its range (implementations may merge, split or
    reorder the requests they make; callers check the answer with :func:`read_exact`)."""

    @property
    def size(self) -> int:
        """The size of the blob in bytes."""

    def read_ranges(self, ranges: Sequence[ByteRange]) -> list[bytes]:
        """The bytes of each range, in order."""


def read_exact(reader: RangedReader, ranges: Sequence[ByteRange]) -> list[bytes]:
    """``reader.read_ranges(ranges)``, refused (``range``) unless every range lies in the blob and
    every answer has exactly the length asked for."""
    size = reader.size
    for r in ranges:
        if r.end > size:
            raise LazyFormatError("range", f"range {r.header()} lies outside the {size}-byte blob")
    answers = reader.read_ranges(ranges)
    if len(answers) != len(ranges):
        raise LazyFormatError("range", f"asked for {len(ranges)} ranges, got {len(answers)} answers")
    for r, data in zip(ranges, answers, strict=True):
        if len(data) != r.length:
            raise LazyFormatError("range", f"range {r.header()}: got {len(data)} bytes instead of {r.length}")
    return answers


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
        """The bytes of each range, in order (counted in :attr:`bytes_read`)."""
        self.requests.append(tuple(ranges))
        return [self._data[r.offset : r.end] for r in ranges]

    @property
    def bytes_read(self) -> int:
        """How many bytes were read so far."""
        return sum(r.length for batch in self.requests for r in batch)


class FileReader:
    """A blob in a file (the content store), read with ``pread``: no shared file position, so one
    reader may serve several threads."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._size = os.fstat(fd).st_size

    @classmethod
    def open(cls, path: str) -> FileReader:
        """A reader of the file at ``path``."""
        return cls(os.open(path, os.O_RDONLY | os.O_CLOEXEC))

    @property
    def size(self) -> int:
        """The size of the file in bytes."""
        return self._size

    def read_ranges(self, ranges: Sequence[ByteRange]) -> list[bytes]:
        """The bytes of each range, in order."""
        out = []
        for r in ranges:
            parts = []
            pos, left = r.offset, r.length
            while left:
                piece = os.pread(self._fd, min(left, 1 << 20), pos)
                if not piece:
                    break  # the file is shorter than it was: read_exact refuses the short answer
                parts.append(piece)
                pos += len(piece)
                left -= len(piece)
            out.append(b"".join(parts))
        return out

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)

    def __enter__(self) -> FileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def read_coalesced(reader: RangedReader, ranges: Sequence[ByteRange], *, gap: int = 1024) -> list[bytes]:
    """Read ``ranges`` with the fewest ranges :func:`coalesce` allows (one ``read_ranges`` call)
    and cut the answers back to what was asked, in the order asked."""
    merged = coalesce(ranges, gap=gap)
    answers = read_exact(reader, merged)
    out = []
    for r in ranges:
        i = _containing(merged, r)
        base = merged[i]
        out.append(answers[i][r.offset - base.offset : r.end - base.offset])
    return out


def _containing(merged: Sequence[ByteRange], r: ByteRange) -> int:
    lo, hi = 0, len(merged) - 1
    while lo < hi:  # the last merged range starting at or before r.offset
        mid = (lo + hi + 1) // 2
        if merged[mid].offset <= r.offset:
            lo = mid
        else:
            hi = mid - 1
    return lo
