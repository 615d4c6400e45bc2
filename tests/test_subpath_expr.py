"""``subPathExpr``: ``$(VAR)`` expansion against the container's environment, downward-API ``fieldRef``
values, the ``missing value for ...`` error (R4.4) and the node's re-validation (R4.5), both surfacing as
``CreateContainerConfigError`` (R5.3)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagevol.api.models import Container, EnvVar, ObjectFieldSelector, ObjectMeta, Pod, PodSpec, VolumeMount
from imagevol.errors import CreateContainerConfigError
from imagevol.kubelet import _envvars as envvars
from imagevol.kubelet._envvars import container_env, effective_sub_path, expand
from imagevol.node import Node
from tests.helpers.subpaths import make_node, pod_yaml

# --- expansion ---------------------------------------------------------------------------------------


def _model(text: str, mapping: Callable[[str], str]) -> str:
    """An independent statement of the expansion rules as one regular expression: ``$$``, ``$(`` up
    to the first ``)``, ``$(`` with no ``)`` left, any other ``$`` + one character; a final lone
    ``$`` matches nothing and stays."""

    def one(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            return "$"
        if m.group(2) is not None:
            return mapping(m.group(2))
        if m.group(3) is not None:
            return "$("
        return "$" + m.group(4)

    return re.sub(r"\$(?:(\$)|\(([^)]*)\)|(\()|(.))", one, text, flags=re.DOTALL)


TEXT = st.text(alphabet=st.sampled_from(list("$()ABab_/.é\n")), max_size=30)


@given(TEXT)
def test_expand_matches_the_model(text: str) -> None:
    def mapping(name: str) -> str:
        return f"<{name}>"

    assert expand(text, mapping) == _model(text, mapping)


@given(st.text(max_size=40))
def test_escaping_every_dollar_round_trips(text: str) -> None:
    assert expand(text.replace("$", "$$"), lambda name: "MAPPED") == text


@given(st.text(alphabet=st.characters(blacklist_characters="$"), max_size=40))
def test_text_without_dollars_is_unchanged(text: str) -> None:
    assert expand(text, lambda name: "x") == text


@given(st.text(alphabet=st.characters(blacklist_characters=")"), max_size=20), st.text(max_size=20))
def test_a_reference_is_replaced_whatever_its_name(name: str, value: str) -> None:
    assert expand(f"a/$({name})/b", lambda n: value if n == name else "?") == f"a/{value}/b"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("$(A)", "1"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$1"),
        ("$(A", "$(A"),
        ("$", "$"),
        ("a$", "a$"),
        ("$$", "$"),
        ("$A", "$A"),
        ("$é(A)", "$é(A)"),
        ("$(A)$(B)", "12"),
        ("$(UNSET)", "$(UNSET)"),
        ("$()", "$()"),
        ("$(A$(B))", "$(A$(B))"),
        ("x/$(A)/$$/y", "x/1/$/y"),
    ],
)
def test_expand_examples(text: str, want: str) -> None:
    assert expand(text, envvars.mapping_for({"A": "1", "B": "2"})) == want


# --- the container environment ------------------------------------------------------------------------


def _pod(env: tuple[EnvVar, ...] = (), **meta: Any) -> tuple[Pod, Container]:
    container = Container("c", "img", env=env)
    metadata = ObjectMeta(
        name=meta.get("name", "web-0"),
        namespace=meta.get("namespace", ""),
        uid=meta.get("uid", "5f1c0c7e-uid"),
        labels=meta.get("labels", {"app": "web"}),
        annotations=meta.get("annotations", {"team": "storage", "note": 'say "hi"'}),
    )
    spec = PodSpec(
        containers=(container,),
        node_name=meta.get("node_name", ""),
        service_account_name=meta.get("service_account_name", ""),
    )
    return Pod(metadata, spec), container


def _field(name: str, path: str, api_version: str = "v1") -> EnvVar:
    return EnvVar(name, field_ref=ObjectFieldSelector(path, api_version))


def test_values_expand_against_earlier_variables_and_services() -> None:
    env = (
        EnvVar("A", "a"),
        EnvVar("B", "$(A)-b"),
        EnvVar("C", "$(D)"),  # declared later: kept verbatim
        EnvVar("D", "d"),
        EnvVar("A", "$(A)$(A)"),  # a redeclaration sees the previous value, and wins
        EnvVar("API", "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"),
        EnvVar("KUBERNETES_SERVICE_PORT", "8443"),  # a declared variable overrides the service's
        EnvVar("EMPTY"),
    )
    pod, container = _pod(env)
    result = container_env(pod, container)
    assert result["A"] == "aa" and result["B"] == "a-b" and result["C"] == "$(D)" and result["D"] == "d"
    assert result["API"] == "https://10.96.0.1:443"
    assert result["KUBERNETES_SERVICE_PORT"] == "8443"
    assert result["KUBERNETES_PORT_443_TCP_ADDR"] == "10.96.0.1"
    assert result["EMPTY"] == ""


def test_unsupported_sources_are_config_errors() -> None:
    pod, container = _pod((EnvVar("S", unsupported_source="secretKeyRef"),))
    with pytest.raises(CreateContainerConfigError, match="couldn't resolve env var S: secretKeyRef"):
        container_env(pod, container)


FIELDS = [
    ("metadata.name", {}, "web-0"),
    ("metadata.namespace", {}, "default"),
    ("metadata.namespace", {"namespace": "team-a"}, "team-a"),
    ("metadata.uid", {}, "5f1c0c7e-uid"),
    ("metadata.labels['app']", {}, "web"),
    ("metadata.labels['missing']", {}, ""),
    ("metadata.labels['example.com/tier']", {"labels": {"example.com/tier": "db"}}, "db"),
    ("metadata.annotations['team']", {}, "storage"),
    ("metadata.labels", {"labels": {"b": "2", "a": "1"}}, 'a="1"\nb="2"'),
    ("metadata.annotations", {}, 'note="say \\"hi\\""\nteam="storage"'),
    ("spec.nodeName", {}, "imagevol-node"),
    ("spec.nodeName", {"node_name": "worker-1"}, "worker-1"),
    ("spec.host", {"node_name": "worker-1"}, "worker-1"),
    ("spec.serviceAccountName", {}, "default"),
    ("spec.serviceAccountName", {"service_account_name": "builder"}, "builder"),
    ("status.hostIP", {}, envvars.NODE_IP),
    ("status.hostIPs", {}, envvars.NODE_IP),
]


@pytest.mark.parametrize(("path", "meta", "want"), FIELDS, ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(FIELDS)])
def test_field_refs(path: str, meta: dict[str, Any], want: str) -> None:
    pod, container = _pod((_field("X", path),), **meta)
    assert container_env(pod, container)["X"] == want


def test_pod_ip_is_set_and_stable() -> None:
    pod, container = _pod((_field("IP", "status.podIP"), _field("IPS", "status.podIPs")))
    env = container_env(pod, container)
    assert re.fullmatch(r"10\.244\.\d{1,3}\.\d{1,3}", env["IP"])
    assert env["IPS"] == env["IP"] == container_env(pod, container)["IP"]
    other, c2 = _pod((_field("IP", "status.podIP"),), uid="another-uid")
    assert container_env(other, c2)["IP"] != env["IP"]


@pytest.mark.parametrize(
    ("path", "api_version", "message"),
    [
        ("spec.restartPolicy", "v1", "unsupported fieldPath: spec.restartPolicy"),
        ("status.phase", "v1", "unsupported fieldPath: status.phase"),
        ("spec.containers", "v1", "field label not supported: spec.containers"),
        ("metadata.name['x']", "v1", "field label does not support subscript: metadata.name['x']"),
        ("metadata.name", "v2", "unsupported pod version: v2"),
        ("metadata.labels['bad key']", "v1", "invalid key subscript in metadata.labels['bad key']: name part must"),
        ("metadata.labels['a/b/c']", "v1", "invalid key subscript in metadata.labels['a/b/c']: a qualified name"),
        ("metadata.labels['UP.example/x']", "v1", "prefix part a lowercase RFC 1123 subdomain"),
    ],
)
def test_field_ref_errors(path: str, api_version: str, message: str) -> None:
    pod, container = _pod((_field("X", path, api_version),))
    with pytest.raises(CreateContainerConfigError) as info:
        container_env(pod, container)
    assert message in str(info.value)


def test_annotation_keys_are_checked_lowercased() -> None:
    pod, container = _pod(
        (_field("X", "metadata.annotations['UP.example/Team']"),), annotations={"UP.example/Team": "y"}
    )
    assert container_env(pod, container)["X"] == "y"


# --- effective sub path (R4.4, R4.5) ---------------------------------------------------------------------


def _mount(expr: str = "", sub_path: str = "") -> VolumeMount:
    return VolumeMount("vol", "/data", sub_path=sub_path, sub_path_expr=expr)


@pytest.mark.parametrize(
    ("expr", "want"),
    [
        ("$(POD)", "web-0"),
        ("logs/$(POD)/$(NS)", "logs/web-0/default"),
        ("$$(POD)", "$(POD)"),
        ("./$(POD)/", "./web-0/"),
    ],
)
def test_expansion(expr: str, want: str) -> None:
    assert effective_sub_path(_mount(expr), {"POD": "web-0", "NS": "default"}) == want


@pytest.mark.parametrize(
    ("expr", "env", "message"),
    [
        ("$(NOPE)", {}, "missing value for NOPE"),
        ("$(B)/$(A)/$(EMPTY)/$(B)", {"EMPTY": ""}, "missing value for A, B, EMPTY"),
        ("$(ABS)/x", {"ABS": "/etc"}, "error SubPath `/etc/x` must not be an absolute path"),
        ("a/$(UP)/b", {"UP": ".."}, "unable to provision SubPath `a/../b`: must not contain '..'"),
        ("$(UP)", {"UP": "x/../../y"}, "unable to provision SubPath `x/../../y`: must not contain '..'"),
    ],
)
def test_expansion_errors(expr: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(CreateContainerConfigError) as info:
        effective_sub_path(_mount(expr), env)
    assert str(info.value) == message
    assert info.value.reason == "CreateContainerConfigError"


def test_plain_sub_path_is_revalidated_too() -> None:
    assert effective_sub_path(_mount(sub_path="a/b"), {}) == "a/b"
    with pytest.raises(CreateContainerConfigError, match="must not be an absolute path"):
        effective_sub_path(_mount(sub_path="/a"), {})


@given(
    st.text(alphabet=st.sampled_from(list("$()AB/.x")), max_size=16),
    st.dictionaries(st.sampled_from(["A", "B"]), st.sampled_from(["", "x", "..", "/", "a/b", "/.."])),
)
def test_expansion_either_fails_or_is_a_safe_relative_path(expr: str, env: dict[str, str]) -> None:
    try:
        sub = effective_sub_path(_mount(expr), env)
    except CreateContainerConfigError as exc:
        assert str(exc).startswith(("missing value for", "error SubPath", "unable to provision SubPath"))
        return
    assert sub == expand(expr, lambda k: env[k]) if expr else sub == ""
    assert not sub.startswith("/") and ".." not in sub.split("/")


# --- through the node ------------------------------------------------------------------------------------


@pytest.fixture
def node(tmp_path: Any, layout_dir: str) -> Iterator[Node]:
    yield make_node(os.path.join(str(tmp_path), "node"), layout_dir)


def _apply(node: Node, name: str, expr: str, env: list[dict[str, object]]) -> Any:
    [applied] = node.apply(pod_yaml(name, sub_path_expr=expr, env=env))
    record = applied.record
    assert record is not None
    return record


def test_pod_name_from_the_downward_api_selects_the_directory(node: Node) -> None:
    env: list[dict[str, object]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "LEAF", "value": "b"},
    ]
    record = _apply(node, "dir", "$(POD_NAME)", env)
    state = record.containers[0]
    assert state.state == "running", state.message
    container = node.runtime.container_status(state.container_id)
    assert container is not None and container.mounts[0].real_path == "dir"
    record = _apply(node, "deep", "$(POD_NAME)/a/$(LEAF)", env)
    assert record.containers[0].state == "running"


@pytest.mark.parametrize(
    ("expr", "env", "message"),
    [
        ("$(POD)", [], "missing value for POD"),
        ("$(X)", [{"name": "X", "value": "/etc"}], "error SubPath `/etc` must not be an absolute path"),
        ("$(X)/b", [{"name": "X", "value": "a/.."}], "unable to provision SubPath `a/../b`: must not contain '..'"),
    ],
)
def test_kubelet_side_errors_are_create_container_config_errors(
    node: Node, expr: str, env: list[dict[str, object]], message: str
) -> None:
    record = _apply(node, "bad", expr, env)
    state = record.containers[0]
    assert (state.state, state.reason) == ("waiting", "CreateContainerConfigError")
    assert message in state.message
    failed = [e for e in record.events if e.reason == "Failed"]
    assert failed[-1].message == f"Error: {state.message}"
    assert not node.runtime.list_containers()  # the runtime was never asked
    metrics = node.metrics()
    # R6.4 (upstream over-count): a kubelet-side failure lands in the success counter.
    assert (metrics.requested, metrics.succeeded, metrics.errors) == (1, 1, 0)


def test_unknown_field_paths_are_refused_by_the_api_server(node: Node) -> None:
    """validateObjectFieldSelector rejects them at admission; the kubelet never sees them."""
    from imagevol.errors import ValidationError

    env: list[dict[str, object]] = [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodename"}}}]
    with pytest.raises(ValidationError, match=r"field label not supported: spec\.nodename"):
        _apply(node, "bad", "$(X)", env)
    assert node.pods() == []
