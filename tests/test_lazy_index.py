"""The merged index and resolution on it hold against the real thing: for generated layer stacks
(whiteouts, opaque directories, hardlinks across the sub path's boundary, symlinked parents,
escaping links, type changes) and for every sub-path vector, under both policies, the index
refuses a stack exactly when a full pull does (same kind), resolves every sub path to the same
entry or the same error kind as the fd-based resolver on the applied tree, and the closure,
written out on its own, shows a container exactly the subtree of the full tree (types, modes,
link targets, contents, hardlink groups); the fd-based resolver then takes the same path through
the partial tree."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagevol import lazy
from imagevol.errors import LayerError, SubPathError
from imagevol.testing import strategies
from imagevol.testing.strategies import LayerStack, hostile_layer_stacks
from imagevol.testing.tarbuild import TarEntry, build_layer
from imagevol.trees import subpath as sp
from tests.helpers.layerkit import D, F, H, S, W
from tests.helpers.lazy import (
    fd_resolve,
    full_pull,
    index_resolve,
    materialise,
    plain_entries,
    subtree,
    vector_entries,
)
from tests.helpers.paths import VECTORS

with open(os.path.join(VECTORS, "subpath.json")) as _f:
    SUBPATH: list[dict[str, Any]] = json.load(_f)

POLICIES = ("beneath", "in_root")
_COMPONENTS = ["a", "b", "c", "d", "e", "x", "y", "z", ".", ""]
sub_path_st = st.lists(st.sampled_from(_COMPONENTS), min_size=1, max_size=4).map("/".join)


def check_stack(layers: Sequence[Sequence[TarEntry]], sub_paths: Sequence[str]) -> list[tuple[str, str, str]]:
    """Compare the index with a full pull for ``layers`` and every sub path, both policies; return
    (sub path, policy, outcome) for the record."""
    tars = [build_layer(layer) for layer in layers]
    seen = []
    with tempfile.TemporaryDirectory(prefix="imagevol-lazy-") as tmp:
        full = os.path.join(tmp, "full")
        full_error = full_pull(full, tars)
        try:
            index = lazy.build_index([plain_entries(t) for t in tars])
            lazy_error = ""
        except LayerError as exc:
            lazy_error = exc.kind
        assert lazy_error == full_error, (full_error, lazy_error)
        if full_error:
            return [("", "", "layer:" + full_error)]
        written: set[tuple[str, tuple[str, ...]]] = set()
        for sub_path in sub_paths:
            for policy in POLICIES:
                want = fd_resolve(full, sub_path, policy)
                got = index_resolve(index, sub_path, policy)
                assert got == want, (sub_path, policy)
                seen.append((sub_path, policy, ":".join(want)))
                if want[0] != "ok":
                    continue
                resolution = lazy.resolve(index, sub_path, policy)
                key = (resolution.path, resolution.visited)
                if key in written:
                    continue
                written.add(key)
                part = os.path.join(tmp, f"part{len(written)}")
                clos = lazy.closure(index, resolution)
                materialise(clos, part, _content(layers))
                assert subtree(part, resolution.path) == subtree(full, resolution.path), (sub_path, policy)
                # The second gate: the fd-based resolver takes the same path on the partial tree.
                assert fd_resolve(part, sub_path, policy) == want
    return seen


def _content(layers: Sequence[Sequence[TarEntry]]) -> Any:
    def content(node: lazy.Node) -> bytes:
        assert node.source is not None
        return layers[node.source.layer][node.source.entry].data

    return content


# --- properties ---------------------------------------------------------------------------------------

_SLOW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SLOW
@given(strategies.layer_stacks(max_layers=3, max_entries=8), st.lists(sub_path_st, min_size=1, max_size=6))
def test_index_is_the_full_pull_for_generated_stacks(layers: list[list[TarEntry]], sub_paths: list[str]) -> None:
    check_stack(layers, [*sub_paths, ".", "a", "a/x", "c/d"])


@_SLOW
@given(hostile_layer_stacks(max_layers=3, max_entries=8), st.lists(sub_path_st, min_size=1, max_size=6))
def test_index_is_the_full_pull_for_hostile_stacks(stack: LayerStack, sub_paths: list[str]) -> None:
    """Owners, modes (0000, set-id, sticky), times and hardlink chains of the layer tests' own
    strategies."""
    check_stack(stack.layers, [*sub_paths, ".", "a", "a/b", "b/c"])


@pytest.mark.parametrize("vector", SUBPATH, ids=[v["id"] for v in SUBPATH])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(upper=st.lists(st.lists(strategies.tar_entries(), max_size=5), max_size=2), extra=sub_path_st)
def test_index_is_the_full_pull_for_every_vector(
    vector: dict[str, Any], upper: list[list[TarEntry]], extra: str
) -> None:
    """Each vector's tree as the bottom layer, generated layers above it, the vector's sub path."""
    check_stack([vector_entries(vector["tree"]), *upper], [vector["subpath"], extra])


# --- the vectors themselves ---------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["containerd", "crio"])
@pytest.mark.parametrize("vector", SUBPATH, ids=[v["id"] for v in SUBPATH])
def test_vectors_resolve_on_the_index(vector: dict[str, Any], profile: str) -> None:
    policy = "in_root" if profile == "crio" else "beneath"
    want = str(vector.get("alt", {}).get("in_root", vector["expect"])) if profile == "crio" else vector["expect"]
    index = lazy.build_index([plain_entries(build_layer(vector_entries(vector["tree"])))])
    kind, result = index_resolve(index, vector["subpath"], policy)
    assert f"{kind}:{result}" == want


def test_errors_are_worded_as_the_fd_resolver_words_them() -> None:
    index = lazy.build_index([plain_entries(build_layer([D("a"), S("a/l", "/etc")]))])
    for sub_path in ("a/l", "missing", "/abs", "a/../a"):
        with pytest.raises(SubPathError) as lazy_err:
            lazy.resolve(index, sub_path, "beneath")
        with tempfile.TemporaryDirectory() as tmp:
            root = os.path.join(tmp, "r")
            full_pull(root, [build_layer([D("a"), S("a/l", "/etc")])])
            fd = sp.open_root(root)
            try:
                with pytest.raises(SubPathError) as fd_err:
                    sp.resolve(fd, sub_path, sp.Policy.BENEATH)
            finally:
                os.close(fd)
        assert (str(lazy_err.value), lazy_err.value.errno_name) == (str(fd_err.value), fd_err.value.errno_name)


# --- semantics, one case each -------------------------------------------------------------------------


def _index(*layers: Sequence[TarEntry]) -> lazy.MergedIndex:
    return lazy.build_index([plain_entries(build_layer(layer)) for layer in layers])


def _paths(index: lazy.MergedIndex, under: str = ".") -> list[str]:
    return [n.path for n in index.walk(under) if n.path != under]


def test_whiteouts_and_opaque_markers_act_on_lower_layers_only() -> None:
    index = _index(
        [D("d"), F("d/old", "1"), F("d/keep", "2"), D("o"), F("o/lower", "3")],
        [W("d/.wh.old"), F("d/new", "4"), W("d/.wh.new"), F("o/upper", "5"), W("o/.wh..wh..opq")],
    )
    assert _paths(index) == ["d", "d/keep", "d/new", "o", "o/upper"]


def test_an_ancestor_replaced_by_a_file_hides_the_subtree_and_refuses_the_sub_path() -> None:
    index = _index([D("data"), D("data/models"), F("data/models/w", "weights")], [F("data", "now a file")])
    assert index.get("data/models") is None
    with pytest.raises(SubPathError) as err:
        lazy.resolve(index, "data/models")
    assert err.value.kind == "notdir"


def test_an_upper_whiteout_of_an_ancestor_removes_the_sub_path() -> None:
    index = _index([D("data"), D("data/models"), F("data/models/w", "weights")], [W(".wh.data")])
    with pytest.raises(SubPathError) as err:
        lazy.resolve(index, "data/models")
    assert err.value.kind == "notfound"


def test_entries_are_written_through_symlinked_parents_in_root() -> None:
    """A lower layer makes `l -> /data`; an upper entry `l/f` lands in `data/f`, and `esc -> ../..`
    keeps `esc/g` inside the root (`g`)."""
    index = _index([D("data"), S("l", "/data"), S("esc", "../..")], [F("l/f", "x"), F("esc/g", "y")])
    assert _paths(index) == ["data", "data/f", "esc", "g", "l"]


def test_implicit_parents_are_0755_and_devices_are_skipped_without_side_effects() -> None:
    index = _index([F("a/b/c", "x", mode=0o4755), TarEntry("dev/null", "chardev", devmajor=1, devminor=3)])
    a = index.get("a")
    assert a is not None and a.implicit and a.mode == 0o755
    c = index.get("a/b/c")
    assert c is not None and c.mode == 0o755  # set-uid stripped
    assert index.get("dev") is None and index.skipped_devices == ["dev/null"]


def test_hardlink_across_the_sub_path_boundary_brings_its_content_from_outside() -> None:
    index = _index([D("src"), F("src/blob", "payload"), D("vol")], [H("vol/link", "src/blob")])
    res = lazy.resolve(index, "vol")
    clos = lazy.closure(index, res)
    assert [n.path for n in clos.nodes] == [".", "vol", "vol/link"]
    (payload,) = clos.payloads
    assert payload.path == "vol/link" and payload.source == lazy.Source(0, 1)


def test_closure_of_a_symlinked_sub_path_keeps_the_links_met_on_the_way() -> None:
    index = _index([D("a"), D("a/b"), F("a/b/f", "x"), S("l", "a/b"), D("other"), F("other/big", "x")])
    res = lazy.resolve(index, "l")
    assert (res.path, res.visited) == ("a/b", (".", "l", "a", "a/b"))
    assert [n.path for n in lazy.closure(index, res).nodes] == [".", "a", "a/b", "a/b/f", "l"]


@pytest.mark.parametrize(
    ("layers", "kind"),
    [
        ([[F("f", "x")], [F("f/g", "y")]], "notdir"),
        ([[S("l", "l")], [F("l/x", "y")]], "loop"),
        ([[D("d")], [H("h", "d")]], "invalid_link"),
        ([[H("h", "missing")]], "notfound"),
        ([[H("h", "../etc/passwd")]], "invalid_link"),
        ([[F("../x", "y")]], "invalid_name"),
        ([[F(".wh.d/f", "y")]], "invalid_name"),
        ([[W("a/.wh..")]], "invalid_whiteout"),
        ([[S("l", "")]], "invalid_link"),
        ([[F("./", "x")]], "invalid_name"),
    ],
)
def test_refused_stacks_are_refused_with_the_appliers_kind(layers: list[list[TarEntry]], kind: str) -> None:
    with pytest.raises(LayerError) as err:
        _index(*layers)
    assert err.value.kind == kind
    assert check_stack(layers, ["."]) == [("", "", f"layer:{kind}")]


def test_limits_bound_entries_and_depth() -> None:
    entries = plain_entries(build_layer([F(f"f{i}", "x") for i in range(5)]))
    with pytest.raises(LayerError) as err:
        lazy.build_index([entries], lazy.IndexLimits(max_entries=4))
    assert err.value.kind == "too_large"
    deep = plain_entries(build_layer([F("/".join(["d"] * 6), "x")]))
    with pytest.raises(LayerError) as err:
        lazy.build_index([deep], lazy.IndexLimits(max_depth=5))
    assert err.value.kind == "toolong"
    # Through a symlink the real path can get deeper than the name: still bounded.
    linked = plain_entries(build_layer([S("l", "d/d/d"), F("l/d/d/f", "x")]))
    lazy.build_index([linked], lazy.IndexLimits(max_depth=5))  # five directories deep: allowed
    linked = plain_entries(build_layer([S("l", "d/d/d"), F("l/d/d/d/f", "x")]))
    with pytest.raises(LayerError) as err:
        lazy.build_index([linked], lazy.IndexLimits(max_depth=5))
    assert err.value.kind == "toolong"


def test_protected_symlinks_and_search_permission_follow_the_follower() -> None:
    index = _index([D("tmp", mode=0o1777), S("tmp/l", "/x", uid=1000), D("x"), D("closed", mode=0o600), D("closed/in")])
    root = lazy.Follower()
    assert lazy.resolve(index, "tmp/l", "in_root", follower=root).path == "x"
    guarded = lazy.Follower(protected_symlinks=True)
    with pytest.raises(SubPathError) as err:
        lazy.resolve(index, "tmp/l", "in_root", follower=guarded)
    assert err.value.kind == "denied"
    # Not trailing: the rule does not apply.
    assert lazy.resolve(index, "tmp/l/.", "in_root", follower=guarded).path == "x"
    owner = lazy.Follower(uid=1000, owns_everything=True)
    with pytest.raises(SubPathError) as err:
        lazy.resolve(index, "closed/in", follower=owner)
    assert err.value.kind == "denied"
    assert lazy.resolve(index, "closed/in", follower=root).path == "closed/in"
