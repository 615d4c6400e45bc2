"""A streaming tar reader that decodes headers the way Go's ``archive/tar`` does.

The layer applier needs each member's *decoded* name (PAX ``path``/``linkpath`` records and GNU
``L``/``K`` long names applied) before it validates anything (C2.1), and it
needs it fast: CPython's ``tarfile`` spends most of an unpack in Python-level header parsing. This
reader parses a 512-byte header with one ``struct.unpack``, sums its checksum in C, remembers the
numeric fields a layer repeats, hands the member's data straight from the decompressed chunk to
``os.write`` (no copy for data inside a chunk) and never seeks.

Decoding follows Go (containerd, umoci and CRI-O all read layers with it), and where readers are known
to disagree the archive is refused rather than given one reading (an attacker picks the reader):

* header-only types (links, directories, devices, FIFOs) carry no data whatever their size field says;
* a GNU long name overrides the header name; a PAX ``path`` record too; both at once must agree;
* two extended headers of one kind before a member, or one not followed by a member, are refused;
* global PAX headers (``g``) are ignored, as Go and containerd do (CPython would apply their ``path``
  to every later member);
* a single zero block must be followed by a second one (Go); what follows the end marker is read and
  discarded, so the blob is still hashed to its end.

Errors are :class:`~imagevol.errors.LayerError` of kind ``invalid_archive`` (malformed),
``unsupported`` (sparse files, volume headers, unknown types) or ``too_large`` (oversized metadata).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from zlib import adler32

from ..errors import LayerError

BLOCK = 512
#: Largest PAX header or GNU long name accepted (Go's ``maxSpecialFileSize``).
MAX_META_BYTES = 1024 * 1024

REG = "0"
LINK = "1"
SYMLINK = "2"
CHR = "3"
BLK = "4"
DIR = "5"
FIFO = "6"
_CONT = "7"
_AREG = "\0"
_PAX = "x"
_GLOBAL = "g"
_LONGNAME = "L"
_LONGLINK = "K"
_EXTENDED = frozenset({_PAX, _GLOBAL, _LONGNAME, _LONGLINK})
_HEADER_ONLY = frozenset({LINK, SYMLINK, CHR, BLK, DIR, FIFO})
_SUPPORTED = frozenset({REG, LINK, SYMLINK, CHR, BLK, DIR, FIFO})
_UNSUPPORTED_NAMES = {
    "S": "GNU sparse file",
    "V": "GNU volume header",
    "M": "GNU multi-volume continuation",
    "N": "old GNU long name",
    "D": "GNU dump directory",
}

#: name mode uid gid size mtime chksum type linkname magic version; then, sliced from the block when
#: a member needs them, uname gname devmajor(329) devminor(337) prefix(345, 155 bytes; star: 131,
#: then atime ctime) pad (star: trailer at 508)
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s247x")
_ZERO = bytes(BLOCK)
_OCTAL = b"01234567"
_USTAR = b"ustar\x00"
_GNU_MAGIC = b"ustar "
_GNU_VERSION = b" \x00"
#: Distinct numeric header fields a reader remembers (:class:`_Numbers`).
_MAX_NUMBERS = 4096


class Member:
    """One decoded tar member. ``type`` is one of the single-character constants of this module."""

    __slots__ = ("devmajor", "devminor", "gid", "linkname", "mode", "mtime_ns", "name", "size", "type", "uid", "xattrs")

    def __init__(
        self,
        type: str,
        name: str,
        linkname: str,
        size: int,
        mode: int,
        uid: int,
        gid: int,
        mtime_ns: int,
        devmajor: int = 0,
        devminor: int = 0,
        xattrs: dict[str, bytes] | None = None,
    ) -> None:
        self.type = type
        self.name = name
        self.linkname = linkname
        self.size = size
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.mtime_ns = mtime_ns
        self.devmajor = devmajor
        self.devminor = devminor
        self.xattrs = xattrs

    def __repr__(self) -> str:
        return f"Member({self.type!r}, {self.name!r}, linkname={self.linkname!r}, size={self.size})"


def _bad(message: str) -> LayerError:
    return LayerError("invalid_archive", message)


def _cstr(field: bytes) -> bytes:
    """A header string field: everything before the first NUL."""
    i = field.find(b"\0")
    return field if i < 0 else field[:i]


def _decode(raw: bytes) -> str:
    # Names are bytes on Linux: surrogateescape keeps every byte and os.fsencode gives it back.
    return raw.decode("utf-8", "surrogateescape")


def parse_number(field: bytes) -> int:
    """A numeric header field: octal padded with spaces/NULs, or GNU base-256 (high bit set)."""
    if field and field[0] & 0x80:
        negative = bool(field[0] & 0x40)
        value = field[0] & 0x7F if not negative else (field[0] ^ 0xFF) & 0x7F
        for byte in field[1:]:
            value = (value << 8) | (byte ^ 0xFF if negative else byte)
        return -value - 1 if negative else value
    digits = field.strip(b" \0")
    if not digits:
        return 0
    if digits.translate(None, _OCTAL):
        raise _bad(f"invalid numeric header field {field!r}")
    return int(digits, 8)


def _byte_sum(block: bytes) -> int:
    """The sum of the 512 bytes of a header, as unsigned values.

    ``sum(block)`` walks 512 Python ints (about 2 us, once per member); Adler-32 sums the same bytes
    in C. Its low half is the byte sum modulo 65521, which is the exact sum for a run of at most 256
    bytes (256 x 255 = 65,280 < 65,521): two halves give the exact total."""
    return (adler32(block[:256], 0) & 0xFFFF) + (adler32(block[256:], 0) & 0xFFFF)


def _checksum_ok(block: bytes, stored: int, chksum_field: bytes | None = None) -> bool:
    field = block[148:156] if chksum_field is None else chksum_field
    # The checksum field itself counts as eight spaces.
    unsigned = _byte_sum(block) - sum(field) + 8 * 0x20
    if stored == unsigned:
        return True
    # Some old tars summed signed chars; Go and CPython accept either.
    high = sum(1 for b in block if b & 0x80) - sum(1 for b in field if b & 0x80)
    return stored == unsigned - 256 * high


def parse_pax(data: bytes) -> dict[str, str]:
    """PAX records ``"<len> <key>=<value>\\n"``; a malformed record refuses the archive (Go)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            raise _bad("malformed PAX record")
        length_text = data[pos:space]
        if not length_text.isdigit():
            raise _bad("malformed PAX record length")
        length = int(length_text)
        end = pos + length
        if length < 5 or end > len(data) or data[end - 1 : end] != b"\n":
            raise _bad("malformed PAX record")
        key, sep, value = data[space + 1 : end - 1].partition(b"=")
        if not sep or not key or b"\0" in key:
            raise _bad("malformed PAX record")
        records[_decode(key)] = _decode(value)
        pos = end
    return records


def parse_pax_time(text: str) -> int:
    """A PAX time (``[-]seconds[.fraction]``) in nanoseconds, fraction truncated as Go does."""
    sign = -1 if text.startswith("-") else 1
    body = text[1:] if sign < 0 else text
    secs, dot, frac = body.partition(".")
    if not secs.isdigit() or (dot and not (frac.isdigit() or frac == "")) or not secs.isascii():
        raise _bad(f"invalid PAX time {text!r}")
    frac = (frac + "000000000")[:9] if frac else "0"
    return sign * (int(secs) * 1_000_000_000 + int(frac))


def _pax_int(records: dict[str, str], key: str, default: int) -> int:
    value = records.get(key)
    if value is None:
        return default
    if not value.isascii() or not value.isdigit():
        raise _bad(f"invalid PAX {key} {value!r}")
    return int(value)


class _Numbers(dict[bytes, int]):
    """:func:`parse_number` of header fields (or ``parse`` of them), remembered: the mode, owner,
    mtime and size fields of a layer repeat a handful of values, and a dict lookup costs a tenth of
    a parse. Only valid fields are remembered (an invalid one raises every time it is looked up),
    and at most :data:`_MAX_NUMBERS` of them, so a hostile layer cannot grow the memo."""

    def __init__(self, parse: Callable[[bytes], int] = parse_number) -> None:
        super().__init__()
        self._parse = parse

    def __missing__(self, field: bytes) -> int:
        value = self._parse(field)
        if len(self) < _MAX_NUMBERS:
            self[field] = value
        return value


def _checksum_want(field: bytes) -> int:
    """The byte sum of a header block that its checksum field makes right (:func:`_checksum_ok`'s
    common case: the field itself counts as eight spaces)."""
    return parse_number(field) + sum(field) - 8 * 0x20


class TarReader:
    """Members of a tar stream read from ``source`` (a callable returning the next chunk, ``b""``
    at the end). After :meth:`next` returns a regular file, its data is consumed by
    :meth:`copy_to` or skipped by the next call to :meth:`next`."""

    def __init__(self, source: Callable[[], bytes]) -> None:
        self._source = source
        self._buf = b""
        self._view = memoryview(self._buf)
        self._pos = 0
        self._eof = False
        self._data_left = 0  # data bytes of the current member not yet consumed
        self._pad_left = 0  # then this many padding bytes
        self._numbers = _Numbers()
        self._checksums = _Numbers(_checksum_want)  # apart: they vary more, would crowd out the others
        self.ended = False

    # --- buffer -------------------------------------------------------------------------------

    def _refill(self) -> bool:
        """Replace an exhausted buffer with the next chunk; False at the end of the stream."""
        while not self._eof:
            chunk = self._source()
            if not chunk:
                self._eof = True
                break
            self._buf = chunk
            self._view = memoryview(chunk)
            self._pos = 0
            return True
        return False

    def _take(self, n: int) -> bytes:
        """Exactly ``n`` bytes (fewer only at the end of the stream)."""
        pos = self._pos
        end = pos + n
        if end <= len(self._buf):
            self._pos = end
            return self._buf[pos:end]
        parts = [self._buf[pos:]]
        have = len(parts[0])
        self._pos = len(self._buf)
        while have < n and self._refill():
            piece = self._buf[: n - have]
            self._pos = len(piece)
            parts.append(piece)
            have += len(piece)
        return b"".join(parts)

    def _skip(self, n: int) -> None:
        while n > 0:
            avail = len(self._buf) - self._pos
            if avail == 0:
                if not self._refill():
                    raise _bad("unexpected end of layer data")
                continue
            step = min(avail, n)
            self._pos += step
            n -= step

    def _finish_member(self) -> None:
        if self._data_left or self._pad_left:
            self._skip(self._data_left + self._pad_left)
            self._data_left = self._pad_left = 0

    # --- data -----------------------------------------------------------------------------------

    def copy_to(self, fd: int) -> None:
        """Write the current member's data to ``fd`` (short writes are retried)."""
        left = self._data_left
        write = os.write
        pos = self._pos
        if left > 0 and pos + left <= len(self._buf):  # all of it in this chunk: most files of a layer
            view = self._view[pos : pos + left]
            done = write(fd, view)
            while done < left:
                done += write(fd, view[done:])
            self._pos = pos + left
            self._data_left = 0
            return
        while left:
            avail = len(self._buf) - self._pos
            if avail == 0:
                if not self._refill():
                    raise _bad("unexpected end of layer data")
                continue
            step = avail if avail < left else left
            view = self._view[self._pos : self._pos + step]
            done = write(fd, view)
            while done < step:
                done += write(fd, view[done:])
            self._pos += step
            left -= step
        self._data_left = 0

    def read_data(self, limit: int) -> bytes:
        """The current member's data as bytes (for small payloads only)."""
        if self._data_left > limit:
            raise LayerError("too_large", f"member data of {self._data_left} bytes exceeds {limit}")
        data = self._take(self._data_left)
        if len(data) < self._data_left:
            raise _bad("unexpected end of layer data")
        self._data_left = 0
        return data

    def drain(self) -> None:
        """Read (and discard) everything up to the end of the stream."""
        self._pos = len(self._buf)
        while self._refill():
            self._pos = len(self._buf)

    # --- headers ----------------------------------------------------------------------------------

    def _block(self) -> bytes | None:
        """The next header block, or None at a clean end of the stream."""
        block = self._take(BLOCK)
        if not block:
            return None
        if len(block) < BLOCK:
            raise _bad("unexpected end of layer data in a header")
        return block

    def _meta_data(self, size: int) -> bytes:
        if size > MAX_META_BYTES:
            raise LayerError("too_large", f"extended header of {size} bytes exceeds {MAX_META_BYTES}")
        data = self._take(size)
        if len(data) < size:
            raise _bad("unexpected end of layer data in an extended header")
        self._skip(-size % BLOCK)
        return data

    def next(self) -> Member | None:
        """The next member, or None at the end of the archive."""
        left = self._data_left + self._pad_left
        if left:
            if self._pos + left <= len(self._buf):  # the rest of the member is in this chunk
                self._pos += left
                self._data_left = self._pad_left = 0
            else:
                self._finish_member()
        if self.ended:
            return None
        numbers = self._numbers
        checksums = self._checksums
        pax: dict[str, str] | None = None
        long_name: bytes | None = None
        long_link: bytes | None = None
        while True:
            # The header is nearly always inside the current chunk: slice it out directly.
            pos = self._pos
            if pos + BLOCK <= len(self._buf):
                block: bytes | None = self._buf[pos : pos + BLOCK]
                self._pos = pos + BLOCK
            else:
                block = self._block()
            if block is None or block == _ZERO:
                if block is not None:
                    second = self._block()
                    if second is not None and second != _ZERO:
                        raise _bad("a lone zero block in the middle of the archive")
                if pax is not None or long_name is not None or long_link is not None:
                    raise _bad("an extended header is not followed by a member")
                self.ended = True
                return None
            name_f, mode_f, uid_f, gid_f, size_f, mtime_f, chksum, typeflag, link_f, magic, version = _HEADER.unpack(
                block
            )
            # _checksum_ok's common case written out: the unsigned byte sum (_byte_sum, inlined)
            # against the sum the checksum field asks for; anything else takes the full check.
            want = checksums[chksum]
            if (adler32(block[:256], 0) & 0xFFFF) + (adler32(block[256:], 0) & 0xFFFF) != want and not _checksum_ok(
                block, parse_number(chksum), chksum
            ):
                raise _bad("tar header checksum mismatch")
            kind = typeflag.decode("latin-1")
            size = numbers[size_f]
            if size < 0:
                raise _bad("negative member size")
            if kind in _EXTENDED:
                data = self._meta_data(size)
                if kind == _GLOBAL:
                    if pax is not None or long_name is not None or long_link is not None:
                        raise _bad("a global header between an extended header and its member")
                    continue  # ignored, as Go and containerd do
                if kind == _PAX:
                    if pax is not None:
                        raise _bad("two PAX headers for one member")
                    pax = parse_pax(data)
                elif kind == _LONGNAME:
                    if long_name is not None:
                        raise _bad("two GNU long names for one member")
                    long_name = _cstr(data)
                else:
                    if long_link is not None:
                        raise _bad("two GNU long link names for one member")
                    long_link = _cstr(data)
                continue
            # The member's own header (pax and GNU long names, when present, override it below).
            raw_name = name_f.partition(b"\0")[0]
            if magic == _USTAR:
                # ustar/PAX carry a name prefix; star uses a shorter one (its trailer is at 508).
                if block[345]:
                    raw_prefix = _cstr(block[345 : 476 if block[508:512] == b"tar\0" else 500])
                    raw_name = raw_prefix + b"/" + raw_name
            elif not (magic == _GNU_MAGIC and version == _GNU_VERSION):
                magic = b""  # V7: no device numbers
            name = raw_name.decode("utf-8", "surrogateescape")
            linkname = link_f.partition(b"\0")[0].decode("utf-8", "surrogateescape") if link_f[0] else ""
            mode = numbers[mode_f]
            uid = numbers[uid_f]
            gid = numbers[gid_f]
            mtime_ns = numbers[mtime_f] * 1_000_000_000
            xattrs: dict[str, bytes] | None = None
            if pax is not None or long_name is not None or long_link is not None:
                name, linkname, size, uid, gid, mtime_ns, xattrs = _extended(
                    pax, long_name, long_link, name, linkname, size, uid, gid, mtime_ns
                )
            if kind in (_AREG, _CONT):
                # V7 marked directories with a trailing slash on a plain-file entry (Go, CPython).
                kind = DIR if kind == _AREG and name.endswith("/") else REG
            if kind not in _SUPPORTED:
                what = _UNSUPPORTED_NAMES.get(kind, f"tar entry type {kind!r}")
                raise LayerError("unsupported", f"{name!r}: {what} is not supported")
            if kind in _HEADER_ONLY:
                size = 0
            self._data_left = size
            self._pad_left = -size % BLOCK
            devmajor = devminor = 0
            if magic and kind in (CHR, BLK):
                devmajor = parse_number(block[329:337])
                devminor = parse_number(block[337:345])
            return Member(kind, name, linkname, size, mode, uid, gid, mtime_ns, devmajor, devminor, xattrs)


def _extended(
    pax: dict[str, str] | None,
    long_name: bytes | None,
    long_link: bytes | None,
    name: str,
    linkname: str,
    size: int,
    uid: int,
    gid: int,
    mtime_ns: int,
) -> tuple[str, str, int, int, int, int, dict[str, bytes] | None]:
    """A member's fields with its PAX records and GNU long names applied over its header's."""
    xattrs: dict[str, bytes] | None = None
    if pax is not None:
        if "path" in pax:
            name = pax["path"]
        if "linkpath" in pax:
            linkname = pax["linkpath"]
        size = _pax_int(pax, "size", size)
        uid = _pax_int(pax, "uid", uid)
        gid = _pax_int(pax, "gid", gid)
        if "mtime" in pax:
            mtime_ns = parse_pax_time(pax["mtime"])
        for key, value in pax.items():
            if key.startswith("GNU.sparse."):
                raise LayerError("unsupported", f"{name!r}: sparse files are not supported")
            if key.startswith("SCHILY.xattr."):
                xattrs = xattrs or {}
                xattrs[key[len("SCHILY.xattr.") :]] = value.encode("utf-8", "surrogateescape")
    if long_name is not None:
        decoded = _decode(long_name)
        if pax is not None and "path" in pax and pax["path"] != decoded:
            raise _bad("a GNU long name and a PAX path disagree")
        name = decoded
    if long_link is not None:
        decoded = _decode(long_link)
        if pax is not None and "linkpath" in pax and pax["linkpath"] != decoded:
            raise _bad("a GNU long link name and a PAX linkpath disagree")
        linkname = decoded
    return name, linkname, size, uid, gid, mtime_ns, xattrs
