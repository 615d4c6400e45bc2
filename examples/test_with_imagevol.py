"""How a user's own test suite can use imagevol.testing (run: pytest examples/test_with_imagevol.py)."""

from __future__ import annotations

import io
import os
import stat
import tempfile

from hypothesis import given, settings

from imagevol import FeatureGates, admit
from imagevol.api import pod_from_dict
from imagevol.errors import LayerError
from imagevol.trees.layers import ApplyOptions, apply_layers
from imagevol.testing.model import ModelError, apply_layers_model, listing
from imagevol.testing.strategies import layer_stacks, pods
from imagevol.testing.tarbuild import build_layer


def _types(root: str) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            mode = os.lstat(full).st_mode
            kind = "dir" if stat.S_ISDIR(mode) else "symlink" if stat.S_ISLNK(mode) else "file" if stat.S_ISREG(mode) else "fifo"
            out[os.path.relpath(full, root)] = kind
    return out


@settings(max_examples=50, deadline=None)
@given(layer_stacks())
def test_unpacker_agrees_with_the_model_on_types(stack):  # type: ignore[no-untyped-def]
    try:
        expected = {path: entry[0] for path, entry in listing(apply_layers_model(stack)).items()}
    except ModelError as exc:
        expected = exc.kind  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as root:
        try:
            apply_layers(root, [io.BytesIO(build_layer(layer)) for layer in stack], ApplyOptions(preserve_owner=False))
            got: object = _types(root)
        except LayerError as exc:
            got = exc.kind
    assert got == expected


@settings(max_examples=25, deadline=None)
@given(pods())
def test_generated_pods_get_pull_policies(doc):  # type: ignore[no-untyped-def]
    pod = admit(pod_from_dict(doc), FeatureGates.for_version("1.33", "ImageVolume=true"))
    assert all(v.image is not None and v.image.pull_policy in ("Always", "IfNotPresent", "Never") for v in pod.spec.volumes)
