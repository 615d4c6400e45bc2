"""Building Pod documents for tests: the one Pod builder of the project, public for users' suites.

Documents are plain dicts in the Kubernetes JSON shape (what ``kubectl apply`` sends), so a test
can still break them on purpose; :func:`to_yaml` writes one for ``imagevol apply -f`` and
:func:`to_pod` decodes one as the API server does::

    doc = pod_doc(
        "demo",
        [container("shell", ("volume", "/volume", "dir"))],
        [image_volume("volume", "quay.io/crio/artifact:v2", "IfNotPresent")],
    )
    node.create_pod(to_pod(doc))

Keys a field does not need are left out (an empty ``subPath``, a container without mounts, a Pod
without volumes), as a user would write the document.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from ..api.load import load_documents
from ..api.models import Pod

#: A mount as ``(volume, mountPath, subPath)``; an empty sub path mounts the whole volume.
MountTuple = tuple[str, str, str]


def volume_mount(volume: str, mount_path: str, sub_path: str = "", **fields: Any) -> dict[str, Any]:
    """A ``volumeMounts`` entry; ``fields`` adds any other key (``subPathExpr``, ``readOnly``...)."""
    mount: dict[str, Any] = {"name": volume, "mountPath": mount_path}
    if sub_path:
        mount["subPath"] = sub_path
    mount.update(fields)
    return mount


def container(
    name: str = "c", *mounts: Mapping[str, Any] | MountTuple, image: str = "debian", **fields: Any
) -> dict[str, Any]:
    """A container mounting ``mounts`` (``volume_mount`` dicts or ``(volume, path, sub_path)``
    tuples); ``fields`` adds any other key (``env``, ``restartPolicy``, even ``volumeMounts``)."""
    doc: dict[str, Any] = {"name": name, "image": image}
    if mounts:
        doc["volumeMounts"] = [dict(m) if isinstance(m, Mapping) else volume_mount(*m) for m in mounts]
    doc.update(fields)
    return doc


def image_volume(name: str, reference: str, pull_policy: str = "") -> dict[str, Any]:
    """A ``volumes`` entry of the image type (KEP-4639)."""
    image: dict[str, Any] = {"reference": reference}
    if pull_policy:
        image["pullPolicy"] = pull_policy
    return {"name": name, "image": image}


def pod_doc(
    name: str = "p",
    containers: Sequence[Mapping[str, Any]] | None = None,
    volumes: Sequence[Mapping[str, Any]] = (),
    *,
    init_containers: Sequence[Mapping[str, Any]] = (),
    namespace: str = "",
    metadata: Mapping[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A Pod document: ``containers`` (one plain ``c`` by default), ``volumes``, init containers,
    ``metadata`` keys besides the name (``labels``, ``generateName``...), and any other ``spec``
    key (``imagePullSecrets``, ``restartPolicy``...)."""
    meta: dict[str, Any] = {"name": name, **(metadata or {})}
    if namespace:
        meta["namespace"] = namespace
    body: dict[str, Any] = {"containers": [dict(c) for c in (containers if containers is not None else [container()])]}
    if init_containers:
        body["initContainers"] = [dict(c) for c in init_containers]
    if volumes:
        body["volumes"] = [dict(v) for v in volumes]
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": body}


def to_yaml(*docs: Mapping[str, Any]) -> str:
    """The documents as one YAML stream (``---`` between them)."""
    return "---\n".join(yaml.safe_dump(dict(d)) for d in docs)


def to_pod(doc: Mapping[str, Any]) -> Pod:
    """The :class:`~imagevol.api.models.Pod` the API server decodes from ``doc`` (not yet
    defaulted or validated: ``imagevol.admit`` does that)."""
    (obj,) = load_documents(to_yaml(doc))
    if not isinstance(obj, Pod):
        raise TypeError(f"not a Pod: {doc.get('kind')!r}")
    return obj
