"""Snapshots: one tree per layer chain (modes as the layers say, private to the node), built in
staging, published by rename, built once under concurrency (threads and processes), cleaned after
crashes, removed only when unleased."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from imagevol.errors import DigestMismatchError, ImageInUseError, ImageVolError, LayerError
from imagevol.testing.tarbuild import TarEntry
from imagevol.trees.snapshots import SnapshotKey, Snapshots
from tests.helpers.layerkit import D, F, S
from tests.helpers.paths import REPO
from tests.helpers.privileges import AS_NOBODY, setpriv_for_checkout
from tests.helpers.snapshots import GOOD, image_plan, modes


def _staging(snaps: Snapshots) -> list[str]:
    return os.listdir(os.path.join(snaps.root, ".staging"))


def test_published_tree_is_complete_keeps_its_modes_and_is_private(tmp_path: object) -> None:
    store, plan = image_plan(f"{tmp_path}/layout", GOOD, [F("d/g", "y", 0o640), D("e", 0o000), F("e/z", "z")])
    snaps = Snapshots(f"{tmp_path}/snaps", store)
    snap = snaps.materialise(plan)
    assert snap.path == snaps.path(plan.key) and not snap.artifact
    assert sorted(os.listdir(snap.path)) == ["d", "e", "exe", "l", "p"]
    # The layers' modes, write bits included: 0644 stays 0644, 0755 stays 0755 (read-only is the
    # mounts' job). Only set-id bits go (C2.9).
    want = {".": 0o755, "d": 0o777, "d/f": 0o666, "d/g": 0o640, "exe": 0o775, "p": 0o666, "e": 0o000, "e/z": 0o644}
    assert modes(snap.path) == want
    # What keeps a writable-looking tree safe: nobody but the node's user can reach it.
    for d in (snaps.root, f"{snaps.root}/.staging", f"{snaps.root}/.leases"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700 and os.stat(d).st_uid == os.geteuid()
    assert _staging(snaps) == []
    # Every mount shares the one tree.
    again = snaps.materialise(plan)
    assert again.path == snap.path


@pytest.mark.parametrize(
    "bad",
    [[F("../x", "evil")], [F("f", "x"), F("f/g", "y")], [S("l", "l"), F("l/x", "y")]],
    ids=["dotdot", "notdir", "loop"],
)
def test_failed_layer_publishes_nothing(tmp_path: object, bad: list[TarEntry]) -> None:
    store, plan = image_plan(f"{tmp_path}/layout", GOOD, bad)
    snaps = Snapshots(f"{tmp_path}/snaps", store)
    with pytest.raises(LayerError):
        snaps.materialise(plan)
    assert snaps.get(plan.key) is None
    assert not os.path.exists(snaps.path(plan.key))
    assert _staging(snaps) == []
    assert snaps.published() == []


def test_corrupt_blob_publishes_nothing(tmp_path: object) -> None:
    store, plan = image_plan(f"{tmp_path}/layout", GOOD)
    blob = store.blob_path(plan.manifest.layers[0].digest)
    with open(blob, "rb") as f:
        data = bytearray(f.read())
    data[-5] ^= 0xFF  # inside the gzip trailer: the tar itself would still read fine
    with open(blob, "wb") as f:
        f.write(bytes(data))
    snaps = Snapshots(f"{tmp_path}/snaps", store)
    with pytest.raises((DigestMismatchError, LayerError)):
        snaps.materialise(plan)
    assert snaps.get(plan.key) is None and _staging(snaps) == []


def test_threads_build_once(tmp_path: object) -> None:
    store, plan = image_plan(f"{tmp_path}/layout", GOOD)
    snaps = Snapshots(f"{tmp_path}/snaps", store)
    builds: list[SnapshotKey] = []
    results: list[str] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(snaps.materialise(plan, on_build=builds.append).path)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert builds == [plan.key]
    assert set(results) == {snaps.path(plan.key)}


_CHILD = r"""
import os, sys, time
from imagevol.trees.snapshots import Snapshots
from imagevol.content.store import ContentStore
import imagevol.trees.snapshots as s
layout, snaps_root, log, mode = sys.argv[1:5]
store = ContentStore(layout)
desc = store.refs()["t"]
plan = s.plan_for(store, desc.digest, store.read_manifest(desc))
snaps = Snapshots(snaps_root, store)
if mode == "hang":
    real = s.apply_layer_fd
    def slow(*a, **k):
        out = real(*a, **k)
        print("building", flush=True)
        time.sleep(600)
        return out
    s.apply_layer_fd = slow
def on_build(_):
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(0.3)
print(snaps.materialise(plan, on_build=on_build).path, flush=True)
"""


def _child(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_processes_build_once(tmp_path: object) -> None:
    _, plan = image_plan(f"{tmp_path}/layout", GOOD)
    log = f"{tmp_path}/builds.log"
    args = [f"{tmp_path}/layout", f"{tmp_path}/snaps", log, "normal"]
    procs = [_child(args) for _ in range(3)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert {o.strip() for o, _ in outs} == {os.path.join(f"{tmp_path}/snaps", plan.key.name)}
    with open(log) as f:
        assert len(f.read().split()) == 1


def test_crash_mid_build_leaves_nothing_and_is_cleaned(tmp_path: object) -> None:
    store, plan = image_plan(f"{tmp_path}/layout", GOOD, [F("second", "2")])
    snaps_root = f"{tmp_path}/snaps"
    proc = _child([f"{tmp_path}/layout", snaps_root, f"{tmp_path}/log", "hang"])
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "building"  # first layer applied, second pending
    staging = os.listdir(os.path.join(snaps_root, ".staging"))
    assert len(staging) == 1 and staging[0].startswith(plan.key.name + ".")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(snaps_root, plan.key.name))  # nothing visible
    snaps = Snapshots(snaps_root, store)  # the next start cleans up
    assert _staging(snaps) == []
    assert sorted(os.listdir(snaps.materialise(plan).path)) == ["d", "exe", "l", "p", "second"]


def test_recover_keeps_a_build_in_progress(tmp_path: object) -> None:
    store, plan = image_plan(f"{tmp_path}/layout", GOOD)
    snaps = Snapshots(f"{tmp_path}/snaps", store)
    busy = os.path.join(snaps.root, ".staging", f"{plan.key.name}.{os.getpid()}.x")
    os.mkdir(busy)
    with snaps.locks.hold(f"snapshot-{plan.key.name}"):
        assert snaps.recover() == []
        assert os.path.isdir(busy)
    assert snaps.recover() == [os.path.basename(busy)]


def test_leases_block_removal(tmp_path: object) -> None:
    store, plan = image_plan(f"{tmp_path}/layout", GOOD)
    snaps = Snapshots(f"{tmp_path}/snaps", store)
    path = snaps.materialise(plan).path
    snaps.lease(plan.key, "c1")
    snaps.lease(plan.key, "c2")
    with pytest.raises(ImageInUseError):
        snaps.remove(plan.key)
    snaps.release(plan.key, "c1")
    with pytest.raises(ImageInUseError):
        snaps.remove(plan.key)
    assert os.path.isdir(path)
    snaps.release(plan.key, "c2")
    assert snaps.remove(plan.key) is True
    assert not os.path.exists(path) and _staging(snaps) == []
    assert snaps.remove(plan.key) is False
    with pytest.raises(ImageVolError):
        snaps.lease(plan.key, "late")  # no lease on a tree that is gone


def test_removal_while_building_waits(tmp_path: object) -> None:
    store, plan = image_plan(f"{tmp_path}/layout", GOOD)
    snaps = Snapshots(f"{tmp_path}/snaps", store)
    started = threading.Event()

    def slow_build(_: SnapshotKey) -> None:
        started.set()
        time.sleep(0.3)

    t = threading.Thread(target=snaps.materialise, args=(plan, slow_build))
    t.start()
    started.wait()
    assert snaps.remove(plan.key) is True  # waited for the build, then removed the complete tree
    t.join()
    assert snaps.get(plan.key) is None and _staging(snaps) == []


def test_acquire_materialises_and_leases(tmp_path: object) -> None:
    store, plan = image_plan(f"{tmp_path}/layout", GOOD)
    snaps = Snapshots(f"{tmp_path}/snaps", store)
    snap = snaps.acquire(plan, "c1")
    assert snaps.holders(plan.key) == ["c1"] and os.path.isdir(snap.path)
    with pytest.raises(ImageInUseError):
        snaps.remove(plan.key)


_UNPRIVILEGED = r"""
import os, sys
from tests.helpers.layerkit import D, F, W
from tests.helpers.snapshots import GOOD, image_plan, modes
from imagevol.trees.snapshots import Snapshots
base = sys.argv[1]
layers = ([D("z", 0o000), F("z/f", "1")], [F("z/g", "2"), D("e", 0o555), F("e/x", "x"), W("z/.wh.f")])
store, plan = image_plan(base + "/layout", GOOD, *layers)
snap = Snapshots(base + "/snaps", store).materialise(plan)
assert sorted(os.listdir(snap.path)) == ["d", "e", "exe", "l", "p", "z"]
assert os.stat(snap.path + "/z").st_mode & 0o777 == 0
assert os.stat(snap.path + "/e").st_mode & 0o777 == 0o555
os.chmod(snap.path + "/z", 0o500)
assert sorted(os.listdir(snap.path + "/z")) == ["g"]
os.chmod(snap.path + "/z", 0)
assert os.listdir(base + "/snaps/.staging") == []
print("ok")
"""


def test_unprivileged_build_with_closed_directories_across_layers() -> None:
    """An unprivileged builder keeps directories open to itself until the last layer, then gives
    them their modes (a 0000 directory written into by a later layer)."""
    import shutil
    import tempfile

    setpriv = setpriv_for_checkout()
    base = tempfile.mkdtemp(prefix="imagevol-unpriv-")
    try:
        os.chmod(base, 0o777)
        proc = subprocess.run(
            [
                setpriv,
                *AS_NOBODY,
                sys.executable,
                "-c",
                _UNPRIVILEGED,
                base,
            ],
            env={**os.environ, "PYTHONPATH": REPO},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", base], check=False)
        shutil.rmtree(base, ignore_errors=True)
