"""Every vector of ``src/imagevol/testing/data/subpath.json`` under both profiles and both backends, through the
project's vector runner (the same code ``python -m imagevol.testing.vectors subpath`` runs)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from imagevol.testing import vectors
from imagevol.trees import subpath as sp
from tests.helpers.paths import VECTORS

with open(os.path.join(VECTORS, "subpath.json")) as _f:
    SUBPATH: list[dict[str, Any]] = json.load(_f)


@pytest.mark.parametrize("backend", [sp.Backend.KERNEL, sp.Backend.USERSPACE], ids=lambda b: b.value)
@pytest.mark.parametrize("profile", ["containerd", "crio"])
@pytest.mark.parametrize("vector", SUBPATH, ids=[v["id"] for v in SUBPATH])
def test_vector(vector: dict[str, Any], profile: str, backend: sp.Backend) -> None:
    outcome = vectors.run_subpath_vector(vector, profile, backend)
    assert outcome.ok, outcome.detail


def test_crio_expectations_fall_back_to_expect() -> None:
    with_alt = next(v for v in SUBPATH if "in_root" in v.get("alt", {}))
    without = next(v for v in SUBPATH if "alt" not in v)
    assert vectors.expected_subpath(with_alt, "crio") == with_alt["alt"]["in_root"]
    assert vectors.expected_subpath(with_alt, "containerd") == with_alt["expect"]
    assert vectors.expected_subpath(without, "crio") == without["expect"]


@pytest.mark.parametrize("profile", ["containerd", "crio"])
def test_runner_cli_passes_everything(profile: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = vectors.main(["subpath", os.path.join(VECTORS, "subpath.json"), "--profile", profile])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.strip().endswith(f"{len(SUBPATH)} passed, 0 failed")


def test_runner_reports_a_wrong_expectation(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    bad = [dict(SUBPATH[0], expect="ok:etc")]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    assert vectors.main(["subpath", str(path)]) == 1
    assert "FAIL sp-invalid-absolute" in capsys.readouterr().out
