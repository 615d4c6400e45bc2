"""Range fetches: the ``multipart/byteranges`` parser, and the registry's ranged reader against the
real registry on 127.0.0.1 and against a fault proxy that answers Range requests the ways real
registries and CDNs do (416, 400, one part, 200, lies)."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagevol import lazy
from imagevol.content.ranges import ByteRange
from imagevol.content.sources import _multipart as multipart
from imagevol.content.sources.layout import OCILayoutSource
from imagevol.content.sources.mirrors import RegistriesConfig
from imagevol.content.sources.ranged import RegistryBlobReader
from imagevol.content.sources.registry import RegistryAccess, RegistrySource
from imagevol.cri import Keyring, MountStatus
from imagevol.errors import ImageVolError, LazyFormatError
from imagevol.node import Node, NodeConfig
from imagevol.oci import Descriptor
from imagevol.oci.reference import parse_normalized
from imagevol.testing.images import LayoutBuilder
from imagevol.testing.lazy_layers import add_lazy_image, zstd_chunked_layer
from imagevol.testing.tarbuild import TarEntry
from tests.helpers import peers
from tests.helpers.fixture_node import container_image_registries
from tests.helpers.lazy import view_of
from tests.helpers.netfaults import Fault, Request, fault_proxy
from tests.helpers.pods import make_pod

BLOB = random.Random(15).randbytes(300_000)


# --- the multipart parser ---------------------------------------------------------------------------


def _multipart_body(parts: list[tuple[int, bytes]], size: int, boundary: str = "BOUNDARY") -> bytes:
    out = b""
    for offset, data in parts:
        out += (
            f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Range: bytes {offset}-{offset + len(data) - 1}/{size}\r\n\r\n"
        ).encode() + data
    return out + f"\r\n--{boundary}--\r\n".encode()


@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 200)), min_size=1, max_size=8))
@settings(max_examples=200, deadline=None)
def test_multipart_parts_are_read_by_count_whatever_the_data_holds(spans: list[tuple[int, int]]) -> None:
    # The data itself holds the delimiter: only a parser that searches for it would cut there.
    blob = (b"--BOUNDARY\r\n" * 200)[:1200]
    parts = [(o, blob[o : o + n]) for o, n in spans if o + n <= len(blob)]
    if not parts:
        return
    got = multipart.parse(_multipart_body(parts, len(blob)), "BOUNDARY", len(blob), max_parts=len(parts))
    assert got == parts


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"garbage", "no opening delimiter"),
        (_multipart_body([(0, b"abc")], 10)[:-10], "not followed by a delimiter"),
        (_multipart_body([(0, b"abc")], 10).replace(b"0-2/10", b"0-5/10"), "not followed by a delimiter"),
        (_multipart_body([(0, b"abc")], 10)[:-18], "shorter than its Content-Range"),
        (_multipart_body([(0, b"abc")], 10).replace(b"0-2/10", b"0-2/11"), "does not lie in"),
        (_multipart_body([(8, b"abcd")], 10), "does not lie in"),
        (_multipart_body([(0, b"abc")], 10).replace(b"bytes 0-2", b"bytes  0-2"), "invalid Content-Range"),
        (_multipart_body([(0, b"a"), (1, b"b"), (2, b"c")], 10), "more than 2 parts"),
        (_multipart_body([(0, b"abc")], 10).replace(b"Content-Range", b"X-Range"), "exactly one Content-Range"),
        (b"\r\n--BOUNDARY\r\n" + b"X: y\r\n" * 2000, "headers are missing or too long"),
    ],
)
def test_hostile_multipart_answers_are_refused(body: bytes, why: str) -> None:
    with pytest.raises(LazyFormatError) as info:
        multipart.parse(body, "BOUNDARY", 10, max_parts=2)
    assert info.value.kind == "range"
    assert re.search(why, str(info.value))


def test_boundary_is_read_from_the_content_type_only_for_byteranges() -> None:
    assert multipart.boundary('multipart/byteranges; boundary="a b"') == "a b"
    assert multipart.boundary("multipart/byteranges;boundary=abc") == "abc"
    assert multipart.boundary("application/octet-stream") is None
    with pytest.raises(LazyFormatError):
        multipart.boundary("multipart/byteranges")


# --- against the real registry -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[peers.Registry, Descriptor, Descriptor]]:
    """A registry holding ``lab/ranged:v1``: one plain blob layer and one zstd:chunked layer."""
    layout = str(tmp_path_factory.mktemp("ranged") / "layout")
    builder = LayoutBuilder(layout)
    files = [TarEntry(f"d/f{i}", "file", random.Random(i).randbytes(3000 + i)) for i in range(20)]
    chunked = zstd_chunked_layer([TarEntry("d/", "dir"), *files])
    add_lazy_image(builder, [chunked], tag="ranged")
    plain = builder.add_blob(BLOB, "application/vnd.oci.image.layer.v1.tar")
    builder.save()
    with peers.registry() as reg:
        peers.skopeo_copy(layout, "ranged", reg, "lab/ranged")
        # The plain blob rides in as a second image's only layer (skopeo pushes whole images).
        b2 = LayoutBuilder(layout)
        b2.refs = dict(builder.refs)
        cfg = b2.add_blob(b'{"rootfs":{"type":"layers","diff_ids":["' + str(plain.digest).encode() + b'"]}}',
                          "application/vnd.oci.image.config.v1+json")  # fmt: skip
        b2.add_manifest(cfg, [plain], tag="plain")
        b2.save()
        peers.skopeo_copy(layout, "plain", reg, "lab/plain")
        yield reg, plain, chunked.descriptor()


def _source(host: str, repo: str) -> RegistrySource:
    spec = RegistriesConfig().pull_sources(parse_normalized(f"{host}/{repo}:v1"))[0]
    return RegistryAccess(plain_http=True)(spec, Keyring())


def _ranges() -> list[ByteRange]:
    rng = random.Random(3)
    out = []
    for _ in range(12):
        offset = rng.randrange(0, len(BLOB) - 5000)
        out.append(ByteRange(offset, rng.randrange(1, 5000)))
    return out


@pytest.mark.peers
def test_the_real_registry_serves_many_ranges_in_one_multipart_answer(
    pushed: tuple[peers.Registry, Descriptor, Descriptor],
) -> None:
    reg, plain, _ = pushed
    ranges = _ranges()
    mark = reg.mark()
    source = _source(reg.host, "lab/plain")
    try:
        reader = source.ranged_reader(plain)
        reader.check()
        assert reader.read_ranges(ranges) == [BLOB[r.offset : r.end] for r in ranges]
    finally:
        source.close()
    gets = peers.blob_gets(reg.access(mark))
    assert [g.status for g in gets] == [206]  # one request for all twelve ranges
    assert isinstance(reader, RegistryBlobReader) and reader.multi
    assert reader.bytes_fetched < sum(r.length for r in ranges) + 12 * 200  # parts' headers only


@pytest.mark.peers
def test_touching_ranges_are_one_single_range_request(pushed: tuple[peers.Registry, Descriptor, Descriptor]) -> None:
    reg, plain, _ = pushed
    ranges = [ByteRange(100, 50), ByteRange(150, 30), ByteRange(120, 10)]  # one span, 100-179
    mark = reg.mark()
    source = _source(reg.host, "lab/plain")
    try:
        reader = source.ranged_reader(plain)
        assert reader.read_ranges(ranges) == [BLOB[r.offset : r.end] for r in ranges]
        # The plain 206 answer to one span is no sign that several ranges cannot be served.
        assert isinstance(reader, RegistryBlobReader) and reader.multi
        assert reader.read_ranges(_ranges()) == [BLOB[r.offset : r.end] for r in _ranges()]
    finally:
        source.close()
    assert [g.status for g in peers.blob_gets(reg.access(mark))] == [206, 206]  # one request each
    assert reader.bytes_fetched < 80 + sum(r.length for r in _ranges()) + 12 * 200


@pytest.mark.peers
def test_a_zstd_chunked_toc_and_one_file_come_from_the_registry_by_range(
    pushed: tuple[peers.Registry, Descriptor, Descriptor],
) -> None:
    reg, _, desc = pushed
    mark = reg.mark()
    source = _source(reg.host, "lab/ranged")
    try:
        reader = source.ranged_reader(desc)
        toc = lazy.read_layer_toc(desc, reader)
        entry = next(e for e in toc.entries if e.name == "d/f7")
        data = lazy.read_payload(toc, entry, reader)
    finally:
        source.close()
    assert data == random.Random(7).randbytes(3007)
    served = sum(g.size for g in peers.blob_gets(reg.access(mark)))
    assert 0 < served < desc.size // 4


# --- against a registry that answers Range requests badly -------------------------------------------


def _multi(req: Request) -> bool:
    return req.method == "GET" and "," in req.header("Range")


def _read_through(
    reg: peers.Registry, plain: Descriptor, rule: Callable[[Request], Fault | None]
) -> tuple[RegistryBlobReader, list[bytes], list[Request]]:
    with fault_proxy(reg.host, rule) as proxy:
        source = _source(proxy.host, "lab/plain")
        try:
            reader = source.ranged_reader(plain)
            got = reader.read_ranges(_ranges())
            got2 = reader.read_ranges(_ranges()[:3])
        finally:
            source.close()
        return reader, got + got2, [r for r in proxy.requests if "/blobs/" in r.path]


@pytest.mark.peers
@pytest.mark.parametrize(
    "answer",
    [
        pytest.param((416, {"Content-Range": f"bytes */{len(BLOB)}"}, b""), id="416 (zot)"),
        pytest.param((400, {}, b"bad request"), id="400 (GCR)"),
        pytest.param((206, {"Content-Range": f"bytes 0-9/{len(BLOB)}"}, BLOB[:10]), id="one part"),
    ],
)
def test_a_registry_without_multi_range_gets_one_range_per_request(
    pushed: tuple[peers.Registry, Descriptor, Descriptor], answer: tuple[int, dict[str, str], bytes]
) -> None:
    reg, plain, _ = pushed
    reader, got, seen = _read_through(reg, plain, lambda req: Fault(respond=answer) if _multi(req) else None)
    ranges = _ranges()
    assert got == [BLOB[r.offset : r.end] for r in [*ranges, *ranges[:3]]]
    assert not reader.multi
    # One multi-range try, then single ranges only (also for the second call).
    assert [_multi(r) for r in seen] == [True] + [False] * (len(ranges) + 3)


@pytest.mark.peers
def test_a_200_answer_to_a_range_request_is_abandoned_unread(
    pushed: tuple[peers.Registry, Descriptor, Descriptor],
) -> None:
    reg, plain, _ = pushed
    with fault_proxy(reg.host, lambda req: Fault(drop_request_headers=("Range",))) as proxy:
        source = _source(proxy.host, "lab/plain")
        try:
            reader = source.ranged_reader(plain)
            for ranges in (_ranges(), _ranges()[:1]):
                with pytest.raises(LazyFormatError, match=r"whole blob \(200\)") as info:
                    reader.read_ranges(ranges)
                assert info.value.kind == "range"
        finally:
            source.close()
    assert reader.bytes_fetched == 0


@pytest.mark.peers
@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault(set_headers={"Content-Range": "bytes 0-99/300000"}), id="wrong Content-Range"),
        pytest.param(Fault(set_headers={"Content-Range": "bytes 10-20/12"}), id="range outside the blob"),
        pytest.param(Fault(body=BLOB[:50]), id="short body"),
        pytest.param(Fault(body=BLOB[:6000]), id="more than asked"),
        pytest.param(Fault(respond=(404, {}, b"")), id="gone"),
    ],
)
def test_a_single_range_answer_that_lies_is_refused(
    pushed: tuple[peers.Registry, Descriptor, Descriptor], fault: Fault
) -> None:
    reg, plain, _ = pushed
    with fault_proxy(reg.host, lambda req: fault if req.header("Range") else None) as proxy:
        source = _source(proxy.host, "lab/plain")
        try:
            reader = source.ranged_reader(plain)
            with pytest.raises(ImageVolError):
                lazy.read_exact(reader, [ByteRange(1000, 100)])
        finally:
            source.close()


@pytest.mark.peers
def test_a_multipart_answer_that_lies_is_refused(pushed: tuple[peers.Registry, Descriptor, Descriptor]) -> None:
    reg, plain, _ = pushed
    ranges = [ByteRange(0, 10), ByteRange(100, 10)]
    # Parts for other bytes than asked (each well-formed): the answer covers nothing asked for.
    body = _multipart_body([(50, BLOB[50:60]), (200, BLOB[200:210])], len(BLOB))
    answer = (206, {"Content-Type": "multipart/byteranges; boundary=BOUNDARY"}, body)
    with fault_proxy(reg.host, lambda req: Fault(respond=answer) if _multi(req) else None) as proxy:
        source = _source(proxy.host, "lab/plain")
        try:
            with pytest.raises(LazyFormatError, match="does not cover"):
                source.ranged_reader(plain).read_ranges(ranges)
        finally:
            source.close()


def test_an_oci_layout_serves_ranges_from_its_file(tmp_path: os.PathLike[str]) -> None:
    builder = LayoutBuilder(str(tmp_path))
    desc = builder.add_blob(BLOB, "application/vnd.oci.image.layer.v1.tar")
    builder.save()
    source = OCILayoutSource(str(tmp_path), "x")
    reader = source.ranged_reader(desc)
    ranges = _ranges()
    assert lazy.read_exact(reader, ranges) == [BLOB[r.offset : r.end] for r in ranges]
    with pytest.raises(LazyFormatError):
        source.ranged_reader(Descriptor(desc.media_type, desc.digest, desc.size + 1))


# --- a lazy node against the registry ------------------------------------------------------------------


def _lazy_node(root: str) -> Node:
    conf = root + ".registries.conf"  # the Pods' container image, from the BusyBox stand-in's layout
    with open(conf, "w") as f:
        f.write(container_image_registries())
    return Node(NodeConfig(root=root, registries=conf, registry_factory=RegistryAccess(plain_http=True), lazy="toc"))


def _run(node: Node, host: str, sub_path: str) -> MountStatus:
    pod = make_pod("p", [("v", f"{host}/lab/ranged:v1", "IfNotPresent")], [("v", "/v", sub_path)])
    record = node.create_pod(pod)
    state = record.containers[0]
    assert state.state == "running", state.message
    status = node.runtime.container_status(state.container_id)
    assert status is not None
    return status.mounts[0]


@pytest.mark.peers
def test_a_lazy_pod_reads_only_the_toc_and_its_files_from_the_registry(
    pushed: tuple[peers.Registry, Descriptor, Descriptor], tmp_path: os.PathLike[str]
) -> None:
    reg, _, chunked = pushed
    mark = reg.mark()
    node = _lazy_node(os.path.join(tmp_path, "node"))
    status = _run(node, reg.host, "d")
    assert status.trust == "toc-verified" and status.lazy.startswith("partial tree")
    gets = [e for e in reg.access(mark) if e.method == "GET" and e.path.endswith(str(chunked.digest))]
    # Only ranges of the layer were asked for: never the blob whole in one answer.
    assert gets and all(e.status == 206 for e in gets)
    assert not node.store.has(chunked.digest)
    fd = node.runtime.open_mount(status)
    try:
        assert sorted(view_of(fd)) == [".", *sorted(f"f{i}" for i in range(20))]
    finally:
        os.close(fd)


@pytest.mark.peers
def test_a_registry_that_ignores_range_makes_the_layer_pulled_whole(
    pushed: tuple[peers.Registry, Descriptor, Descriptor], tmp_path: os.PathLike[str]
) -> None:
    reg, _, chunked = pushed
    with fault_proxy(reg.host, lambda req: Fault(drop_request_headers=("Range",))) as proxy:
        node = _lazy_node(os.path.join(tmp_path, "node"))
        status = _run(node, proxy.host, "d")
    # The fallback is no failure: the layer came whole, verified, and the mount says why.
    assert node.store.has(chunked.digest)
    assert status.trust == "verified"
    assert "pulled whole" in status.lazy and "200" in status.lazy
    assert 'imagevol_lazy_fallbacks_total{reason="range"} 1.0' in node.metrics().exposition().decode()
