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
import re
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


#: The two line shapes tar-split writes (Go's encoder, fields in struct order). A line of exactly
#: such a shape means what the JSON parser would read from it: the name holds no escape, quote or
#: control character, the numbers are plain decimals, the payload is canonical base64 (strict
#: decoding accepts a subset of what the JSON path accepts, and decodes it the same way). Anything
#: else is parsed as JSON.
_RAW_HEAD = b'{"type":2,"payload":"'
_RAW_TAIL = b'","position":'
_FILE_LINE = re.compile(
    rb'\{"type":1,"name":"([^"\\\x00-\x1f]*)","size":(0|[1-9][0-9]{0,17}),'
    rb'"payload":(?:null|"[A-Za-z0-9+/]*={0,2}"),"position":(0|[1-9][0-9]{0,17})\}'
)


#: One tar-split line: its type (1 a file, 2 raw bytes), a file's name and size, raw bytes.
_Record = tuple[int, object, int, bytes]


def _records(pieces: Iterable[bytes]) -> Iterator[_Record]:
    for position, line in enumerate(_lines(pieces)):
        if len(line) > MAX_LINE:
            raise bad("tar-split line too long", "too_large")
        if line.startswith(_RAW_HEAD):
            data = _raw_payload(line, position)
            if data is not None:
                yield 2, "", 0, data
                continue
        m = _FILE_LINE.fullmatch(line)
        if m is not None and int(m[3]) == position:
            try:
                name = m[1].decode("utf-8")
            except UnicodeDecodeError:
                pass  # the JSON parser names the problem
            else:
                yield 1, name, int(m[2]), b""
                continue
        yield _json_record(line, position)


def _raw_payload(line: bytes, position: int) -> bytes | None:
    """The bytes of a raw line of the canonical shape, None for any other line. (No regular
    expression: scanning the payload twice costs more than decoding it.)"""
    tail = line.rfind(_RAW_TAIL)
    digits = line[tail + len(_RAW_TAIL) : -1]
    if (
        tail < len(_RAW_HEAD)
        or not line.endswith(b"}")
        or not digits.isdigit()
        or (digits[0] == 0x30 and len(digits) > 1)  # JSON has no leading zeros
        or len(digits) > 18
        or int(digits) != position
    ):
        return None
    try:
        # Strict: only the base64 alphabet, padding only at the end and only as much as needed.
        return binascii.a2b_base64(line[len(_RAW_HEAD) : tail], strict_mode=True)
    except binascii.Error:
        return None


def _json_record(line: bytes, position: int) -> _Record:
    """A line of any other shape, read as JSON, strictly."""
    record = load_json(line, "tar-split line")
    if type(record) is not dict or not record.keys() <= _KEYS:
        raise bad(f"tar-split line {position} is not a tar-split entry")
    kind, where = record.get("type"), record.get("position")
    # Positions count the lines; type 1 is a file, 2 raw bytes (JSON's true is no number).
    if type(kind) is not int or type(where) is not int or where != position or kind not in (1, 2):
        raise bad(f"tar-split line {position} is not a tar-split entry")
    if kind == 2:
        return 2, "", 0, _payload(record, position)
    size = record.get("size", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or "name_raw" in record:
        raise bad(f"tar-split line {position} is not a file entry")
    return 1, record.get("name", ""), size, b""


def _payload(record: dict[str, object], position: int) -> bytes:
    raw = record.get("payload")
    if raw is None:
        return b""
    if not isinstance(raw, str) or not raw.isascii():
        raise bad(f"tar-split line {position}: payload is not base64")
    try:
        return base64.b64decode(raw.encode(), validate=True)
    except binascii.Error:
        raise bad(f"tar-split line {position}: payload is not base64") from None


class _Stream:
    """The tar the tar-split describes, contents zeroed, as a chunk source for a tar reader.
    The k-th file line must name the k-th TOC entry, with its size (0 for anything but a regular
    file: header-only members carry no data, whatever their header says)."""

    def __init__(self, pieces: Iterable[bytes], entries: Sequence[Entry], max_bytes: int) -> None:
        self._records = _records(pieces)
        self._entries = entries
        self._budget = max_bytes
        #: Zero bytes still to come for the current file's contents.
        self._zeros = 0
        self.files = 0

    def _file(self, name: object, size: int) -> None:
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
        self._zeros = size

    def read(self) -> bytes:
        """The next chunk of the tar, ``b""`` at its end. (A plain method rather than nested
        generators: the tar reader asks for two chunks per member.)"""
        while not self._zeros:
            record = next(self._records, None)
            if record is None:
                return b""
            kind, name, size, data = record
            if kind == 2:
                if data:
                    return data
            else:
                self._file(name, size)
        step = min(self._zeros, len(_ZEROS))
        self._zeros -= step
        # The same zero buffer for every whole MiB: a tar reader skips contents without copying them.
        return _ZEROS if step == len(_ZEROS) else _ZEROS[:step]

    def drain(self) -> None:
        while self.read():
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
