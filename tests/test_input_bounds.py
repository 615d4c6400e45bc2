"""Pod input is bounded the way the API server bounds it, and names never reach the filesystem.

Every refusal is checked on the node as well as on the message: the state directories are unchanged
and a Pod applied afterwards is the only one ``get pods`` shows.
"""

from __future__ import annotations

import io
import json
import os
import re
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from imagevol.api import FeatureGates, admit, load_documents
from imagevol.api.bounded_yaml import MAX_DEPTH, allowed_alias_ratio, load_all
from imagevol.api.dump import pod_to_dict
from imagevol.api.limits import (
    MAX_REQUEST_BODY_BYTES,
    MAX_SECRET_SIZE,
    MAX_STORED_OBJECT_BYTES,
    TOTAL_ANNOTATION_SIZE_LIMIT,
    encoded_size,
)
from imagevol.api.load import pod_from_dict
from imagevol.cli import main
from imagevol.errors import DecodeError, RequestEntityTooLargeError, ValidationError
from imagevol.node import Node, NodeConfig
from imagevol.testing.pods import pod_doc

TOO_LARGE = "Error from server (RequestEntityTooLarge): Request entity too large: limit is 3145728"


# --- helpers ---------------------------------------------------------------------------------------


def pod(name: str = "p", namespace: str = "", **meta: Any) -> dict[str, Any]:
    """A Pod without image volumes: admitted and run without any registry."""
    return pod_doc(name, namespace=namespace, metadata=meta)


def run(root: str, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """The CLI in-process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    import sys

    saved_err, saved_in = sys.stderr, sys.stdin
    sys.stderr = err
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        code = main(["--root", root, *args], out=out)
    finally:
        sys.stderr, sys.stdin = saved_err, saved_in
    return code, out.getvalue(), err.getvalue()


def apply_text(root: str, tmp: str, text: str | bytes, name: str = "pod.yaml") -> tuple[int, str, str]:
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
    return run(root, "apply", "-f", path)


def state(root: str) -> dict[str, list[str]]:
    """What the node has stored (names of the state files), and nothing else."""
    return {
        d: sorted(os.listdir(os.path.join(root, d)))
        for d in ("pods", "secrets")
        if os.path.isdir(os.path.join(root, d))
    }


def pod_names(root: str, *flags: str) -> list[str]:
    """The NAME column of ``get pods`` (of every namespace with ``-A``)."""
    code, out, _ = run(root, "get", "pods", *flags)
    assert code == 0
    return [line.split()[1 if flags else 0] for line in out.splitlines()[1:]]


def assert_one_plain_line(err: str, root: str) -> None:
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err and "[Errno" not in err and root not in err, err
    assert "internal error" not in err, err


@pytest.fixture
def root(tmp_path: Any) -> Iterator[str]:
    path = os.path.join(str(tmp_path), "node")
    Node(NodeConfig(root=path, hermetic=True))  # create the state directories
    yield path


# --- the request body: 3 MiB, exact at the boundary --------------------------------------------------


def _padded(total: int) -> bytes:
    """A valid one-Pod file of exactly ``total`` bytes (a comment makes up the rest)."""
    head = yaml.safe_dump(pod("padded")).encode() + b"#"
    return head + b"x" * (total - len(head) - 1) + b"\n"


def test_a_body_of_exactly_3_mib_is_accepted(root: str, tmp_path: Any) -> None:
    body = _padded(MAX_REQUEST_BODY_BYTES)
    assert len(body) == 3145728
    code, out, err = apply_text(root, str(tmp_path), body)
    assert (code, err) == (0, ""), err
    assert "pod/padded created" in out
    assert pod_names(root) == ["padded"]


def test_one_byte_more_is_refused_and_nothing_is_stored(root: str, tmp_path: Any) -> None:
    before = state(root)
    code, out, err = apply_text(root, str(tmp_path), _padded(MAX_REQUEST_BODY_BYTES + 1))
    assert code == 1 and out == ""
    assert err == TOO_LARGE + "\n"
    assert state(root) == before


def test_standard_input_is_bounded_the_same_way(root: str) -> None:
    code, _, err = run(root, "apply", "-f", "-", stdin=_padded(MAX_REQUEST_BODY_BYTES + 1))
    assert (code, err) == (1, TOO_LARGE + "\n")
    code, out, err = run(root, "apply", "-f", "-", stdin=_padded(MAX_REQUEST_BODY_BYTES))
    assert code == 0, err
    assert "pod/padded created" in out
    assert pod_names(root) == ["padded"]


def test_a_json_body_is_bounded_too(root: str, tmp_path: Any) -> None:
    doc = pod("json")
    doc["metadata"]["annotations"] = {"a": "x"}
    text = json.dumps(doc)
    pad = MAX_REQUEST_BODY_BYTES + 1 - len(text)
    code, _, err = apply_text(root, str(tmp_path), text + " " * pad, "pod.json")
    assert (code, err) == (1, TOO_LARGE + "\n")
    code, _, err = apply_text(root, str(tmp_path), text + " " * (pad - 1), "pod.json")
    assert code == 0, err
    assert pod_names(root) == ["json"]


def test_the_library_refuses_a_large_body_before_decoding_it() -> None:
    with pytest.raises(RequestEntityTooLargeError, match="limit is 3145728"):
        list(load_documents("#" * MAX_REQUEST_BODY_BYTES + "\n"))
    with pytest.raises(RequestEntityTooLargeError):
        list(load_documents(b"\n" * (MAX_REQUEST_BODY_BYTES + 1)))
    # Characters are not bytes: 1.6 M two-byte characters are 3.2 MB.
    with pytest.raises(RequestEntityTooLargeError):
        list(load_documents("# " + "é" * 1_600_000))


# --- aliases: go-yaml's rule, the expanded body, bounded memory -------------------------------------


def _laughs(levels: int, fan: int = 10) -> str:
    """A billion-laughs document hidden in an unknown field of a valid Pod."""
    lines = [
        "apiVersion: v1",
        "kind: Pod",
        "metadata: {name: lol}",
        "spec:",
        "  containers: [{name: c, image: debian}]",
    ]
    lines.append("  bomb:")
    lines.append("    l0: &l0 [" + ", ".join(["lol"] * fan) + "]")
    for i in range(1, levels + 1):
        lines.append(f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan) + "]")
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_is_refused_with_bounded_memory_and_nothing_stored(root: str, tmp_path: Any) -> None:
    before = state(root)
    tracemalloc.start()
    try:
        code, out, err = apply_text(root, str(tmp_path), _laughs(9))  # 10^10 nodes once expanded
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 1 and out == ""
    path = os.path.join(str(tmp_path), "pod.yaml")
    assert re.fullmatch(
        f"error: error parsing {re.escape(path)}: error converting YAML to JSON: yaml: line \\d+: "
        "document contains excessive aliasing\n",
        err,
    ), err
    assert peak < 20 * 1024 * 1024, peak
    assert state(root) == before
    # The node still works: a second Pod is admitted and is the only one there.
    assert apply_text(root, str(tmp_path), yaml.safe_dump(pod("after")))[0] == 0
    assert pod_names(root) == ["after"]


def test_a_long_string_aliased_2000_times_is_a_too_large_request(root: str, tmp_path: Any) -> None:
    """The issue's case: a 100 KB file that becomes 200 MB. go-yaml's ratio allows it (half the
    decode operations are aliases), kubectl would send 200 MB, and the API server refuses that."""
    big = "x" * 100_000
    doc = pod("bomb")
    doc["spec"]["containers"][0]["args"] = ["PLACEHOLDER"]
    text = yaml.safe_dump(doc).replace(
        "- PLACEHOLDER", "- &s " + big + "\n" + "".join("    - *s\n" for _ in range(2000))
    )
    assert len(text) < 200_000
    tracemalloc.start()
    try:
        code, out, err = apply_text(root, str(tmp_path), text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (code, out, err) == (1, "", TOO_LARGE + "\n")
    assert peak < 20 * 1024 * 1024, peak
    assert state(root) == {"pods": [], "secrets": []}


def test_alias_ratio_matches_go_yaml() -> None:
    assert allowed_alias_ratio(0) == allowed_alias_ratio(400_000) == 0.99
    assert allowed_alias_ratio(4_000_000) == allowed_alias_ratio(10**9) == 0.10
    assert allowed_alias_ratio(2_200_000) == pytest.approx(0.545)


def _go_yaml_verdict(anchor_items: int, aliases: int) -> bool:
    """go-yaml's rule written out for ``{a: &a [x x N], b: [*a x k]}``: the document node, the
    root map, key a, the sequence and its N items, key b, the second sequence, then per alias the
    alias node and the N + 1 nodes it stands for. True when it is refused."""
    decodes = 1 + 1 + 1 + 1 + anchor_items + 1 + 1
    alias_count = 0
    for _ in range(aliases):
        decodes += 1
        for _ in range(anchor_items + 1):
            decodes += 1
            alias_count += 1
            if alias_count > 100 and decodes > 1000 and alias_count / decodes > allowed_alias_ratio(decodes):
                return True
    return False


@pytest.mark.parametrize("anchor_items", [10, 200, 1000])
def test_the_excessive_aliasing_boundary_is_go_yamls(anchor_items: int) -> None:
    for k in range(1, 400):
        if _go_yaml_verdict(anchor_items, k):
            break
    else:
        k = 0  # never refused (the alias share stays below 99%)

    def doc(n: int) -> str:
        return "a: &a [" + ", ".join(["x"] * anchor_items) + "]\nb: [" + ", ".join(["*a"] * n) + "]\n"

    if k:
        list(load_all(doc(k - 1)))
        with pytest.raises(DecodeError, match="document contains excessive aliasing"):
            list(load_all(doc(k)))
    else:
        list(load_all(doc(399)))


@st.composite
def alias_documents(draw: st.DrawFn) -> str:
    """Small YAML documents of nested sequences with anchors and aliases to earlier anchors."""
    anchors: list[str] = []

    def node(depth: int) -> str:
        choice = draw(st.integers(0, 3 if depth < 4 else 1))
        if choice == 0 or (choice == 1 and not anchors):
            return "x"
        if choice == 1:
            return "*" + draw(st.sampled_from(anchors))
        items = [node(depth + 1) for _ in range(draw(st.integers(0, 9)))]
        text = "[" + ", ".join(items) + "]"
        if draw(st.booleans()):
            name = f"a{len(anchors)}"
            anchors.append(name)
            return f"&{name} {text}"
        return text

    return "[" + ", ".join(node(1) for _ in range(draw(st.integers(1, 8)))) + "]"


class _TooBigError(Exception):
    pass


def _reference_verdict(text: str) -> bool:
    """go-yaml's decoder, literally: walk the document in order, one decode operation per node and
    per alias node, the nodes an alias stands for walked again in full, the rule checked after
    every single operation. PyYAML's pure composer shares aliased nodes; an edge to a node already
    seen in the first walk was an alias in the text. True when go-yaml refuses the document."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    assert root is not None
    seen = {id(root)}
    alias_edges: set[tuple[int, int]] = set()
    decodes = aliases = 0

    def count(in_alias: bool) -> bool:
        nonlocal decodes, aliases
        decodes += 1
        aliases += in_alias
        if decodes > 300_000:
            raise _TooBigError
        return aliases > 100 and decodes > 1000 and aliases / decodes > allowed_alias_ratio(decodes)

    def visit(node: yaml.Node, in_alias: bool) -> bool:
        if count(in_alias):
            return True
        if not isinstance(node, yaml.SequenceNode):
            return False
        for i, child in enumerate(node.value):
            if not in_alias:  # the first walk classifies every edge
                if id(child) in seen:
                    alias_edges.add((id(node), i))
                seen.add(id(child))
            if (id(node), i) in alias_edges:
                if count(in_alias) or visit(child, True):  # the alias node, then what it names
                    return True
            elif visit(child, in_alias):
                return True
        return False

    count(False)  # the document node
    return visit(root, False)


@given(alias_documents())
def test_aliases_are_counted_exactly_as_go_yaml_counts_them(text: str) -> None:
    try:
        refused = _reference_verdict(text)
    except _TooBigError:
        return  # too long for the literal walk (go-yaml would allow it: >1% of it is real nodes)
    try:
        list(load_all(text))
        verdict = False
    except DecodeError as exc:
        assert "excessive aliasing" in str(exc)
        verdict = True
    except RequestEntityTooLargeError:
        # Larger than the body limit once encoded: the reference walk would still be going.
        return
    assert verdict == refused


def test_an_alias_to_its_own_ancestor_is_an_error() -> None:
    with pytest.raises(DecodeError, match="anchor 'a' value contains itself"):
        list(load_all("a: &a [x, *a]\n"))
    with pytest.raises(DecodeError, match="unknown anchor 'b' referenced"):
        list(load_all("a: *b\n"))


def test_merge_keys_follow_the_yaml_rules() -> None:
    (doc,) = load_all("base: &b {x: 1, y: 2}\nother: &o {y: 3, z: 4}\nm: {<<: [*b, *o], x: 0}\n")
    assert doc["m"] == {"x": 0, "y": 2, "z": 4}
    with pytest.raises(DecodeError, match="map merge requires map or sequence of maps"):
        list(load_all("s: &s [1]\nm: {<<: *s}\n"))


# --- nesting: a YAML error at 10,001 levels, never a RecursionError ----------------------------------


def _nested(levels: int, flow: str = "[]") -> str:
    open_, close = flow[0], flow[1]
    doc = pod("deep")
    doc["spec"]["deep"] = "NEST"
    return yaml.safe_dump(doc).replace("NEST", open_ * levels + close * levels)


def test_nesting_of_10000_levels_is_accepted(root: str, tmp_path: Any) -> None:
    code, _, err = apply_text(root, str(tmp_path), _nested(MAX_DEPTH))
    assert code == 0, err
    assert pod_names(root) == ["deep"]


@pytest.mark.parametrize(
    ("levels", "flow"), [(MAX_DEPTH + 1, "[]"), (1_000_000, "[]"), (MAX_DEPTH + 1, "{}"), (500_000, "{}")]
)
def test_deeper_nesting_is_a_yaml_error(root: str, tmp_path: Any, levels: int, flow: str) -> None:
    text = _nested(levels, flow)
    if flow == "{}":
        text = text.replace("{" * levels, "{a: " * levels)
    line = 1 + text[: text.index(flow[0])].count("\n")
    code, out, err = apply_text(root, str(tmp_path), text)
    assert code == 1 and out == ""
    assert err.endswith(f"error converting YAML to JSON: yaml: line {line}: exceeded max depth of 10000\n"), err
    assert_one_plain_line(err, root)
    assert state(root) == {"pods": [], "secrets": []}


def test_deep_json_is_a_decode_error_too() -> None:
    with pytest.raises(DecodeError, match="exceeded max depth of 10000"):
        list(load_all('{"a": ' + "[" * 20000 + "]" * 20000 + "}"))


def test_block_nesting_counts_like_flow_nesting() -> None:
    def block(n: int) -> str:
        return "- " * n + "x\n"  # n block sequences, one inside the other

    list(load_all(block(MAX_DEPTH)))
    with pytest.raises(DecodeError, match="exceeded max depth of 10000"):
        list(load_all(block(MAX_DEPTH + 1)))
    mappings = "".join("  " * i + "k:\n" for i in range(3000)) + "  " * 3000 + "v\n"
    (doc,) = load_all(mappings)
    assert doc["k"]["k"]["k"] is not None


# --- invalid UTF-8 and other decoding errors ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"a: \xff\n", "invalid leading UTF-8 octet"),
        (b"a: \xc3\x28\n", "invalid trailing UTF-8 octet"),
        (b"a: \xe2\x82", "incomplete UTF-8 octet sequence"),
    ],
)
def test_invalid_utf8_is_a_decode_error(root: str, tmp_path: Any, raw: bytes, problem: str) -> None:
    code, _, err = apply_text(root, str(tmp_path), raw)
    path = os.path.join(str(tmp_path), "pod.yaml")
    assert (code, err) == (1, f"error: error parsing {path}: error converting YAML to JSON: yaml: {problem}\n")


def test_utf16_with_a_byte_order_mark_is_read() -> None:
    text = yaml.safe_dump(pod("utf16"))
    (decoded,) = load_documents(text.encode("utf-16"))
    assert decoded.metadata.name == "utf16"


def test_a_value_nested_in_a_name_field_is_a_type_error_not_a_crash() -> None:
    doc = pod("x")
    doc["metadata"]["name"] = "NEST"
    text = yaml.safe_dump(doc).replace("NEST", "[" * 9000 + "]" * 9000)
    with pytest.raises(ValidationError, match=r"metadata\.name: Invalid value: expected a string, got list"):
        list(load_documents(text))


# --- the stored object: 1.5 MiB, as etcd -------------------------------------------------------------


def _args_pod(name: str, stored_size: int) -> dict[str, Any]:
    """A Pod whose stored (admitted) encoding is exactly ``stored_size`` bytes."""
    doc = pod(name)
    doc["spec"]["containers"][0]["args"] = [""]
    gates = FeatureGates.for_version("1.33", "ImageVolume=true")
    base = encoded_size(pod_to_dict(admit(pod_from_dict(doc), gates)))
    doc["spec"]["containers"][0]["args"] = ["a" * (stored_size - base)]
    assert encoded_size(pod_to_dict(admit(pod_from_dict(doc), gates))) == stored_size
    return doc


def test_a_stored_object_of_exactly_1_5_mib_is_accepted(root: str, tmp_path: Any) -> None:
    code, _, err = apply_text(root, str(tmp_path), json.dumps(_args_pod("fits", MAX_STORED_OBJECT_BYTES)))
    assert code == 0, err
    assert pod_names(root) == ["fits"]


def test_one_byte_more_is_refused_as_etcd_refuses_it(root: str, tmp_path: Any) -> None:
    code, out, err = apply_text(root, str(tmp_path), json.dumps(_args_pod("big", MAX_STORED_OBJECT_BYTES + 1)))
    assert (code, out, err) == (1, "", "Error from server: etcdserver: request is too large\n")
    assert state(root) == {"pods": [], "secrets": []}
    # Refused before the kubelet saw it: no container was created.
    assert not [f for _, _, files in os.walk(os.path.join(root, "runtime")) for f in files]


def test_annotations_are_limited_to_256_kib(root: str, tmp_path: Any) -> None:
    doc = pod("ann", annotations={"a": "x" * (TOTAL_ANNOTATION_SIZE_LIMIT - 1)})
    assert apply_text(root, str(tmp_path), json.dumps(doc))[0] == 0
    doc = pod("ann2", annotations={"a": "x" * TOTAL_ANNOTATION_SIZE_LIMIT})
    code, _, err = apply_text(root, str(tmp_path), json.dumps(doc))
    assert (code, err) == (
        1,
        'The Pod "ann2" is invalid: metadata.annotations: Too long: may not be more than 262144 bytes\n',
    )
    code, _, err = run(root, "--k8s-version", "1.31", "apply", "-f", os.path.join(str(tmp_path), "pod.yaml"))
    assert err == 'The Pod "ann2" is invalid: metadata.annotations: Too long: must have at most 262144 bytes\n'
    assert pod_names(root) == ["ann"]


def _secret(name: str, data: dict[str, str], namespace: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "stringData": data}


def test_secret_data_is_limited_to_1_mib(root: str, tmp_path: Any) -> None:
    code, out, err = apply_text(root, str(tmp_path), json.dumps(_secret("ok", {"k": "x" * MAX_SECRET_SIZE})))
    assert (code, out) == (0, "secret/ok created\n"), err
    before = state(root)
    code, _, err = apply_text(root, str(tmp_path), json.dumps(_secret("big", {"k": "x" * MAX_SECRET_SIZE, "j": "y"})))
    assert (code, err) == (1, 'The Secret "big" is invalid: data: Too long: may not be more than 1048576 bytes\n')
    assert state(root) == before


# --- names and namespaces: the API server's rules and words ---------------------------------------


NAME_253 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
SUBDOMAIN_RULE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_RULE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and "
    "end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)


def test_a_valid_253_character_name_applies_gets_describes_and_deletes(root: str, tmp_path: Any) -> None:
    assert len(NAME_253) == 253
    code, out, err = apply_text(root, str(tmp_path), yaml.safe_dump(pod(NAME_253)))
    assert code == 0, err
    assert f"pod/{NAME_253} created" in out
    assert pod_names(root) == [NAME_253]
    (state_file,) = state(root)["pods"]
    assert len(state_file) == len("0" * 64 + ".json")  # not the name: a fixed-length digest
    code, out, _ = run(root, "describe", "pod", NAME_253)
    assert code == 0 and f"Name:             {NAME_253}\n" in out
    code, out, _ = run(root, "delete", "pod", NAME_253)
    assert (code, out) == (0, f'pod "{NAME_253}" deleted\n')
    assert state(root)["pods"] == [] and pod_names(root) == []


def test_a_254_character_name_is_refused_in_the_api_servers_words(root: str, tmp_path: Any) -> None:
    name = NAME_253 + "e"
    code, out, err = apply_text(root, str(tmp_path), yaml.safe_dump(pod(name)))
    assert (code, out) == (1, "")
    assert (
        err
        == f'The Pod "{name}" is invalid: metadata.name: Invalid value: "{name}": must be no more than 253 characters\n'
    )
    assert state(root)["pods"] == []


@pytest.mark.parametrize("name", ["Upper", "under_score", "-lead", "trail-", "a..b", "sl/ash", "../../etc", "é"])
def test_invalid_characters_in_names(root: str, tmp_path: Any, name: str) -> None:
    code, _, err = apply_text(root, str(tmp_path), yaml.safe_dump(pod(name)))
    quoted = json.dumps(name, ensure_ascii=False)
    assert (code, err) == (
        1,
        f"The Pod {quoted} is invalid: metadata.name: Invalid value: {quoted}: {SUBDOMAIN_RULE}\n",
    )
    assert state(root)["pods"] == []


def test_a_long_invalid_name_gets_both_errors(root: str, tmp_path: Any) -> None:
    name = "A" * 254
    code, _, err = apply_text(root, str(tmp_path), yaml.safe_dump(pod(name)))
    assert code == 1
    assert err == (
        f'The Pod "{name}" is invalid: [metadata.name: Invalid value: "{name}": must be no more than 253 characters, '
        f'metadata.name: Invalid value: "{name}": {SUBDOMAIN_RULE}]\n'
    )


@pytest.mark.parametrize(
    ("namespace", "detail"),
    [
        ("n" * 64, "must be no more than 63 characters"),
        ("team.a", "must not contain dots"),
        ("Team", LABEL_RULE),
        ("../x", LABEL_RULE),
    ],
)
def test_namespaces_are_dns_labels(root: str, tmp_path: Any, namespace: str, detail: str) -> None:
    code, _, err = apply_text(root, str(tmp_path), yaml.safe_dump(pod("p", namespace)))
    assert (code, err) == (1, f'The Pod "p" is invalid: metadata.namespace: Invalid value: "{namespace}": {detail}\n')
    assert state(root)["pods"] == []


def test_same_name_in_two_namespaces_and_get_pods_order(root: str, tmp_path: Any) -> None:
    text = "---\n".join(yaml.safe_dump(p) for p in (pod("b"), pod("a", "team-" + "z" * 58), pod("b", "a1"), pod("a")))
    code, _, err = apply_text(root, str(tmp_path), text)
    assert code == 0, err
    # Ordered by namespace and name, as <namespace>_<name> state files used to sort.
    assert pod_names(root, "-A") == ["b", "a", "b", "a"]
    assert pod_names(root) == ["a", "b"]  # the default namespace, as kubectl shows it
    code, out, _ = run(root, "-n", "a1", "describe", "pod", "b")
    assert code == 0 and "Namespace:        a1\n" in out
    assert run(root, "-n", "a1", "delete", "pod", "b")[0] == 0
    assert run(root, "describe", "pod", "b")[0] == 0  # default/b is untouched
    assert pod_names(root, "-A") == ["a", "b", "a"]


def test_labels_and_annotation_keys_are_validated(root: str, tmp_path: Any) -> None:
    doc = pod("l", labels={"ok": "v", "bad key": "v", "k": "-x"}, annotations={"Fine/Key": "x", "a b/c": "x"})
    code, _, err = apply_text(root, str(tmp_path), json.dumps(doc))
    assert code == 1
    assert 'metadata.labels: Invalid value: "bad key": name part must consist of alphanumeric characters' in err
    assert 'metadata.labels: Invalid value: "-x": a valid label must be an empty string or consist' in err
    assert 'metadata.annotations: Invalid value: "a b/c": prefix part a lowercase RFC 1123 subdomain' in err
    assert "Fine/Key" not in err  # case does not matter in annotation keys


def test_generate_name_cannot_be_applied_but_is_generated_on_create(root: str, tmp_path: Any) -> None:
    doc = pod("")
    del doc["metadata"]["name"]
    doc["metadata"]["generateName"] = "gen-"
    code, _, err = apply_text(root, str(tmp_path), yaml.safe_dump(doc))
    assert (code, err) == (1, "error: from gen-: cannot use generate name with apply\n")
    node = Node(NodeConfig(root=root, hermetic=True))
    record = node.create_pod(pod_from_dict(doc))
    assert record.pod.name.startswith("gen-") and len(record.pod.name) == 9
    assert pod_names(root) == [record.pod.name]


# --- secrets: the same path, the same rules -----------------------------------------------------------


def test_secret_names_never_become_paths(root: str, tmp_path: Any) -> None:
    before = state(root)
    code, _, err = apply_text(root, str(tmp_path), json.dumps(_secret("../../escape", {"k": "v"})))
    assert code == 1 and err.startswith('The Secret "../../escape" is invalid: metadata.name: Invalid value:')
    assert state(root) == before
    assert not os.path.exists(os.path.join(os.path.dirname(root), "escape.json"))
    code, _, err = apply_text(root, str(tmp_path), json.dumps(_secret("s", {"../k": "v"})))
    assert 'data[../k]: Invalid value: "../k": a valid config key must consist of' in err
    assert "must not start with '..'" in err


def test_a_pull_secret_name_that_looks_like_a_path_reads_nothing(root: str, tmp_path: Any) -> None:
    """imagePullSecrets names are not validated upstream; here they only ever feed a digest, so a
    decoy shaped like a Secret next to the state directories is never read."""
    with open(os.path.join(root, "node.json"), "w") as f:
        json.dump({"name": "../node", "namespace": "default", "type": "Opaque", "data": {"k": "dg=="}}, f)
    doc = pod("ps")
    doc["spec"]["imagePullSecrets"] = [{"name": "../node"}, {"name": "../../" + "x" * 300}]
    code, _, err = apply_text(root, str(tmp_path), yaml.safe_dump(doc))
    assert code == 0, err
    node = Node(NodeConfig(root=root, hermetic=True))
    (event,) = [e for e in node.get_pod("ps").events if e.reason == "FailedToRetrieveImagePullSecret"]
    assert event.message.startswith("Unable to retrieve some image pull secrets (../node, ../../xxx")
    assert node.keyring_for(pod_from_dict(doc)).entries == ()


def test_a_secret_in_another_namespace_is_stored_apart(root: str, tmp_path: Any) -> None:
    text = json.dumps(_secret("s", {"k": "1"})) + "\n---\n" + json.dumps(_secret("s", {"k": "2"}, "other"))
    assert apply_text(root, str(tmp_path), text)[0] == 0
    assert len(state(root)["secrets"]) == 2


# --- state files of earlier versions ------------------------------------------------------------------


def test_a_root_of_an_earlier_version_is_migrated(root: str, tmp_path: Any) -> None:
    assert apply_text(root, str(tmp_path), yaml.safe_dump(pod("old")))[0] == 0
    assert apply_text(root, str(tmp_path), json.dumps(_secret("cred", {"k": "v"})))[0] == 0
    # Rename both to the names earlier versions used.
    for kind, legacy in (("pods", "default_old.json"), ("secrets", "default_cred.json")):
        (current,) = os.listdir(os.path.join(root, kind))
        os.rename(os.path.join(root, kind, current), os.path.join(root, kind, legacy))
    with open(os.path.join(root, "pods", "garbage_x.json"), "w") as f:
        f.write("not json")
    assert pod_names(root) == ["old"]
    files = state(root)
    assert "default_old.json" not in files["pods"] and "garbage_x.json" in files["pods"]
    assert files["secrets"] and all(len(f) == 69 for f in files["secrets"])
    code, out, _ = run(root, "describe", "pod", "old")
    assert code == 0 and "Name:             old" in out


def test_a_corrupt_state_file_is_one_plain_error(root: str, tmp_path: Any) -> None:
    assert apply_text(root, str(tmp_path), yaml.safe_dump(pod("c")))[0] == 0
    (f,) = state(root)["pods"]
    with open(os.path.join(root, "pods", f), "wb") as out:
        out.write(b"\xff{")
    code, _, err = run(root, "get", "pods")
    assert (code, err) == (1, f"error: node state pods/{f} is corrupt (not JSON)\n")
