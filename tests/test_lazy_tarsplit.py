"""The fast paths of the TOC and tar-split readers read exactly what the strict JSON path reads.

A tar-split line of one of the two shapes tar-split writes is read without the JSON parser; every
other line goes through it. These tests hold the two readings against each other on lines of
every kind (canonical, near-canonical and hostile): the same record, or the same refusal. The TOC
parser now checks the type of every field it knows, on chunk entries too, in one pass.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagevol import lazy
from imagevol.errors import LazyFormatError
from imagevol.lazy import tarsplit, toc, zstdchunked
from imagevol.testing.lazy_layers import zstd_chunked_layer
from tests.helpers.layerkit import D, F
from tests.helpers.lazy import tar_members


def _fast(line: bytes, position: int) -> Any:
    """What the line reader yields for ``line`` at ``position`` (padded with empty raw lines)."""
    before = b"".join(b'{"type":2,"payload":"","position":%d}\n' % i for i in range(position))
    try:
        return list(tarsplit._records([before + line + b"\n"]))[position]
    except LazyFormatError as exc:
        return ("refused", exc.kind)


def _strict(line: bytes, position: int) -> Any:
    """What the JSON path alone makes of ``line``."""
    try:
        return tarsplit._json_record(line, position)
    except LazyFormatError as exc:
        return ("refused", exc.kind)


def _compact(record: dict[str, Any], *, ascii_only: bool = False) -> bytes:
    """A line as Go's encoder writes it: no spaces, fields in struct order."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=ascii_only).encode()


@settings(max_examples=300, deadline=None)
@given(
    name=st.text(max_size=40),
    size=st.integers(min_value=0, max_value=2**62),
    crc=st.none() | st.binary(max_size=8).map(lambda b: base64.b64encode(b).decode()),
    position=st.integers(min_value=0, max_value=3),
    ascii_only=st.booleans(),
)
def test_file_lines_read_the_same_either_way(
    name: str, size: int, crc: str | None, position: int, ascii_only: bool
) -> None:
    # Names with quotes, backslashes, control characters, non-ASCII or lone surrogates: escaped
    # ones (and invalid ones) go the JSON way, plain ones the fast way; the record is the same.
    record = {"type": 1, "name": name, "size": size, "payload": crc, "position": position}
    try:
        line = _compact(record, ascii_only=ascii_only)
    except UnicodeEncodeError:
        line = _compact(record, ascii_only=True)
    assert _fast(line, position) == _strict(line, position)
    if name.isascii() and name.isprintable() and '"' not in name and "\\" not in name:
        assert _fast(line, position) == (1, name, size, b"")


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=1600), position=st.integers(min_value=0, max_value=3))
def test_raw_lines_read_the_same_either_way(payload: bytes, position: int) -> None:
    line = _compact({"type": 2, "payload": base64.b64encode(payload).decode(), "position": position})
    assert _fast(line, position) == _strict(line, position) == (2, "", 0, payload)


@settings(max_examples=500, deadline=None)
@given(text=st.text(alphabet='ABCDabcd0189+/=-_ \n"\\', max_size=24))
def test_strict_base64_accepts_a_subset_of_what_the_json_path_accepts(text: str) -> None:
    # The fast path decodes with strict_mode; whatever it accepts, the JSON path's decoder accepts
    # too, with the same bytes (so no payload reads two ways).
    try:
        fast = binascii.a2b_base64(text.encode(), strict_mode=True)
    except binascii.Error:
        return
    assert base64.b64decode(text, validate=True) == fast


@pytest.mark.parametrize(
    "line",
    [
        b'{"type":2,"payload":"QUJD","position":00}',  # JSON has no leading zeros
        b'{"type":2,"payload":"QUJD","position":01}',
        b'{"type":2,"payload":"QQ=","position":0}',  # padding cut short
        b'{"type":2,"payload":"QQ===","position":0}',  # too much padding
        b'{"type":2,"payload":"QQ==QQ==","position":0}',  # padding in the middle
        b'{"type":2,"payload":"QU\\nJD","position":0}',  # an escape inside the payload
        b'{"type":2,"payload":"QUJD","position":0,"position":0}',  # a duplicate key
        b'{"type":2,"payload":"QUJD","position":0} ',
        b'{"type":2,"payload":"QUJD","position":1}',  # not its position
        b'{"type":2,"payload":"QUJD","position":99999999999999999999}',
        b'{"type":2,"payload":"\xc3\xa9","position":0}',
        b'{"type":2,"payload":"QUJD"}',
        b'{"type":2,"payload":"","position":0,"x":"","position":0}',
        b'{"type":2,"payload":"A","position":0}',
        b'{"type":1,"name":"a\x01b","size":1,"payload":null,"position":0}',  # a raw control character
        b'{"type":1,"name":"a\\"b","size":1,"payload":null,"position":0}',
        b'{"type":1,"name":"\xff","size":1,"payload":null,"position":0}',  # not UTF-8
        b'{"type":1,"name":"\xed\xa0\x80","size":1,"payload":null,"position":0}',  # a surrogate
        b'{"type":1,"name":"a","size":01,"payload":null,"position":0}',
        b'{"type":1,"name":"a","size":-1,"payload":null,"position":0}',
        b'{"type":1,"name":"a","size":1,"payload":null,"position":0,"name_raw":"YQ=="}',
        b'{"type":1,"name":"a","size":1,"payload":7,"position":0}',
        b'{"type":1,"name":"a","size":1.5,"payload":null,"position":0}',
        b'{"type":1,"name":"a","size":1,"payload":null,"position":0}{"type":2}',
    ],
)
def test_near_canonical_and_hostile_lines_read_the_same_either_way(line: bytes) -> None:
    assert _fast(line, 0) == _strict(line, 0)


def test_a_tar_split_written_compactly_is_read_by_the_fast_path_and_checked() -> None:
    # The project's writer writes Go's shape: every line takes the fast path, and the tar-split is
    # still held against the TOC member by member.
    layer = zstd_chunked_layer([D("etc"), F("etc/a", "alpha"), F("etc/b", "")])
    got = lazy.read_layer_toc(layer.descriptor(), lazy.BytesReader(layer.blob), members=tar_members)
    assert got.tar_split_checked
    anchor = zstdchunked.anchor(layer.descriptor())
    assert anchor.tar_split is not None
    frame = layer.blob[anchor.tar_split.offset : anchor.tar_split.end]
    lines = b"".join(zstdchunked.decode_frames(frame, anchor.tar_split_size)).splitlines()
    for position, line in enumerate(lines):
        assert tarsplit._raw_payload(line, position) is not None or tarsplit._FILE_LINE.fullmatch(line)


def test_the_toc_and_its_tar_split_are_read_in_one_range() -> None:
    layer = zstd_chunked_layer([D("etc"), F("etc/a", "alpha" * 1000)])
    reader = lazy.BytesReader(layer.blob)
    lazy.read_layer_toc(layer.descriptor(), reader, members=tar_members)
    assert [len(batch) for batch in reader.requests] == [1]


def _toc_with(change: dict[str, Any], *, index: int) -> bytes:
    entries: list[dict[str, Any]] = [
        {"type": "dir", "name": "d/", "mode": 493},
        {"type": "reg", "name": "d/f", "size": 3, "offset": 100, "endOffset": 120, "chunkSize": 2,
         "digest": "sha256:" + "a" * 64, "chunkDigest": "sha256:" + "b" * 64},
        {"type": "chunk", "name": "d/f", "offset": 110, "chunkOffset": 2, "chunkSize": 1,
         "chunkDigest": "sha256:" + "c" * 64},
    ]  # fmt: skip
    entries[index].update(change)
    return json.dumps({"version": 1, "entries": entries}).encode()


def test_a_well_formed_toc_parses() -> None:
    entries, _ = toc.parse_toc(_toc_with({}, index=0), toc.TocFormat.ZSTD_CHUNKED, payload_end=1000)
    assert [(e.name, e.type) for e in entries] == [("d/", "dir"), ("d/f", "reg")]
    assert [(c.offset, c.end, c.chunk_offset, c.size) for c in entries[1].chunks] == [
        (100, 110, 0, 2),
        (110, 120, 2, 1),
    ]


@pytest.mark.parametrize(
    ("index", "change"),
    [
        (2, {"mode": "x"}),  # chunk entries are typed like every other (Go decodes them alike)
        (2, {"uid": True}),
        (2, {"modtime": 5}),
        (0, {"size": "abc"}),  # a directory's size is never read, but it is still a number
        (0, {"devMajor": -1}),
        (1, {"chunkOffset": -1}),
        (1, {"offset": -5}),
        (1, {"offset": 2**63}),
        (1, {"name": "d/\udc80"}),
        (2, {"chunkDigest": "sha256:" + "C" * 64}),
        (1, {"digest": "sha256:" + "a" * 63}),
        (0, {"accesstime": "yesterday"}),
    ],
)
def test_fields_of_the_wrong_type_or_range_are_refused(index: int, change: dict[str, Any]) -> None:
    raw = _toc_with(change, index=index)
    with pytest.raises(LazyFormatError) as caught:
        toc.parse_toc(raw, toc.TocFormat.ZSTD_CHUNKED, payload_end=1000)
    assert caught.value.kind == "invalid_toc"
    assert f"TOC entry {index}" in str(caught.value)
