"""Writers of zstd:chunked and eStargz layers, for tests and for users who want lazy-capable
fixtures without Podman or containerd.

* :func:`zstd_chunked_layer` follows containers/storage's compressor (``compressor.go``,
  ``minimal/compression.go``): the tar's header bytes and padding in frames of their own, every
  payload chunk in its own frame, the TOC, the tar-split and the footer in skippable frames, and
  the three ``io.github.containers.zstd-chunked.*`` annotations (``dialect="legacy"``: the
  ``io.containers.*`` keys, a 40-byte footer and no tar-split, as skopeo 1.9.3 writes). Every byte
  of the tar is kept, trailing padding included, so the blob decompresses to exactly the tar and
  the diff ID holds (skopeo 1.9.3 drops the record padding and breaks it).
* :func:`estargz_layer` follows stargz-snapshotter's writer (``estargz.go``, ``build.go``): a gzip
  member starts at every payload chunk, a landmark file comes first, the TOC is the last tar entry
  ``stargz.index.json`` in a member of its own, a 51-byte footer ends the blob, and the annotation
  ``containerd.io/snapshot/stargz/toc.digest`` pins the TOC JSON. The conversion adds two entries,
  so the diff ID is that of the new tar (as the real converter rewrites the config).

Both are checked only against imagevol's readers and the ``zstd``, ``gzip`` and ``tar`` tools; no
Go reader runs here.
"""

from __future__ import annotations

import base64
import bisect
import datetime
import gzip
import hashlib
import importlib
import io
import itertools
import json
import struct
import tarfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import zstandard

from ..oci import OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Descriptor, Digest
from .tarbuild import TarEntry, build_layer

_TOC_TYPES = {
    "file": "reg",
    "dir": "dir",
    "symlink": "symlink",
    "hardlink": "hardlink",
    "chardev": "char",
    "blockdev": "block",
    "fifo": "fifo",
}
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
PREFETCH_LANDMARK = ".prefetch.landmark"


@attrs.frozen
class LazyLayer:
    """A written layer: its blob, media type and annotations (for its descriptor), the tar its
    blob decompresses to and that tar's digest (the config's diff ID), and the TOC JSON."""

    blob: bytes = attrs.field(repr=False)
    media_type: str
    annotations: Mapping[str, str]
    tar: bytes = attrs.field(repr=False)
    toc_json: bytes = attrs.field(repr=False)

    @property
    def diff_id(self) -> Digest:
        """The digest of the uncompressed tar (the config's ``diff_ids`` entry)."""
        return Digest.of(self.tar)

    def descriptor(self) -> Descriptor:
        """The layer's descriptor, annotations included."""
        return Descriptor(self.media_type, Digest.of(self.blob), len(self.blob), dict(self.annotations))


# --- CRC-64/GO-ISO (tar-split's file checksums) -----------------------------------------------------


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0xD800000000000000 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()
_MASK = 0xFFFFFFFFFFFFFFFF


def _crc64_python(data: bytes) -> int:
    crc = _MASK
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _MASK


def _crc64_impl() -> Callable[[bytes], int]:
    try:  # a C implementation when installed (fastcrc), the table otherwise
        fast: Callable[[bytes], int] = importlib.import_module("fastcrc").crc64.go_iso
    except (ImportError, AttributeError):
        return _crc64_python
    return fast


crc64_go_iso = _crc64_impl()


# --- the tar, member by member ------------------------------------------------------------------


@attrs.frozen
class _Member:
    entry: TarEntry
    name: str  # as a Go or imagevol tar reader decodes it
    linkname: str
    start: int  # first byte of its header(s)
    data: int  # first byte of its content
    size: int


def _decoded_name(entry: TarEntry) -> str:
    if "path" in entry.pax:
        return entry.pax["path"]
    name = entry.header_name or entry.name
    # tarfile writes every directory name with a trailing slash.
    return name + "/" if entry.type == "dir" and not name.endswith("/") else name


def _members(tar: bytes, entries: Sequence[TarEntry]) -> list[_Member]:
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        infos = tf.getmembers()
    if len(infos) != len(entries):
        raise ValueError("the tar does not have one member per entry")
    return [
        _Member(
            e,
            _decoded_name(e),
            e.pax.get("linkpath", e.linkname),
            info.offset,
            info.offset_data,
            len(e.data) if e.type == "file" else 0,
        )
        for e, info in zip(entries, infos, strict=True)
    ]


def _mode(entry: TarEntry) -> int:
    if entry.mode is not None:
        return entry.mode
    return 0o755 if entry.type == "dir" else 0o777 if entry.type == "symlink" else 0o644


def _rfc3339(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _metadata(m: _Member, *, estargz: bool) -> dict[str, Any]:
    """A TOC entry's tar metadata, keys in the writers' order, empty values left out (omitempty)."""
    e = m.entry
    kind = _TOC_TYPES[e.type]
    out: dict[str, Any] = {"type": kind, "name": m.name} if not estargz else {"name": m.name, "type": kind}
    if estargz and kind == "reg" and m.size:
        out["size"] = m.size
    if estargz and e.mtime:
        out["modtime"] = _rfc3339(e.mtime)
    if m.linkname:
        out["linkName"] = m.linkname
    out["mode"] = _mode(e)
    if not estargz and kind == "reg" and m.size:
        out["size"] = m.size
    if e.uid:
        out["uid"] = e.uid
    if e.gid:
        out["gid"] = e.gid
    if not estargz:
        out["modtime"] = _rfc3339(e.mtime)
    if kind in ("char", "block"):
        out["devMajor"], out["devMinor"] = e.devmajor, e.devminor
    xattrs = {k[len("SCHILY.xattr.") :]: v for k, v in e.pax.items() if k.startswith("SCHILY.xattr.")}
    if xattrs:
        out["xattrs"] = {k: base64.b64encode(v.encode("utf-8", "surrogateescape")).decode() for k, v in xattrs.items()}
    return {k: v for k, v in out.items() if v or k in ("type", "name")}


def _pieces(data: bytes, chunk_size: int, zeros_threshold: int) -> list[tuple[int, int, bool]]:
    """(start, end, zeros) runs of ``data``: runs of at least ``zeros_threshold`` zero bytes on
    their own, other bytes cut every ``chunk_size``."""
    runs: list[tuple[int, int, bool]] = []
    pos = 0
    n = len(data)
    while pos < n:
        if zeros_threshold and data[pos] == 0:
            end = pos
            while end < n and data[end] == 0:
                end += 1
            if end - pos >= zeros_threshold:
                runs.append((pos, end, True))
                pos = end
                continue
        end = min(pos + chunk_size, n)
        nxt = data.find(b"\0" * zeros_threshold, pos, end) if zeros_threshold else -1
        if nxt > pos:
            end = nxt
        runs.append((pos, end, False))
        pos = end
    return runs


# --- zstd:chunked ----------------------------------------------------------------------------------


def _skippable(data: bytes) -> bytes:
    return b"\x50\x2a\x4d\x18" + struct.pack("<I", len(data)) + data


def zstd_chunked_layer(
    entries: Sequence[TarEntry],
    *,
    dialect: str = "current",
    chunk_size: int = 64 * 1024,
    zeros_threshold: int = 1024,
    level: int = 3,
) -> LazyLayer:
    """A zstd:chunked layer of ``entries`` (see the module docstring)."""
    tar = build_layer(entries)
    members = _members(tar, entries)
    compressor = zstandard.ZstdCompressor(level=level)
    blob = io.BytesIO()
    toc_entries: list[dict[str, Any]] = []
    split: list[dict[str, Any]] = []
    pos = 0
    for m in members:
        blob.write(compressor.compress(tar[pos : m.data]))
        split.append({"type": 2, "payload": base64.b64encode(tar[pos : m.data]).decode()})
        main = _metadata(m, estargz=False)
        toc_entries.append(main)
        content = tar[m.data : m.data + m.size]
        crc = base64.b64encode(crc64_go_iso(content).to_bytes(8, "big")).decode() if m.size else None
        split.append({"type": 1, "name": m.name, "size": m.size, "payload": crc})
        pos = m.data + m.size
        if not m.size or m.entry.type != "file":
            continue
        chunks = []
        for start, end, zeros in _pieces(content, chunk_size, zeros_threshold):
            offset = blob.tell()
            blob.write(compressor.compress(content[start:end]))
            chunks.append((offset, start, end - start, hashlib.sha256(content[start:end]).hexdigest(), zeros))
        main["digest"] = "sha256:" + hashlib.sha256(content).hexdigest()
        main["offset"], main["endOffset"] = chunks[0][0], blob.tell()
        if len(chunks) > 1:
            for i, (offset, start, size, digest, zeros) in enumerate(chunks):
                target = main if i == 0 else {"type": "chunk", "name": m.name, "chunkOffset": start}
                target.update(offset=offset, chunkSize=size, chunkDigest="sha256:" + digest)
                if zeros:
                    target["chunkType"] = "zeros"
                if i:
                    toc_entries.append(target)
    blob.write(compressor.compress(tar[pos:]))
    split.append({"type": 2, "payload": base64.b64encode(tar[pos:]).decode()})
    toc: dict[str, Any] = {"version": 1, "entries": toc_entries}
    annotations: dict[str, str] = {}
    if dialect == "current":
        lines = b"".join(
            json.dumps({**line, "position": i}, separators=(",", ":")).encode() + b"\n" for i, line in enumerate(split)
        )
        split_frame = compressor.compress(lines)
        toc["tarSplitDigest"] = "sha256:" + hashlib.sha256(split_frame).hexdigest()
    toc_json = json.dumps(toc, separators=(",", ":")).encode()
    toc_frame = compressor.compress(toc_json)
    toc_offset = blob.tell() + 8
    blob.write(_skippable(toc_frame))
    position = f"{toc_offset}:{len(toc_frame)}:{len(toc_json)}:1"
    checksum = "sha256:" + hashlib.sha256(toc_frame).hexdigest()
    if dialect == "current":
        split_offset = blob.tell() + 8
        blob.write(_skippable(split_frame))
        footer = struct.pack(
            "<7Q", toc_offset, len(toc_frame), len(toc_json), 1, split_offset, len(split_frame), len(lines)
        )
        blob.write(_skippable(footer + b"GNUlInUx"))
        annotations = {
            "io.github.containers.zstd-chunked.manifest-checksum": checksum,
            "io.github.containers.zstd-chunked.manifest-position": position,
            "io.github.containers.zstd-chunked.tarsplit-position": f"{split_offset}:{len(split_frame)}:{len(lines)}",
        }
    elif dialect == "legacy":
        blob.write(_skippable(struct.pack("<4Q", toc_offset, len(toc_frame), len(toc_json), 1) + b"GnUlInUx"))
        annotations = {
            "io.containers.zstd-chunked.manifest-checksum": checksum,
            "io.containers.zstd-chunked.manifest-position": position,
        }
    else:
        raise ValueError(f"unknown zstd:chunked dialect {dialect!r}")
    return LazyLayer(blob.getvalue(), OCI_LAYER_ZSTD, annotations, tar, toc_json)


# --- eStargz ------------------------------------------------------------------------------------------


def _gzip_member(data: bytes, level: int) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=level, filename="") as f:
        f.write(data)
    return buf.getvalue()


def estargz_footer(toc_offset: int) -> bytes:
    """The 51-byte eStargz footer: an empty, uncompressed gzip member whose extra field is the
    subfield ``SG`` holding ``%016x`` of the TOC offset and ``STARGZ``."""
    extra = b"SG" + struct.pack("<H", 22) + b"%016xSTARGZ" % toc_offset
    header = b"\x1f\x8b\x08\x04" + bytes(4) + b"\x00\xff" + struct.pack("<H", len(extra)) + extra
    return header + b"\x01\x00\x00\xff\xff" + bytes(8)


def estargz_layer(
    entries: Sequence[TarEntry],
    *,
    chunk_size: int = 4 * 1024 * 1024,
    min_chunk_size: int = 0,
    landmark: str | None = NO_PREFETCH_LANDMARK,
    level: int = 6,
) -> LazyLayer:
    """An eStargz layer of ``entries``, a landmark file first (see the module docstring).
    ``min_chunk_size`` (stargz-snapshotter's ``WithMinChunkSize``): a payload chunk starts a new
    gzip member only once the current one holds that many bytes; the others are found by their
    ``innerOffset`` in it."""
    if landmark is not None:
        entries = [TarEntry(landmark, "file", b"\x0f", mode=0, mtime=0), *entries]
    tar = build_layer(entries)
    members = _members(tar, entries)
    body_end = max((m.data + -(-m.size // 512) * 512 for m in members), default=0)
    cuts = [0]
    for m in members:
        if m.entry.type == "file" and m.size:
            for pos in range(m.data, m.data + m.size, chunk_size):
                if len(cuts) == 1 or pos - cuts[-1] >= min_chunk_size:
                    cuts.append(pos)
    cuts.append(body_end)
    blob = io.BytesIO()
    offsets: dict[int, int] = {}
    for start, end in itertools.pairwise(cuts):
        offsets[start] = blob.tell()
        if end > start:
            blob.write(_gzip_member(tar[start:end], level))
    toc_entries: list[dict[str, Any]] = []
    for m in members:
        main = _metadata(m, estargz=True)
        toc_entries.append(main)
        if m.entry.type != "file":
            continue
        content = m.entry.data
        main["digest"] = "sha256:" + hashlib.sha256(content).hexdigest()
        for i, start in enumerate(range(0, m.size, chunk_size)):
            piece = content[start : start + chunk_size]
            target: dict[str, Any] = main if i == 0 else {"name": m.name, "type": "chunk"}
            member = cuts[bisect.bisect_right(cuts, m.data + start) - 1]
            target["offset"] = offsets[member]
            if m.data + start > member:
                target["innerOffset"] = m.data + start - member
            if start:
                target["chunkOffset"] = start
            if len(piece) == chunk_size:
                target["chunkSize"] = chunk_size
            target["chunkDigest"] = "sha256:" + hashlib.sha256(piece).hexdigest()
            if i:
                toc_entries.append(target)
    toc_json = json.dumps({"version": 1, "entries": toc_entries}, indent="\t").encode()
    info = tarfile.TarInfo("stargz.index.json")
    info.size, info.mode, info.mtime, info.uname, info.gname = len(toc_json), 0, 0, "", ""
    toc_tar = info.tobuf(tarfile.USTAR_FORMAT) + toc_json + bytes(-len(toc_json) % 512) + bytes(1024)
    toc_offset = blob.tell()
    blob.write(_gzip_member(toc_tar, level))
    blob.write(estargz_footer(toc_offset))
    stream = tar[:body_end] + toc_tar
    annotations = {
        "containerd.io/snapshot/stargz/toc.digest": "sha256:" + hashlib.sha256(toc_json).hexdigest(),
        "io.containers.estargz.uncompressed-size": str(len(stream)),
    }
    return LazyLayer(blob.getvalue(), OCI_LAYER_GZIP, annotations, stream, toc_json)
