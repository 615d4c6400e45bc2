from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))

from imagevol.testing.images import build_fixtures

settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "default")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VECTORS = os.path.join(REPO, "tests", "vectors")
EXAMPLES = os.path.join(REPO, "examples")


@pytest.fixture(scope="session")
def fixtures_layout(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The project's fixtures (v2, layers, multi, artifacts, kitten) as one OCI layout."""
    path = str(tmp_path_factory.mktemp("fixtures") / "layout")
    build_fixtures(path)
    return path


@pytest.fixture
def node_root(tmp_path: pytest.TempPathFactory) -> Iterator[str]:
    root = os.path.join(str(tmp_path), "node")
    yield root


class FakeClock:
    """An injectable clock for backoff and event timestamps."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def layout_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A directory holding ``layout``: the sub-path test images (tests/subpath_support.py)."""
    from subpath_support import build_layout

    d = str(tmp_path_factory.mktemp("layouts"))
    build_layout(os.path.join(d, "layout"))
    return d
