"""Fixtures shared by the whole suite and the Hypothesis profiles (``ci`` under ``CI=true``).
Helpers that are not fixtures live in ``tests.helpers``."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from imagevol.testing.images import build_fixtures
from tests.helpers.subpaths import build_layout

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


@pytest.fixture(scope="module")
def layout_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A directory holding ``layout``: the sub-path test images (tests/helpers/subpaths.py)."""
    d = str(tmp_path_factory.mktemp("layouts"))
    build_layout(os.path.join(d, "layout"))
    return d
