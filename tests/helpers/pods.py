"""Pod shorthands over the public Pod builder (:mod:`imagevol.testing.pods`)."""

from __future__ import annotations

from typing import Any

from imagevol.api.models import Pod
from imagevol.testing.pods import container, image_volume, pod_doc, to_pod


def make_pod(name: str, volumes: list[tuple[str, str, str]], mounts: list[tuple[str, str, str]], **spec: Any) -> Pod:
    """A Pod of one ``busybox`` container ``c``: ``volumes`` as ``(name, reference, pullPolicy)``,
    ``mounts`` as ``(volume, mountPath, subPath)``, and any other ``spec`` key."""
    return to_pod(
        pod_doc(
            name,
            [container("c", *mounts, image="busybox")],
            [image_volume(n, ref, policy) for n, ref, policy in volumes],
            **spec,
        )
    )
