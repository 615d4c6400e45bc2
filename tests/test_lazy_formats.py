"""TOC formats: imagevol's writers (``imagevol.testing.lazy_layers``) through imagevol's readers,
a layer written by the real skopeo 1.9.3 (the legacy zstd:chunked dialect, which imagevol reads),
hostile TOCs and payloads refused with typed errors before anything is written, and the lazy view
of TOC layers equal to a full pull of the same blobs (diff IDs checked)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagevol import lazy
from imagevol.errors import LayerError, LazyDigestError, LazyFormatError, LazyUnsupportedError
from imagevol.lazy import estargz, zstdchunked
from imagevol.oci import OCI_CONFIG, OCI_LAYER, OCI_LAYER_GZIP, Descriptor, Digest, Manifest, parse_manifest
from imagevol.testing import strategies
from imagevol.testing.images import LayoutBuilder
from imagevol.testing.lazy_layers import LazyLayer, crc64_go_iso, estargz_footer, estargz_layer, zstd_chunked_layer
from imagevol.testing.tarbuild import TarEntry, build_layer, gzip_bytes
from imagevol.trees.layers import apply_layers
from tests.helpers.layerkit import D, F, H, S, Sandbox, W
from tests.helpers.lazy import index_resolve, materialise, members_of, plain_entries, subtree, tar_members
from tests.helpers.peers import require

#: Every kind of entry, names that need PAX and GNU records, zero runs, many chunks.
RICH = [
    D("etc"),
    F("etc/a.conf", "hello\n" * 2000),
    F("etc/big", bytes(range(256)) * 1500),
    F("etc/sparse", b"\0" * 5000 + b"x" + b"\0" * 3000),
    F("etc/empty", ""),
    S("etc/l", "a.conf"),
    S("etc/abs", "/etc/a.conf"),
    H("etc/h", "etc/a.conf"),
    TarEntry("fifo", "fifo", mode=0o600),
    TarEntry("dev/null", "chardev", devmajor=1, devminor=3),
    W("etc/.wh.gone"),
    W("opt/.wh..wh..opq"),
    F("long/" + "n" * 150 + "/f", "deep"),
    TarEntry("gnu/" + "g" * 120, "file", b"gnu", format="gnu"),
    F("café/日本語", "unicode"),
    TarEntry("x", "file", b"xattr", pax={"SCHILY.xattr.user.k": "v", "SCHILY.xattr.security.capability": "c"}),
    F("setuid", "s", mode=0o4755, uid=1000, gid=1000),
]

WRITERS: dict[str, Callable[[Sequence[TarEntry]], LazyLayer]] = {
    "zstd:chunked": lambda e: zstd_chunked_layer(e, chunk_size=20000),
    "zstd:chunked-legacy": lambda e: zstd_chunked_layer(e, dialect="legacy", chunk_size=20000),
    "estargz": lambda e: estargz_layer(e, chunk_size=100000),
}


def _decompress(layer: LazyLayer) -> bytes:
    if layer.media_type == OCI_LAYER_GZIP:
        return gzip.decompress(layer.blob)
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(layer.blob), read_across_frames=True).read()


def _read(layer: LazyLayer, **kw: Any) -> tuple[lazy.LayerToc, lazy.BytesReader]:
    reader = lazy.BytesReader(layer.blob)
    return lazy.read_layer_toc(layer.descriptor(), reader, members=tar_members, **kw), reader


# --- writers through readers -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", WRITERS)
def test_round_trip(fmt: str) -> None:
    layer = WRITERS[fmt](RICH)
    # The blob decompresses to exactly the tar its TOC describes: the diff ID holds.
    assert _decompress(layer) == layer.tar
    toc, reader = _read(layer)
    assert toc.format is (lazy.TocFormat.ESTARGZ if fmt == "estargz" else lazy.TocFormat.ZSTD_CHUNKED)
    assert toc.dialect == {"zstd:chunked": "current", "zstd:chunked-legacy": "legacy", "estargz": "estargz"}[fmt]
    assert toc.tar_split_checked == (fmt == "zstd:chunked")
    # One request for a zstd:chunked TOC, two for eStargz (footer, then TOC).
    assert len(reader.requests) == (2 if fmt == "estargz" else 1)
    # What a background completion would check: the TOC is exactly the tar's members.
    slack = 999_999_999 if fmt == "estargz" else 0
    lazy.check_members_match(toc.entries, members_of(layer.tar), time_slack_ns=slack)
    by_name = {e.name: e for e in RICH}
    for entry in toc.entries:
        if entry.type != "reg":
            continue
        data = lazy.read_payload(toc, entry, reader)
        assert hashlib.sha256(data).hexdigest() == entry.digest.hex if entry.digest else not data
        source = by_name.get(entry.name.rstrip("/")) or by_name.get(entry.name)
        if source is not None:
            assert data == source.data
    big = next(e for e in toc.entries if e.name == "etc/big")
    assert len(big.chunks) > 1
    if fmt.startswith("zstd"):
        assert any(c.zeros for e in toc.entries for c in e.chunks)


@pytest.mark.parametrize("fmt", WRITERS)
def test_only_the_toc_and_the_needed_frames_are_read(fmt: str) -> None:
    layer = WRITERS[fmt]([F("small", "x" * 9900), F("huge", os.urandom(400_000))])
    toc, reader = _read(layer, tail=0)
    small = next(e for e in toc.entries if e.name == "small")
    before = reader.bytes_read
    assert lazy.read_payload(toc, small, reader) == b"x" * 9900
    assert reader.bytes_read - before < 1000
    assert reader.bytes_read < len(layer.blob) // 10


def test_estargz_toc_in_one_request_with_a_tail_guess() -> None:
    layer = estargz_layer(RICH)
    toc, reader = _read(layer, tail=256 * 1024)
    assert len(reader.requests) == 1 and toc.bytes_read == len(layer.blob)
    assert toc.entries[0].name == estargz.NO_PREFETCH_LANDMARK
    assert toc.entries[-1].name == estargz.TOC_NAME and toc.entries[-1].inline == layer.toc_json


def test_zstd_chunked_footers_agree_with_the_annotations() -> None:
    for dialect, tail in (("current", 72), ("legacy", 48)):
        layer = zstd_chunked_layer(RICH, dialect=dialect)
        footer = zstdchunked.parse_footer(layer.blob[-tail:])
        anchor = zstdchunked.anchor(layer.descriptor())
        assert (footer.toc, footer.toc_size) == (anchor.toc, anchor.toc_size)
        assert footer.tar_split == anchor.tar_split


def test_the_writers_output_passes_the_compression_and_tar_tools(tmp_path: Any) -> None:
    for name, layer in (("l.tar.zst", zstd_chunked_layer(RICH)), ("l.tar.gz", estargz_layer(RICH))):
        path = tmp_path / name
        path.write_bytes(layer.blob)
        tool = "zstd" if name.endswith("zst") else "gzip"
        if shutil.which(tool):
            subprocess.run([tool, "-t", "-q", str(path)], check=True)
        listed = subprocess.run(["tar", "-tf", str(path)], check=True, capture_output=True, text=True).stdout.split()
        if name.endswith("gz"):
            assert listed[0] == estargz.NO_PREFETCH_LANDMARK and listed[-1] == estargz.TOC_NAME


def test_crc64_is_go_iso() -> None:
    assert crc64_go_iso(b"123456789") == 0xB90956C775A41001
    assert crc64_go_iso(b"") == 0


_files = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "d/c", "d/e/f", "z"]),
        st.one_of(st.binary(max_size=64), st.integers(0, 70_000).map(lambda n: b"\0" * n + b"q" * (n % 7))),
    ),
    max_size=6,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=_files, fmt=st.sampled_from(sorted(WRITERS)), chunk=st.sampled_from([1000, 4096, 65536]))
def test_round_trip_property(files: list[tuple[str, bytes]], fmt: str, chunk: int) -> None:
    entries = [F(name, data) for name, data in files]
    if fmt == "estargz":
        layer = estargz_layer(entries, chunk_size=chunk)
    else:
        layer = zstd_chunked_layer(entries, chunk_size=chunk, dialect="legacy" if fmt.endswith("legacy") else "current")
    assert _decompress(layer) == layer.tar
    toc, reader = _read(layer)
    regs = [e for e in toc.entries if e.type == "reg" and e.name != estargz.TOC_NAME]
    if fmt == "estargz":
        regs = regs[1:]  # the landmark
    assert [(e.name, lazy.read_payload(toc, e, reader)) for e in regs] == files


# --- skopeo 1.9.3: the legacy dialect, read -------------------------------------------------------------


def _skopeo_chunked(tmp: str, tar: bytes) -> tuple[Descriptor, bytes, Digest]:
    """Push ``tar`` through ``skopeo copy --dest-compress-format zstd:chunked``: the layer's
    descriptor, its blob and the config's diff ID."""
    skopeo = require("skopeo")
    src = os.path.join(tmp, "src")
    b = LayoutBuilder(src)
    layer = b.add_blob(tar, OCI_LAYER)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [
        str(Digest.of(tar))]}}).encode()  # fmt: skip
    cfg = b.add_blob(config, OCI_CONFIG)
    b.add_manifest(cfg, [layer], tag="v1")
    b.save()
    dst = os.path.join(tmp, "dst")
    subprocess.run(
        [skopeo, "--insecure-policy", "copy", "-q", "--dest-compress-format", "zstd:chunked", f"oci:{src}:v1",
         f"oci:{dst}:v1"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    with open(os.path.join(dst, "index.json"), "rb") as f:
        top = json.load(f)["manifests"][0]["digest"].split(":")[1]
    with open(os.path.join(dst, "blobs", "sha256", top), "rb") as f:
        manifest = parse_manifest(f.read())
    assert isinstance(manifest, Manifest)
    desc = manifest.layers[0]
    with open(os.path.join(dst, "blobs", "sha256", desc.digest.hex), "rb") as f:
        blob = f.read()
    return desc, blob, Digest.of(tar)


@pytest.mark.peers
def test_skopeo_legacy_zstd_chunked_is_read_and_every_file_verifies(tmp_path: Any) -> None:
    entries = [e for e in RICH if e.type != "chardev"]
    padded = build_layer(entries)
    # skopeo 1.9.3 drops the tar's trailing record padding: feed it a tar that ends right after
    # its two end-of-archive blocks, and the diff ID survives.
    with tarfile.open(fileobj=io.BytesIO(padded)) as tf:
        end = max(m.offset_data + -(-m.size // 512) * 512 for m in tf)
    tar = padded[: end + 1024]
    desc, blob, diff_id = _skopeo_chunked(str(tmp_path), tar)
    assert lazy.toc_format(desc) is lazy.TocFormat.ZSTD_CHUNKED
    assert zstdchunked.LEGACY_POSITION in desc.annotations
    reader = lazy.BytesReader(blob)
    toc = lazy.read_layer_toc(desc, reader)
    assert (toc.dialect, len(reader.requests)) == ("legacy", 1)
    lazy.check_members_match(toc.entries, members_of(tar))
    wanted = {e.name: e.data for e in entries if e.type == "file"}
    for entry in toc.entries:
        if entry.type == "reg" and entry.name in wanted:
            assert lazy.read_payload(toc, entry, reader) == wanted[entry.name]
    footer = zstdchunked.parse_footer(blob[-48:])
    assert footer.toc == zstdchunked.anchor(desc).toc and footer.tar_split is None
    full = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True).read()
    assert Digest.of(full) == diff_id
    # The same view as a full pull.
    index = lazy.build_index([toc.entries])
    assert [n.path for n in index.walk("etc")] == [n.path for n in lazy.build_index([plain_entries(tar)]).walk("etc")]


@pytest.mark.peers
def test_skopeo_legacy_zstd_chunked_drops_the_record_padding(tmp_path: Any) -> None:
    """The known skopeo 1.9.3 bug this reader must live with: with a padded tar, the blob no
    longer decompresses to the diff ID (a full pull refuses it; a lazy one would not see it)."""
    padded = build_layer([F("a", "x" * 10)])
    desc, blob, diff_id = _skopeo_chunked(str(tmp_path), padded)
    full = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True).read()
    assert len(full) < len(padded) and Digest.of(full) != diff_id
    assert lazy.read_layer_toc(desc, lazy.BytesReader(blob)).dialect == "legacy"


# --- hostile TOCs ------------------------------------------------------------------------------------------


def _skippable(data: bytes) -> bytes:
    return b"\x50\x2a\x4d\x18" + struct.pack("<I", len(data)) + data


def rebuild_zstd(
    layer: LazyLayer,
    doc: dict[str, Any] | None = None,
    *,
    split: bytes | None = None,
    toc_raw: bytes | None = None,
    notes: dict[str, str] | None = None,
) -> tuple[Descriptor, bytes]:
    """``layer`` with its TOC (and tar-split) replaced, re-pinned: what an attacker who controls
    the image (and so the manifest) can produce."""
    anchor = zstdchunked.anchor(layer.descriptor())
    prefix = layer.blob[: anchor.toc.offset - 8]
    assert anchor.tar_split is not None
    split_frame = layer.blob[anchor.tar_split.offset : anchor.tar_split.end]
    lines = zstandard.ZstdDecompressor().decompress(split_frame, max_output_size=anchor.tar_split_size)
    cz = zstandard.ZstdCompressor()
    if split is not None:
        lines = split
        split_frame = cz.compress(lines)
    doc = doc if doc is not None else json.loads(layer.toc_json)
    doc["tarSplitDigest"] = "sha256:" + hashlib.sha256(split_frame).hexdigest()
    raw = toc_raw if toc_raw is not None else json.dumps(doc).encode()
    toc_frame = cz.compress(raw)
    toc_off = len(prefix) + 8
    split_off = toc_off + len(toc_frame) + 8
    blob = prefix + _skippable(toc_frame) + _skippable(split_frame)
    blob += _skippable(struct.pack("<7Q", toc_off, len(toc_frame), len(raw), 1, split_off, len(split_frame),
                                   len(lines)) + b"GNUlInUx")  # fmt: skip
    annotations = {
        zstdchunked.CHECKSUM: "sha256:" + hashlib.sha256(toc_frame).hexdigest(),
        zstdchunked.POSITION: f"{toc_off}:{len(toc_frame)}:{len(raw)}:1",
        zstdchunked.TARSPLIT_POSITION: f"{split_off}:{len(split_frame)}:{len(lines)}",
        **(notes or {}),
    }
    return Descriptor(layer.media_type, Digest.of(blob), len(blob), annotations), blob


def rebuild_estargz(
    layer: LazyLayer, doc: dict[str, Any] | None = None, *, toc_tar: bytes | None = None
) -> tuple[Descriptor, bytes]:
    toc_off = estargz.parse_footer(layer.blob[-51:])
    raw = json.dumps(doc if doc is not None else json.loads(layer.toc_json)).encode()
    if toc_tar is None:
        info = tarfile.TarInfo(estargz.TOC_NAME)
        info.size = len(raw)
        toc_tar = info.tobuf(tarfile.USTAR_FORMAT) + raw + bytes(-len(raw) % 512) + bytes(1024)
    blob = layer.blob[:toc_off] + gzip_bytes(toc_tar) + estargz_footer(toc_off)
    notes = {estargz.TOC_DIGEST: "sha256:" + hashlib.sha256(raw).hexdigest()}
    return Descriptor(layer.media_type, Digest.of(blob), len(blob), notes), blob


def _toc(layer: LazyLayer) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(layer.toc_json)
    return doc


def _named(doc: dict[str, Any], name: str) -> dict[str, Any]:
    entry: dict[str, Any] = next(e for e in doc["entries"] if e["name"] == name)
    return entry


def _refused(desc: Descriptor, blob: bytes, kind: str, **kw: Any) -> LazyFormatError:
    with pytest.raises(LazyFormatError) as err:
        lazy.read_layer_toc(desc, lazy.BytesReader(blob), **kw)
    assert err.value.kind == kind, str(err.value)
    return err.value


BASE = [D("etc"), F("etc/a", "a" * 3000), F("etc/b", "b" * 3000), S("etc/l", "a"), H("etc/h", "etc/a")]

# (mutation of the TOC document, the kind it is refused with): names first, then payload places.
NAME_ATTACKS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("dotdot", lambda d: _named(d, "etc/l").update(name="../../etc/passwd"), "invalid_name"),
    ("dotdot-inside", lambda d: _named(d, "etc/l").update(name="etc/../../x"), "invalid_name"),
    ("nul", lambda d: _named(d, "etc/l").update(name="etc/a\x00b"), "invalid_name"),
    ("wh-dir", lambda d: _named(d, "etc/l").update(name="etc/.wh.x/y"), "invalid_name"),
    ("wh-dotdot", lambda d: _named(d, "etc/l").update(name="etc/.wh.."), "invalid_whiteout"),
    ("empty-link", lambda d: _named(d, "etc/l").update(linkName=""), "invalid_link"),
    ("hardlink-out", lambda d: _named(d, "etc/h").update(linkName="../../etc/shadow"), "invalid_link"),
    ("hardlink-root", lambda d: _named(d, "etc/h").update(linkName="/"), "invalid_link"),
    ("root-not-dir", lambda d: _named(d, "etc/l").update(name="./", type="symlink"), "invalid_name"),
    ("long-element", lambda d: _named(d, "etc/l").update(name="etc/" + "n" * 256), "toolong"),
    ("long-target", lambda d: _named(d, "etc/l").update(linkName="t" * 4096), "toolong"),
    ("negative-uid", lambda d: _named(d, "etc/l").update(uid=-1), "invalid_archive"),
]
PAYLOAD_ATTACKS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("past-payload", lambda d: _named(d, "etc/b").update(endOffset=10**6), "invalid_toc"),
    ("no-offset", lambda d: _named(d, "etc/b").pop("offset"), "invalid_toc"),
    ("overlap", lambda d: _named(d, "etc/b").update(offset=_named(d, "etc/a")["offset"]), "invalid_toc"),
    ("backwards", lambda d: _named(d, "etc/b").update(endOffset=_named(d, "etc/b")["offset"]), "invalid_toc"),
    ("no-digest", lambda d: _named(d, "etc/a").pop("digest"), "invalid_toc"),
    ("bad-digest", lambda d: _named(d, "etc/a").update(digest="sha256:zz"), "invalid_toc"),
    ("dir-payload", lambda d: _named(d, "etc/").update(offset=10), "invalid_toc"),
    ("dir-digest", lambda d: _named(d, "etc/").update(digest="sha256:" + "a" * 64), "invalid_toc"),
    ("huge", lambda d: _named(d, "etc/a").update(size=2**40), "too_large"),
    ("orphan-chunk", lambda d: d["entries"].insert(0, {"type": "chunk", "name": "etc/", "offset": 5}), "invalid_toc"),
    ("unknown-type", lambda d: _named(d, "etc/l").update(type="socket"), "invalid_toc"),
    ("unknown-chunk-type", lambda d: _named(d, "etc/a").update(chunkType="holes"), "invalid_toc"),
]
JSON_ATTACKS: list[tuple[str, bytes, str]] = [
    ("duplicate-key", b'{"version":1,"version":1,"entries":[]}', "invalid_toc"),
    ("case-folded-key", b'{"version":1,"entries":[{"type":"dir","name":"a/","Name":"b/"}]}', "invalid_toc"),
    ("float", b'{"version":1,"entries":[{"type":"dir","name":"a/","mode":493.0}]}', "invalid_toc"),
    ("nan", b'{"version":1,"entries":[{"type":"dir","name":"a/","mode":NaN}]}', "invalid_toc"),
    ("surrogate", b'{"version":1,"entries":[{"type":"dir","name":"\\udc80/"}]}', "invalid_toc"),
    ("not-utf8", b'{"version":1,"entries":[{"type":"dir","name":"\xff/"}]}', "invalid_toc"),
    ("bool-version", b'{"version":true,"entries":[]}', "unsupported"),
    ("version-2", b'{"version":2,"entries":[]}', "unsupported"),
    ("top-unknown", b'{"version":1,"entries":[],"prefetch":[]}', "invalid_toc"),
    ("deep", b'{"version":1,"entries":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "invalid_toc"),
]


#: eStargz chunks have no end offset and no chunk type: those cases are zstd:chunked's alone.
_ZSTD_ONLY = ("past-payload", "backwards", "unknown-chunk-type")
HOSTILE = [
    pytest.param(fmt, case, mutate, kind, id=f"{fmt}-{case}")
    for fmt in ("zstd:chunked", "estargz")
    for case, mutate, kind in NAME_ATTACKS + PAYLOAD_ATTACKS
    if fmt == "zstd:chunked" or case not in _ZSTD_ONLY
]


@pytest.mark.parametrize(("fmt", "case", "mutate", "kind"), HOSTILE)
def test_hostile_tocs_are_refused(fmt: str, case: str, mutate: Callable[[dict[str, Any]], None], kind: str) -> None:
    layer = WRITERS[fmt](BASE)
    doc = _toc(layer)
    mutate(doc)
    desc, blob = rebuild_zstd(layer, doc) if fmt == "zstd:chunked" else rebuild_estargz(layer, doc)
    _refused(desc, blob, kind)


@pytest.mark.parametrize(("case", "raw", "kind"), JSON_ATTACKS, ids=[c[0] for c in JSON_ATTACKS])
def test_toc_json_that_two_parsers_could_read_differently_is_refused(case: str, raw: bytes, kind: str) -> None:
    layer = zstd_chunked_layer(BASE)
    desc, blob = rebuild_zstd(layer, toc_raw=raw)
    _refused(desc, blob, kind)


def test_too_many_entries_and_too_large_tocs_are_refused() -> None:
    layer = zstd_chunked_layer([F(f"f{i}", "x") for i in range(20)])
    _refused(layer.descriptor(), layer.blob, "too_large", limits=lazy.TocLimits(max_entries=10))
    _refused(layer.descriptor(), layer.blob, "too_large", limits=lazy.TocLimits(max_toc_bytes=100))
    _refused(layer.descriptor(), layer.blob, "too_large", limits=lazy.TocLimits(max_layer_bytes=10))
    desc = layer.descriptor()
    off, clen, ulen, _ = desc.annotations[zstdchunked.POSITION].split(":")
    # A TOC that decompresses to more than the position announces: a bomb, stopped at the cap.
    bomb = attrs.evolve(
        desc, annotations={**desc.annotations, zstdchunked.POSITION: f"{off}:{clen}:{int(ulen) // 2}:1"}
    )
    _refused(bomb, layer.blob, "too_large")


def test_the_toc_must_match_its_pinned_digests() -> None:
    layer = zstd_chunked_layer(BASE)
    desc = layer.descriptor()
    other = "sha256:" + "0" * 64
    with pytest.raises(LazyDigestError):
        lazy.read_layer_toc(attrs.evolve(desc, annotations={**desc.annotations, zstdchunked.CHECKSUM: other}),
                            lazy.BytesReader(layer.blob))  # fmt: skip
    # A tar-split swapped for another one: its digest is in the TOC.
    doc = _toc(layer)
    desc2, blob2 = rebuild_zstd(layer, doc)
    anchor = zstdchunked.anchor(desc2)
    assert anchor.tar_split is not None
    tampered = bytearray(blob2)
    tampered[anchor.tar_split.offset + 5] ^= 0xFF
    with pytest.raises(LazyDigestError):
        lazy.read_layer_toc(desc2, lazy.BytesReader(bytes(tampered)), members=tar_members)
    # Without a tar reader the tar-split is not even fetched.
    quiet = lazy.BytesReader(bytes(tampered))
    assert not lazy.read_layer_toc(desc2, quiet).tar_split_checked
    assert quiet.bytes_read == anchor.toc.length + 8
    es = estargz_layer(BASE)
    esd = es.descriptor()
    with pytest.raises(LazyDigestError):
        lazy.read_layer_toc(attrs.evolve(esd, annotations={estargz.TOC_DIGEST: other}), lazy.BytesReader(es.blob))


@pytest.mark.parametrize(
    "change",
    [
        lambda d: _named(d, "etc/l").update(mode=0o777 ^ 0o022),  # metadata differs
        lambda d: d["entries"].insert(1, {"type": "dir", "name": "extra/", "mode": 493}),  # not in the tar
        lambda d: d["entries"].remove(_named(d, "etc/l")),  # in the tar, not in the TOC
        lambda d: d["entries"].__setitem__(slice(3, 5), [d["entries"][4], d["entries"][3]]),  # order
        lambda d: _named(d, "etc/h").update(linkName="etc/b"),  # a hardlink to another file
    ],
    ids=["metadata", "extra", "missing", "order", "link"],
)
def test_a_toc_that_disagrees_with_its_tar_split_is_refused(change: Callable[[dict[str, Any]], None]) -> None:
    layer = zstd_chunked_layer(BASE)
    doc = _toc(layer)
    change(doc)
    desc, blob = rebuild_zstd(layer, doc)
    _refused(desc, blob, "mismatch", members=tar_members)
    # Without a tar reader the check cannot run, and the caller is told so.
    assert not lazy.read_layer_toc(desc, lazy.BytesReader(blob)).tar_split_checked


def test_a_tar_split_that_hides_a_member_after_the_end_marker_is_refused() -> None:
    """Entries after the end-of-archive marker reach no full pull: a TOC listing them is refused."""
    layer = zstd_chunked_layer(BASE)
    anchor = zstdchunked.anchor(layer.descriptor())
    assert anchor.tar_split is not None
    frame = layer.blob[anchor.tar_split.offset : anchor.tar_split.end]
    lines = zstandard.ZstdDecompressor().decompress(frame, max_output_size=anchor.tar_split_size).splitlines()
    records = [json.loads(line) for line in lines]
    # Put the end-of-archive zeros before the last member's header.
    last = max(i for i, r in enumerate(records) if r["type"] == 2 and r.get("payload") and i < len(records) - 1)
    records.insert(last, {"type": 2, "payload": base64.b64encode(bytes(1024)).decode()})
    split = b"".join(json.dumps({**r, "position": i}).encode() + b"\n" for i, r in enumerate(records))
    desc, blob = rebuild_zstd(layer, _toc(layer), split=split)
    _refused(desc, blob, "mismatch", members=tar_members)


@pytest.mark.parametrize(
    ("notes", "kind"),
    [
        ({zstdchunked.POSITION: "1:2:3"}, "invalid_toc"),
        ({zstdchunked.POSITION: "99999999:10:10:1"}, "invalid_toc"),
        ({zstdchunked.POSITION: "8:10:10:2"}, "unsupported"),
        ({zstdchunked.CHECKSUM: "md5:abc"}, "invalid_toc"),
        ({estargz.TOC_DIGEST: "sha256:" + "0" * 64}, "unsupported"),
    ],
)
def test_bad_annotations_are_refused(notes: dict[str, str], kind: str) -> None:
    layer = zstd_chunked_layer(BASE)
    desc = layer.descriptor()
    _refused(attrs.evolve(desc, annotations={**desc.annotations, **notes}), layer.blob, kind)


def test_what_a_descriptor_announces() -> None:
    layer = zstd_chunked_layer(BASE)
    assert lazy.toc_format(attrs.evolve(layer.descriptor(), annotations={})) is None
    with pytest.raises(LazyUnsupportedError):
        lazy.toc_format(attrs.evolve(layer.descriptor(), media_type=OCI_LAYER_GZIP))
    half = {zstdchunked.CHECKSUM: layer.descriptor().annotations[zstdchunked.CHECKSUM]}
    _refused(attrs.evolve(layer.descriptor(), annotations=half), layer.blob, "unsupported")
    # A skippable-frame header that is not where the position says: the TOC is not a TOC frame.
    desc = layer.descriptor()
    off, clen, ulen, _ = desc.annotations[zstdchunked.POSITION].split(":")
    moved = {**desc.annotations, zstdchunked.POSITION: f"{int(off) + 1}:{int(clen) - 1}:{ulen}:1"}
    _refused(attrs.evolve(desc, annotations=moved), layer.blob, "invalid_toc")


def test_hostile_estargz_footers_and_toc_members_are_refused() -> None:
    layer = estargz_layer(BASE)
    desc = layer.descriptor()
    blob = layer.blob
    legacy = (
        b"\x1f\x8b\x08\x04" + bytes(4) + b"\x00\xff\x16\x00" + b"%016xSTARGZ" % 10 + b"\x01\x00\x00\xff\xff" + bytes(8)
    )
    for footer, kind in (
        (b"x" * 51, "unsupported"),
        (b"\0" * 4 + legacy, "unsupported"),
        (estargz_footer(10).replace(b"STARGZ", b"STARGZEXTERNALTOC")[:51], "unsupported"),
        (estargz_footer(0xABC).replace(b"abc", b"ABC"), "invalid_toc"),
        (estargz_footer(len(blob) + 5), "invalid_toc"),
        (estargz_footer(10)[:38] + b"\x01\x00\x00\xff\xff" + b"\x01" + bytes(7), "invalid_toc"),
    ):
        tampered = blob[:-51] + footer
        _refused(attrs.evolve(desc, digest=Digest.of(tampered), size=len(tampered)), tampered, kind)
    raw = layer.toc_json
    info = tarfile.TarInfo("other.json")
    info.size = len(raw)
    wrong_name = info.tobuf(tarfile.USTAR_FORMAT) + raw + bytes(-len(raw) % 512) + bytes(1024)
    _refused(*rebuild_estargz(layer, toc_tar=wrong_name), "invalid_toc")
    # A member hidden after the TOC JSON would reach a full pull and not the lazy view.
    info = tarfile.TarInfo(estargz.TOC_NAME)
    info.size = len(raw)
    hidden = tarfile.TarInfo("evil")
    hidden.size = 4
    smuggled = info.tobuf(tarfile.USTAR_FORMAT) + raw + bytes(-len(raw) % 512)
    smuggled += hidden.tobuf(tarfile.USTAR_FORMAT) + b"evil" + bytes(508) + bytes(1024)
    desc2, blob2 = rebuild_estargz(layer, toc_tar=smuggled)
    _refused(attrs.evolve(desc2, annotations={estargz.TOC_DIGEST: "sha256:" + hashlib.sha256(raw).hexdigest()}),
             blob2, "invalid_toc")  # fmt: skip
    pax = tarfile.TarInfo(estargz.TOC_NAME)
    pax.size = len(raw)
    pax.pax_headers = {"path": estargz.TOC_NAME}
    with_pax = pax.tobuf(tarfile.PAX_FORMAT) + raw + bytes(-len(raw) % 512) + bytes(1024)
    _refused(*rebuild_estargz(layer, toc_tar=with_pax), "invalid_toc")


def test_estargz_chunks_need_digests_and_order() -> None:
    layer = estargz_layer(BASE, chunk_size=1000)
    doc = _toc(layer)
    a = _named(doc, "etc/a")
    a.pop("chunkDigest")
    _refused(*rebuild_estargz(layer, doc), "invalid_toc")
    doc = _toc(layer)
    chunks = [e for e in doc["entries"] if e["type"] == "chunk"]
    chunks[1]["offset"] = chunks[0]["offset"]
    _refused(*rebuild_estargz(layer, doc), "invalid_toc")
    doc = _toc(layer)
    _named(doc, "etc/b")["chunkOffset"] = 1
    _refused(*rebuild_estargz(layer, doc), "invalid_toc")


# --- hostile payloads --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["zstd:chunked", "estargz"])
def test_payloads_are_verified_and_capped(fmt: str) -> None:
    layer = WRITERS[fmt]([F("a", "a" * 50_000), F("b", "b" * 3000)])
    doc = _toc(layer)
    rebuild = rebuild_zstd if fmt == "zstd:chunked" else rebuild_estargz
    # The TOC promises other content: the digest check refuses what arrives.
    _named(doc, "b")["digest"] = "sha256:" + hashlib.sha256(b"c" * 3000).hexdigest()
    desc, blob = rebuild(layer, doc)
    toc = lazy.read_layer_toc(desc, lazy.BytesReader(blob))
    with pytest.raises(LazyDigestError):
        lazy.read_payload(toc, next(e for e in toc.entries if e.name == "b"), lazy.BytesReader(blob))
    # A chunk digest that lies.
    doc = _toc(layer)
    _named(doc, "a")["chunkDigest"] = "sha256:" + "1" * 64
    desc, blob = rebuild(layer, doc)
    toc = lazy.read_layer_toc(desc, lazy.BytesReader(blob))
    with pytest.raises(LazyDigestError):
        lazy.read_payload(toc, next(e for e in toc.entries if e.name == "a"), lazy.BytesReader(blob))
    # A decompression bomb: the TOC says 100 bytes, the frames hold 3000. Decoding stops at the
    # cap: zstd reports the excess, gzip is never inflated past it (and the chunk digest fails).
    doc = _toc(layer)
    _named(doc, "b")["size"] = 100
    desc, blob = rebuild(layer, doc)
    toc = lazy.read_layer_toc(desc, lazy.BytesReader(blob))
    with pytest.raises(LazyFormatError) as err:
        lazy.read_payload(toc, next(e for e in toc.entries if e.name == "b"), lazy.BytesReader(blob))
    assert err.value.kind == ("too_large" if fmt == "zstd:chunked" else "digest")


def test_corrupt_frames_and_members_are_refused() -> None:
    data = os.urandom(30_000)
    for layer in (zstd_chunked_layer([F("a", data)]), estargz_layer([F("a", data)])):
        toc, _ = _read(layer)
        entry = next(e for e in toc.entries if e.name == "a")
        (r,) = lazy.payload_ranges(entry)
        for cut in (10, r.length // 2, 30_000):
            tampered = bytearray(layer.blob)
            tampered[r.offset + cut] ^= 0x55
            with pytest.raises(LazyFormatError):
                lazy.read_payload(toc, entry, lazy.BytesReader(bytes(tampered)))
    # An eStargz chunk needs only the start of its member: a damaged gzip trailer (or the tar
    # headers after the chunk) changes no byte of the file, whose digest is what verifies it.
    layer = estargz_layer([F("a", data)])
    toc, _ = _read(layer)
    entry = next(e for e in toc.entries if e.name == "a")
    (r,) = lazy.payload_ranges(entry)
    tampered = bytearray(layer.blob)
    tampered[r.end - 1] ^= 0x55
    assert lazy.read_payload(toc, entry, lazy.BytesReader(bytes(tampered))) == data
    # zstd data cut short, or followed by garbage.
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(b"x" * 1000)
    for data in (frame[:-3], frame + b"junk", frame[:4]):
        with pytest.raises(LazyFormatError):
            list(zstdchunked.decode_frames(data, 1000))


class _Liar:
    """A reader that answers the whole blob whatever range is asked (a registry ignoring Range)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    @property
    def size(self) -> int:
        return len(self.data)

    def read_ranges(self, ranges: Sequence[lazy.ByteRange]) -> list[bytes]:
        return [self.data for _ in ranges]


def test_readers_that_answer_the_wrong_bytes_are_refused() -> None:
    layer = zstd_chunked_layer(BASE)
    with pytest.raises(LazyFormatError) as err:
        lazy.read_layer_toc(layer.descriptor(), _Liar(layer.blob))
    assert err.value.kind == "range"
    with pytest.raises(LazyFormatError) as err:
        lazy.read_exact(lazy.BytesReader(b"abc"), [lazy.ByteRange(2, 5)])
    assert err.value.kind == "range"


def test_ranges_coalesce_and_read_back() -> None:
    data = bytes(range(256)) * 40
    ranges = [lazy.ByteRange(5000, 10), lazy.ByteRange(0, 4), lazy.ByteRange(10, 20), lazy.ByteRange(5005, 2)]
    assert lazy.coalesce(ranges, gap=16) == [lazy.ByteRange(0, 30), lazy.ByteRange(5000, 10)]
    reader = lazy.BytesReader(data)
    assert lazy.read_coalesced(reader, ranges, gap=16) == [data[r.offset : r.end] for r in ranges]
    assert reader.requests == [(lazy.ByteRange(0, 30), lazy.ByteRange(5000, 10))]
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        with lazy.FileReader.open(f.name) as fr:
            assert fr.size == len(data)
            assert lazy.read_exact(fr, ranges) == [data[r.offset : r.end] for r in ranges]
    assert lazy.ByteRange(10, 20).header() == "10-29"
    with pytest.raises(ValueError):
        lazy.ByteRange(0, 0)


# --- attacks end on the filesystem --------------------------------------------------------------------------


def test_a_refused_toc_writes_nothing_and_an_accepted_one_stays_in_root(tmp_path: Any) -> None:
    """A TOC naming ``../../etc/passwd`` is refused before anything is indexed or written; a TOC
    writing through an absolute symlink of a lower layer lands inside the root (as a full pull)."""
    box = Sandbox.make(str(tmp_path))
    layer = zstd_chunked_layer(BASE)
    doc = _toc(layer)
    _named(doc, "etc/a")["name"] = "../../etc/passwd"
    desc, blob = rebuild_zstd(layer, doc)
    with pytest.raises(LazyFormatError):
        lazy.read_layer_toc(desc, lazy.BytesReader(blob))
    assert os.listdir(box.root) == []
    box.check_outside()
    lower = estargz_layer([S("etc", "/root"), S("esc", "../../..")])
    upper = zstd_chunked_layer([F("etc/passwd", "image\n"), F("esc/secret", "image\n")])
    tocs = [lazy.read_layer_toc(x.descriptor(), lazy.BytesReader(x.blob)) for x in (lower, upper)]
    index = lazy.build_index([t.entries for t in tocs])
    clos = lazy.closure(index, lazy.resolve(index, ".", "in_root"))
    out = os.path.join(box.root, "lazy")
    blobs = (lower.blob, upper.blob)

    def content(node: lazy.Node) -> bytes:
        assert node.source is not None
        toc = tocs[node.source.layer]
        return lazy.read_payload(toc, toc.entries[node.source.entry], lazy.BytesReader(blobs[node.source.layer]))

    materialise(clos, out, content)
    box.check_outside()
    with open(os.path.join(out, "root", "passwd")) as f:
        assert f.read() == "image\n"
    with open(os.path.join(out, "secret")) as f:
        assert f.read() == "image\n"


# --- the lazy view of TOC layers is the full pull's --------------------------------------------------------

_FORMATS = st.sampled_from(["plain", "zstd:chunked", "zstd:chunked-legacy", "estargz"])


def _write(fmt: str, entries: Sequence[TarEntry]) -> tuple[bytes, Descriptor | None, Digest]:
    if fmt == "plain":
        tar = build_layer(entries)
        return gzip_bytes(tar), None, Digest.of(tar)
    layer = WRITERS[fmt](entries)
    return layer.blob, layer.descriptor(), layer.diff_id


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layers=strategies.layer_stacks(max_layers=3, max_entries=6),
    formats=st.lists(_FORMATS, min_size=3, max_size=3),
    sub_paths=st.lists(st.sampled_from([".", "a", "b", "c", "a/x", "c/d", "b/x/", "a/x/z"]), min_size=1, max_size=4),
)
def test_the_lazy_view_of_toc_layers_is_the_full_pull(
    layers: list[list[TarEntry]], formats: list[str], sub_paths: list[str]
) -> None:
    written = [_write(fmt, layer) for fmt, layer in zip(formats, layers, strict=False)]
    with tempfile.TemporaryDirectory(prefix="imagevol-lazy-") as tmp:
        full = os.path.join(tmp, "full")
        os.mkdir(full)
        os.chmod(full, 0o755)
        try:
            apply_layers(full, [io.BytesIO(b) for b, _, _ in written], diff_ids=[d for _, _, d in written])
            full_error = ""
        except LayerError as exc:
            full_error = exc.kind
        tocs: list[lazy.LayerToc | None] = []
        entries = []
        for blob, desc, _ in written:
            if desc is None:
                tocs.append(None)
                entries.append(plain_entries(gzip.decompress(blob)))
            else:
                toc = lazy.read_layer_toc(desc, lazy.BytesReader(blob), members=tar_members)
                tocs.append(toc)
                entries.append(list(toc.entries))
        try:
            index = lazy.build_index(entries)
        except LayerError as exc:
            assert exc.kind == full_error
            return
        assert not full_error

        def content(node: lazy.Node) -> bytes:
            assert node.source is not None
            toc = tocs[node.source.layer]
            if toc is None:
                return layers[node.source.layer][node.source.entry].data
            blob = written[node.source.layer][0]
            return lazy.read_payload(toc, toc.entries[node.source.entry], lazy.BytesReader(blob))

        for i, sub_path in enumerate(sub_paths):
            for policy in ("beneath", "in_root"):
                got = index_resolve(index, sub_path, policy)
                if got[0] != "ok":
                    continue
                part = os.path.join(tmp, f"p{i}{policy}")
                materialise(lazy.closure(index, lazy.resolve(index, sub_path, policy)), part, content)
                assert subtree(part, got[1]) == subtree(full, got[1]), (sub_path, policy)


def test_estargz_chunks_sharing_a_member_are_found_by_their_inner_offset() -> None:
    files = [F("a", "a" * 300), F("b", "b" * 5000), F("c", os.urandom(3000)), F("d", "d" * 70_000)]
    layer = estargz_layer(files, chunk_size=20_000, min_chunk_size=8000)
    assert _decompress(layer) == layer.tar
    toc, reader = _read(layer)
    inner = [c for e in toc.entries for c in e.chunks if c.inner_offset]
    assert inner, "no chunk shares a member"
    for f in files:
        entry = next(e for e in toc.entries if e.name == f.name)
        assert lazy.read_payload(toc, entry, reader) == f.data
    lazy.check_members_match(toc.entries, members_of(layer.tar), time_slack_ns=999_999_999)


def _split_records(layer: LazyLayer) -> list[dict[str, Any]]:
    anchor = zstdchunked.anchor(layer.descriptor())
    assert anchor.tar_split is not None
    frame = layer.blob[anchor.tar_split.offset : anchor.tar_split.end]
    lines = zstandard.ZstdDecompressor().decompress(frame, max_output_size=anchor.tar_split_size).splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        (lambda rs: rs[1].update(type=True), "invalid_toc"),  # JSON true is no type number
        (lambda rs: rs[1].update(position=7), "invalid_toc"),
        (lambda rs: rs[1].update(name_raw="YQ=="), "invalid_toc"),
        (lambda rs: rs[1].update(size=-1), "invalid_toc"),
        (lambda rs: rs[0].update(payload="!!"), "invalid_toc"),
        (lambda rs: rs[1].update(extra=1), "invalid_toc"),
        (lambda rs: rs[1].update(name="other"), "mismatch"),
        (lambda rs: rs.insert(2, {"type": 1, "name": "x", "size": 0}), "mismatch"),
    ],
    ids=["bool-type", "position", "name-raw", "negative-size", "payload", "unknown-key", "name", "extra-file"],
)
def test_malformed_tar_splits_are_refused(change: Callable[[list[dict[str, Any]]], None], kind: str) -> None:
    layer = zstd_chunked_layer(BASE)
    records = _split_records(layer)
    change(records)
    split = b"".join(json.dumps({"position": i, **r}).encode() + b"\n" for i, r in enumerate(records))
    desc, blob = rebuild_zstd(layer, _toc(layer), split=split)
    _refused(desc, blob, kind, members=tar_members)
