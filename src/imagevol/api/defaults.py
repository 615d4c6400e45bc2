"""API-server defaulting and field dropping for Pods (R2.1, R2.1a, R2.8)."""

from __future__ import annotations

import uuid

import attrs

from ..errors import InvalidReferenceError
from ..oci.reference import DEFAULT_TAG, parse_image_name
from .features import FeatureGates
from .models import Container, Pod, PodSpec, Volume


def default_pull_policy(reference: str) -> str:
    """R2.1/R2.1a: ``Always`` when the parsed tag is ``latest`` (also when no tag and no digest are
    given, and when ``:latest`` comes with a digest); else ``IfNotPresent``. A reference that does
    not parse gets ``IfNotPresent``: upstream ignores the parse error here."""
    try:
        _, tag, _ = parse_image_name(reference)
    except InvalidReferenceError:
        return "IfNotPresent"
    return "Always" if tag == DEFAULT_TAG else "IfNotPresent"


def _default_volume(volume: Volume, gates: FeatureGates) -> Volume:
    if volume.image is None or volume.image.pull_policy or not gates.enabled("ImageVolume"):
        return volume
    policy = default_pull_policy(volume.image.reference)
    return attrs.evolve(volume, image=attrs.evolve(volume.image, pull_policy=policy))


def _default_container(container: Container) -> Container:
    if container.image_pull_policy or not container.image:
        return container
    return attrs.evolve(container, image_pull_policy=default_pull_policy(container.image))


def drop_disabled_fields(pod: Pod, gates: FeatureGates, old: Pod | None = None) -> Pod:
    """R2.8: with the API server's ``ImageVolume`` gate off, silently drop image volumes and every
    mount that names one, unless the old object already used image volumes."""
    if gates.enabled("ImageVolume"):
        return pod
    if old is not None and any(v.image is not None for v in old.spec.volumes):
        return pod
    dropped = {v.name for v in pod.spec.volumes if v.image is not None}
    if not dropped:
        return pod

    def strip(containers: tuple[Container, ...]) -> tuple[Container, ...]:
        return tuple(
            attrs.evolve(c, volume_mounts=tuple(m for m in c.volume_mounts if m.name not in dropped))
            for c in containers
        )

    spec = pod.spec
    return attrs.evolve(
        pod,
        spec=attrs.evolve(
            spec,
            volumes=tuple(v for v in spec.volumes if v.image is None),
            containers=strip(spec.containers),
            init_containers=strip(spec.init_containers),
            ephemeral_containers=strip(spec.ephemeral_containers),
        ),
    )


def default_pod(pod: Pod, gates: FeatureGates) -> Pod:
    """Apply defaulting as the API server does on create: namespace, uid, pull policies."""
    meta = pod.metadata
    if not meta.namespace:
        meta = attrs.evolve(meta, namespace="default")
    if not meta.uid:
        meta = attrs.evolve(meta, uid=str(uuid.uuid4()))
    spec: PodSpec = pod.spec
    spec = attrs.evolve(
        spec,
        volumes=tuple(_default_volume(v, gates) for v in spec.volumes),
        containers=tuple(_default_container(c) for c in spec.containers),
        init_containers=tuple(_default_container(c) for c in spec.init_containers),
        restart_policy=spec.restart_policy or "Always",
    )
    return attrs.evolve(pod, metadata=meta, spec=spec)
