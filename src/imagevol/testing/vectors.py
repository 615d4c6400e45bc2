"""Run test vectors (their format: docs/testing.md, "Vector format") against this library.

    python -m imagevol.testing.vectors layers [FILE]
    python -m imagevol.testing.vectors subpath [FILE] [--profile containerd|crio]
                                                      [--backend all|kernel|userspace]

Without FILE, the project's own vectors run: they ship with the package (``imagevol/testing/data/``).

Prints one line per failing vector and ends with ``N passed, M failed``; exits 1 if any failed.
Layer vectors also check that nothing outside the tree root was created or changed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from ..errors import LayerError, SubPathError
from ..trees import subpath as sp
from ..trees.layers import BuildState, apply_layer_fd
from ..trees.snapshots import publish_tree
from .tarbuild import TarEntry, build_layer


@attrs.frozen
class Outcome:
    """The outcome of one vector: its id, whether it passed, and what differed."""

    id: str
    ok: bool
    detail: str = ""


# --- trees -----------------------------------------------------------------------------------------


def build_tree(root: str, entries: Sequence[Mapping[str, Any]]) -> None:
    """Create the ``tree`` of a sub-path vector below ``root`` (symlinks are never followed)."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for e in entries:
            parent, _, name = e["path"].rpartition("/")
            dfd = sp.reopen_beneath(root_fd, parent) if parent else os.dup(root_fd)
            try:
                if e["type"] == "dir":
                    os.mkdir(name, 0o755, dir_fd=dfd)
                elif e["type"] == "file":
                    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dfd)
                    os.write(fd, str(e.get("data", "")).encode())
                    os.close(fd)
                elif e["type"] == "symlink":
                    os.symlink(e["target"], name, dir_fd=dfd)
                else:
                    raise ValueError(f"unknown tree entry type {e['type']!r}")
            finally:
                os.close(dfd)
    finally:
        os.close(root_fd)


def list_tree(root: str) -> dict[str, dict[str, Any]]:
    """Every entry below ``root`` (root excluded): type, mode, data, target, inode."""
    out: dict[str, dict[str, Any]] = {}

    def walk(rel: str) -> None:
        base = os.path.join(root, rel) if rel else root
        for name in sorted(os.listdir(base)):
            path = f"{rel}/{name}" if rel else name
            full = os.path.join(root, path)
            st = os.lstat(full)
            entry: dict[str, Any] = {"mode": stat.S_IMODE(st.st_mode), "ino": (st.st_dev, st.st_ino)}
            if stat.S_ISDIR(st.st_mode):
                entry["type"] = "dir"
            elif stat.S_ISLNK(st.st_mode):
                entry["type"] = "symlink"
                entry["target"] = os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                entry["type"] = "file"
                with open(full, "rb") as f:
                    entry["data"] = f.read().decode(errors="surrogateescape")
            elif stat.S_ISFIFO(st.st_mode):
                entry["type"] = "fifo"
            elif stat.S_ISCHR(st.st_mode):
                entry["type"] = "chardev"
            elif stat.S_ISBLK(st.st_mode):
                entry["type"] = "blockdev"
            else:
                entry["type"] = "other"
            out[path] = entry
            if entry["type"] == "dir":
                walk(path)

    walk("")
    return out


def _compare_tree(got: dict[str, dict[str, Any]], want: Sequence[Mapping[str, Any]]) -> str:
    want_paths = {w["path"] for w in want}
    extra = sorted(set(got) - want_paths)
    missing = sorted(want_paths - set(got))
    if extra or missing:
        return f"tree differs: unexpected {extra}, missing {missing}"
    for w in want:
        g = got[w["path"]]
        for key in ("type", "data", "target"):
            if key in w and g.get(key) != w[key]:
                return f"{w['path']}: {key} is {g.get(key)!r}, expected {w[key]!r}"
        if "mode" in w and g["mode"] != int(w["mode"], 8):
            return f"{w['path']}: mode is {g['mode']:04o}, expected {w['mode']}"
    # hardlink_of is symmetric: linked paths share an inode, unlinked non-directories do not.
    groups: dict[str, set[str]] = {w["path"]: {w["path"]} for w in want}
    for w in want:
        if "hardlink_of" in w:
            merged = groups[w["path"]] | groups[w["hardlink_of"]]
            for p in merged:
                groups[p] = merged
    nondirs = [p for p in got if got[p]["type"] != "dir"]
    for i, a in enumerate(nondirs):
        for b in nondirs[i + 1 :]:
            same = got[a]["ino"] == got[b]["ino"]
            if same != (b in groups.get(a, {a})):
                return f"{a} and {b}: {'share' if same else 'do not share'} an inode"
    return ""


def _snapshot_outside(base: str, root: str) -> dict[str, tuple[int, int, float]]:
    seen: dict[str, tuple[int, int, float]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        if os.path.abspath(dirpath) == os.path.abspath(root):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if os.path.abspath(full) == os.path.abspath(root):
                continue
            st = os.lstat(full)
            seen[full] = (st.st_mode, st.st_size, st.st_mtime)
    return seen


# --- runners -------------------------------------------------------------------------------------


def run_layer_vector(vector: Mapping[str, Any]) -> Outcome:
    """Apply a vector's layers through the library's own publication (staging, then rename) and
    check the tree, or the error and that nothing was published, and that nothing outside changed."""
    with tempfile.TemporaryDirectory(prefix="imagevol-vec-") as base:
        # A decoy tree next to the root: a write outside the root would show here.
        os.makedirs(os.path.join(base, "etc"))
        with open(os.path.join(base, "etc", "passwd"), "w") as f:
            f.write("host\n")
        os.makedirs(os.path.join(base, "tmp"))
        publish = os.path.join(base, "root")
        os.makedirs(publish)
        root = os.path.join(publish, "vol")
        staging = os.path.join(publish, ".vol.staging")
        before = _snapshot_outside(base, publish)
        blobs = [io.BytesIO(build_layer([TarEntry.from_vector(e) for e in layer])) for layer in vector["layers"]]
        error = ""

        def build(root_fd: int) -> None:
            state = BuildState()
            for blob in blobs:
                apply_layer_fd(root_fd, blob, state=state)
            state.finish(root_fd)

        try:
            publish_tree(root, staging, build, read_only=False)
        except LayerError as exc:
            error = exc.kind
            message = str(exc)
        after = _snapshot_outside(base, publish)
        if before != after:
            changed = sorted(set(before.items()) ^ set(after.items()))
            return Outcome(vector["id"], False, f"wrote outside the root: {changed[:3]}")
        left = sorted(os.listdir(publish))
        if left != (["vol"] if not error else []):
            return Outcome(vector["id"], False, f"published {left} after {'error ' + error if error else 'success'}")
        expect = vector["expect"]
        if "error" in expect:
            if error == expect["error"]:
                return Outcome(vector["id"], True)
            got = f"error {error} ({message})" if error else "success"
            return Outcome(vector["id"], False, f"expected error {expect['error']}, got {got}")
        if error:
            return Outcome(vector["id"], False, f"unexpected error {error}: {message}")
        diff = _compare_tree(list_tree(root), expect["tree"])
        return Outcome(vector["id"], not diff, diff)


def expected_subpath(vector: Mapping[str, Any], profile: str) -> str:
    """The outcome a sub-path vector expects under ``profile`` (its per-profile override, else the common one)."""
    if profile == "crio":
        return str(vector.get("alt", {}).get("in_root", vector["expect"]))
    return str(vector["expect"])


def run_subpath_vector(vector: Mapping[str, Any], profile: str, backend: sp.Backend) -> Outcome:
    """Resolve one sub-path vector with ``backend`` under ``profile``."""
    policy = sp.Policy.IN_ROOT if profile == "crio" else sp.Policy.BENEATH
    want = expected_subpath(vector, profile)
    with tempfile.TemporaryDirectory(prefix="imagevol-vec-") as base:
        root = os.path.join(base, "vol")
        os.makedirs(root)
        build_tree(root, vector["tree"])
        root_fd = sp.open_root(root)
        try:
            resolved = sp.resolve(root_fd, vector["subpath"], policy, backend)
        except SubPathError as exc:
            got = f"error:{exc.kind}"
        else:
            try:
                # The path is read back from the handle itself (and checked to lie below the
                # root), so an "ok" can never describe a handle that points elsewhere.
                got = f"ok:{resolved.relative_path(root_fd)}"
            except SubPathError as exc:
                got = f"error:{exc.kind} (handle outside the root)"
            finally:
                resolved.close()
        finally:
            os.close(root_fd)
    if got == want:
        return Outcome(vector["id"], True)
    return Outcome(vector["id"], False, f"[{backend.value}] expected {want}, got {got}")


def _report(outcomes: Sequence[Outcome], write: Callable[[str], object]) -> int:
    failed = [o for o in outcomes if not o.ok]
    for o in failed:
        write(f"FAIL {o.id}: {o.detail}")
    write(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def packaged(kind: str) -> str:
    """The path of the project's own vector file ``kind`` (``layers`` or ``subpath``), shipped
    with the package (``imagevol/testing/data/``)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", f"{kind}.json")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the vectors of a file (the packaged ones by default); 0 when every one passed."""
    parser = argparse.ArgumentParser(prog="python -m imagevol.testing.vectors", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    p_layers = sub.add_parser("layers", help="apply layer vectors")
    p_layers.add_argument("file", nargs="?", help="a vector file (default: the packaged layers.json)")
    p_sub = sub.add_parser("subpath", help="resolve sub-path vectors")
    p_sub.add_argument("file", nargs="?", help="a vector file (default: the packaged subpath.json)")
    p_sub.add_argument("--profile", choices=("containerd", "crio"), default="containerd", help="runtime profile")
    p_sub.add_argument(
        "--backend", choices=("all", "kernel", "userspace"), default="all", help="sub-path resolver backend"
    )
    args = parser.parse_args(argv)
    with open(args.file or packaged(args.kind)) as f:
        vectors = json.load(f)
    outcomes: list[Outcome] = []
    if args.kind == "layers":
        outcomes = [run_layer_vector(v) for v in vectors]
    else:
        backends = [sp.Backend.KERNEL, sp.Backend.USERSPACE] if args.backend == "all" else [sp.Backend(args.backend)]
        for v in vectors:
            results = [run_subpath_vector(v, args.profile, b) for b in backends]
            bad = [r for r in results if not r.ok]
            outcomes.append(bad[0] if bad else results[0])
    return _report(outcomes, print)


if __name__ == "__main__":
    sys.exit(main())
