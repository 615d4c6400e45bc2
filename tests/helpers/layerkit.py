"""Small helpers for layer tests: entry shorthands, raw (malformed) tar headers, and a sandbox with
decoys outside the root so that every attack test can assert on the host filesystem."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Sequence
from typing import Literal

import attrs
import pytest

from imagevol.errors import LayerError
from imagevol.testing.tarbuild import FIXED_MTIME, TarEntry, build_layer
from imagevol.trees.layers import ApplyOptions, LayerStats, apply_layers

Layer = Sequence[TarEntry] | bytes


def F(name: str, data: str | bytes = "", mode: int = 0o644, **kw: object) -> TarEntry:  # noqa: N802
    raw = data.encode() if isinstance(data, str) else data
    return TarEntry(name, "file", raw, mode=mode, **kw)  # type: ignore[arg-type]


def D(name: str, mode: int = 0o755, **kw: object) -> TarEntry:  # noqa: N802
    return TarEntry(name if name.endswith("/") else name + "/", "dir", mode=mode, **kw)  # type: ignore[arg-type]


def S(name: str, target: str, **kw: object) -> TarEntry:  # noqa: N802
    return TarEntry(name, "symlink", linkname=target, **kw)  # type: ignore[arg-type]


def H(name: str, target: str, **kw: object) -> TarEntry:  # noqa: N802
    return TarEntry(name, "hardlink", linkname=target, **kw)  # type: ignore[arg-type]


def W(name: str) -> TarEntry:  # noqa: N802
    """A whiteout member (an empty regular file named ``.wh.*``)."""
    return TarEntry(name, "file")


def raw_header(
    name: str,
    type: bytes = tarfile.REGTYPE,
    size: int = 0,
    *,
    fmt: Literal[0, 1, 2] = tarfile.USTAR_FORMAT,
    linkname: str = "",
    mode: int = 0o644,
    uid: int = 0,
    pax: dict[str, str] | None = None,
) -> bytes:
    """One header (plus its extended headers) exactly as ``tarfile`` writes it."""
    info = tarfile.TarInfo(name)
    info.type = type
    info.size = size
    info.linkname = linkname
    info.mode = mode
    info.uid = uid
    info.mtime = FIXED_MTIME
    if pax:
        info.pax_headers = dict(pax)
    return info.tobuf(fmt, "utf-8", "surrogateescape")


def data_blocks(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def pax_block(records: dict[str, str], kind: bytes = tarfile.XHDTYPE) -> bytes:
    """A raw PAX extended header (type ``x`` or ``g``) carrying ``records``."""
    body = b""
    for key, value in records.items():
        rec = f" {key}={value}\n".encode()
        n = len(rec) + 1
        while len(str(n)) + len(rec) != n:
            n = len(str(n)) + len(rec)
        body += str(n).encode() + rec
    return raw_header("././@PaxHeader", kind, len(body)) + data_blocks(body)


def gnu_long(kind: bytes, value: str) -> bytes:
    data = value.encode() + b"\0"
    return raw_header("././@LongLink", kind, len(data), fmt=tarfile.GNU_FORMAT) + data_blocks(data)


def end_of_archive() -> bytes:
    return b"\0" * 1024


def fix_checksum(header: bytes) -> bytes:
    """Recompute the checksum of the first block after a test edited it."""
    block = bytearray(header[:512])
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block) + header[512:]


def blob(layer: Layer) -> bytes:
    return layer if isinstance(layer, bytes) else build_layer(layer)


@attrs.define
class Sandbox:
    """A root at ``base/root/vol`` with decoys at ``base/etc/passwd``, ``base/tmp`` and
    ``base/root/secret``: whatever a layer does, none of them may change."""

    base: str
    root: str
    _before: dict[str, tuple[int, int, int, int, int]] = attrs.field(factory=dict, init=False)

    @classmethod
    def make(cls, tmp: str) -> Sandbox:
        base = os.path.join(tmp, "sandbox")
        root = os.path.join(base, "root", "vol")
        os.makedirs(root)
        os.makedirs(os.path.join(base, "etc"))
        os.makedirs(os.path.join(base, "tmp"))
        for path, text in (("etc/passwd", "host\n"), ("root/secret", "s3cret\n")):
            with open(os.path.join(base, path), "w") as f:
                f.write(text)
        box = cls(base, root)
        box._before = box.outside()
        return box

    def outside(self) -> dict[str, tuple[int, int, int, int, int]]:
        seen = {}
        for dirpath, dirnames, filenames in os.walk(self.base):
            if os.path.abspath(dirpath) == os.path.abspath(self.root):
                dirnames[:] = []
                continue
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                if os.path.abspath(full) == os.path.abspath(self.root):
                    continue
                st = os.lstat(full)
                seen[full] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_uid, st.st_ino)
        return seen

    def check_outside(self, ignore: Sequence[str] = ()) -> None:
        """Nothing outside the root changed (``ignore``: paths whose own metadata may change)."""
        after = self.outside()
        for path in ignore:
            after.pop(path, None)
            self._before.pop(path, None)
        assert after == self._before, (
            f"outside the root changed: {sorted(set(after.items()) ^ set(self._before.items()))}"
        )
        with open(os.path.join(self.base, "etc", "passwd")) as f:
            assert f.read() == "host\n"

    def apply(self, *layers: Layer, options: ApplyOptions | None = None) -> list[LayerStats]:
        try:
            return apply_layers(self.root, [io.BytesIO(blob(layer)) for layer in layers], options or ApplyOptions())
        finally:
            self.check_outside()

    def fails(self, kind: str, *layers: Layer, options: ApplyOptions | None = None) -> LayerError:
        with pytest.raises(LayerError) as info:
            self.apply(*layers, options=options)
        assert info.value.kind == kind, f"expected {kind}, got {info.value.kind}: {info.value}"
        return info.value

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def read(self, rel: str) -> str:
        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd = os.open(rel, os.O_RDONLY, dir_fd=root_fd)
        finally:
            os.close(root_fd)
        with os.fdopen(fd) as f:
            return f.read()

    def kind(self, rel: str) -> str:
        try:
            mode = os.lstat(self.path(rel)).st_mode
        except FileNotFoundError:
            return "missing"
        return {
            stat.S_IFREG: "file",
            stat.S_IFDIR: "dir",
            stat.S_IFLNK: "symlink",
            stat.S_IFIFO: "fifo",
        }.get(stat.S_IFMT(mode), "other")

    def names(self) -> list[str]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            for n in dirnames + filenames:
                out.append(os.path.normpath(os.path.join(rel, n)))
        return sorted(out)

    def mode(self, rel: str) -> int:
        return stat.S_IMODE(os.lstat(self.path(rel)).st_mode)
