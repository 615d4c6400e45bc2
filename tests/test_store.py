"""The content store: a valid OCI image layout that peers read (skopeo, umoci), on local disk and
on an fsspec memory filesystem; verified atomic ingest; limits; ``fsck`` and ``--repair``."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import subprocess
from collections.abc import Iterator

import fsspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagevol.cli import main
from imagevol.content.pull import ImagePuller
from imagevol.content.sources.registry import RegistryAccess
from imagevol.content.store import ContentStore
from imagevol.errors import BlobNotFoundError, DigestMismatchError, ManifestError, SizeMismatchError
from imagevol.oci import MAX_MANIFEST_BYTES, OCI_LAYER, OCI_MANIFEST, Descriptor, Digest, Platform
from tests.helpers import peers

AMD64 = Platform("linux", "amd64")


@pytest.fixture(scope="module")
def reg(fixtures_layout: str) -> Iterator[peers.Registry]:
    with peers.registry() as r:
        peers.push_fixtures(fixtures_layout, r, ("layers", "multi", "artifact-raw", "v2"))
        yield r


def desc(data: bytes, media_type: str = OCI_LAYER) -> Descriptor:
    return Descriptor(media_type, Digest.of(data), len(data))


def files_under(root: str, sub: str) -> list[str]:
    return sorted(n for n in os.listdir(os.path.join(root, sub)) if not n.endswith(".lock"))


# --- peers read the store ----------------------------------------------------------------------------


def test_skopeo_and_umoci_read_the_store(reg: peers.Registry, tmp_path: object) -> None:
    skopeo, umoci = peers.require("skopeo"), peers.require("umoci")
    root = os.path.join(str(tmp_path), "content")
    resolver = ImagePuller(ContentStore(root), platform=AMD64, registry_factory=RegistryAccess(True))
    names = {tag: f"{reg.host}/lab/{tag}:v1" for tag in ("layers", "multi", "artifact-raw")}
    records = {tag: resolver.pull(name).record for tag, name in names.items()}
    for tag, name in names.items():
        raw = peers.run([skopeo, "inspect", "--raw", f"oci:{root}:{name}"]).stdout.encode()
        assert Digest.of(raw) == records[tag].target.digest
    inspected = json.loads(peers.run([skopeo, "inspect", f"oci:{root}:{names['multi']}"]).stdout)
    assert inspected["Architecture"] == "amd64"  # the platform we pulled, chosen by skopeo from our index
    listed = peers.run([umoci, "ls", "--layout", root]).stdout.split()
    assert sorted(listed) == sorted(names.values())
    rootfs = os.path.join(str(tmp_path), "rootfs")
    peers.run([umoci, "raw", "unpack", "--rootless", "--image", f"{root}:{names['layers']}", rootfs])
    with open(os.path.join(rootfs, "etc", "conf")) as f:
        assert f.read() == "v2\n"
    assert not os.path.exists(os.path.join(rootfs, "a", "gone.txt"))


def test_skopeo_copies_out_of_the_store_with_digests_intact(reg: peers.Registry, tmp_path: object) -> None:
    skopeo = peers.require("skopeo")
    root = os.path.join(str(tmp_path), "content")
    record = ImagePuller(ContentStore(root), registry_factory=RegistryAccess(True)).pull(f"{reg.host}/lab/v2:v1").record
    out = os.path.join(str(tmp_path), "copy")
    peers.run(
        [skopeo, "--insecure-policy", "copy", "-q", "--preserve-digests", f"oci:{root}:{record.name}", f"oci:{out}:x"]
    )
    with open(os.path.join(out, "index.json")) as f:
        assert json.load(f)["manifests"][0]["digest"] == str(record.target.digest)


# --- the memory filesystem ----------------------------------------------------------------------------


def test_a_pull_onto_the_memory_filesystem(reg: peers.Registry) -> None:
    fs = fsspec.filesystem("memory")
    root = f"/imagevol-store-{os.getpid()}/content"
    store = ContentStore(root, fs)
    resolver = ImagePuller(store, platform=AMD64, registry_factory=RegistryAccess(True))
    record = resolver.pull(f"{reg.host}/lab/multi:v1").record
    manifest = resolver.manifest_of(record)
    assert all(store.verify_blob(b.digest) for b in manifest.blobs())
    assert fs.exists(f"{root}/oci-layout") and fs.exists(f"{root}/index.json")
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/ingest", detail=False)] == []
    assert store.fsck().clean
    assert not store.is_local and store.local_blob_path(record.manifest_digest) is None
    # Corruption is found there too.
    with fs.open(store.blob_path(manifest.layers[0].digest), "wb") as f:
        f.write(b"rotten")
    report = store.fsck(repair=True)
    assert report.corrupt == (str(manifest.layers[0].digest),)
    assert not store.has(manifest.layers[0].digest)
    assert resolver.lookup(record.name) is not None  # the record stays; a later pull re-fetches the layer
    fs.rm(f"/imagevol-store-{os.getpid()}", recursive=True)


# --- ingest: verified and atomic --------------------------------------------------------------------------


@given(data=st.binary(max_size=4096), cuts=st.lists(st.integers(0, 4096), max_size=8), flip=st.booleans())
def test_ingest_stores_exactly_the_verified_content(data: bytes, cuts: list[int], flip: bool) -> None:
    fs = fsspec.filesystem("memory")
    store = ContentStore(f"/imagevol-ingest-{os.getpid()}", fs)
    try:
        d = desc(data)
        bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
        chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
        if flip and data:
            chunks = [bytes([chunks[0][0] ^ 1]) + chunks[0][1:], *chunks[1:]] if chunks[0] else chunks
        corrupted = b"".join(chunks) != data
        if corrupted:
            with pytest.raises(DigestMismatchError):
                store.ingest(d, chunks)
            assert not store.has(d.digest)
        else:
            store.ingest(d, chunks)
            assert store.read_blob(d.digest) == data
        assert fs.ls(store._p("ingest"), detail=False) == []
    finally:
        fs.rm(f"/imagevol-ingest-{os.getpid()}", recursive=True)


def test_a_short_or_long_stream_is_refused_and_leaves_nothing(tmp_path: object) -> None:
    root = os.path.join(str(tmp_path), "content")
    store = ContentStore(root)
    d = desc(b"0123456789")
    with pytest.raises(SizeMismatchError, match="unexpected commit size 5, expected 10"):
        store.ingest(d, [b"01234"])
    with pytest.raises(SizeMismatchError, match="more than the 10 bytes"):
        store.ingest(d, [b"0123456789", b"x"])
    assert files_under(root, "blobs/sha256") == [] and files_under(root, "ingest") == []


def test_a_failing_stream_leaves_nothing(tmp_path: object) -> None:
    root = os.path.join(str(tmp_path), "content")
    store = ContentStore(root)

    def broken() -> Iterator[bytes]:
        yield b"half"
        raise ConnectionError("dropped")

    with pytest.raises(ConnectionError):
        store.ingest(desc(b"half and half"), broken())
    assert files_under(root, "blobs/sha256") == [] and files_under(root, "ingest") == []


def test_limits_are_refused_with_clear_errors(tmp_path: object) -> None:
    store = ContentStore(os.path.join(str(tmp_path), "content"), max_blob_size=8)
    with pytest.raises(SizeMismatchError, match="exceeds the maximum blob size of 8 bytes"):
        store.ingest(desc(b"123456789"), [b"123456789"])
    big = b"{" + b" " * MAX_MANIFEST_BYTES + b"}"
    roomy = ContentStore(os.path.join(str(tmp_path), "roomy"))
    roomy.ingest(desc(big, OCI_MANIFEST), [big])
    with pytest.raises(SizeMismatchError, match=f"exceeds the {MAX_MANIFEST_BYTES}-byte limit"):
        roomy.read_manifest(desc(big, OCI_MANIFEST))
    with pytest.raises(BlobNotFoundError):
        roomy.read_blob(Digest.of(b"absent"))
    with pytest.raises(ManifestError):
        Descriptor.from_json({"mediaType": OCI_LAYER, "digest": "sha256:" + "a" * 64, "size": -1})


# --- fsck -------------------------------------------------------------------------------------------


def _fsck(root: str, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(["--root", root, "fsck", *args], out=out), out.getvalue()


def test_fsck_reports_then_repairs(reg: peers.Registry, tmp_path: object) -> None:
    node = os.path.join(str(tmp_path), "node")
    root = os.path.join(node, "content")
    resolver = ImagePuller(ContentStore(root), platform=AMD64, registry_factory=RegistryAccess(True))
    record = resolver.pull(f"{reg.host}/lab/layers:v1").record
    manifest = resolver.manifest_of(record)
    assert _fsck(node) == (0, f"checked {len(manifest.blobs()) + 1} blobs\ncontent store is clean\n")
    corrupt = manifest.layers[1].digest
    with open(os.path.join(root, "blobs", "sha256", corrupt.hex), "r+b") as f:
        f.write(b"X")
    orphan = b"nobody refers to me"
    ContentStore(root).ingest(desc(orphan), [orphan])
    with open(os.path.join(root, "ingest", f"{'0' * 64}.999999999.dead.part"), "wb") as f:
        f.write(b"left by a crash")
    with open(os.path.join(root, "blobs", "sha256", "not-a-digest"), "wb") as f:
        f.write(b"?")
    code, out = _fsck(node)
    assert code == 1
    assert f"found corrupt: {corrupt}\n" in out
    assert f"found orphaned: {Digest.of(orphan)}\n" in out
    assert files_under(root, "ingest") == []  # a dead pull's temp file is recovered when the node opens
    assert "found invalid: sha256/not-a-digest\n" in out
    assert os.path.exists(os.path.join(root, "blobs", "sha256", corrupt.hex))  # reporting removes nothing
    code, out = _fsck(node, "--repair")
    assert f"removed corrupt: {corrupt}\n" in out and f"removed orphaned: {Digest.of(orphan)}\n" in out
    assert code == 1 and f"missing: {corrupt}\n" in out  # an image still needs it: pull it again
    assert not os.path.exists(os.path.join(root, "blobs", "sha256", corrupt.hex))
    assert files_under(root, "ingest") == []
    code, out = _fsck(node)
    assert code == 1 and f"missing: {corrupt}\n" in out  # the record still needs it: pull again
    assert resolver.lookup(record.name) is not None
    resolver.pull(f"{reg.host}/lab/layers:v1")
    assert _fsck(node)[0] == 0


def test_fsck_verifies_every_blob_by_content(tmp_path: object) -> None:
    root = os.path.join(str(tmp_path), "content")
    store = ContentStore(root)
    blobs = [os.urandom(n) for n in (0, 1, 1 << 20, (1 << 20) + 3)]
    for b in blobs:
        store.ingest(desc(b), [b])
    assert store.fsck().checked == len(blobs)
    victim = blobs[2]
    path = os.path.join(root, "blobs", "sha256", hashlib.sha256(victim).hexdigest())
    with open(path, "r+b") as f:
        f.seek(len(victim) - 1)
        f.write(bytes([victim[-1] ^ 0xFF]))
    assert store.fsck().corrupt == (str(Digest.of(victim)),)


def test_the_store_is_an_oci_layout_from_the_start(tmp_path: object) -> None:
    root = os.path.join(str(tmp_path), "content")
    ContentStore(root)
    with open(os.path.join(root, "oci-layout")) as f:
        assert json.load(f) == {"imageLayoutVersion": "1.0.0"}
    with open(os.path.join(root, "index.json")) as f:
        assert json.load(f)["manifests"] == []
    assert subprocess.run([peers.require("umoci"), "ls", "--layout", root], check=False).returncode == 0


def test_garbage_collection_waits_for_a_pull_in_progress(tmp_path: object) -> None:
    """A pull holds "gc" shared: blobs it ingested before writing its record are not collected."""
    import threading

    from imagevol.oci import Descriptor, Digest

    store = ContentStore(os.path.join(str(tmp_path), "content"))
    data = b"ingested, not yet referenced"
    desc = Descriptor("application/octet-stream", Digest.of(data), len(data))
    collected: list[object] = []
    with store.locks.hold("gc", shared=True):
        store.ingest(desc, [data])
        gc = threading.Thread(target=lambda: collected.append(store.garbage_collect()))
        gc.start()
        gc.join(0.5)
        assert gc.is_alive()  # blocked behind the pull
        assert store.has(desc.digest)
    gc.join(10)
    assert collected == [[desc.digest]]  # once the pull is over, an unreferenced blob goes
