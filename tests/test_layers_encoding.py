"""Tar encodings and compression: what the reader decodes, what it refuses, and the resource limits."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
import threading
import zlib

import pytest

from imagevol.errors import LayerError
from imagevol.testing.tarbuild import TarEntry, build_layer, gzip_bytes, zstd_bytes
from imagevol.trees import _decompress as decompress
from imagevol.trees import _forked
from imagevol.trees._decompress import MODES
from imagevol.trees._tarstream import TarReader, parse_number, parse_pax_time
from imagevol.trees.layers import ApplyOptions, LayerLimits
from tests.helpers.layerkit import (
    D,
    F,
    Sandbox,
    data_blocks,
    end_of_archive,
    fix_checksum,
    gnu_long,
    pax_block,
    raw_header,
)


@pytest.fixture
def box(tmp_path: object) -> Sandbox:
    return Sandbox.make(str(tmp_path))


def members(data: bytes) -> list[tuple[str, str, str]]:
    chunks = iter([data[i : i + 1000] for i in range(0, len(data), 1000)])
    reader = TarReader(lambda: next(chunks, b""))
    out = []
    while (m := reader.next()) is not None:
        out.append((m.type, m.name, m.linkname))
    return out


# --- header decoding -------------------------------------------------------------------------------


def test_numbers_octal_and_base256() -> None:
    assert parse_number(b"0000644\0") == 0o644
    assert parse_number(b"  755 \0") == 0o755
    assert parse_number(b"\0" * 8) == 0
    assert parse_number(b"\x80\0\0\0\0\x2d\xc6\xc0") == 3_000_000
    assert parse_number(b"\xff" * 8) == -1
    with pytest.raises(LayerError):
        parse_number(b"0_7\0")
    with pytest.raises(LayerError):
        parse_number(b"-1\0")


def test_pax_time() -> None:
    assert parse_pax_time("1700000000.5") == 1700000000_500000000
    assert parse_pax_time("-1.25") == -1_250000000
    assert parse_pax_time("12.1234567899") == 12_123456789
    with pytest.raises(LayerError):
        parse_pax_time("1e9")


def test_ustar_prefix_is_part_of_the_name(box: Sandbox) -> None:
    evil = "../" + "d" * 100 + "/f"
    header = raw_header(evil, size=1)
    assert header[345:348] == b"../"  # tarfile put '../ddd' in the prefix field
    box.fails("invalid_name", header + data_blocks(b"x") + end_of_archive())
    good = "e" * 120 + "/g"
    box.apply(raw_header(good, size=1) + data_blocks(b"y") + end_of_archive())
    assert box.read(good) == "y"


def test_v7_trailing_slash_dir_and_contiguous_file() -> None:
    v7dir = raw_header("olddir/", tarfile.AREGTYPE)
    cont = raw_header("cont", tarfile.CONTTYPE, 1) + data_blocks(b"c")
    reg_slash = raw_header("file/", tarfile.REGTYPE)
    got = members(v7dir + cont + reg_slash + end_of_archive())
    assert [(t, n) for t, n, _ in got] == [("5", "olddir/"), ("0", "cont"), ("0", "file/")]


def test_header_only_types_carry_no_data() -> None:
    # A symlink whose size field claims a block: the next block is a header (Go, CPython agree).
    sym = raw_header("l", tarfile.SYMTYPE, 512, linkname="t")
    hidden = raw_header("after", tarfile.REGTYPE)
    assert [n for _, n, _ in members(sym + hidden + end_of_archive())] == ["l", "after"]


def test_global_pax_header_ignored(box: Sandbox) -> None:
    data = pax_block({"path": "../../etc/passwd", "comment": "x"}, tarfile.XGLTYPE)
    box.apply(data + raw_header("real", size=2) + data_blocks(b"ok") + end_of_archive())
    assert box.names() == ["real"]


@pytest.mark.parametrize(
    "data",
    [
        pax_block({"path": "a"}) + pax_block({"path": "b"}) + raw_header("x"),  # two PAX headers
        gnu_long(b"L", "one") + gnu_long(b"L", "two") + raw_header("x"),  # two long names
        gnu_long(b"L", "gnu-name") + pax_block({"path": "pax-name"}) + raw_header("x"),  # disagree
        pax_block({"path": "a"}),  # extended header with no member
        pax_block({"size": "-1"}) + raw_header("x"),
        pax_block({"uid": "12x"}) + raw_header("x"),
        b"17 path=no-newline" + b"\0" * 494,  # not a header at all: checksum fails
    ],
)
def test_ambiguous_or_malformed_extended_headers(box: Sandbox, data: bytes) -> None:
    box.fails("invalid_archive", data + end_of_archive())
    assert box.names() == []


def test_gnu_long_name_and_pax_path_may_agree(box: Sandbox) -> None:
    box.apply(gnu_long(b"L", "same") + pax_block({"path": "same"}) + raw_header("x") + end_of_archive())
    assert box.names() == ["same"]


def test_checksum_and_truncation(box: Sandbox) -> None:
    header = bytearray(raw_header("f", size=4))
    header[0] = ord("g")  # name changed, checksum not
    box.fails("invalid_archive", bytes(header) + data_blocks(b"data") + end_of_archive())
    assert box.names() == []
    box.fails("invalid_archive", raw_header("f", size=4000) + b"short")
    box.fails("invalid_archive", raw_header("g")[:300])


def test_signed_checksum_accepted(box: Sandbox) -> None:
    name = "caf" + "\udce9"
    header = bytearray(raw_header("x"))
    header[0:5] = os.fsencode(name) + b"\0"
    block = header[:512]
    block[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in block)
    block[148:156] = b"%06o\0 " % signed
    box.apply(bytes(block) + end_of_archive())
    assert os.path.exists(os.path.join(os.fsencode(box.root), b"caf\xe9"))


def test_lone_zero_block_then_member_refused(box: Sandbox) -> None:
    box.fails("invalid_archive", raw_header("a") + b"\0" * 512 + raw_header("b") + end_of_archive())


def test_end_without_marker_and_trailing_junk_after_it(box: Sandbox) -> None:
    box.apply(raw_header("a"))  # EOF at a header boundary: accepted, as Go does
    box.apply(raw_header("b") + end_of_archive() + b"junk after the end" * 100)
    box.apply(b"")  # an empty layer
    assert box.names() == ["a", "b"]


@pytest.mark.parametrize(
    "data",
    [
        raw_header("s", b"S", 0),
        pax_block({"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}) + raw_header("s"),
        raw_header("vol", b"V"),
        raw_header("x", b"Z"),
    ],
)
def test_unsupported_types(box: Sandbox, data: bytes) -> None:
    box.fails("unsupported", data + end_of_archive())


def test_owner_out_of_range_refused(box: Sandbox) -> None:
    box.fails("invalid_archive", pax_block({"uid": str(2**32 - 1)}) + raw_header("f") + end_of_archive())
    box.apply(raw_header("g", uid=3_000_000, fmt=tarfile.GNU_FORMAT) + end_of_archive())
    assert os.lstat(box.path("g")).st_uid == 3_000_000


def test_xattrs_user_namespace_only(box: Sandbox) -> None:
    entry = TarEntry(
        "f", "file", b"x", pax={"SCHILY.xattr.user.note": "hello", "SCHILY.xattr.security.capability": "\x01"}
    )
    box.apply([entry, TarEntry("d/", "dir", pax={"SCHILY.xattr.user.tag": "dir"})])
    try:
        assert os.getxattr(box.path("f"), "user.note") == b"hello"
        assert os.getxattr(box.path("d"), "user.tag") == b"dir"
    except OSError:  # pragma: no cover - a filesystem without user xattrs
        pytest.skip("no user xattrs here")
    assert "security.capability" not in os.listxattr(box.path("f"))


# --- compression ---------------------------------------------------------------------------------


LAYER_ENTRIES = [D("d"), F("d/f", "payload" * 1000)]
LAYER = build_layer(LAYER_ENTRIES)


@pytest.mark.parametrize(
    "blob",
    [
        LAYER,
        gzip_bytes(LAYER),
        zstd_bytes(LAYER),
        gzip_bytes(LAYER[:5000]) + gzip_bytes(LAYER[5000:]),  # two gzip members
        gzip_bytes(LAYER) + b"\0" * 3000,  # NUL padding after the member
    ],
    ids=["plain", "gzip", "zstd", "multi-member", "padded"],
)
@pytest.mark.parametrize("mode", MODES)
def test_compressions(box: Sandbox, blob: bytes, mode: str) -> None:
    box.apply(blob, options=ApplyOptions(decompress=mode))
    assert box.read("d/f") == "payload" * 1000


#: A layer longer than FORK_ABOVE once compressed (random bytes do not compress).
_BIG = [D("d"), F("d/big", os.urandom(decompress.FORK_ABOVE)), F("d/f", "payload" * 1000)]


@pytest.mark.parametrize(
    ("mode", "cpus", "threads", "small", "worker"),
    [
        ("auto", 2, False, False, "process"),
        ("auto", 1, False, False, "inline"),  # nothing would run beside the applier
        ("auto", 2, True, False, "inline"),  # forking beside another thread is not safe
        ("auto", 2, False, True, "inline"),  # a small layer: the fork would cost more than it saves
        ("process", 1, False, True, "process"),
        ("process", 2, True, False, "inline"),
        ("thread", 2, False, False, "thread"),
        ("thread", 1, False, False, "inline"),
        ("inline", 2, False, False, "inline"),
    ],
)
def test_where_the_blob_is_decompressed(
    box: Sandbox, monkeypatch: pytest.MonkeyPatch, mode: str, cpus: int, threads: bool, small: bool, worker: str
) -> None:
    seen: list[str] = []
    real = decompress.ChunkPipe.__init__

    def spy(self: decompress.ChunkPipe, *args: object, **kwargs: object) -> None:
        real(self, *args, **kwargs)  # type: ignore[arg-type]
        seen.append(self.mode)

    monkeypatch.setattr(decompress, "cpus", lambda: cpus)
    monkeypatch.setattr(decompress, "fork_is_safe", lambda: not threads)  # fork_is_safe's own test: below
    monkeypatch.setattr(decompress.ChunkPipe, "__init__", spy)
    box.apply(gzip_bytes(build_layer(LAYER_ENTRIES if small else _BIG)), options=ApplyOptions(decompress=mode))
    assert seen == [worker]
    assert box.read("d/f") == "payload" * 1000
    assert ApplyOptions().decompress == "auto"


def test_forking_is_safe_only_without_other_threads() -> None:
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert not _forked.fork_is_safe()
    finally:
        stop.set()
        other.join()


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="decompress"):
        ApplyOptions(decompress="gpu")


@pytest.mark.parametrize(
    "blob",
    [
        gzip_bytes(LAYER)[:-20],  # truncated
        gzip_bytes(LAYER)[:-8] + b"\0\0\0\0" + gzip_bytes(LAYER)[-4:],  # bad CRC
        gzip_bytes(LAYER) + b"garbage",
        zstd_bytes(LAYER)[:-10],
    ],
    ids=["truncated", "crc", "garbage", "zstd-truncated"],
)
def test_corrupt_streams(box: Sandbox, blob: bytes) -> None:
    box.fails("invalid_archive", blob)


@pytest.mark.parametrize("backend", ["isal", "zlib"])
def test_gzip_backends_agree(backend: str) -> None:
    module = zlib
    if backend == "isal":
        isal = pytest.importorskip("isal.isal_zlib")
        module = isal
    data = os.urandom(50_000) + b"z" * 3_000_000
    blob = gzip.compress(data)
    out = b"".join(decompress.decompressed(io.BytesIO(blob), 10**8, module))
    assert out == data


def _bomb(size: int, compress: str) -> bytes:
    # A tar whose one member is `size` zero bytes: tiny compressed, huge expanded.
    header = raw_header("zeros", size=size)
    if compress == "gzip":
        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        parts = [c.compress(header)]
        chunk = b"\0" * (1 << 20)
        for _ in range(size >> 20):
            parts.append(c.compress(chunk))
        parts.append(c.flush())
        return b"".join(parts)
    import zstandard

    cobj = zstandard.ZstdCompressor(level=3).compressobj()
    parts = [cobj.compress(header)]
    chunk = b"\0" * (1 << 20)
    for _ in range(size >> 20):
        parts.append(cobj.compress(chunk))
    parts.append(cobj.flush())
    return b"".join(parts)


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_decompression_bomb_stops_at_the_limit(box: Sandbox, compress: str) -> None:
    bomb = _bomb(256 << 20, compress)
    assert len(bomb) < 1 << 20
    err = box.fails("too_large", bomb, options=ApplyOptions(limits=LayerLimits(max_bytes=8 << 20)))
    assert "limit" in str(err)


def test_entry_limit(box: Sandbox) -> None:
    entries = [F(f"f{i}", "") for i in range(20)]
    box.fails("too_large", entries, options=ApplyOptions(limits=LayerLimits(max_entries=10)))
    box.apply(entries, options=ApplyOptions(limits=LayerLimits(max_entries=20)))


def test_oversized_extended_header(box: Sandbox) -> None:
    box.fails("too_large", pax_block({"comment": "x" * (1 << 20)}) + raw_header("f") + end_of_archive())


def test_fix_checksum_helper_roundtrip() -> None:
    header = raw_header("abc", size=0)
    assert fix_checksum(header) == header


def test_zstd_frame_walker_follows_real_streams() -> None:
    import zstandard

    for level in (1, 3, 19):
        data = os.urandom(3000) * 100 + b"\0" * 500_000
        for checksum in (False, True):
            blob = zstandard.ZstdCompressor(level=level, write_checksum=checksum).compress(data)
            frames = decompress.ZstdFrames()
            for i in range(0, len(blob), 7777):
                frames.feed(blob[i : i + 7777])
            assert frames.complete()
            cut = decompress.ZstdFrames()
            cut.feed(blob[:-1])
            assert not cut.complete()


@pytest.mark.parametrize("compress", [gzip_bytes, zstd_bytes, bytes], ids=["gzip", "zstd", "plain"])
@pytest.mark.parametrize("split", [1, 3, 4, 5, decompress.CHUNK + 1, decompress.FORK_ABOVE, 10**9])
def test_bytes_read_ahead_are_decompressed_as_if_never_taken(compress: object, split: int) -> None:
    # ChunkPipe reads up to FORK_ABOVE bytes to choose where to decompress, then hands them back.
    tar = build_layer([F("a", os.urandom(decompress.FORK_ABOVE)), F("b", "text " * 200_000)])
    blob: bytes = compress(tar)  # type: ignore[operator]
    chunks = list(decompress.decompressed(io.BytesIO(blob[split:]), 1 << 30, head=blob[:split]))
    assert b"".join(chunks) == tar
    assert max(len(c) for c in chunks) <= decompress.CHUNK


#: Starts a thread through libc (one threading does not count) and prints what fork_is_safe says
#: before and after, in a process of its own: the thread sleeps until that process ends.
_C_THREAD = """
import ctypes, threading
from imagevol.trees._forked import fork_is_safe
libc = ctypes.CDLL(None)
create = libc.pthread_create
create.argtypes = [ctypes.POINTER(ctypes.c_ulong), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
before = fork_is_safe()
tid = ctypes.c_ulong()
assert create(ctypes.byref(tid), None, ctypes.cast(libc.pause, ctypes.c_void_p), None) == 0
print(before, threading.active_count(), fork_is_safe())
"""


def test_a_thread_python_does_not_know_of_also_forbids_the_fork() -> None:
    done = subprocess.run([sys.executable, "-c", _C_THREAD], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.split() == ["True", "1", "False"]
