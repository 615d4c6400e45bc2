"""The shortcuts of the unpack hot loop give exactly what the general rules they skip would: the
header checksum summed in C, the memo of numeric header fields, headers and data taken straight from
a chunk, and the one-split name check."""

from __future__ import annotations

import io
import os
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagevol.errors import LayerError
from imagevol.testing.tarbuild import TarEntry, build_layer
from imagevol.trees import _tarstream as tarstream
from imagevol.trees._tarstream import TarReader
from imagevol.trees.layers import clean_name
from tests.helpers.layerkit import data_blocks, end_of_archive, fix_checksum, raw_header

# --- the header checksum ---------------------------------------------------------------------------


@given(st.binary(min_size=512, max_size=512))
def test_byte_sum_is_the_sum_of_the_bytes(block: bytes) -> None:
    assert tarstream._byte_sum(block) == sum(block)


def test_byte_sum_at_the_extremes() -> None:
    # 256 bytes of 0xff sum to 65,280, just under Adler-32's modulus: each half stays exact.
    for block in (bytes(512), b"\xff" * 512, b"\xff" * 256 + bytes(256), bytes(256) + b"\xff" * 256):
        assert tarstream._byte_sum(block) == sum(block)


@given(st.integers(0, 511), st.integers(1, 255))
def test_a_changed_header_byte_fails_the_checksum(where: int, delta: int) -> None:
    header = raw_header("dir/file", size=3) + data_blocks(b"abc") + end_of_archive()
    block = bytearray(header)
    if 148 <= where < 156:
        block[where] = ord("8")  # the checksum field itself: not an octal digit
    else:
        block[where] = (block[where] + delta) % 256
    with pytest.raises(LayerError) as info:
        members(bytes(block), 512)
    assert info.value.kind in ("invalid_archive", "unsupported")


def _with_checksum(header: bytes, value: int) -> bytes:
    block = bytearray(header[:512])
    block[148:156] = b"%06o\0 " % value
    return bytes(block) + header[512:]


@given(
    st.lists(
        st.tuples(st.text(alphabet="abé\x80/", min_size=1, max_size=40).filter(lambda n: n.strip("/")),
                  st.one_of(st.integers(-300, 300), st.just("signed"))),
        min_size=1, max_size=6,
    )
)  # fmt: skip
def test_the_remembered_checksum_accepts_exactly_what_the_full_check_accepts(
    headers: list[tuple[str, int | str]],
) -> None:
    """One reader (its memo of checksum fields warm from the earlier headers) against the full
    check on each header alone: the unsigned sum, the signed sum of old tars, nothing else."""
    blocks = []
    verdicts = []
    for name, delta in headers:
        good = fix_checksum(raw_header(f"d/{name}".replace("//", "/"), size=0))[:512]
        unsigned = tarstream._byte_sum(good) - sum(good[148:156]) + 8 * 0x20
        if delta == "signed":  # what a tar that summed signed chars wrote
            value = unsigned - 256 * sum(1 for b in good if b & 0x80)
        else:
            assert isinstance(delta, int)
            value = max(0, unsigned + delta)
        block = _with_checksum(good, value)
        field = block[148:156]
        blocks.append(block)
        verdicts.append(tarstream._checksum_ok(block, tarstream.parse_number(field), field))
    reader = TarReader(iter([b"".join(blocks) + end_of_archive(), b""]).__next__)
    for ok in verdicts:
        if ok:
            assert reader.next() is not None
        else:
            with pytest.raises(LayerError, match="checksum"):
                reader.next()
            return


def test_a_checksum_field_seen_before_is_no_pass_for_another_header() -> None:
    # Two headers with the same checksum field: the first right, the second not (one byte more).
    first = fix_checksum(raw_header("a/b", size=0))[:512]
    second = bytearray(raw_header("a/c", size=0)[:512])
    second[148:156] = first[148:156]
    assert tarstream._byte_sum(bytes(second)) != tarstream._byte_sum(first)
    reader = TarReader(iter([first + bytes(second) + end_of_archive(), b""]).__next__)
    assert reader.next() is not None
    with pytest.raises(LayerError, match="checksum"):
        reader.next()


# --- reading in any chunking ------------------------------------------------------------------------

names = st.text(alphabet="ab/", min_size=1, max_size=6).filter(lambda n: n.strip("/") and "//" not in n)
entries_st = st.lists(
    st.tuples(
        names,
        st.sampled_from(["file", "dir", "symlink"]),
        st.binary(max_size=1500),
        st.sampled_from([0o644, 0o755, 0o600]),
        st.integers(0, 70000),
        st.integers(0, 2**33),
    ),
    min_size=1,
    max_size=12,
)


def members(data: bytes, chunk: int) -> list[tuple[str, str, str, int, int, int, int, bytes]]:
    """Every member of ``data`` read in chunks of ``chunk`` bytes, with its data (through copy_to)."""
    pieces = iter([data[i : i + chunk] for i in range(0, len(data), chunk)])
    reader = TarReader(lambda: next(pieces, b""))
    out = []
    fd = os.memfd_create("member")
    try:
        while (m := reader.next()) is not None:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            if m.type == tarstream.REG:
                reader.copy_to(fd)
            content = os.pread(fd, m.size + 1, 0)
            out.append((m.type, m.name, m.linkname, m.size, m.mode, m.uid, m.mtime_ns, content))
    finally:
        os.close(fd)
    return out


@settings(max_examples=60, deadline=None)
@given(entries=entries_st, chunk=st.integers(1, 3000), fmt=st.sampled_from(["pax", "gnu"]))
def test_any_chunking_reads_the_same_members(
    entries: list[tuple[str, str, bytes, int, int, int]], chunk: int, fmt: str
) -> None:
    layer = build_layer(
        TarEntry(
            name + ("/" if kind == "dir" else ""),
            kind,
            data if kind == "file" else b"",
            linkname="target" if kind == "symlink" else "",
            mode=mode,
            uid=uid,
            mtime=mtime,
            format=fmt,
        )
        for name, kind, data, mode, uid, mtime in entries
    )
    whole = members(layer, len(layer))
    assert members(layer, chunk) == whole
    # ...and what tarfile reads (the fast paths skip nothing it would see).
    assert [(n.rstrip("/"), size, mode, uid, mtime, content) for _, n, _, size, mode, uid, mtime, content in whole] == (
        tarfile_view(layer)
    )


def tarfile_view(layer: bytes) -> list[tuple[str, int, int, int, int, bytes]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(layer)) as tf:
        for info in tf.getmembers():
            content = b""
            if info.isreg():
                extracted = tf.extractfile(info)
                assert extracted is not None
                content = extracted.read()
            out.append((info.name.rstrip("/"), len(content), info.mode, info.uid, int(info.mtime) * 10**9, content))
    return out


def test_the_number_memo_is_bounded_and_never_keeps_an_invalid_field() -> None:
    many = tarstream._MAX_NUMBERS + 50
    layer = build_layer(TarEntry(f"f{i}", "file", mtime=1_000_000 + i) for i in range(many))
    pieces = iter([layer])
    reader = TarReader(lambda: next(pieces, b""))
    mtimes = []
    while (m := reader.next()) is not None:
        mtimes.append(m.mtime_ns // 10**9)
    assert mtimes == [1_000_000 + i for i in range(many)]
    assert len(reader._numbers) <= tarstream._MAX_NUMBERS
    # A valid mode, then the same member with an underscore in it (int() would take it): refused.
    good = raw_header("a", mode=0o644)
    bad = bytearray(raw_header("b", mode=0o644))
    bad[100:108] = b"000_644\0"
    with pytest.raises(LayerError, match="invalid numeric header field"):
        members(good + fix_checksum(bytes(bad)) + end_of_archive(), 512)


# --- names -------------------------------------------------------------------------------------------


def reference_clean_name(name: str) -> tuple[str, ...]:
    """The rules of clean_name without its shortcut (C2.1)."""
    if "\x00" in name:
        raise LayerError("invalid_name", "NUL")
    parts = tuple(p for p in name.split("/") if p and p != ".")
    if ".." in parts:
        raise LayerError("invalid_name", "dotdot")
    if len(os.fsencode("/".join(parts))) >= 4096 or any(len(os.fsencode(p)) > 255 for p in parts):
        raise LayerError("toolong", "long")
    return parts


@given(st.lists(st.sampled_from(["a", "b", ".", "..", "", ".wh.a", "é", "\udcff", "\x00", "x" * 70]), max_size=8))
def test_clean_name_shortcut_agrees_with_the_rules(elements: list[str]) -> None:
    name = "/".join(elements)
    try:
        expected: tuple[str, ...] | str = reference_clean_name(name)
    except LayerError as exc:
        expected = exc.kind
    try:
        got: tuple[str, ...] | str = clean_name(name)
    except LayerError as exc:
        got = exc.kind
    assert got == expected


# --- the header fields sliced from the block ---------------------------------------------------------


@given(
    st.integers(1, 154),
    st.integers(1, 99),
    st.integers(0, 2**21 - 1),
    st.integers(0, 2**21 - 1),
    st.sampled_from([tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.REGTYPE]),
)
def test_the_prefix_and_device_numbers_read_as_tarfile_reads_them(
    head: int, tail: int, major: int, minor: int, kind: bytes
) -> None:
    info = tarfile.TarInfo("p" * head + "/" + "n" * tail + ("" if head + tail > 99 else "/x" * 50))
    info.type, info.devmajor, info.devminor = kind, major, minor
    header = info.tobuf(tarfile.USTAR_FORMAT)  # names over 100 bytes are split into the prefix
    [m] = _read_members(header + end_of_archive())
    back = tarfile.TarInfo.frombuf(header[:512], "utf-8", "surrogateescape")
    assert m.name == back.name
    if kind != tarfile.REGTYPE:
        assert (m.devmajor, m.devminor) == (major, minor)


def test_a_star_header_uses_the_short_prefix() -> None:
    # star keeps atime and ctime after a 131-byte prefix, and "tar\0" at 508: they are no part of the name.
    header = bytearray(raw_header("file", size=0)[:512])
    header[345:476] = b"p" * 131
    header[476:488] = b"14000000000\0"  # star's atime, where a ustar prefix would go on
    header[508:512] = b"tar\0"
    [m] = _read_members(fix_checksum(bytes(header)) + end_of_archive())
    assert m.name == "p" * 131 + "/file"


def _read_members(data: bytes) -> list[tarstream.Member]:
    reader = TarReader(iter([data, b""]).__next__)
    out = []
    while (m := reader.next()) is not None:
        out.append(m)
    return out
