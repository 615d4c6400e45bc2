"""Single-flight: concurrent pulls of one reference, or of references sharing blobs, from threads
and from separate processes on one ``--root``, fetch each blob once. Counted in the registry's
access log; a proxy delays blob answers so that the pulls really overlap."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import fsspec
import pytest

from imagevol.content.pull import ImagePuller, PullResult
from imagevol.content.sources.registry import RegistryAccess
from imagevol.content.store import ContentStore
from tests.helpers import peers
from tests.helpers.netfaults import Fault, Request, fault_proxy


@pytest.fixture(scope="module")
def reg(fixtures_layout: str) -> Iterator[peers.Registry]:
    with peers.registry() as r:
        peers.push_fixtures(fixtures_layout, r, ("layers", "layers-mix", "kitten", "v2"))
        yield r


def slow_blobs(seconds: float) -> Callable[[Request], Fault | None]:
    return lambda req: Fault(delay=seconds) if "/blobs/" in req.path else None


def gets_per_blob(reg: peers.Registry, mark: int) -> dict[str, int]:
    return dict(collections.Counter(e.path.rsplit("/", 1)[-1] for e in peers.blob_gets(reg.access(mark))))


def pull_in_threads(stores: list[ContentStore], refs: list[str]) -> list[PullResult]:
    barrier = threading.Barrier(len(refs))
    results: list[PullResult | BaseException] = [RuntimeError("not run")] * len(refs)

    def run(i: int) -> None:
        resolver = ImagePuller(stores[i], registry_factory=RegistryAccess(plain_http=True))
        barrier.wait()
        try:
            results[i] = resolver.pull(refs[i])
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(refs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return [r for r in results if isinstance(r, PullResult)]


def test_threads_pulling_one_reference_fetch_each_blob_once(reg: peers.Registry, tmp_path: object) -> None:
    root = os.path.join(str(tmp_path), "content")
    with fault_proxy(reg.host, slow_blobs(0.2)) as proxy:
        mark = reg.mark()
        ref = f"{proxy.host}/lab/layers-mix:v1"
        results = pull_in_threads([ContentStore(root) for _ in range(6)], [ref] * 6)
    assert len({r.record.target.digest for r in results}) == 1
    counts = gets_per_blob(reg, mark)
    assert len(counts) == 4 and set(counts.values()) == {1}, counts
    assert sum(r.fetched_blobs for r in results) == 4
    assert ContentStore(root).fsck().clean


def test_references_sharing_blobs_fetch_them_once(reg: peers.Registry, tmp_path: object) -> None:
    root = os.path.join(str(tmp_path), "content")
    with fault_proxy(reg.host, slow_blobs(0.2)) as proxy:
        mark = reg.mark()
        refs = [f"{proxy.host}/lab/layers:v1", f"{proxy.host}/lab/layers-mix:v1"] * 3
        pull_in_threads([ContentStore(root) for _ in refs], refs)
    counts = gets_per_blob(reg, mark)
    # layers: config + 3 layers; layers-mix shares the config (same diff_ids), its gzip and its
    # plain layer, and adds its zstd layer: 5 blobs in all, each fetched once.
    assert len(counts) == 5 and set(counts.values()) == {1}, counts


def test_threads_on_a_memory_filesystem_fetch_each_blob_once(reg: peers.Registry) -> None:
    fs = fsspec.filesystem("memory")
    store = ContentStore(f"/imagevol-singleflight-{os.getpid()}/content", fs)
    with fault_proxy(reg.host, slow_blobs(0.2)) as proxy:
        mark = reg.mark()
        pull_in_threads([store] * 4, [f"{proxy.host}/lab/kitten:v1"] * 4)
    assert set(gets_per_blob(reg, mark).values()) == {1}
    assert store.fsck().clean and len(store.refs()) == 1


def test_processes_sharing_a_root_fetch_each_blob_once(reg: peers.Registry, tmp_path: object) -> None:
    root = os.path.join(str(tmp_path), "node")
    cli = [sys.executable, "-m", "imagevol.cli", "--root", root]
    with fault_proxy(reg.host, slow_blobs(1.0)) as proxy:
        mark = reg.mark()
        ref = f"{proxy.host}/lab/layers:v1"
        procs = [
            subprocess.Popen([*cli, "pull", ref, "--plain-http"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(4)
        ]
        outs = [p.communicate(timeout=60) for p in procs]
        manifests: list[Request] = proxy.seen("/manifests/")
        first_blob_answered = min(r.at for r in proxy.seen("/blobs/")) + 1.0
    assert [p.returncode for p in procs] == [0] * 4, [o[1] for o in outs]
    assert len({o[0] for o in outs}) == 1 and outs[0][0].startswith(b"sha256:")
    assert len(manifests) == 4
    # The pulls overlapped: others were resolving while the first blob was still on its way.
    assert sum(m.at < first_blob_answered for m in manifests) >= 2
    counts = gets_per_blob(reg, mark)
    assert len(counts) == 4 and set(counts.values()) == {1}, counts
