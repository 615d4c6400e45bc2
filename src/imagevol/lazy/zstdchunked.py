"""zstd:chunked layers (containers/storage): finding and verifying the TOC, decoding a file's frames.

A zstd:chunked blob is an ordinary ``tar+zstd`` layer whose every file payload (every chunk of it)
is compressed in frames of its own, followed by three skippable frames: the TOC (zstd-compressed
JSON), the tar-split (zstd-compressed NDJSON) and a footer. The layer descriptor carries the trust
anchor: the sha256 of the compressed TOC and its position, so the TOC costs one range request and
is verified before a byte of it is decompressed.

Two dialects exist (see :func:`anchor`):

* **current** (containers/storage 1.54 and later: Podman, Buildah, CRI-O): annotations
  ``io.github.containers.zstd-chunked.*``, a tar-split whose digest the TOC carries (so the TOC
  pins it, and it is checked against the TOC entry by entry), a 64-byte footer.
* **legacy** (containers/storage 1.43 and earlier, e.g. skopeo 1.9.3): annotations
  ``io.containers.zstd-chunked.*``, no tar-split, a 40-byte footer. It is read too: its TOC is
  pinned by the same kind of digest, and it is as trustworthy as an eStargz TOC (no tar-split to
  cross-check either). Note that this skopeo drops the tar's trailing padding, so such a blob
  often does not match the config's diff ID; a full pull then fails where a lazy one would not,
  which is why the caller records the dialect and the completion step verifies the diff ID.

The footer is never needed (containers/storage never reads it either: the annotation already says
where the TOC is); :func:`parse_footer` exists for tools and tests.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Iterator, Mapping

import attrs
import zstandard

from ..errors import LazyDigestError, LazyUnsupportedError, ManifestError
from ..oci import Descriptor, Digest
from .members import MemberReader
from .ranges import ByteRange, RangedReader, read_coalesced
from .tarsplit import check_tar_split
from .toc import DEFAULT_LIMITS, LayerToc, TocFormat, TocLimits, bad, parse_toc

CHECKSUM = "io.github.containers.zstd-chunked.manifest-checksum"
POSITION = "io.github.containers.zstd-chunked.manifest-position"
TARSPLIT_POSITION = "io.github.containers.zstd-chunked.tarsplit-position"
LEGACY_CHECKSUM = "io.containers.zstd-chunked.manifest-checksum"
LEGACY_POSITION = "io.containers.zstd-chunked.manifest-position"

SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"
FOOTER_MAGIC = b"GNUlInUx"
LEGACY_FOOTER_MAGIC = b"GnUlInUx"
FOOTER_SIZE = 64
LEGACY_FOOTER_SIZE = 40
_MANIFEST_TYPE_CRFS = 1
_POSITION_RE = re.compile(r"(\d{1,19}):(\d{1,19}):(\d{1,19})(?::(\d{1,19}))?")


@attrs.frozen
class Anchor:
    """What the layer descriptor pins: the TOC's digest and position, the tar-split's position."""

    dialect: str
    toc_digest: Digest
    toc: ByteRange
    toc_size: int
    tar_split: ByteRange | None = None
    tar_split_size: int = 0


@attrs.frozen
class Footer:
    """The zstd:chunked footer: where the table of contents and the tar-split are in the blob."""

    toc: ByteRange
    toc_size: int
    tar_split: ByteRange | None


def _position(text: str, key: str, *, parts: int) -> tuple[int, ...]:
    m = _POSITION_RE.fullmatch(text)
    if m is None or (m.group(4) is None) != (parts == 3):
        raise bad(f"annotation {key} is not a position: {text!r}")
    return tuple(int(g) for g in m.groups() if g is not None)


def anchor(desc: Descriptor, limits: TocLimits = DEFAULT_LIMITS) -> Anchor:
    """The trust anchor of a zstd:chunked layer, from its descriptor's annotations (the current
    dialect wins when both are present). The TOC range must lie inside the blob, behind room for
    its skippable-frame header, within the TOC size limits; the manifest type must be CRFS (1)."""
    notes: Mapping[str, str] = desc.annotations
    if CHECKSUM in notes or POSITION in notes:
        dialect, checksum_key, position_key = "current", CHECKSUM, POSITION
    elif LEGACY_CHECKSUM in notes or LEGACY_POSITION in notes:
        dialect, checksum_key, position_key = "legacy", LEGACY_CHECKSUM, LEGACY_POSITION
    else:
        raise LazyUnsupportedError("layer has no zstd:chunked TOC annotations")
    if checksum_key not in notes or position_key not in notes:
        raise LazyUnsupportedError(f"layer has only one of {checksum_key} and {position_key}")
    try:
        digest = Digest.parse(notes[checksum_key])
    except ManifestError:
        raise bad(f"annotation {checksum_key} is not a digest") from None
    offset, clen, ulen, kind = _position(notes[position_key], position_key, parts=4)
    if kind != _MANIFEST_TYPE_CRFS:
        raise LazyUnsupportedError(f"unsupported zstd:chunked manifest type {kind}")
    toc = _range(offset, clen, ulen, desc.size, limits.max_toc_bytes, "TOC")
    tar_split = None
    split_size = 0
    if dialect == "current" and TARSPLIT_POSITION in notes:
        s_off, s_clen, split_size = _position(notes[TARSPLIT_POSITION], TARSPLIT_POSITION, parts=3)
        tar_split = _range(s_off, s_clen, split_size, desc.size, limits.max_tar_split_bytes, "tar-split")
        if tar_split.offset < toc.end:
            raise bad("the tar-split does not follow the TOC")
    return Anchor(dialect, digest, toc, ulen, tar_split, split_size)


def _range(offset: int, clen: int, ulen: int, size: int, limit: int, what: str) -> ByteRange:
    if clen <= 0 or offset < 8 or offset + clen > size:
        raise bad(f"the {what} position lies outside the {size}-byte blob")
    if clen > limit or ulen > limit:
        raise bad(f"the {what} is larger than {limit} bytes", "too_large")
    return ByteRange(offset, clen)


def read_toc(
    desc: Descriptor,
    reader: RangedReader,
    *,
    limits: TocLimits = DEFAULT_LIMITS,
    members: MemberReader | None = None,
) -> LayerToc:
    """Fetch and verify a zstd:chunked TOC in one ``read_ranges`` call (TOC and tar-split
    together, each with its 8-byte skippable-frame header): the header must be a skippable frame
    of exactly that length, the compressed TOC must hash to the pinned digest before it is
    decompressed (bounded by its declared size), and its entries must pass :func:`parse_toc`.
    With ``members`` (a tar member reader) and a TOC that names a tar-split digest, the tar-split
    is fetched in the same call, must hash to that digest and list exactly the TOC's entries in
    the same order (``LayerToc.tar_split_checked``)."""
    pin = anchor(desc, limits)
    wanted = [ByteRange(pin.toc.offset - 8, pin.toc.length + 8)]
    if pin.tar_split is not None and members is not None:
        # Only worth its bytes when it can be checked against the TOC.
        wanted.append(ByteRange(pin.tar_split.offset - 8, pin.tar_split.length + 8))
    # One range: the tar-split's frame follows the TOC's directly, so one span serves both.
    answers = read_coalesced(reader, wanted)
    compressed = _skippable(answers[0], "TOC")
    if Digest.of(compressed, pin.toc_digest.algorithm) != pin.toc_digest:
        raise LazyDigestError("validating the TOC: its digest does not match the layer's annotation")
    raw = b"".join(decode_frames(compressed, pin.toc_size, exact=True))
    entries, split_digest = parse_toc(raw, TocFormat.ZSTD_CHUNKED, payload_end=pin.toc.offset - 8, limits=limits)
    checked = False
    if split_digest is not None and pin.tar_split is None:
        raise bad(f"the TOC names a tar-split but the layer has no {TARSPLIT_POSITION} annotation")
    if split_digest is not None and members is not None:
        data = _skippable(answers[1], "tar-split")
        if Digest.of(data, split_digest.algorithm) != split_digest:
            raise LazyDigestError("validating the tar-split: its digest does not match the TOC")
        pieces = decode_frames(data, pin.tar_split_size, exact=True)
        check_tar_split(pieces, entries, members, limits.max_layer_bytes)
        checked = True
    return LayerToc(
        TocFormat.ZSTD_CHUNKED,
        pin.dialect,
        pin.toc_digest,
        tuple(entries),
        reader.size,
        pin.toc.offset - 8,
        tar_split_checked=checked,
        bytes_read=sum(r.length for r in wanted),
    )


def _skippable(frame: bytes, what: str) -> bytes:
    if frame[:4] != SKIPPABLE_MAGIC or int.from_bytes(frame[4:8], "little") != len(frame) - 8:
        raise bad(f"the {what} is not a skippable frame of its declared length")
    return frame[8:]


def parse_footer(tail: bytes) -> Footer:
    """The footer of a zstd:chunked blob, from its last 72 bytes (current dialect: seven u64 and
    ``GNUlInUx``) or 48 bytes (legacy: four u64 and ``GnUlInUx``), skippable header included."""
    if len(tail) >= 8 + FOOTER_SIZE and tail[-8:] == FOOTER_MAGIC:
        frame = tail[-(8 + FOOTER_SIZE) :]
        fields = struct.unpack("<7Q", _skippable(frame, "footer")[:56])
        off, clen, ulen, kind, s_off, s_clen, _s_ulen = fields
        split = ByteRange(s_off, s_clen) if s_clen else None
    elif len(tail) >= 8 + LEGACY_FOOTER_SIZE and tail[-8:] == LEGACY_FOOTER_MAGIC:
        frame = tail[-(8 + LEGACY_FOOTER_SIZE) :]
        off, clen, ulen, kind = struct.unpack("<4Q", _skippable(frame, "footer")[:32])
        split = None
    else:
        raise LazyUnsupportedError("no zstd:chunked footer at the end of the blob")
    if kind != _MANIFEST_TYPE_CRFS or clen == 0:
        raise bad("the zstd:chunked footer describes no CRFS TOC")
    return Footer(ByteRange(off, clen), ulen, split)


# --- decoding ---------------------------------------------------------------------------------------

_DECODE_STEP = 1 << 20


def decode_frames(data: bytes, size: int, *, exact: bool = True) -> Iterator[bytes]:
    """The decoded bytes of ``data``, which must be whole zstd frames (skippable ones allowed),
    in pieces of at most 1 MiB: never more than ``size`` bytes come out (a decompression bomb stops
    there), and with ``exact`` fewer is an error too. A frame cut short, trailing bytes that are not
    a frame, or a corrupt block is refused."""
    check_frames(data)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    produced = 0
    try:
        while True:
            piece = reader.read(min(_DECODE_STEP, size - produced + 1))
            if not piece:
                break
            produced += len(piece)
            if produced > size:
                raise bad(f"zstd data decodes to more than the {size} bytes declared", "too_large")
            yield piece
    except zstandard.ZstdError as exc:
        raise bad(f"corrupt zstd data: {exc}") from None
    finally:
        reader.close()  # type: ignore[no-untyped-call]
    if exact and produced != size:
        raise bad(f"zstd data decodes to {produced} bytes instead of {size}")


def check_frames(data: bytes) -> None:
    """Walk the frame and block headers of ``data`` (RFC 8878 section 3.1): it must be a sequence
    of complete frames. The decoder alone stops quietly at the end of its input, even inside a
    frame, and would take a TOC's word for where a file's frames end."""
    pos, n = 0, len(data)
    while pos < n:
        if n - pos < 8:
            raise bad("truncated zstd frame")
        magic = int.from_bytes(data[pos : pos + 4], "little")
        if magic & 0xFFFFFFF0 == 0x184D2A50:
            pos += 8 + int.from_bytes(data[pos + 4 : pos + 8], "little")
            continue
        if magic != 0xFD2FB528:
            raise bad("bad zstd frame magic")
        d = data[pos + 4]
        single = (d >> 5) & 1
        checksum = 4 if (d >> 2) & 1 else 0
        fcs = (1 if single else 0, 2, 4, 8)[d >> 6]
        pos += 5 + (0 if single else 1) + (0, 1, 2, 4)[d & 3] + fcs
        while True:
            if pos + 3 > n:
                raise bad("truncated zstd block")
            header = int.from_bytes(data[pos : pos + 3], "little")
            kind = (header >> 1) & 3
            if kind == 3:
                raise bad("reserved zstd block type")
            pos += 3 + (1 if kind == 1 else header >> 3)
            if header & 1:
                pos += checksum
                break
    if pos != n:
        raise bad("truncated zstd frame")
