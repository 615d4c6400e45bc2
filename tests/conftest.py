"""Fixtures shared by the whole suite and the Hypothesis profiles (``ci`` under ``CI=true``).
Helpers that are not fixtures live in ``tests.helpers``."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from imagevol.testing.images import build_fixtures
from tests.helpers.fixture_node import container_image_registries
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


@pytest.fixture(scope="session", autouse=True)
def container_images_conf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A registries.conf serving only the Pods' container images (``debian``, ``busybox``: the
    BusyBox stand-in) from an OCI layout, docker.io itself on a closed loopback port: for nodes
    whose image volumes come from a registry of their own. It is also ``$IMAGEVOL_REGISTRIES`` for
    the whole session, so that a CLI run without ``--registries`` (in this process or a child)
    pulls the container image of its Pod offline and never reaches docker.io."""
    path = str(tmp_path_factory.mktemp("conf") / "registries.conf")
    with open(path, "w") as f:
        f.write(container_image_registries())
    saved = os.environ.get("IMAGEVOL_REGISTRIES")
    os.environ["IMAGEVOL_REGISTRIES"] = path
    yield path
    if saved is None:
        os.environ.pop("IMAGEVOL_REGISTRIES", None)
    else:
        os.environ["IMAGEVOL_REGISTRIES"] = saved


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
