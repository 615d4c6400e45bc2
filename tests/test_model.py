"""The reference model agrees with the vectors, and the real applier and resolver agree with the
model on generated inputs."""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagevol.errors import LayerError, SubPathError
from imagevol.testing.model import ModelError, apply_layers_model, listing, resolve_model, tree_from_entries
from imagevol.testing.strategies import layer_stacks, pods, references, sub_paths, trees
from imagevol.testing.tarbuild import TarEntry, build_layer
from imagevol.testing.vectors import build_tree
from imagevol.trees import subpath as sp
from imagevol.trees.layers import ApplyOptions, apply_layers
from tests.helpers.listing import real_listing
from tests.helpers.paths import VECTORS


def _load(name: str) -> list[dict[str, Any]]:
    with open(os.path.join(VECTORS, name)) as f:
        data: list[dict[str, Any]] = json.load(f)
        return data


@pytest.mark.parametrize("vector", _load("layers.json"), ids=lambda v: v["id"])
def test_model_passes_layer_vectors(vector: dict[str, Any]) -> None:
    layers = [[TarEntry.from_vector(e) for e in layer] for layer in vector["layers"]]
    try:
        tree = apply_layers_model(layers)
    except ModelError as exc:
        assert vector["expect"].get("error") == exc.kind
        return
    assert "error" not in vector["expect"], vector["expect"]
    got = listing(tree)
    want = vector["expect"]["tree"]
    assert sorted(got) == sorted(w["path"] for w in want)
    for w in want:
        kind, mode, payload, _ = got[w["path"]]
        assert kind == w["type"]
        if "data" in w:
            assert payload == w["data"].encode()
        if "target" in w:
            assert payload == w["target"]
        if "mode" in w:
            assert mode == int(w["mode"], 8)


@pytest.mark.parametrize("vector", _load("subpath.json"), ids=lambda v: v["id"])
@pytest.mark.parametrize("policy", ["beneath", "in_root"])
def test_model_passes_subpath_vectors(vector: dict[str, Any], policy: str) -> None:
    tree = tree_from_entries([(e["path"], e["type"], e.get("target", e.get("data", ""))) for e in vector["tree"]])
    want = vector["expect"] if policy == "beneath" else vector.get("alt", {}).get("in_root", vector["expect"])
    try:
        got = "ok:" + resolve_model(tree, vector["subpath"], policy)
    except ModelError as exc:
        got = "error:" + exc.kind
    assert got == want


@settings(max_examples=150)
@given(layer_stacks())
def test_real_applier_agrees_with_the_model(stack: list[list[TarEntry]]) -> None:
    try:
        expected: dict[str, tuple[object, ...]] | str = listing(apply_layers_model(stack))
    except ModelError as exc:
        expected = exc.kind
    with tempfile.TemporaryDirectory() as base:
        root = os.path.join(base, "root")
        os.mkdir(root)
        blobs = [io.BytesIO(build_layer(layer)) for layer in stack]
        try:
            apply_layers(root, blobs, ApplyOptions(preserve_owner=False))
            got: dict[str, tuple[object, ...]] | str = real_listing(root)
        except LayerError as exc:
            got = exc.kind
        assert os.listdir(base) == ["root"]  # nothing beside the root
    assert got == expected


@settings(max_examples=200)
@given(trees(), sub_paths(), st.sampled_from(["beneath", "in_root"]))
def test_real_resolver_agrees_with_the_model(entries: list[tuple[str, str, str]], sub: str, policy: str) -> None:
    try:
        expected = "ok:" + resolve_model(tree_from_entries(entries), sub, policy)
    except ModelError as exc:
        expected = "error:" + exc.kind
    pol = sp.Policy.BENEATH if policy == "beneath" else sp.Policy.IN_ROOT
    with tempfile.TemporaryDirectory() as base:
        root = os.path.join(base, "vol")
        os.mkdir(root)
        build_tree(root, [{"path": p, "type": t, "target": x, "data": x} for p, t, x in entries])
        root_fd = sp.open_root(root)
        try:
            for backend in (sp.Backend.KERNEL, sp.Backend.USERSPACE):
                try:
                    resolved = sp.resolve(root_fd, sub, pol, backend)
                    got = "ok:" + resolved.relative_path(root_fd)
                    resolved.close()
                except SubPathError as exc:
                    got = "error:" + exc.kind
                assert got == expected, backend
        finally:
            os.close(root_fd)


@given(references())
def test_generated_references_parse(ref: str) -> None:
    from imagevol.oci.reference import parse_normalized

    parsed = parse_normalized(ref)
    assert parsed.path


@settings(max_examples=50)
@given(pods())
def test_generated_pods_are_admitted(doc: dict[str, Any]) -> None:
    from imagevol.api import FeatureGates, admit, pod_from_dict

    pod = admit(pod_from_dict(doc), FeatureGates.for_version("1.33", "ImageVolume=true"))
    assert all(v.image is not None and v.image.pull_policy for v in pod.spec.volumes)
