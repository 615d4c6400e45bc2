"""OCI values: digests, descriptors, platforms, manifests, indexes, and image/artifact
classification (R9.1). Every parser here sees hostile input (registry answers)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagevol.errors import ManifestError, PlatformError
from imagevol.oci import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    MAX_MANIFEST_BYTES,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Digest,
    Index,
    Manifest,
    Platform,
    parse_manifest,
)

HEX = "a" * 64


@given(st.binary(max_size=256), st.sampled_from(["sha256", "sha384", "sha512"]))
def test_digest_round_trip(data: bytes, algorithm: str) -> None:
    d = Digest.of(data, algorithm)
    assert Digest.parse(str(d)) == d


@pytest.mark.parametrize(
    "text",
    [
        "sha256:" + "A" * 64,  # upper-case hex
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "md5:" + "a" * 32,
        "sha256:" + HEX + "\n",  # a trailing newline is not ignored
        "sha256 :" + HEX,
        ":" + HEX,
        "",
    ],
)
def test_bad_digests_are_refused(text: str) -> None:
    with pytest.raises(ManifestError):
        Digest.parse(text)


def desc(media_type: str = OCI_LAYER_GZIP, size: object = 1, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": f"sha256:{HEX}", "size": size, **extra}


@pytest.mark.parametrize(
    "obj",
    [
        desc(size=-1),
        desc(size=True),
        desc(size=1.5),
        {"digest": f"sha256:{HEX}", "size": 1},
        desc(annotations={"a": 1}),
        desc(data="not base64!"),
        desc(platform={"os": "linux"}),
        "a string",
    ],
)
def test_bad_descriptors_are_refused(obj: object) -> None:
    with pytest.raises(ManifestError):
        Descriptor.from_json(obj)


def test_descriptor_round_trip() -> None:
    d = Descriptor.from_json(
        desc(
            annotations={"org.opencontainers.image.title": "f"},
            platform={"os": "linux", "architecture": "arm64", "variant": "v8"},
        )
    )
    assert d.title == "f"
    assert Descriptor.from_json(d.to_json()) == d


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        ("linux/arm64", "linux/arm64/v8", True),  # arm64 means v8
        ("linux/aarch64", "linux/arm64", True),
        ("linux/x86_64", "linux/amd64", True),
        ("linux/arm", "linux/arm/v7", True),
        ("linux/arm/v6", "linux/arm/v7", False),
        ("linux/amd64", "windows/amd64", False),
    ],
)
def test_platform_matching(a: str, b: str, match: bool) -> None:
    assert Platform.parse(a).matches(Platform.parse(b)) is match


def manifest_doc(config_type: str = OCI_CONFIG, **extra: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(config_type),
        "layers": [desc()],
        **extra,
    }


def raw(obj: object) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("config_type", "artifact_type", "manifest_type", "is_image"),
    [
        (OCI_CONFIG, "", OCI_MANIFEST, True),
        (DOCKER_CONFIG, "", DOCKER_MANIFEST, True),
        ("", "", OCI_MANIFEST, True),
        (OCI_CONFIG, "application/vnd.example+type", OCI_MANIFEST, False),  # artifactType wins
        (OCI_EMPTY, "application/vnd.example+type", OCI_MANIFEST, False),
        ("application/vnd.unknown.config.v1+json", "", OCI_MANIFEST, False),  # oras push default
    ],
)
def test_image_or_artifact_r9_1(config_type: str, artifact_type: str, manifest_type: str, is_image: bool) -> None:
    doc = manifest_doc(config_type, mediaType=manifest_type)
    if artifact_type:
        doc["artifactType"] = artifact_type
    m = parse_manifest(raw(doc))
    assert isinstance(m, Manifest)
    assert m.is_image is is_image


def test_transport_and_document_media_types_must_agree() -> None:
    with pytest.raises(ManifestError, match="declares media type"):
        parse_manifest(raw(manifest_doc()), OCI_INDEX)


@pytest.mark.parametrize(
    "doc",
    [
        {"schemaVersion": 1, "mediaType": OCI_MANIFEST},
        {"schemaVersion": 2, "mediaType": "application/x-unknown"},
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": desc(OCI_CONFIG)},  # no layers
        {"schemaVersion": 2, "mediaType": OCI_INDEX},  # no manifests
        [1, 2],
    ],
)
def test_malformed_manifests_are_refused(doc: object) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(raw(doc))


def test_oversized_and_non_json_manifests_are_refused() -> None:
    with pytest.raises(ManifestError, match="exceeds"):
        parse_manifest(b" " * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_manifest(b"\xff\xfe")


def _index(*platforms: str) -> Index:
    entries = [
        desc(OCI_MANIFEST, platform=dict(zip(("os", "architecture", "variant"), p.split("/"), strict=False)))
        for p in platforms
    ]
    doc = parse_manifest(raw({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}))
    assert isinstance(doc, Index)
    return doc


def test_index_selects_the_first_matching_platform() -> None:
    index = _index("linux/amd64", "linux/arm64/v8")
    assert index.select(Platform.parse("linux/arm64")) is index.manifests[1]
    assert index.select(Platform.parse("linux/amd64")) is index.manifests[0]


def test_index_without_a_match_names_what_it_has() -> None:
    with pytest.raises(PlatformError, match=r"no matching manifest for linux/s390x.*linux/amd64, linux/arm64/v8"):
        _index("linux/amd64", "linux/arm64/v8").select(Platform.parse("linux/s390x"))
