"""Building tar layers from plain descriptions, deterministically.

Used by the fixture builder, the vector runner and the Hypothesis strategies. An entry is a
:class:`TarEntry`; ``build_layer`` turns a list of them into tar bytes (PAX by default, GNU per entry
on request; ``header_name`` + ``pax`` lets a test put one name in the ustar header and another in the
PAX record, as an attacker would).
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

FIXED_MTIME = 1700000000

_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chardev": tarfile.CHRTYPE,
    "blockdev": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


@attrs.frozen
class TarEntry:
    """One tar member. ``mode`` is an int (``0o644``); ``data`` only for files."""

    name: str
    type: str = "file"
    data: bytes = b""
    linkname: str = ""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: int = FIXED_MTIME
    devmajor: int = 0
    devminor: int = 0
    format: str = "pax"
    header_name: str = ""
    pax: Mapping[str, str] = attrs.field(factory=dict)

    @classmethod
    def from_vector(cls, obj: Mapping[str, Any]) -> TarEntry:
        """An entry in the format of ``src/imagevol/testing/data/layers.json``."""
        return cls(
            name=obj["name"],
            type=obj.get("type", "file"),
            data=str(obj.get("data", "")).encode(),
            linkname=obj.get("linkname", ""),
            mode=int(obj["mode"], 8) if "mode" in obj else None,
            uid=int(obj.get("uid", 0)),
            gid=int(obj.get("gid", 0)),
            devmajor=int(obj.get("devmajor", 0)),
            devminor=int(obj.get("devminor", 0)),
            format=obj.get("format", "pax"),
            header_name=obj.get("header_name", ""),
            pax=dict(obj.get("pax", {})),
        )


def _default_mode(kind: str) -> int:
    return 0o755 if kind == "dir" else 0o777 if kind == "symlink" else 0o644


def _tarinfo(entry: TarEntry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.header_name or entry.name)
    try:
        info.type = _TYPES[entry.type]
    except KeyError:
        raise ValueError(f"unknown tar entry type {entry.type!r}") from None
    info.mode = entry.mode if entry.mode is not None else _default_mode(entry.type)
    info.uid, info.gid = entry.uid, entry.gid
    info.uname = info.gname = ""
    info.mtime = entry.mtime
    info.linkname = entry.linkname
    info.devmajor, info.devminor = entry.devmajor, entry.devminor
    info.size = len(entry.data) if entry.type == "file" else 0
    if entry.pax:
        info.pax_headers = dict(entry.pax)
    return info


def build_layer(entries: Iterable[TarEntry]) -> bytes:
    """The tar archive of ``entries`` in order (no compression), byte-reproducible."""
    out = io.BytesIO()
    for entry in entries:
        info = _tarinfo(entry)
        if entry.format == "gnu":
            out.write(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
        else:
            out.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        if info.size:
            out.write(entry.data)
            pad = (-info.size) % tarfile.BLOCKSIZE
            out.write(b"\0" * pad)
    out.write(b"\0" * (2 * tarfile.BLOCKSIZE))
    # Pad to a full record, as GNU tar does; readers do not care, but digests stay stable.
    pad = (-out.tell()) % tarfile.RECORDSIZE
    out.write(b"\0" * pad)
    return out.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """gzip with mtime 0 and no file name: the same input always gives the same bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6, filename="") as f:
        f.write(data)
    return buf.getvalue()


def zstd_bytes(data: bytes) -> bytes:
    """``data`` compressed with zstd (deterministic)."""
    import zstandard

    return bytes(zstandard.ZstdCompressor(level=3, write_content_size=True).compress(data))
