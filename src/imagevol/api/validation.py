"""API-server validation of Pods and Secrets, in upstream wording and with upstream field paths (R1.3,
R2.2 to R2.7). Messages are formatted like ``field.Error.Error()`` in k8s.io/apimachinery, with the
helpers of :mod:`imagevol.api._field_errors`.
"""

from __future__ import annotations

import json
import re
import secrets

from ..errors import ValidationError
from ._field_errors import (
    duplicate,
    forbidden,
    invalid,
    is_config_map_key,
    is_dns1123_label,
    is_dns1123_subdomain,
    is_label_value,
    is_qualified_name,
    mask_trailing_dash,
    nbytes,
    not_found,
    not_supported,
    required,
    too_long,
)
from .features import FeatureGates
from .limits import (
    MAX_SECRET_SIZE,
    TOTAL_ANNOTATION_SIZE_LIMIT,
)
from .models import (
    MOUNT_PROPAGATIONS,
    PULL_POLICIES,
    RECURSIVE_READ_ONLY,
    Container,
    ObjectMeta,
    Pod,
    Secret,
    Volume,
    VolumeMount,
)

_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
#: ``generateName`` plus five random characters (``names.SimpleNameGenerator``).
_GENERATED_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_MAX_GENERATED_NAME_PREFIX = 63 - 5


def validate_object_meta(meta: ObjectMeta, minor: int, path: str = "metadata", *, template: bool = False) -> list[str]:
    """``ValidateObjectMeta`` for a namespaced object whose name must be a DNS subdomain (Pods,
    Secrets): ``generateName``, ``name``, ``namespace`` (a DNS label), labels and annotations.
    Call after name generation, as the API server does. A pod ``template`` has only its labels
    and annotations checked (``ValidatePodTemplateSpec``)."""
    errors = [] if template else _validate_identity(meta, path)
    for key in sorted(meta.labels):
        errors += [invalid(f"{path}.labels", key, m) for m in is_qualified_name(key)]
        errors += [invalid(f"{path}.labels", meta.labels[key], m) for m in is_label_value(meta.labels[key])]
    total = 0
    for key in sorted(meta.annotations):
        # Case does not matter in annotation keys (upstream lower-cases before checking).
        errors += [invalid(f"{path}.annotations", key, m) for m in is_qualified_name(key.lower())]
        total += nbytes(key) + nbytes(meta.annotations[key])
    if total > TOTAL_ANNOTATION_SIZE_LIMIT:
        errors.append(too_long(f"{path}.annotations", TOTAL_ANNOTATION_SIZE_LIMIT, minor))
    return errors


def _validate_identity(meta: ObjectMeta, path: str) -> list[str]:
    errors: list[str] = []
    if meta.generate_name:
        errors += [
            invalid(f"{path}.generateName", meta.generate_name, m)
            for m in is_dns1123_subdomain(mask_trailing_dash(meta.generate_name))
        ]
    if not meta.name:
        errors.append(required(f"{path}.name", "name or generateName is required"))
    else:
        errors += [invalid(f"{path}.name", meta.name, m) for m in is_dns1123_subdomain(meta.name)]
    if not meta.namespace:
        errors.append(required(f"{path}.namespace"))
    else:
        errors += [invalid(f"{path}.namespace", meta.namespace, m) for m in is_dns1123_label(meta.namespace)]
    return errors


def generate_name(prefix: str) -> str:
    """``SimpleNameGenerator``: the prefix cut to 58 characters, then five random characters."""
    suffix = "".join(secrets.choice(_GENERATED_SUFFIX_ALPHABET) for _ in range(5))
    return prefix[:_MAX_GENERATED_NAME_PREFIX] + suffix


def validate_secret(secret: Secret, minor: int) -> None:
    """``ValidateSecret``: metadata, data keys, the 1 MiB total, and the keys the pull-secret
    types require. Raises ``ValidationError``."""
    errors = validate_object_meta(secret.metadata, minor)
    total = 0
    for key in sorted(secret.data):
        errors += [invalid(f"data[{key}]", key, m) for m in is_config_map_key(key)]
        total += len(secret.data[key])
    if total > MAX_SECRET_SIZE:
        errors.append(too_long("data", MAX_SECRET_SIZE, minor))
    required_key = {"kubernetes.io/dockerconfigjson": ".dockerconfigjson", "kubernetes.io/dockercfg": ".dockercfg"}
    needed = required_key.get(secret.type)
    if needed is not None:
        if needed not in secret.data:
            errors.append(required(f"data[{needed}]"))
        else:
            try:
                parsed = json.loads(secret.data[needed])
                if not isinstance(parsed, dict):
                    raise ValueError("cannot unmarshal into a map")
            except ValueError:
                errors.append(f'data[{key}]: Invalid value: "<secret contents redacted>": invalid JSON object')
    if errors:
        raise ValidationError("Secret", secret.metadata.name, errors)


def _dns_label(path: str, value: str) -> list[str]:
    return [invalid(path, value, m) for m in is_dns1123_label(value)]


def _validate_unique_name(path: str, name: str, seen: set[str]) -> list[str]:
    """A required DNS-1123 label, unique among ``seen`` (which it joins)."""
    if not name:
        return [required(path)]
    errors = _dns_label(path, name)
    if name in seen:
        errors.append(duplicate(path, name))
    seen.add(name)
    return errors


def validate_local_descending_path(value: str, path: str) -> list[str]:
    """``validateLocalDescendingPath`` (R2.7): relative, and no element equal to ``..``."""
    errors = []
    if value.startswith("/"):
        errors.append(invalid(path, value, "must be a relative path"))
    if ".." in value.split("/"):
        errors.append(invalid(path, value, "must not contain '..'"))
    return errors


def validate_pull_policy(value: str, path: str) -> list[str]:
    """Field errors for an ``imagePullPolicy`` or ``image.pullPolicy`` value (none when supported)."""
    if value in PULL_POLICIES:
        return []
    if not value:
        return [required(path)]
    return [not_supported(path, value, PULL_POLICIES)]


def _validate_volumes(volumes: tuple[Volume, ...], is_pod: bool) -> list[str]:
    errors: list[str] = []
    seen: set[str] = set()
    for i, vol in enumerate(volumes):
        path = f"spec.volumes[{i}]"
        errors += _validate_unique_name(f"{path}.name", vol.name, seen)
        sources = len(vol.other_sources) + (vol.image is not None)
        if sources == 0:
            errors.append(required(path, "must specify a volume type"))
        if vol.image is not None:
            if sources > 1:
                # R1.3: the image source is checked last, so the error lands on it.
                errors.append(forbidden(f"{path}.image", "may not specify more than 1 volume type"))
                continue
            # R2.2: the reference is only required for Pods, not for pod templates.
            if is_pod and not vol.image.reference:
                errors.append(required(f"{path}.image.reference"))
            errors += validate_pull_policy(vol.image.pull_policy, f"{path}.image.pullPolicy")
    return errors


def _validate_mounts(container: Container, path: str, volumes: dict[str, Volume], gates: FeatureGates) -> list[str]:
    errors: list[str] = []
    mounts_path = f"{path}.volumeMounts"
    mount_points: set[str] = set()
    for j, mnt in enumerate(container.volume_mounts):
        idx = f"{mounts_path}[{j}]"
        if not mnt.name:
            errors.append(required(f"{idx}.name"))
        if mnt.name not in volumes:
            errors.append(not_found(f"{idx}.name", mnt.name))
        if not mnt.mount_path:
            errors.append(required(f"{idx}.mountPath"))
        if mnt.mount_path in mount_points:
            errors.append(invalid(f"{idx}.mountPath", mnt.mount_path, "must be unique"))
        mount_points.add(mnt.mount_path)
        vol = volumes.get(mnt.name)
        if vol is not None and vol.image is not None and not gates.image_volume_sub_path_allowed:
            # R2.6: before 1.33 the API server refuses sub paths on image volumes.
            if mnt.sub_path:
                errors.append(invalid(f"{idx}.subPath", mnt.sub_path, "not allowed in image volume sources"))
            if mnt.sub_path_expr:
                errors.append(invalid(f"{idx}.subPathExpr", mnt.sub_path_expr, "not allowed in image volume sources"))
        # R2.7 quirk: these two errors carry the list path without the index, upstream's bug.
        if mnt.sub_path:
            errors += validate_local_descending_path(mnt.sub_path, f"{mounts_path}.subPath")
        if mnt.sub_path_expr:
            if mnt.sub_path:
                errors.append(
                    invalid(
                        f"{idx}.subPathExpr",
                        mnt.sub_path_expr,
                        "subPathExpr and subPath are mutually exclusive",
                    )
                )
            errors += validate_local_descending_path(mnt.sub_path_expr, f"{mounts_path}.subPathExpr")
        if mnt.mount_propagation is not None:
            errors += _validate_propagation(mnt, container, f"{mounts_path}.mountPropagation")
        errors += _validate_rro(mnt, f"{idx}.recursiveReadOnly")
    return errors


def _validate_propagation(mnt: VolumeMount, container: Container, path: str) -> list[str]:
    value = mnt.mount_propagation or ""
    if value not in MOUNT_PROPAGATIONS:
        return [not_supported(path, value, MOUNT_PROPAGATIONS)]
    if value == "Bidirectional" and not container.privileged:
        return [forbidden(path, "Bidirectional mount propagation is available only to privileged containers")]
    return []


def _validate_rro(mnt: VolumeMount, path: str) -> list[str]:
    value = mnt.recursive_read_only
    if value is None or value == "Disabled":
        return []
    if value not in RECURSIVE_READ_ONLY:
        return [not_supported(path, value, RECURSIVE_READ_ONLY)]
    errors = []
    if not mnt.read_only:
        errors.append(forbidden(path, "may only be specified when readOnly is true"))
    if mnt.mount_propagation not in (None, "None"):
        errors.append(forbidden(path, "may only be specified when mountPropagation is None or not specified"))
    return errors


def _validate_env(container: Container, path: str) -> list[str]:
    errors = []
    for i, env in enumerate(container.env):
        epath = f"{path}.env[{i}]"
        if not env.name:
            errors.append(required(f"{epath}.name"))
        elif not _ENV_NAME.match(env.name):
            errors.append(
                invalid(
                    f"{epath}.name",
                    env.name,
                    "a valid environment variable name must consist of alphabetic characters, digits, "
                    "'_', '-', or '.', and must not start with a digit (e.g. 'my.env-name',  or "
                    "'MY_ENV.NAME',  or 'MyEnvName1', regex used for validation is "
                    "'[-._a-zA-Z][-._a-zA-Z0-9]*')",
                )
            )
        if env.field_ref is not None and env.value:
            errors.append(invalid(f"{epath}.valueFrom", "", "may not be specified when `value` is not empty"))
        if env.field_ref is not None:
            errors += _validate_env_field_path(env.field_ref.field_path, f"{epath}.valueFrom.fieldRef")
    return errors


#: Field labels ``ConvertDownwardAPIFieldLabel`` knows for v1 Pods, and the subset allowed in env.
_DOWNWARD_API_LABELS = frozenset(
    {
        "metadata.annotations", "metadata.labels", "metadata.name", "metadata.namespace", "metadata.uid",
        "spec.nodeName", "spec.restartPolicy", "spec.serviceAccountName", "spec.schedulerName",
        "status.phase", "status.hostIP", "status.hostIPs", "status.podIP", "status.podIPs",
    }
)  # fmt: skip
ENV_FIELD_PATHS = (
    "metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName", "spec.serviceAccountName",
    "status.hostIP", "status.hostIPs", "status.podIP", "status.podIPs",
)  # fmt: skip
_SUBSCRIPT = re.compile(r"^(metadata\.(?:labels|annotations))\['([^']*)'\]$")


def _validate_env_field_path(field_path: str, path: str) -> list[str]:
    """``validateObjectFieldSelector`` with the env expressions: labels and annotations only with a
    subscript, the other paths from a fixed list."""
    if not field_path:
        return [required(f"{path}.fieldPath")]
    sub = _SUBSCRIPT.match(field_path)
    base = sub.group(1) if sub else field_path
    if base not in _DOWNWARD_API_LABELS:
        return [
            invalid(f"{path}.fieldPath", field_path, f"error converting fieldPath: field label not supported: {base}")
        ]
    if sub:
        return []
    if field_path not in ENV_FIELD_PATHS:
        return [not_supported(f"{path}.fieldPath", field_path, sorted(ENV_FIELD_PATHS))]
    return []


def _validate_containers(
    containers: tuple[Container, ...],
    key: str,
    volumes: dict[str, Volume],
    gates: FeatureGates,
    names: set[str],
) -> list[str]:
    errors: list[str] = []
    for i, c in enumerate(containers):
        path = f"spec.{key}[{i}]"
        errors += _validate_unique_name(f"{path}.name", c.name, names)
        if not c.image:
            errors.append(required(f"{path}.image"))
        elif c.image != c.image.strip():
            errors.append(invalid(f"{path}.image", c.image, "must not have leading or trailing whitespace"))
        if c.image_pull_policy:
            errors += validate_pull_policy(c.image_pull_policy, f"{path}.imagePullPolicy")
        errors += _validate_env(c, path)
        errors += _validate_mounts(c, path, volumes, gates)
    return errors


def validate_pod(pod: Pod, gates: FeatureGates, *, is_pod: bool = True) -> None:
    """Raise ``ValidationError`` (all field errors at once) if the API server would reject ``pod``.
    Call after defaulting and field dropping, as the API server does."""
    meta = pod.metadata
    errors = validate_object_meta(meta, gates.minor, template=not is_pod)
    spec = pod.spec
    errors += _validate_volumes(spec.volumes, is_pod)
    volumes = {v.name: v for v in spec.volumes if v.name}
    if not spec.containers:
        errors.append(required("spec.containers"))
    names: set[str] = set()
    errors += _validate_containers(spec.containers, "containers", volumes, gates, names)
    errors += _validate_containers(spec.init_containers, "initContainers", volumes, gates, names)
    errors += _validate_containers(spec.ephemeral_containers, "ephemeralContainers", volumes, gates, names)
    if spec.restart_policy not in ("", "Always", "OnFailure", "Never"):
        errors.append(not_supported("spec.restartPolicy", spec.restart_policy, ("Always", "Never", "OnFailure")))
    if errors:
        raise ValidationError("Pod", meta.name, errors)
