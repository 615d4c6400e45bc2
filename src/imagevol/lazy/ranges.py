"""Byte ranges of a layer blob, and the one thing the format code asks of wherever the blob lives.

The format readers (:mod:`.zstdchunked`, :mod:`.estargz`, :mod:`.fetch`) never open a file or a
connection: they are handed a :class:`RangedReader` and ask it for byte ranges. Today that is a
blob in the content store or an OCI layout (:class:`FileReader`), bytes in memory
(:class:`BytesReader`), or a registry through HTTP ``Range`` requests
(:mod:`imagevol.content.sources.ranged`); the protocol and those readers live in
:mod:`imagevol.content.ranges`, below this package, and are re-exported here. Whatever a reader
answers is checked by :func:`read_exact` before a byte of it is parsed, so a reader that answers
too much, too little or the wrong number of pieces (a registry that ignores ``Range`` and sends
the whole blob, a truncated body) is refused, never trusted.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..content.ranges import ByteRange, BytesReader, FileReader, RangedReader, coalesce
from ..errors import LazyFormatError

__all__ = [
    "ByteRange",
    "BytesReader",
    "FileReader",
    "RangedReader",
    "coalesce",
    "read_coalesced",
    "read_exact",
]


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
