"""A container's environment as the kubelet builds it, and ``subPathExpr`` expansion (R4.4, R4.5).

``makeEnvironmentVariables``: service variables of the cluster's ``kubernetes`` service (always
injected), then ``env`` in order, each literal value ``$(VAR)``-expanded against the variables
declared before it and the service variables, downward-API ``fieldRef`` values read from the Pod
(``podFieldSelectorRuntimeValue`` and ``fieldpath.ExtractFieldPathAsString``). ``makeMounts`` then
expands ``subPathExpr`` against that environment, where an undefined *or empty* variable is an error,
and re-validates the result. Every error here becomes ``CreateContainerConfigError`` (R5.3).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping

from .._text import goquote
from ..api.models import Container, ObjectFieldSelector, Pod, VolumeMount
from ..errors import CreateContainerConfigError

#: The simulated node's address (``status.hostIP``/``hostIPs``).
NODE_IP = "127.0.0.1"
#: The ``kubernetes`` service of the ``default`` namespace, as kubeadm sets it up.
KUBERNETES_SERVICE_IP = "10.96.0.1"


def expand(text: str, mapping: Callable[[str], str]) -> str:
    """Kubernetes ``$(VAR)`` expansion (third_party/forked/golang/expansion): ``$$`` is a literal
    ``$``; ``$(`` runs to the first ``)`` and the name between is mapped; an unterminated ``$(`` and
    any other ``$x`` (x a whole character, not a byte) are kept as written."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            nxt = text[cursor + 1]
            advance = 1
            if nxt == "$":
                out.append("$")
            elif nxt == "(":
                close = text.find(")", cursor + 2)
                if close >= 0:
                    out.append(mapping(text[cursor + 2 : close]))
                    advance = close - cursor
                else:
                    out.append("$(")
            else:
                out.append("$" + nxt)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


def mapping_for(*contexts: Mapping[str, str]) -> Callable[[str], str]:
    """``MappingFuncFor``: the first context that defines the name wins; an unknown reference is
    kept as ``$(NAME)``."""

    def lookup(name: str) -> str:
        for context in contexts:
            if name in context:
                return context[name]
        return f"$({name})"

    return lookup


def service_env() -> dict[str, str]:
    """``envvars.FromServices`` for the master service, which the kubelet injects into every Pod
    whatever ``enableServiceLinks`` says (other services are not modelled)."""
    ip, port = KUBERNETES_SERVICE_IP, "443"
    tcp = f"tcp://{ip}:{port}"
    return {
        "KUBERNETES_SERVICE_HOST": ip,
        "KUBERNETES_SERVICE_PORT": port,
        "KUBERNETES_SERVICE_PORT_HTTPS": port,
        "KUBERNETES_PORT": tcp,
        "KUBERNETES_PORT_443_TCP": tcp,
        "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
        "KUBERNETES_PORT_443_TCP_PORT": port,
        "KUBERNETES_PORT_443_TCP_ADDR": ip,
    }


def pod_ips(pod: Pod) -> list[str]:
    """The sandbox's address: deterministic per Pod UID, inside 10.244.0.0/16 (a flannel-style pod
    CIDR), so ``status.podIP`` is set as it is on a real node once the sandbox runs."""
    digest = hashlib.sha256(f"pod-ip/{pod.uid or pod.namespace + '/' + pod.name}".encode()).digest()
    return [f"10.244.{digest[0]}.{2 + digest[1] % 252}"]


# --- downward API ------------------------------------------------------------------------------------

#: ``ConvertDownwardAPIFieldLabel`` (pkg/apis/core/pods): field paths a v1 Pod selector may name.
_CONVERTIBLE = (
    "metadata.annotations", "metadata.labels", "metadata.name", "metadata.namespace", "metadata.uid",
    "spec.nodeName", "spec.restartPolicy", "spec.serviceAccountName", "spec.schedulerName",
    "status.phase", "status.hostIP", "status.hostIPs", "status.podIP", "status.podIPs",
)  # fmt: skip

_QNAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_QNAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QNAME_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
)
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1123_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_DNS1123_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character"
)


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    shown = ",  or ".join(f"'{e}'" for e in examples)
    return f"{msg} (e.g. {shown}, regex used for validation is '{fmt}')"


def qualified_name_errors(value: str) -> list[str]:
    """apimachinery ``IsQualifiedName``: ``[prefix/]name``, the wording of its messages."""
    parts = value.split("/")
    errors: list[str] = []
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errors.append("prefix part must be non-empty")
        elif len(prefix) > 253:
            errors.append("prefix part must be no more than 253 characters")
        elif not _DNS1123_SUBDOMAIN.fullmatch(prefix):
            errors.append("prefix part " + _regex_error(_DNS1123_MSG, _DNS1123_FMT, "example.com"))
    else:
        return [
            "a qualified name "
            + _regex_error(_QNAME_MSG, _QNAME_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part must be no more than 63 characters")
    if name and not _QNAME.fullmatch(name):
        errors.append("name part " + _regex_error(_QNAME_MSG, _QNAME_FMT, "MyName", "my.name", "123-abc"))
    return errors


def _split_subscript(field_path: str) -> tuple[str, str] | None:
    """``SplitMaybeSubscriptedPath``: ``metadata.labels['key']`` -> (``metadata.labels``, ``key``)."""
    if not field_path.endswith("']"):
        return None
    path, sep, key = field_path[:-2].partition("['")
    return (path, key) if sep and path else None


def _format_map(values: Mapping[str, str]) -> str:
    """``fieldpath.FormatMap``: sorted ``key="value"`` lines (Go ``%q`` quoting)."""
    return "\n".join(f"{k}={goquote(values[k])}" for k in sorted(values))


def field_value(pod: Pod, selector: ObjectFieldSelector, node_name: str) -> str:
    """``podFieldSelectorRuntimeValue``: the value of a downward-API ``fieldRef`` for ``pod``."""
    path = selector.field_path
    if selector.api_version != "v1":
        raise CreateContainerConfigError(f"unsupported pod version: {selector.api_version}")
    split = _split_subscript(path)
    if split is not None and split[0] not in ("metadata.annotations", "metadata.labels"):
        raise CreateContainerConfigError(f"field label does not support subscript: {path}")
    if split is None:
        if path == "spec.host":  # backwards compatibility with old v1 clients
            path = "spec.nodeName"
        elif path not in _CONVERTIBLE:
            raise CreateContainerConfigError(f"field label not supported: {path}")
    meta = pod.metadata
    runtime_values = {
        "spec.nodeName": pod.spec.node_name or node_name,
        # The ServiceAccount admission plugin fills in "default".
        "spec.serviceAccountName": pod.spec.service_account_name or "default",
        "status.hostIP": NODE_IP,
        "status.hostIPs": NODE_IP,
        "status.podIP": pod_ips(pod)[0],
        "status.podIPs": ",".join(pod_ips(pod)),
    }
    if path in runtime_values:
        return runtime_values[path]
    if split is not None:
        source, key = split
        checked = key.lower() if source == "metadata.annotations" else key
        errors = qualified_name_errors(checked)
        if errors:
            raise CreateContainerConfigError(f"invalid key subscript in {path}: {';'.join(errors)}")
        values = meta.annotations if source == "metadata.annotations" else meta.labels
        return values.get(key, "")
    simple = {
        "metadata.annotations": _format_map(meta.annotations),
        "metadata.labels": _format_map(meta.labels),
        "metadata.name": meta.name,
        "metadata.namespace": pod.namespace,
        "metadata.uid": meta.uid,
    }
    if path in simple:
        return simple[path]
    raise CreateContainerConfigError(f"unsupported fieldPath: {path}")


# --- the environment and sub paths -------------------------------------------------------------------


def container_env(pod: Pod, container: Container, node_name: str = "imagevol-node") -> dict[str, str]:
    """The container's environment (``makeEnvironmentVariables``): declared variables in order,
    later declarations of a name winning, plus the service variables they do not override."""
    services = service_env()
    env: dict[str, str] = {}
    mapping = mapping_for(env, services)  # sees each variable as soon as it is declared
    for var in container.env:
        if var.value:
            env[var.name] = expand(var.value, mapping)
        elif var.field_ref is not None:
            env[var.name] = field_value(pod, var.field_ref, node_name)
        elif var.unsupported_source:
            raise CreateContainerConfigError(
                f"couldn't resolve env var {var.name}: {var.unsupported_source} is not modelled by imagevol"
            )
        else:
            env[var.name] = ""
    return {**services, **env}


def effective_sub_path(mount: VolumeMount, env: Mapping[str, str]) -> str:
    """R4.4/R4.5: ``subPath``, or ``subPathExpr`` expanded (undefined *or empty* variables are an
    error, ``ExpandContainerVolumeMounts``), then the node's own absolute and ``..`` checks."""
    sub = mount.sub_path
    if mount.sub_path_expr:
        missing: set[str] = set()

        def lookup(key: str) -> str:
            value = env.get(key, "")
            if not value:
                missing.add(key)
            return value

        sub = expand(mount.sub_path_expr, lookup)
        if missing:
            raise CreateContainerConfigError(f"missing value for {', '.join(sorted(missing))}")
    if sub:
        if sub.startswith("/"):
            raise CreateContainerConfigError(f"error SubPath `{sub}` must not be an absolute path")
        if ".." in sub.split("/"):
            raise CreateContainerConfigError(f"unable to provision SubPath `{sub}`: must not contain '..'")
    return sub
