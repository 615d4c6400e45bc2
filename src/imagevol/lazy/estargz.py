"""eStargz layers (containerd/stargz-snapshotter): finding and verifying the TOC, decoding a chunk.

An eStargz blob is an ordinary ``tar+gzip`` layer made of many gzip members: one starts at every
file payload chunk, so a chunk can be fetched and inflated on its own. Its last tar entry is the
TOC itself, ``stargz.index.json``, in a member of its own, and a 51-byte footer (an empty gzip
member whose extra field holds the TOC's offset) closes the blob. The layer descriptor's annotation
``containerd.io/snapshot/stargz/toc.digest`` pins the sha256 of the TOC JSON.

Finding the TOC costs two range requests (footer, then TOC) or one when a speculative tail read
covers both. Everything in the TOC member is checked, because a full pull applies it: its tar
header must be a plain header for a regular file named ``stargz.index.json``, and nothing but the
end-of-archive zeros may follow the JSON (a member hidden there would reach a full pull and not the
lazy view). That entry is then part of the layer, as a full pull shows it; so are the landmark
files (``.prefetch.landmark``, ``.no.prefetch.landmark``), which the TOC lists like any entry.

Not supported (refused with :class:`LazyUnsupportedError`, so the caller pulls in full): the
legacy 47-byte stargz footer (its TOCs have no chunk digests) and external TOCs.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator

from ..errors import LazyDigestError, LazyUnsupportedError, ManifestError
from ..oci import Descriptor, Digest
from .ranges import ByteRange, RangedReader, read_exact
from .toc import DEFAULT_LIMITS, Entry, LayerToc, TocFormat, TocLimits, bad, parse_toc

TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
TOC_NAME = "stargz.index.json"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
FOOTER_SIZE = 51
LEGACY_FOOTER_SIZE = 47
_BLOCK = 512
#: Bytes of tar that may follow the TOC JSON: its padding and the end-of-archive zeros.
_MAX_TRAILER = 11 * _BLOCK
_HEX16 = re.compile(rb"[0-9a-f]{16}")


def parse_footer(footer: bytes) -> int:
    """The TOC offset from the last 51 bytes of a blob: a gzip member (``1f 8b 08``, FEXTRA only)
    whose extra field is one ``SG`` subfield of 22 bytes, ``%016x`` + ``STARGZ``, and whose body
    inflates to nothing with a valid trailer."""
    if len(footer) != FOOTER_SIZE:
        raise bad("eStargz footer is not 51 bytes")
    if b"STARGZEXTERNALTOC" in footer:
        raise LazyUnsupportedError("eStargz layers with an external TOC are not supported lazily")
    if footer[:4] != b"\x1f\x8b\x08\x04" or footer[10:16] != b"\x1a\x00SG\x16\x00" or footer[32:38] != b"STARGZ":
        legacy = footer[-LEGACY_FOOTER_SIZE:]
        if legacy[:4] == b"\x1f\x8b\x08\x04" and legacy[10:12] == b"\x16\x00" and legacy[28:34] == b"STARGZ":
            raise LazyUnsupportedError("legacy stargz layers are not supported lazily")
        raise LazyUnsupportedError("no eStargz footer at the end of the blob")
    if not _HEX16.fullmatch(footer[16:32]):
        raise bad("eStargz footer: the TOC offset is not 16 lowercase hex digits")
    try:
        d = zlib.decompressobj(31)
        if d.decompress(footer, 1) or not d.eof or d.unused_data:
            raise bad("eStargz footer is not an empty gzip member")
    except zlib.error:
        raise bad("eStargz footer is not an empty gzip member") from None
    return int(footer[16:32], 16)


def read_toc(desc: Descriptor, reader: RangedReader, *, limits: TocLimits = DEFAULT_LIMITS, tail: int = 0) -> LayerToc:
    """Fetch and verify an eStargz TOC: the footer, then the TOC member (one request when the
    last ``tail`` bytes, read first, already hold it). The TOC JSON must hash to the annotation
    before it is parsed; the TOC member itself becomes the layer's last entry."""
    try:
        digest = Digest.parse(desc.annotations[TOC_DIGEST])
    except KeyError:
        raise LazyUnsupportedError(f"layer has no {TOC_DIGEST} annotation") from None
    except ManifestError:
        raise bad(f"annotation {TOC_DIGEST} is not a digest") from None
    size = reader.size
    if size != desc.size or size <= FOOTER_SIZE:
        raise bad(f"an eStargz blob of {size} bytes cannot hold a TOC")
    start = size - max(FOOTER_SIZE, min(tail, size))
    (last,) = read_exact(reader, [ByteRange(start, size - start)])
    toc_offset = parse_footer(last[-FOOTER_SIZE:])
    if not 0 < toc_offset < size - FOOTER_SIZE:
        raise bad("the eStargz TOC offset lies outside the blob")
    length = size - FOOTER_SIZE - toc_offset
    if length > limits.max_toc_bytes:
        raise bad(f"the eStargz TOC is larger than {limits.max_toc_bytes} bytes", "too_large")
    read = size - start
    if toc_offset >= start:
        region = last[toc_offset - start : -FOOTER_SIZE]
    else:
        (region,) = read_exact(reader, [ByteRange(toc_offset, length)])
        read += length
    member, raw = _toc_member(region, limits)
    if Digest.of(raw, digest.algorithm) != digest:
        raise LazyDigestError("validating the TOC: its digest does not match the layer's annotation")
    entries, _ = parse_toc(raw, TocFormat.ESTARGZ, payload_end=toc_offset, limits=limits)
    entries.append(member)
    return LayerToc(TocFormat.ESTARGZ, "estargz", digest, tuple(entries), size, toc_offset, bytes_read=read)


def _toc_member(region: bytes, limits: TocLimits) -> tuple[Entry, bytes]:
    """The TOC entry and its JSON from the inflated TOC region."""
    data = b"".join(gunzip(region, _BLOCK + limits.max_toc_bytes + _MAX_TRAILER, whole=True))
    if len(data) < _BLOCK:
        raise bad("the eStargz TOC member holds no tar header")
    entry = toc_header(data[:_BLOCK])
    end = _BLOCK + entry.size
    raw = data[_BLOCK:end]
    if len(raw) != entry.size:
        raise bad("the eStargz TOC member is shorter than its header says")
    rest = data[end:]
    if rest.count(0) != len(rest) or (len(rest) + end) % _BLOCK:
        raise bad("the eStargz TOC member is followed by more than the end of the archive")
    return Entry(
        name=entry.name,
        type="reg",
        mode=entry.mode,
        uid=entry.uid,
        gid=entry.gid,
        mtime_ns=entry.mtime_ns,
        size=entry.size,
        digest=Digest.of(raw),
        inline=raw,
    ), raw


def _number(field: bytes) -> int:
    """A numeric tar field: octal padded with spaces or NULs, or GNU base-256 (Go's reading)."""
    if field and field[0] & 0x80:
        negative = bool(field[0] & 0x40)
        value = field[0] & 0x7F if not negative else (field[0] ^ 0xFF) & 0x7F
        for byte in field[1:]:
            value = (value << 8) | (byte ^ 0xFF if negative else byte)
        return -value - 1 if negative else value
    digits = field.strip(b" \0")
    if digits.translate(None, b"01234567"):
        raise bad("the eStargz TOC member has an invalid numeric header field")
    return int(digits, 8) if digits else 0


def toc_header(block: bytes) -> Entry:
    """The one tar header an eStargz TOC member may have: a regular file (type ``0``) named
    exactly ``stargz.index.json``, no name prefix, no extended header before it (what two tar
    readers could decode differently has no place here), a valid checksum."""
    stored = _number(block[148:156])
    unsigned = sum(block) - sum(block[148:156]) + 8 * 0x20
    signed = unsigned - 256 * (sum(1 for b in block if b & 0x80) - sum(1 for b in block[148:156] if b & 0x80))
    if stored not in (unsigned, signed):
        raise bad("the eStargz TOC member's tar header checksum does not match")
    name = block[:100].split(b"\0", 1)[0]
    if block[156:157] not in (b"0", b"\0") or name != TOC_NAME.encode() or block[345:500].strip(b"\0"):
        raise bad("the eStargz TOC member is not a plain stargz.index.json entry")
    return Entry(
        name=TOC_NAME,
        type="reg",
        mode=_number(block[100:108]),
        uid=_number(block[108:116]),
        gid=_number(block[116:124]),
        size=_number(block[124:136]),
        mtime_ns=_number(block[136:148]) * 1_000_000_000,
    )


# --- decoding -----------------------------------------------------------------------------------------

_STEP = 1 << 20


def gunzip(data: bytes, limit: int, *, whole: bool) -> Iterator[bytes]:
    """Inflate the gzip members in ``data`` (header, CRC-32 and length of each checked when it
    ends), in pieces of at most 1 MiB, refusing more than ``limit`` bytes of output. With
    ``whole``, ``data`` must be complete members and nothing else; without it, decoding stops
    quietly once ``limit`` bytes came out (a chunk needs only the start of its member; the
    chunk's digest, not the gzip trailer, is what verifies it)."""
    produced = 0
    rest = memoryview(data)
    try:
        while rest:
            if bytes(rest[:2]) != b"\x1f\x8b":
                raise bad("gzip data is followed by something that is not a gzip member")
            d = zlib.decompressobj(31)
            pending: bytes | memoryview = rest
            while not d.eof:
                out = d.decompress(pending, min(_STEP, limit - produced + 1))
                pending = d.unconsumed_tail
                if out:
                    produced += len(out)
                    if produced > limit:
                        if not whole:
                            yield out[: len(out) - (produced - limit)]
                            return
                        raise bad(f"gzip data inflates to more than {limit} bytes", "too_large")
                    yield out
                    if not whole and produced == limit:
                        return
                elif not pending:
                    raise bad("truncated gzip member")
            rest = memoryview(d.unused_data)
    except zlib.error as exc:
        raise bad(f"corrupt gzip data: {exc}") from None


def decode_chunk(data: bytes, inner_offset: int, size: int) -> Iterator[bytes]:
    """A chunk's ``size`` bytes, ``inner_offset`` bytes into the inflated member(s) ``data``."""
    skip = inner_offset
    got = 0
    for out in gunzip(data, inner_offset + size, whole=False):
        piece = out
        if skip:
            cut = min(skip, len(piece))
            piece = piece[cut:]
            skip -= cut
        if piece:
            got += len(piece)
            yield piece
    if got != size:
        raise bad(f"gzip member holds {got} bytes of a {size}-byte chunk")
