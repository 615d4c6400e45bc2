"""The slice of the Kubernetes core/v1 API that image volumes touch, as frozen values.

Field names follow the Go structs in snake case. Only what the kubelet path reads is modelled;
other volume sources are kept by name (``Volume.other_sources``) so that validation and the
container view can still see them.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from . import constants

PULL_POLICIES = constants.PULL_POLICIES

MOUNT_PROPAGATIONS = ("Bidirectional", "HostToContainer", "None")
RECURSIVE_READ_ONLY = ("Disabled", "Enabled", "IfPossible")


@attrs.frozen
class ObjectMeta:
    """``metadata``: the names, labels and annotations of an object."""

    name: str = ""
    namespace: str = ""
    uid: str = ""
    generate_name: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict)
    annotations: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class ImageVolumeSource:
    """``spec.volumes[].image`` (R1.1)."""

    reference: str = ""
    pull_policy: str = ""


@attrs.frozen
class Volume:
    """``spec.volumes[]``: an image volume, or another source kept by name only."""

    name: str
    image: ImageVolumeSource | None = None
    #: Names of other volume sources set on this entry (``emptyDir``, ``configMap``, ...).
    other_sources: tuple[str, ...] = ()


@attrs.frozen
class VolumeMount:
    """``volumeMounts[]``: where a container mounts a volume, and which sub path of it."""

    name: str
    mount_path: str
    sub_path: str = ""
    sub_path_expr: str = ""
    read_only: bool = False
    mount_propagation: str | None = None
    recursive_read_only: str | None = None


@attrs.frozen
class ObjectFieldSelector:
    """``valueFrom.fieldRef``: a field of the Pod an environment variable takes its value from."""

    field_path: str
    api_version: str = "v1"


@attrs.frozen
class EnvVar:
    """``env[]``: a container's environment variable (a value, or a field of the Pod)."""

    name: str
    value: str = ""
    field_ref: ObjectFieldSelector | None = None
    #: Other ``valueFrom`` kinds (secretKeyRef, ...) that this simulator cannot resolve.
    unsupported_source: str = ""


@attrs.frozen
class Container:
    """``containers[]`` (and init and ephemeral containers): the fields image volumes touch."""

    name: str
    image: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[EnvVar, ...] = ()
    volume_mounts: tuple[VolumeMount, ...] = ()
    image_pull_policy: str = ""
    #: ``Always`` marks a sidecar (restartable) init container (R5.7).
    restart_policy: str = ""
    privileged: bool = False


@attrs.frozen
class PodSpec:
    """``spec`` of a Pod."""

    containers: tuple[Container, ...] = ()
    init_containers: tuple[Container, ...] = ()
    ephemeral_containers: tuple[Container, ...] = ()
    volumes: tuple[Volume, ...] = ()
    image_pull_secrets: tuple[str, ...] = ()
    restart_policy: str = ""
    node_name: str = ""
    service_account_name: str = ""

    def volume(self, name: str) -> Volume | None:
        """The volume named ``name``, None if there is none."""
        for v in self.volumes:
            if v.name == name:
                return v
        return None

    def all_containers(self) -> tuple[Container, ...]:
        """Init, regular and ephemeral containers, in that order."""
        return (*self.init_containers, *self.containers, *self.ephemeral_containers)


@attrs.frozen
class Pod:
    """A Pod: its metadata and spec (the status lives with the node, ``kubelet.PodRecord``)."""

    metadata: ObjectMeta
    spec: PodSpec

    @property
    def name(self) -> str:
        """``metadata.name``."""
        return self.metadata.name

    @property
    def namespace(self) -> str:
        """``metadata.namespace``, ``default`` when unset."""
        return self.metadata.namespace or "default"

    @property
    def uid(self) -> str:
        """``metadata.uid`` (set by admission)."""
        return self.metadata.uid


@attrs.frozen
class Secret:
    """A Secret; only ``kubernetes.io/dockerconfigjson`` ones matter here (pull secrets)."""

    metadata: ObjectMeta
    type: str = "Opaque"
    data: Mapping[str, bytes] = attrs.field(factory=dict)
