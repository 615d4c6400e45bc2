"""A real node (content store, snapshots, runtime) fed from the project's OCI fixtures through an
``oci-layout:`` mirror, and shorthands for Pods that mount those fixtures (built with the public
Pod builder, :mod:`imagevol.testing.pods`)."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from typing import Any

from imagevol.api.models import Pod
from imagevol.node import Node, NodeConfig
from imagevol.testing.images import LayoutBuilder, build_debian_standin, host_busybox
from imagevol.testing.pods import container, image_volume, pod_doc, to_pod

from .clock import FakeClock

#: The repository the fixtures are mirrored under.
PREFIX = "fixtures.example/lab"
#: Where the registry of the container images is said to be: a closed loopback port, so that an
#: image the mirror lacks fails at once and no test ever reaches docker.io.
CLOSED = "127.0.0.1:9"


_standin: list[str] = []


def layout_digest(layout: str, tag: str) -> str:
    """The digest ``index.json`` of the OCI layout ``layout`` gives for the ref name ``tag``."""
    with open(os.path.join(layout, "index.json")) as f:
        return str(
            next(
                e["digest"]
                for e in json.load(f)["manifests"]
                if e["annotations"]["org.opencontainers.image.ref.name"] == tag
            )
        )


def standin_layout() -> str:
    """An OCI layout holding only the BusyBox stand-in as ``debian:latest`` and ``busybox:latest``
    (built once per test process, removed at exit)."""
    if not _standin:
        path = os.path.join(tempfile.mkdtemp(prefix="imagevol-standin-"), "layout")
        atexit.register(shutil.rmtree, os.path.dirname(path), True)
        b = LayoutBuilder(path)
        build_debian_standin(b, host_busybox() or b"", "debian:latest", "busybox:latest")
        b.save()
        _standin.append(path)
    return _standin[0]


def container_image_registries(layout: str | None = None) -> str:
    """registries.conf entries serving ``docker.io/library`` (the Pod builder's default container
    image ``debian`` is ``docker.io/library/debian:latest``, the test helpers' ``busybox``
    ``docker.io/library/busybox:latest``) from the OCI layout ``layout`` (which must hold them, as
    the project fixtures do), else from :func:`standin_layout`."""
    return (
        f'[[registry]]\nprefix = "docker.io/library"\nlocation = "{CLOSED}/library"\n'
        f'[[registry.mirror]]\nlocation = "oci-layout:{layout or standin_layout()}"\n'
    )


def make_node(root: str, layout: str, clock: FakeClock, **config: Any) -> Node:
    """A node at ``root`` pulling ``PREFIX`` from the OCI layout ``layout``, and the Pods'
    container images from :func:`standin_layout`."""
    conf = os.path.join(root + ".registries.conf")
    os.makedirs(os.path.dirname(conf), exist_ok=True)
    with open(conf, "w") as f:
        f.write(f'[[registry]]\nprefix = "{PREFIX}"\nlocation = "{PREFIX}"\n')
        f.write(f'[[registry.mirror]]\nlocation = "oci-layout:{layout}"\n')
        f.write(container_image_registries())
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
