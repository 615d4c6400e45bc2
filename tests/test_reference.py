"""Reference grammar and normalisation (distribution/reference, Docker's familiar names, the
kubelet's default tag), as properties over generated references."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagevol.errors import InvalidReferenceError
from imagevol.oci.reference import apply_default_tag, parse, parse_image_name, parse_normalized

alnum = st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)
separator = st.sampled_from([".", "_", "__", "-", "--"])
path_component = st.builds(lambda a, s, b: a + (s + b if b else ""), alnum, separator, st.one_of(st.just(""), alnum))
label = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?", fullmatch=True)
domain = st.builds(
    lambda labels, port: ".".join(labels) + port,
    st.lists(label, min_size=2, max_size=3),
    st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")),
)
path = st.lists(path_component, min_size=1, max_size=3).map("/".join)
tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
digest = st.from_regex(r"[0-9a-f]{64}", fullmatch=True).map(lambda h: f"sha256:{h}")


@given(domain=domain, path=path, tag=st.one_of(st.just(""), tag), digest=st.one_of(st.just(""), digest))
def test_every_grammatical_reference_round_trips(domain: str, path: str, tag: str, digest: str) -> None:
    text = f"{domain}/{path}" + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    ref = parse(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    assert str(ref) == text
    assert ref.object == (digest or tag or "latest")
    assert str(parse_normalized(text)) == text  # a qualified name is left as it is


@given(path=path, tag=st.one_of(st.just(""), tag))
def test_familiar_names_normalise_to_docker_hub(path: str, tag: str) -> None:
    suffix = f":{tag}" if tag else ""
    ref = parse_normalized(path + suffix)
    first = path.split("/", 1)[0]
    if "/" in path and ("." in first or first == "localhost"):
        assert ref.domain == first  # the first component is a host
    else:
        assert ref.domain == "docker.io"
        assert ref.path == (path if "/" in path else f"library/{path}")
        assert ref.familiar_name == path
    assert ref.tag == tag


@given(path=path)
def test_legacy_hub_names_are_the_same_repository(path: str) -> None:
    assert parse_normalized(f"index.docker.io/{path}") == parse_normalized(f"docker.io/{path}")


@given(domain=domain, path=path, tag=tag, digest=digest)
def test_the_default_tag_is_latest_and_only_when_nothing_is_given(
    domain: str, path: str, tag: str, digest: str
) -> None:
    name = f"{domain}/{path}"
    assert apply_default_tag(name) == f"{name}:latest"
    assert apply_default_tag(f"{name}:{tag}") == f"{name}:{tag}"
    assert apply_default_tag(f"{name}@{digest}") == f"{name}@{digest}"
    assert apply_default_tag(apply_default_tag(name)) == f"{name}:latest"
    assert parse_image_name(name) == (name, "latest", "")
    assert parse_image_name(f"{name}@{digest}") == (name, "", digest)


def test_the_default_tag_does_not_qualify_the_name() -> None:
    assert apply_default_tag("busybox") == "busybox:latest"
    assert parse_image_name("busybox") == ("docker.io/library/busybox", "latest", "")


@given(
    domain=domain,
    path=path,
    junk=st.sampled_from(["\n", " ", "\t", "\r", "é", "١", "/", "//", ":", "@", "..", "_", "-", "A"]),
    where=st.sampled_from(["end", "path", "tag"]),
)
def test_references_outside_the_grammar_are_refused(domain: str, path: str, junk: str, where: str) -> None:
    if where == "end":
        text = f"{domain}/{path}:v1{junk}"
        if junk in ("_", "-", "A", ".."):
            return  # still a valid tag
    elif where == "path":
        text = f"{domain}/{path}{junk}x:v1" if junk in ("..", "A", "\n", " ", "é", "//", "\t", "\r", "١") else ""
        if not text:
            return
    else:
        text = f"{domain}/{path}:{junk}v1" if junk not in ("_", "A") else ""
        if not text:
            return
    with pytest.raises(InvalidReferenceError):
        parse_normalized(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid reference format"),
        ("Busybox", "must be lowercase"),
        ("a" * 64, "cannot specify 64-byte hexadecimal strings"),
        ("example.com/" + "a" * 250, "must not be more than 255 characters"),
        ("busybox@sha256:abc", "invalid reference format"),
        ("busybox@md5:" + "a" * 32, "invalid reference format"),
        ("busybox:" + "t" * 129, "invalid reference format"),
    ],
)
def test_invalid_references_say_why(text: str, message: str) -> None:
    with pytest.raises(InvalidReferenceError, match=message):
        parse_normalized(text)


def test_an_empty_name_has_no_component() -> None:
    with pytest.raises(InvalidReferenceError, match="repository name must have at least one component"):
        parse("")
