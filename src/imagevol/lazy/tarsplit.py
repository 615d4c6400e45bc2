"""The tar-split of a zstd:chunked layer, held against its TOC.

A tar-split (vbatts/tar-split, NDJSON) records a tar's raw bytes except file contents: type-2
lines carry the raw headers and padding (base64), type-1 lines name each member with its size
and a CRC-64 of its content. Concatenating the raw segments, with every file's content replaced by
as many zero bytes, gives a tar with the same headers in the same places. Fed to the project's
tar reader, it yields the members exactly as a full pull would decode them (PAX records, GNU long
names and all), so :func:`check_tar_split` can demand that the TOC lists exactly those members, in
that order, with the same metadata (containers/storage's ``ensureTOCMatchesTarSplit`` compares by
name only; order matters here because the index applies entries in order).

The tar-split is pinned by the TOC (``tarSplitDigest``), which is pinned by the manifest. It is
processed as a stream: nothing but the current line is held, and the zero runs standing in for
file contents are bounded by the TOC's file sizes, which the TOC parser bounded by the layer limit.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Sequence

from ..errors import LayerError, LazyFormatError
from .members import MemberReader, check_members_match
from .toc import Entry, bad, load_json

#: A tar-split line: a header segment carries at most a few MiB (PAX records are limited to 1 MiB).
MAX_LINE = 8 * 1024 * 1024
_ZEROS = bytes(1 << 20)
_KEYS = frozenset({"type", "name", "name_raw", "size", "payload", "position"})


def _lines(pieces: Iterable[bytes]) -> Iterator[bytes]:
    pending = b""
    for piece in pieces:
        pending += piece
        *whole, pending = pending.split(b"\n")
        if len(pending) > MAX_LINE:
            raise bad("tar-split line too long", "too_large")
        yield from (line for line in whole if line)
    if pending.strip():
        yield pending


def _records(pieces: Iterable[bytes]) -> Iterator[tuple[int, dict[str, object]]]:
    for position, line in enumerate(_lines(pieces)):
        if len(line) > MAX_LINE:
            raise bad("tar-split line too long", "too_large")
        record = load_json(line, "tar-split line")
        if type(record) is not dict or not record.keys() <= _KEYS:
            raise bad(f"tar-split line {position} is not a tar-split entry")
        kind, where = record.get("type"), record.get("position")
        # Positions count the lines; type 1 is a file, 2 raw bytes (JSON's true is no number).
        if type(kind) is not int or type(where) is not int or where != position or kind not in (1, 2):
            raise bad(f"tar-split line {position} is not a tar-split entry")
        yield kind, record


def _payload(record: dict[str, object], position: int) -> bytes:
    raw = record.get("payload")
    if raw is None:
        return b""
    if not isinstance(raw, str):
        raise bad(f"tar-split line {position}: payload is not base64")
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error:
        raise bad(f"tar-split line {position}: payload is not base64") from None


class _Stream:
    """The tar the tar-split describes, contents zeroed, as a chunk source for a tar reader.
    The k-th file line must name the k-th TOC entry, with its size (0 for anything but a regular
    file: header-only members carry no data, whatever their header says)."""

    def __init__(self, pieces: Iterable[bytes], entries: Sequence[Entry], max_bytes: int) -> None:
        self._chunks = self._generate(pieces)
        self._entries = entries
        self._budget = max_bytes
        self.files = 0

    def _generate(self, pieces: Iterable[bytes]) -> Iterator[bytes]:
        for position, (kind, record) in enumerate(_records(pieces)):
            if kind == 2:
                data = _payload(record, position)
                if data:
                    yield data
            else:
                yield from self._file(record, position)

    def _file(self, record: dict[str, object], position: int) -> Iterator[bytes]:
        name, size = record.get("name", ""), record.get("size", 0)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or "name_raw" in record:
            raise bad(f"tar-split line {position} is not a file entry")
        if self.files >= len(self._entries):
            raise LazyFormatError("mismatch", "the tar-split has more files than the TOC lists")
        entry = self._entries[self.files]
        self.files += 1
        want = entry.size if entry.type == "reg" else 0
        if name != entry.name or size != want:
            raise LazyFormatError("mismatch", f"TOC and tar-split disagree on {entry.name!r}")
        self._budget -= size
        if self._budget < 0:
            raise bad("the tar-split's files are larger than the layer limit", "too_large")
        while size:
            step = min(size, len(_ZEROS))
            # The same zero buffer every time: a tar reader skips contents without copying them.
            yield _ZEROS if step == len(_ZEROS) else _ZEROS[:step]
            size -= step

    def read(self) -> bytes:
        return next(self._chunks, b"")

    def drain(self) -> None:
        for _ in self._chunks:
            pass


def check_tar_split(pieces: Iterable[bytes], entries: Sequence[Entry], members: MemberReader, max_bytes: int) -> None:
    """Refuse (``mismatch``) unless the tar described by the decoded tar-split ``pieces`` has
    exactly the members ``entries`` lists, in order; the rest of the tar-split after the
    end-of-archive marker may hold padding only."""
    stream = _Stream(pieces, entries, max_bytes)
    try:
        check_members_match(entries, members(stream.read))
    except LayerError as exc:
        raise LazyFormatError("mismatch", f"the tar-split's headers cannot be read: {exc}") from None
    stream.drain()
    if stream.files != len(entries):
        raise LazyFormatError("mismatch", "the TOC lists files the tar-split does not have")
