"""``multipart/byteranges`` answers (RFC 9110 section 14.6), read one way only and within bounds.

A registry that honours a multi-range request answers ``206`` with one body part per range (or
per set of ranges it chose to merge), each with its own ``Content-Range``. The parser never
searches a part's data for the boundary (a file may well contain it): each part's length comes
from its ``Content-Range``, the data is taken by count, and what follows must be the delimiter.
Everything is bounded: the number of parts, the bytes of each part's headers, the body as a whole
(the caller reads at most what the ranges asked for plus a small allowance per part).
"""

from __future__ import annotations

import re

from ...errors import LazyFormatError

#: Bytes of one part's header block (a ``Content-Type`` and a ``Content-Range`` need ~100).
MAX_PART_HEADERS = 4096
#: What a body may carry beyond the data asked for, per part: delimiter and headers.
PART_OVERHEAD = MAX_PART_HEADERS + 256
_BOUNDARY = re.compile(r'(?:^|;)\s*boundary\s*=\s*(?:"([^"]{1,70})"|([^\s;"]{1,70}))', re.IGNORECASE)
_CONTENT_RANGE = re.compile(r"bytes (\d{1,19})-(\d{1,19})/(\d{1,19}|\*)")


def _bad(message: str) -> LazyFormatError:
    return LazyFormatError("range", f"invalid multipart/byteranges answer: {message}")


def boundary(content_type: str) -> str | None:
    """The boundary of a ``multipart/byteranges`` content type, None for any other type."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/byteranges":
        return None
    m = _BOUNDARY.search(params)
    if m is None:
        raise _bad("no boundary")
    return m.group(1) or m.group(2)


def content_range(value: str, size: int) -> tuple[int, int]:
    """``(first, last)`` of a ``Content-Range: bytes first-last/size`` of a ``size``-byte blob;
    refused unless it lies in the blob and names the blob's size (or ``*``)."""
    m = _CONTENT_RANGE.fullmatch(value.strip())
    if m is None:
        raise LazyFormatError("range", f"invalid Content-Range {value[:80]!r}")
    first, last = int(m.group(1)), int(m.group(2))
    if first > last or last >= size or m.group(3) not in ("*", str(size)):
        raise LazyFormatError("range", f"Content-Range {value[:80]!r} does not lie in the {size}-byte blob")
    return first, last


def parse(body: bytes, boundary_text: str, size: int, *, max_parts: int) -> list[tuple[int, bytes]]:
    """The parts of ``body`` as ``(offset, data)``, in the order sent. Refused (``range``): more
    than ``max_parts`` parts, a part without a valid ``Content-Range`` or whose data is not as long
    as it says, anything but a delimiter after a part's data, no closing delimiter."""
    delimiter = b"--" + boundary_text.encode("ascii")
    pos = body.find(delimiter)
    # Only CRLF-separated preamble may precede the first delimiter (RFC 2046 allows a preamble).
    if pos < 0 or (pos and not body[:pos].endswith(b"\r\n")):
        raise _bad("no opening delimiter")
    pos += len(delimiter)
    parts: list[tuple[int, bytes]] = []
    while True:
        if body[pos : pos + 2] == b"--":
            return parts  # the close delimiter; an epilogue may follow and is ignored
        if body[pos : pos + 2] != b"\r\n":
            raise _bad("a delimiter is not followed by a line break")
        pos += 2
        end = body.find(b"\r\n\r\n", pos, pos + MAX_PART_HEADERS)
        if end < 0:
            raise _bad("a part's headers are missing or too long")
        ranged = [
            line.split(b":", 1)[1].decode("latin-1")
            for line in body[pos:end].split(b"\r\n")
            if line.split(b":", 1)[0].strip().lower() == b"content-range" and b":" in line
        ]
        if len(ranged) != 1:
            raise _bad("a part without exactly one Content-Range")
        first, last = content_range(ranged[0], size)
        start = end + 4
        data = body[start : start + last - first + 1]
        if len(data) != last - first + 1:
            raise _bad("a part is shorter than its Content-Range")
        parts.append((first, data))
        if len(parts) > max_parts:
            raise _bad(f"more than {max_parts} parts")
        pos = start + len(data)
        if body[pos : pos + 2 + len(delimiter)] != b"\r\n" + delimiter:
            raise _bad("a part's data is not followed by a delimiter")
        pos += 2 + len(delimiter)
