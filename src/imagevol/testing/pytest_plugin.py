"""A pytest plugin for users' own test suites, registered with pytest by imagevol's ``pytest11``
entry point (installing imagevol is enough; ``-p no:imagevol`` turns it off)::

    from imagevol.testing.pods import container, image_volume, pod_doc, to_pod

    def test_the_blog_pod_sees_its_sub_path(demo_node):
        record = demo_node.create_pod(to_pod(pod_doc(
            "p", [container("c", ("v", "/v", "dir"))], [image_volume("v", "quay.io/crio/artifact:v2")])))
        assert record.phase == "Running"

Fixtures (each on the test's own ``tmp_path``, so tests never share a node):

``node``
    A fresh :class:`~imagevol.node.Node`, hermetic: it never reaches a registry, so a test cannot
    depend on the network or be slowed by it; it pulls from OCI layouts only (give it a
    registries.conf with ``node_factory``).
``node_factory``
    ``node_factory(**fields)`` builds another node on a fresh root from
    :class:`~imagevol.node.NodeConfig` fields; hermetic unless ``hermetic=False`` or a
    ``registry_factory`` is given (a registry on 127.0.0.1, for instance).
``demo``
    The demo directory (:func:`imagevol.testing.demo.write_demo`): the demo images as an OCI layout,
    a registries.conf mirroring them to it, the blog's Pod (``demo.pod``).
``demo_node``
    A hermetic node pulling the demo images from ``demo``: the blog's Pod runs offline.

Nothing is imported at collection time but pytest itself: the node and the demo are imported when a
fixture is used, so the plugin costs nothing to suites that do not use it, and needs no Hypothesis.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ..node import Node
    from .demo import DemoFiles


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Build nodes on fresh roots under ``tmp_path`` from :class:`~imagevol.node.NodeConfig`
    fields; hermetic unless told otherwise."""
    from ..node import Node, NodeConfig

    built: list[Node] = []
    counter = itertools.count()

    def build(**fields: Any) -> Node:
        fields.setdefault("root", str(tmp_path / f"imagevol-node-{next(counter)}"))
        fields.setdefault("hermetic", fields.get("registry_factory") is None)
        node = Node(NodeConfig(**fields))
        built.append(node)
        return node

    yield build
    for node in built:
        node.close()


@pytest.fixture
def node(node_factory: Callable[..., Node]) -> Node:
    """A fresh, hermetic node on the test's temporary directory."""
    return node_factory()


@pytest.fixture
def demo(tmp_path: Path) -> DemoFiles:
    """The demo directory: the demo images' OCI layout, their registries.conf, the blog's Pod."""
    from .demo import write_demo

    return write_demo(str(tmp_path / "imagevol-demo"))


@pytest.fixture
def demo_node(node_factory: Callable[..., Node], demo: DemoFiles) -> Node:
    """A hermetic node that pulls the demo images from the demo directory's layout."""
    return node_factory(registries=demo.registries)
