"""A partial tree's closure as one tar stream (:mod:`imagevol.trees.partial`): PAX headers carry
every name, link, owner, time and extended attribute exactly, so the layer applier writes the tree
with its own rules (in-root, fd-only, metadata, write bits) and nothing here touches a directory."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from typing import IO, Any

from .. import lazy
from ..errors import ImageVolError


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + len(str(len(body)))
    if len(str(n)) > len(str(len(body))):
        n += 1
    return str(n).encode() + body


def _header(typeflag: bytes, size: int, mode: int) -> bytes:
    block = bytearray(512)
    block[0:1] = b"x"  # the real name is in the PAX header
    block[100:108] = b"%07o\0" % (mode & 0o7777)
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = b"%011o\0" % (size if size < 8**11 else 0)
    block[136:148] = b"00000000000\0"
    block[148:156] = b" " * 8
    block[156:157] = typeflag
    block[257:263] = b"ustar\0"
    block[263:265] = b"00"
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def _pax_time(ns: int) -> bytes:
    sign = b"-" if ns < 0 else b""
    return sign + b"%d.%09d" % divmod(abs(ns), 1_000_000_000)


def _member(node: lazy.Node, name: str, typeflag: bytes, *, linkname: str = "", size: int = 0) -> bytes:
    records = [
        _pax_record(b"path", os.fsencode(name)),
        _pax_record(b"uid", b"%d" % node.uid),
        _pax_record(b"gid", b"%d" % node.gid),
        _pax_record(b"size", b"%d" % size),
    ]
    if node.mtime_ns is not None:
        records.append(_pax_record(b"mtime", _pax_time(node.mtime_ns)))
    if linkname:
        records.append(_pax_record(b"linkpath", os.fsencode(linkname)))
    for key, value in sorted((node.xattrs or {}).items()):
        records.append(_pax_record(b"SCHILY.xattr." + key.encode("utf-8", "surrogateescape"), value))
    pax = b"".join(records)
    out = _header(b"x", len(pax), 0o644) + pax + bytes(-len(pax) % 512)
    return out + _header(typeflag, size, node.mode)


def synthetic_tar(closure: lazy.Closure, opener: Callable[[lazy.Node], IO[bytes]]) -> Iterator[bytes]:
    """The closure as a tar stream, parents first. Implicit directories are left out: the applier
    makes them as it makes every missing parent (0755, the builder's), as a full build did."""
    first: dict[int, str] = {}
    for node in closure.nodes:
        if node.type == "dir":
            if node.implicit:
                continue
            yield _member(node, "./" if node.path == "." else node.path + "/", b"5")
        elif node.ino in first:
            yield _member(node, node.path, b"1", linkname=first[node.ino])
        elif node.type == "symlink":
            first[node.ino] = node.path
            yield _member(node, node.path, b"2", linkname=node.target)
        elif node.type == "fifo":
            first[node.ino] = node.path
            yield _member(node, node.path, b"6")
        else:
            first[node.ino] = node.path
            yield _member(node, node.path, b"0", size=node.size)
            if node.size:
                left = node.size
                with opener(node) as f:
                    while left:
                        piece = f.read(min(left, 1 << 20))
                        if not piece:
                            raise ImageVolError(f"payload of {node.path!r} is shorter than its entry")
                        left -= len(piece)
                        yield piece
                yield bytes(-node.size % 512)
    yield bytes(1024)


class TarStream(io.RawIOBase):
    """A generator of byte strings as a readable raw stream."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._buf:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf = nxt
        n = min(len(buffer), len(self._buf))
        buffer[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n
