"""What the API server does to a Pod on create: name generation, defaulting, field dropping, the
mutating admission plugins imagevol models (``AlwaysPullImages``), and validation."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from .defaults import default_pod, drop_disabled_fields
from .features import FeatureGates
from .models import Container, Pod
from .validation import generate_name, validate_pod

ADMISSION_PLUGINS = ("AlwaysPullImages",)


def admit(pod: Pod, gates: FeatureGates, old: Pod | None = None, admission_plugins: Sequence[str] = ()) -> Pod:
    """What the API server does to a Pod on create: generate a name from ``generateName``, default
    (decode time), drop disabled fields (R2.8), run the enabled mutating admission plugins,
    validate. Returns the stored object or raises ``ValidationError``."""
    unknown = sorted(set(admission_plugins) - set(ADMISSION_PLUGINS))
    if unknown:
        raise ValueError(f"unknown admission plugin(s): {', '.join(unknown)} (known: {', '.join(ADMISSION_PLUGINS)})")
    if not pod.metadata.name and pod.metadata.generate_name:
        # rest.BeforeCreate: the name is generated before validation, which then checks it.
        pod = attrs.evolve(pod, metadata=attrs.evolve(pod.metadata, name=generate_name(pod.metadata.generate_name)))
    pod = default_pod(pod, gates)
    pod = drop_disabled_fields(pod, gates, old)
    if "AlwaysPullImages" in admission_plugins:
        pod = always_pull_images(pod)
    validate_pod(pod, gates)
    return pod


def always_pull_images(pod: Pod) -> Pod:
    """The AlwaysPullImages admission plugin: every container and, since image volumes, every
    image volume gets ``pullPolicy: Always`` (R3.12), so no Pod uses an image its credentials were
    not checked for."""

    def containers(cs: tuple[Container, ...]) -> tuple[Container, ...]:
        return tuple(attrs.evolve(c, image_pull_policy="Always") for c in cs)

    volumes = tuple(
        attrs.evolve(v, image=attrs.evolve(v.image, pull_policy="Always")) if v.image is not None else v
        for v in pod.spec.volumes
    )
    spec = attrs.evolve(
        pod.spec,
        containers=containers(pod.spec.containers),
        init_containers=containers(pod.spec.init_containers),
        ephemeral_containers=containers(pod.spec.ephemeral_containers),
        volumes=volumes,
    )
    return attrs.evolve(pod, spec=spec)
