"""One entry point per step, whatever the layer's TOC format: which format a layer announces, its
verified TOC, the byte ranges one file needs, and that file's bytes, decoded and verified.

Planning and decoding are separate (:func:`payload_ranges`, then :func:`decode_payload`) so that a
caller can gather the ranges of many files into few requests (:func:`.ranges.read_coalesced`,
multi-range GETs) and still decode each file on its own; :func:`read_payload` does both for one
file. Every chunk is decoded with a hard cap (its size in the TOC: a decompression bomb stops
there) and checked against its chunk digest when the TOC has one; the whole file is checked
against its digest when the last chunk is done. A caller stores nothing until the iterator has
finished without error, and then atomically (temporary name, rename).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

from .. import _gc
from ..errors import LazyDigestError, LazyUnsupportedError
from ..oci import TAR_LAYER_COMPRESSION, Descriptor
from . import estargz, zstdchunked
from .members import MemberReader
from .ranges import ByteRange, RangedReader, read_coalesced
from .toc import DEFAULT_LIMITS, Chunk, Entry, LayerToc, TocFormat, TocLimits, bad

_ZSTD_KEYS = (zstdchunked.CHECKSUM, zstdchunked.POSITION, zstdchunked.LEGACY_CHECKSUM, zstdchunked.LEGACY_POSITION)
_ZEROS = bytes(1 << 20)


def toc_format(desc: Descriptor) -> TocFormat | None:
    """The TOC format a layer descriptor announces, None for a layer without one. A layer
    announcing both, or one whose media type is not the format's compression, is refused (which
    TOC to trust would be a guess; containers/storage refuses both too)."""
    notes = desc.annotations
    zstd = any(k in notes for k in _ZSTD_KEYS)
    esgz = estargz.TOC_DIGEST in notes
    if not (zstd or esgz):
        return None
    if zstd and esgz:
        raise LazyUnsupportedError("layer carries both zstd:chunked and eStargz TOC annotations")
    fmt, want = (TocFormat.ZSTD_CHUNKED, "zstd") if zstd else (TocFormat.ESTARGZ, "gzip")
    if TAR_LAYER_COMPRESSION.get(desc.media_type) != want:
        raise LazyUnsupportedError(f"a {fmt.value} TOC on a layer of media type {desc.media_type!r}")
    return fmt


def read_layer_toc(
    desc: Descriptor,
    reader: RangedReader,
    *,
    limits: TocLimits = DEFAULT_LIMITS,
    members: MemberReader | None = None,
    tail: int = 0,
) -> LayerToc:
    """The verified TOC of a layer (see :func:`.zstdchunked.read_toc`, :func:`.estargz.read_toc`).
    ``members`` lets a zstd:chunked TOC be checked against its tar-split; ``tail`` is how many
    bytes of an eStargz blob's end to read first (one request instead of two when the TOC fits)."""
    fmt = toc_format(desc)
    if fmt is None:
        raise LazyUnsupportedError("layer has no table of contents")
    if reader.size != desc.size:
        raise bad(f"the blob has {reader.size} bytes, its descriptor says {desc.size}", "range")
    with _gc.paused():
        if fmt is TocFormat.ZSTD_CHUNKED:
            return zstdchunked.read_toc(desc, reader, limits=limits, members=members)
        return estargz.read_toc(desc, reader, limits=limits, tail=tail)


def payload_ranges(entry: Entry) -> list[ByteRange]:
    """The compressed ranges one file's bytes need, one per chunk (none for zeros chunks, which are
    made locally, nor for content the TOC carries itself)."""
    if entry.inline is not None:
        return []
    return [ByteRange(c.offset, c.end - c.offset) for c in entry.chunks if not c.zeros]


def decode_payload(toc: LayerToc, entry: Entry, pieces: Sequence[bytes]) -> Iterator[bytes]:
    """The bytes of ``entry`` from ``pieces``, the answers for :func:`payload_ranges` in order.
    Raises ``LazyFormatError`` (``LazyDigestError`` for a digest) at the first problem; the file
    is verified only once the iterator is exhausted."""
    if entry.type != "reg":
        raise ValueError(f"{entry.name!r} is not a regular file")
    want = entry.digest
    whole = want.hasher() if want is not None else hashlib.sha256()
    if entry.inline is not None:
        pieces_out: Iterator[bytes] = iter([entry.inline])
    else:
        pieces_out = _chunks(toc.format, entry, pieces)
    total = 0
    for piece in pieces_out:
        total += len(piece)
        whole.update(piece)
        yield piece
    if total != entry.size:
        raise bad(f"{entry.name!r}: {total} bytes instead of {entry.size}")
    if want is None:
        if entry.size:
            raise bad(f"{entry.name!r}: no digest to verify it by")
        return
    if whole.hexdigest() != want.hex:
        raise LazyDigestError(f"{entry.name!r}: content does not match the digest in the TOC")


def _chunks(fmt: TocFormat, entry: Entry, pieces: Sequence[bytes]) -> Iterator[bytes]:
    fetched = iter(pieces)
    needed = sum(1 for c in entry.chunks if not c.zeros)
    if len(pieces) != needed:
        raise ValueError(f"{entry.name!r} needs {needed} ranges, {len(pieces)} given")
    for chunk in entry.chunks:
        if chunk.zeros:
            out: Iterator[bytes] = _zeros(chunk.size)
        elif fmt is TocFormat.ZSTD_CHUNKED:
            out = zstdchunked.decode_frames(next(fetched), chunk.size, exact=True)
        else:
            out = estargz.decode_chunk(next(fetched), chunk.inner_offset, chunk.size)
        yield from _verified(entry, chunk, out)


def _zeros(size: int) -> Iterator[bytes]:
    while size:
        step = min(size, len(_ZEROS))
        yield _ZEROS if step == len(_ZEROS) else _ZEROS[:step]
        size -= step


def _verified(entry: Entry, chunk: Chunk, pieces: Iterator[bytes]) -> Iterator[bytes]:
    hasher = chunk.digest.hasher() if chunk.digest is not None else None
    for piece in pieces:
        if hasher is not None:
            hasher.update(piece)
        yield piece
    if hasher is not None and chunk.digest is not None and hasher.hexdigest() != chunk.digest.hex:
        raise LazyDigestError(f"{entry.name!r}: chunk at {chunk.chunk_offset} does not match its digest in the TOC")


def read_payload(toc: LayerToc, entry: Entry, reader: RangedReader, *, max_bytes: int = 64 * 1024**2) -> bytes:
    """One file's verified bytes, held in memory (files over ``max_bytes`` are refused: stream
    those with :func:`decode_payload`)."""
    if entry.size > max_bytes:
        raise bad(f"{entry.name!r} is larger than {max_bytes} bytes", "too_large")
    ranges = payload_ranges(entry)
    return b"".join(decode_payload(toc, entry, read_coalesced(reader, ranges, gap=0) if ranges else []))
