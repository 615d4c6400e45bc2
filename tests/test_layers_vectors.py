"""The layer vector runner the project ships: every shipped vector passes, failures are reported one
line each, and the last line is ``N passed, M failed`` (exit 1 on any failure)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from imagevol.testing.vectors import main
from tests.helpers.paths import VECTORS


def test_shipped_layer_vectors_pass(capsys: object) -> None:
    code = main(["layers", os.path.join(VECTORS, "layers.json")])
    out = capsys.readouterr().out.splitlines()  # type: ignore[attr-defined]
    assert code == 0, out
    assert out[-1] == "61 passed, 0 failed"


def test_failures_are_reported_and_counted(tmp_path: object) -> None:
    vectors = [
        {"id": "good", "layers": [[{"name": "a", "type": "file", "data": "1"}]],
         "expect": {"tree": [{"path": "a", "type": "file", "data": "1"}]}},
        {"id": "wrong-tree", "layers": [[{"name": "a", "type": "file", "data": "1"}]],
         "expect": {"tree": [{"path": "a", "type": "file", "data": "2"}]}},
        {"id": "wrong-error", "layers": [[{"name": "../a", "type": "file"}]], "expect": {"error": "notdir"}},
        {"id": "unexpected-success", "layers": [[{"name": "a", "type": "file"}]], "expect": {"error": "loop"}},
    ]  # fmt: skip
    path = os.path.join(str(tmp_path), "v.json")
    with open(path, "w") as f:
        json.dump(vectors, f)
    proc = subprocess.run(
        [sys.executable, "-m", "imagevol.testing.vectors", "layers", path], capture_output=True, text=True, check=False
    )
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1
    assert lines[-1] == "1 passed, 3 failed"
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "FAIL wrong-tree",
        "FAIL wrong-error",
        "FAIL unexpected-success",
    ]
