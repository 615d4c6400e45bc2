"""Decoding YAML/JSON manifests into API values.

Decoding is strict about types (as the API server's JSON decoder is) and lenient about unknown
fields (which the API server prunes). Type errors are reported with the field path. The YAML
decoder is imported only when a request body is decoded: the kubelet reads stored Pods through
:func:`pod_from_dict` on every command, without YAML.
"""

from __future__ import annotations

import base64
import binascii
import codecs
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import DecodeError, ImageVolError, RequestEntityTooLargeError, ValidationError
from .limits import MAX_REQUEST_BODY_BYTES, check_body_size
from .models import (
    Container,
    EnvVar,
    ImageVolumeSource,
    ObjectFieldSelector,
    ObjectMeta,
    Pod,
    PodSpec,
    Secret,
    Volume,
    VolumeMount,
)

_VOLUME_SOURCES = (
    "hostPath", "emptyDir", "gcePersistentDisk", "awsElasticBlockStore", "gitRepo", "secret", "nfs",
    "iscsi", "glusterfs", "persistentVolumeClaim", "rbd", "flexVolume", "cinder", "cephfs", "flocker",
    "downwardAPI", "fc", "azureFile", "configMap", "vsphereVolume", "quobyte", "azureDisk",
    "photonPersistentDisk", "projected", "portworxVolume", "scaleIO", "storageos", "csi",
    "ephemeral",
)  # fmt: skip


class _Decoder:
    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name

    def fail(self, path: str, message: str) -> ValidationError:
        return ValidationError(self.kind, self.name, [f"{path}: {message}"])

    def obj(self, value: object, path: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"Invalid value: expected an object, got {type(value).__name__}")
        return value

    def seq(self, value: object, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(path, f"Invalid value: expected a list, got {type(value).__name__}")
        return value

    def string(self, value: object, path: str) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.fail(path, f"Invalid value: expected a string, got {type(value).__name__}")
        return value

    def opt_str(self, value: object, path: str) -> str | None:
        return None if value is None else self.string(value, path)

    def boolean(self, value: object, path: str) -> bool:
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self.fail(path, f"Invalid value: expected a boolean, got {type(value).__name__}")
        return value

    def str_map(self, value: object, path: str) -> dict[str, str]:
        m = self.obj(value, path)
        return {str(k): self.string(v, f"{path}[{k}]") for k, v in m.items()}

    def str_list(self, value: object, path: str) -> tuple[str, ...]:
        return tuple(self.string(v, f"{path}[{i}]") for i, v in enumerate(self.seq(value, path)))

    def meta(self, value: object) -> ObjectMeta:
        m = self.obj(value, "metadata")
        return ObjectMeta(
            name=self.string(m.get("name"), "metadata.name"),
            namespace=self.string(m.get("namespace"), "metadata.namespace"),
            uid=self.string(m.get("uid"), "metadata.uid"),
            generate_name=self.string(m.get("generateName"), "metadata.generateName"),
            labels=self.str_map(m.get("labels"), "metadata.labels"),
            annotations=self.str_map(m.get("annotations"), "metadata.annotations"),
        )

    def volume(self, value: object, path: str) -> Volume:
        v = self.obj(value, path)
        image: ImageVolumeSource | None = None
        if v.get("image") is not None:
            iv = self.obj(v["image"], f"{path}.image")
            image = ImageVolumeSource(
                reference=self.string(iv.get("reference"), f"{path}.image.reference"),
                pull_policy=self.string(iv.get("pullPolicy"), f"{path}.image.pullPolicy"),
            )
        others = tuple(k for k in _VOLUME_SOURCES if v.get(k) is not None)
        return Volume(self.string(v.get("name"), f"{path}.name"), image, others)

    def mount(self, value: object, path: str) -> VolumeMount:
        m = self.obj(value, path)
        return VolumeMount(
            name=self.string(m.get("name"), f"{path}.name"),
            mount_path=self.string(m.get("mountPath"), f"{path}.mountPath"),
            sub_path=self.string(m.get("subPath"), f"{path}.subPath"),
            sub_path_expr=self.string(m.get("subPathExpr"), f"{path}.subPathExpr"),
            read_only=self.boolean(m.get("readOnly"), f"{path}.readOnly"),
            mount_propagation=self.opt_str(m.get("mountPropagation"), f"{path}.mountPropagation"),
            recursive_read_only=self.opt_str(m.get("recursiveReadOnly"), f"{path}.recursiveReadOnly"),
        )

    def env(self, value: object, path: str) -> EnvVar:
        e = self.obj(value, path)
        name = self.string(e.get("name"), f"{path}.name")
        source = self.obj(e.get("valueFrom"), f"{path}.valueFrom")
        field_ref = None
        unsupported = ""
        if source.get("fieldRef") is not None:
            fr = self.obj(source["fieldRef"], f"{path}.valueFrom.fieldRef")
            field_ref = ObjectFieldSelector(
                field_path=self.string(fr.get("fieldPath"), f"{path}.valueFrom.fieldRef.fieldPath"),
                api_version=self.string(fr.get("apiVersion"), "") or "v1",
            )
        elif source:
            unsupported = sorted(map(str, source))[0]
        return EnvVar(name, self.string(e.get("value"), f"{path}.value"), field_ref, unsupported)

    def container(self, value: object, path: str) -> Container:
        c = self.obj(value, path)
        sc = self.obj(c.get("securityContext"), f"{path}.securityContext")
        return Container(
            name=self.string(c.get("name"), f"{path}.name"),
            image=self.string(c.get("image"), f"{path}.image"),
            command=self.str_list(c.get("command"), f"{path}.command"),
            args=self.str_list(c.get("args"), f"{path}.args"),
            env=tuple(self.env(e, f"{path}.env[{i}]") for i, e in enumerate(self.seq(c.get("env"), f"{path}.env"))),
            volume_mounts=tuple(
                self.mount(m, f"{path}.volumeMounts[{i}]")
                for i, m in enumerate(self.seq(c.get("volumeMounts"), f"{path}.volumeMounts"))
            ),
            image_pull_policy=self.string(c.get("imagePullPolicy"), f"{path}.imagePullPolicy"),
            restart_policy=self.string(c.get("restartPolicy"), f"{path}.restartPolicy"),
            privileged=self.boolean(sc.get("privileged"), f"{path}.securityContext.privileged"),
        )

    def containers(self, spec: Mapping[str, Any], key: str) -> tuple[Container, ...]:
        path = f"spec.{key}"
        return tuple(self.container(c, f"{path}[{i}]") for i, c in enumerate(self.seq(spec.get(key), path)))

    def pod_spec(self, value: object) -> PodSpec:
        s = self.obj(value, "spec")
        secrets = []
        for i, ref in enumerate(self.seq(s.get("imagePullSecrets"), "spec.imagePullSecrets")):
            secrets.append(self.string(self.obj(ref, f"spec.imagePullSecrets[{i}]").get("name"), "name"))
        return PodSpec(
            containers=self.containers(s, "containers"),
            init_containers=self.containers(s, "initContainers"),
            ephemeral_containers=self.containers(s, "ephemeralContainers"),
            volumes=tuple(
                self.volume(v, f"spec.volumes[{i}]") for i, v in enumerate(self.seq(s.get("volumes"), "spec.volumes"))
            ),
            image_pull_secrets=tuple(secrets),
            restart_policy=self.string(s.get("restartPolicy"), "spec.restartPolicy"),
            node_name=self.string(s.get("nodeName"), "spec.nodeName"),
            service_account_name=self.string(s.get("serviceAccountName"), "spec.serviceAccountName"),
        )


def _name_of(doc: Mapping[str, Any]) -> str:
    """``metadata.name`` for messages, if it is a string (never ``str()`` of an arbitrary value:
    a value nested 10,000 levels deep has no printable form)."""
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else ""


def pod_from_dict(doc: Mapping[str, Any]) -> Pod:
    """Decode a Pod. Raises ``ValidationError`` for wrong field types."""
    d = _Decoder("Pod", _name_of(doc))
    return Pod(d.meta(doc.get("metadata")), d.pod_spec(doc.get("spec")))


def secret_from_dict(doc: Mapping[str, Any]) -> Secret:
    """Decode a Secret (``data`` base64, ``stringData`` as text; ``type`` defaults to ``Opaque``)."""
    meta = doc.get("metadata")
    d = _Decoder("Secret", _name_of(doc))
    data: dict[str, bytes] = {}
    for key, value in d.obj(doc.get("data"), "data").items():
        try:
            data[str(key)] = base64.b64decode(d.string(value, f"data[{key}]"), validate=True)
        except binascii.Error:
            raise d.fail(f"data[{key}]", "Invalid value: illegal base64 data") from None
    for key, value in d.obj(doc.get("stringData"), "stringData").items():
        data[str(key)] = d.string(value, f"stringData[{key}]").encode()
    return Secret(d.meta(meta), d.string(doc.get("type"), "type") or "Opaque", data)


def decode_text(body: str | bytes) -> str:
    """The text of a request body: UTF-8 (a byte-order mark is dropped; UTF-16 with a byte-order
    mark is read as go-yaml reads it). Invalid UTF-8 is a :class:`DecodeError` in go-yaml's words."""
    if isinstance(body, str):
        return body
    if body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return body.decode("utf-16")
        except UnicodeDecodeError:
            raise DecodeError("error converting YAML to JSON: yaml: invalid UTF-16 sequence") from None
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data":
            problem = "incomplete UTF-8 octet sequence"
        elif exc.reason == "invalid continuation byte":
            problem = "invalid trailing UTF-8 octet"
        else:
            problem = "invalid leading UTF-8 octet"
        raise DecodeError(f"error converting YAML to JSON: yaml: {problem}") from None


def decode_documents(body: str | bytes) -> Iterator[Pod | Secret | ImageVolError]:
    """Decode the Pods and Secrets of a (multi-document) YAML or JSON request body one document
    at a time, as kubectl's stream visitor does: a document that is not a v1 Pod or Secret, or
    whose fields have the wrong types, is yielded as its error and the next one is decoded; a
    syntax error (invalid UTF-8, nesting beyond 10,000 levels, excessive aliasing) or a document
    whose JSON encoding would exceed the API server's body limit ends the stream, yielded as its
    error after the documents before it. A body over the limit is one
    :class:`RequestEntityTooLargeError`. Empty documents are skipped."""
    from .bounded_yaml import load_all

    try:
        if isinstance(body, str):
            # A character is at least one byte: only encode when the length alone does not decide.
            size = len(body) if len(body) > MAX_REQUEST_BODY_BYTES else len(body.encode("utf-8", "replace"))
        else:
            size = len(body)
        check_body_size(size)
        docs = load_all(decode_text(body))
        for doc in docs:
            if doc is not None:
                yield _decode_one(doc)
    except (DecodeError, RequestEntityTooLargeError) as exc:
        yield exc


def _decode_one(doc: object) -> Pod | Secret | ValidationError:
    if not isinstance(doc, dict):
        return ValidationError("Object", "", ["a document must be a mapping"])
    kind = doc.get("kind")
    api_version = doc.get("apiVersion")
    if api_version != "v1" or kind not in ("Pod", "Secret"):
        shown_kind, shown_version = _shown(kind), _shown(api_version)
        metadata = doc.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        return ValidationError(
            shown_kind if isinstance(kind, str) and kind else "Object",
            name if isinstance(name, str) else "",
            [f"unsupported object {shown_version}/{shown_kind}: only v1 Pod and Secret"],
        )
    try:
        return pod_from_dict(doc) if kind == "Pod" else secret_from_dict(doc)
    except ValidationError as exc:
        return exc


def load_documents(body: str | bytes) -> Iterator[Pod | Secret]:
    """Decode every Pod and Secret of a (multi-document) YAML or JSON request body, in order.

    The body is bounded as the API server bounds it (``api.limits``, ``api.bounded_yaml``): over
    3 MiB, or a document whose JSON encoding would be, is :class:`RequestEntityTooLargeError`;
    syntax errors, invalid UTF-8, nesting beyond 10,000 levels and excessive aliasing are
    :class:`DecodeError`; the first failing document raises (:func:`decode_documents` goes on
    past it). Every document is decoded before the first is returned."""
    docs: list[Pod | Secret] = []
    for item in decode_documents(body):
        if isinstance(item, ImageVolError):
            raise item
        docs.append(item)
    return iter(docs)


def _shown(value: object) -> str:
    """A field value for a message: a string cut to 63 characters, else its kind."""
    if isinstance(value, str):
        return value if len(value) <= 63 else value[:60] + "..."
    return "<none>" if value is None else f"<{type(value).__name__}>"
