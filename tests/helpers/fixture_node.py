"""A real node (content store, snapshots, runtime) fed from the project's OCI fixtures through an
``oci-layout:`` mirror, and shorthands for Pods that mount those fixtures (built with the public
Pod builder, :mod:`imagevol.testing.pods`)."""

from __future__ import annotations

import os
from typing import Any

from imagevol.api.models import Pod
from imagevol.node import Node, NodeConfig
from imagevol.testing.pods import container, image_volume, pod_doc, to_pod

from .clock import FakeClock

#: The repository the fixtures are mirrored under.
PREFIX = "fixtures.example/lab"


def make_node(root: str, layout: str, clock: FakeClock, **config: Any) -> Node:
    """A node at ``root`` pulling ``PREFIX`` from the OCI layout ``layout``."""
    conf = os.path.join(root + ".registries.conf")
    os.makedirs(os.path.dirname(conf), exist_ok=True)
    with open(conf, "w") as f:
        f.write(f'[[registry]]\nprefix = "{PREFIX}"\nlocation = "{PREFIX}"\n')
        f.write(f'[[registry.mirror]]\nlocation = "oci-layout:{layout}"\n')
    # Offline unless the test brings its own registry access: a tag the layout lacks fails at once.
    config.setdefault("hermetic", "registry_factory" not in config)
    return Node(NodeConfig(root=root, registries=conf, clock=clock, **config))


def pod(
    name: str,
    containers: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
    init: list[dict[str, Any]] | None = None,
) -> Pod:
    return to_pod(pod_doc(name, containers, volumes, init_containers=init or ()))


def vol(name: str, tag: str, policy: str = "IfNotPresent") -> dict[str, Any]:
    """An image volume of the fixture tagged ``tag``."""
    return image_volume(name, f"{PREFIX}:{tag}", policy)


def ctr(name: str, *mounts: tuple[str, str, str], **extra: Any) -> dict[str, Any]:
    """A container with ``(volume, mountPath, subPath)`` mounts."""
    return container(name, *mounts, **extra)
