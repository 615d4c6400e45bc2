"""Pulling the project's fixtures from a real registry on 127.0.0.1 (anonymous, Basic, Bearer).

The fixtures are pushed with ``skopeo copy --all --preserve-digests``, so the registry serves the
very bytes of the layout: every pulled digest must equal the layout's.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import pathlib
import tarfile
from collections.abc import Iterator

import pytest

from imagevol.api.models import ObjectMeta, Secret
from imagevol.content.pull import ImagePuller
from imagevol.content.sources.auth import DOCKER_CONFIG_JSON, Credentials, Keyring
from imagevol.content.sources.registry import RegistryAccess
from imagevol.content.store import ContentStore
from imagevol.errors import AuthenticationError, ImageNotFoundError, PlatformError
from imagevol.oci import Descriptor, Digest, Index, Manifest, Platform, parse_manifest
from tests.helpers import peers

TAGS = (
    "v2", "artifact-image", "layers", "layers-zstd", "layers-mix", "multi",
    "artifact-raw", "artifact-tar", "artifact-subpath", "kitten",
)  # fmt: skip
USER, PASSWORD = "alice", "s3cret"


def layout_refs(layout: str) -> dict[str, Descriptor]:
    with open(os.path.join(layout, "index.json")) as f:
        entries = json.load(f)["manifests"]
    return {e["annotations"]["org.opencontainers.image.ref.name"]: Descriptor.from_json(e) for e in entries}


@pytest.fixture(scope="module")
def anon(fixtures_layout: str) -> Iterator[peers.Registry]:
    with peers.registry() as reg:
        peers.push_fixtures(fixtures_layout, reg, TAGS)
        yield reg


@pytest.fixture(scope="module")
def basic(fixtures_layout: str) -> Iterator[peers.Registry]:
    with peers.registry(user=USER, password=PASSWORD) as reg:
        peers.push_fixtures(fixtures_layout, reg, TAGS)
        yield reg


@pytest.fixture(scope="module")
def bearer(fixtures_layout: str) -> Iterator[peers.Registry]:
    with peers.registry(user=USER, password=PASSWORD, token=True) as reg:
        peers.push_fixtures(fixtures_layout, reg, TAGS)
        yield reg


def resolver(tmp_path: object, platform: Platform | None = None) -> ImagePuller:
    store = ContentStore(os.path.join(str(tmp_path), "content"))
    return ImagePuller(store, platform=platform or Platform("linux", "amd64"), registry_factory=RegistryAccess(True))


def creds(reg: peers.Registry, user: str = USER, password: str = PASSWORD) -> Keyring:
    return Keyring.single(reg.host, Credentials(user, password))


def layer_file(store: ContentStore, manifest: Manifest, name: str) -> bytes:
    raw = store.read_blob(manifest.layers[0].digest)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(raw))) as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read()


# --- every fixture, from every kind of registry -----------------------------------------------------


@pytest.mark.parametrize("kind", ["anon", "basic", "bearer"])
@pytest.mark.parametrize("tag", TAGS)
def test_every_fixture_pulls_with_the_layout_digests(
    request: pytest.FixtureRequest, fixtures_layout: str, tmp_path: object, tag: str, kind: str
) -> None:
    reg: peers.Registry = request.getfixturevalue(kind)
    r = resolver(tmp_path)
    result = r.pull(f"{reg.host}/lab/{tag}:v1", creds(reg) if reg.user else None)
    want = layout_refs(fixtures_layout)[tag]
    assert result.record.target.digest == want.digest
    assert result.record.target.media_type == want.media_type
    manifest = r.manifest_of(result.record)
    for blob in manifest.blobs():
        assert r.store.has(blob.digest)
        assert r.store.verify_blob(blob.digest)
    assert r.store.fsck().clean
    assert result.record.artifact == (tag.startswith("artifact-") and tag != "artifact-image")
    assert not [n for n in os.listdir(os.path.join(str(tmp_path), "content", "ingest")) if n.endswith(".part")]


def test_layer_mix_keeps_gzip_zstd_and_plain_layers(anon: peers.Registry, tmp_path: object) -> None:
    r = resolver(tmp_path)
    manifest = r.manifest_of(r.pull(f"{anon.host}/lab/layers-mix:v1").record)
    assert [layer.media_type.rsplit(".", 1)[-1] for layer in manifest.layers] == ["tar+gzip", "tar+zstd", "tar"]


def test_a_digest_reference_pulls_that_manifest(anon: peers.Registry, fixtures_layout: str, tmp_path: object) -> None:
    want = layout_refs(fixtures_layout)["kitten"].digest
    result = resolver(tmp_path).pull(f"{anon.host}/lab/kitten@{want}")
    assert result.record.target.digest == want
    assert result.record.name == f"{anon.host}/lab/kitten@{want}"


def test_a_missing_tag_is_not_found(anon: peers.Registry, tmp_path: object) -> None:
    with pytest.raises(ImageNotFoundError) as exc:
        resolver(tmp_path).pull(f"{anon.host}/lab/kitten:nope")
    assert str(exc.value).startswith(f'failed to pull and unpack image "{anon.host}/lab/kitten:nope"')
    assert "not found" in str(exc.value)


def test_no_tag_means_latest(anon: peers.Registry, fixtures_layout: str, tmp_path: object) -> None:
    peers.skopeo_copy(fixtures_layout, "kitten", anon, "lab/kitten", dest_tag="latest")
    result = resolver(tmp_path).pull(f"{anon.host}/lab/kitten")
    assert result.record.name == f"{anon.host}/lab/kitten:latest"


# --- index handling: the node's platform, variant included ----------------------------------------


@pytest.mark.parametrize(
    ("platform", "arch"),
    [
        (Platform("linux", "amd64"), b"amd64\n"),
        (Platform("linux", "arm64", "v8"), b"arm64\n"),
        (Platform("linux", "arm64"), b"arm64\n"),  # arm64 means v8 (containerd's normalisation)
        (Platform("linux", "aarch64"), b"arm64\n"),
    ],
)
def test_an_index_resolves_to_the_node_platform(
    anon: peers.Registry, fixtures_layout: str, tmp_path: object, platform: Platform, arch: bytes
) -> None:
    r = resolver(tmp_path, platform)
    record = r.pull(f"{anon.host}/lab/multi:v1").record
    index = parse_manifest(r.store.read_blob(record.target.digest))
    assert isinstance(index, Index)
    assert record.target.digest == layout_refs(fixtures_layout)["multi"].digest
    chosen = next(d for d in index.manifests if d.digest == record.manifest_digest)
    assert chosen.platform is not None and chosen.platform.matches(platform)
    assert layer_file(r.store, r.manifest_of(record), "arch") == arch
    other = next(d for d in index.manifests if d.digest != record.manifest_digest)
    assert not r.store.has(other.digest)  # only the node's platform is fetched


@pytest.mark.parametrize(
    "platform", [Platform("linux", "s390x"), Platform("linux", "arm64", "v7"), Platform("windows", "amd64")]
)
def test_no_matching_platform_names_the_available_ones(
    anon: peers.Registry, tmp_path: object, platform: Platform
) -> None:
    r = resolver(tmp_path, platform)
    with pytest.raises(PlatformError) as exc:
        r.pull(f"{anon.host}/lab/multi:v1")
    assert f"no matching manifest for {platform}" in str(exc.value)
    assert "(available: linux/amd64, linux/arm64/v8)" in str(exc.value)
    assert r.image_db.all() == []


def test_the_default_platform_is_the_host(anon: peers.Registry, tmp_path: object) -> None:
    import platform as host

    store = ContentStore(os.path.join(str(tmp_path), "content"))
    r = ImagePuller(store, registry_factory=RegistryAccess(True))
    machine = host.machine().lower()
    if machine not in ("x86_64", "amd64", "aarch64", "arm64"):
        pytest.skip(f"the multi fixture has no {machine} manifest")
    record = r.pull(f"{anon.host}/lab/multi:v1").record
    want = b"amd64\n" if machine in ("x86_64", "amd64") else b"arm64\n"
    assert layer_file(r.store, r.manifest_of(record), "arch") == want


# --- Basic auth (htpasswd) --------------------------------------------------------------------------


def test_basic_auth_sends_each_request_once(basic: peers.Registry, tmp_path: object) -> None:
    mark = basic.mark()
    record = resolver(tmp_path).pull(f"{basic.host}/lab/layers-mix:v1", creds(basic)).record
    entries = [e for e in basic.access(mark) if e.user_agent == "imagevol"]
    paths = [e.path for e in entries]
    assert len(paths) == len(set(paths)), paths  # nothing sent twice (oras-py sends everything twice)
    assert [(e.path, e.status) for e in entries if e.status != 200] == [("/v2/", 401)]
    assert sum(e.is_blob for e in entries) == 4  # config + 3 layers
    assert record.auth == (Credentials(USER, PASSWORD).fingerprint(),)


def test_basic_auth_without_credentials_is_denied(basic: peers.Registry, tmp_path: object) -> None:
    r = resolver(tmp_path)
    with pytest.raises(AuthenticationError) as exc:
        r.pull(f"{basic.host}/lab/v2:v1")
    assert "pull access denied" in str(exc.value)
    assert exc.value.reason == "ErrImagePull"
    assert r.image_db.all() == []


def test_wrong_credentials_are_denied(basic: peers.Registry, tmp_path: object) -> None:
    with pytest.raises(AuthenticationError) as exc:
        resolver(tmp_path).pull(f"{basic.host}/lab/v2:v1", creds(basic, password="wrong"))
    assert "401 Unauthorized" in str(exc.value)
    assert PASSWORD not in str(exc.value) and "wrong" not in str(exc.value)


def test_each_pull_secret_is_tried_in_turn(basic: peers.Registry, tmp_path: object) -> None:
    keyring = Keyring(((basic.host, Credentials(USER, "wrong")), (basic.host, Credentials(USER, PASSWORD))))
    record = resolver(tmp_path).pull(f"{basic.host}/lab/v2:v1", keyring).record
    assert record.auth == (Credentials(USER, PASSWORD).fingerprint(),)  # the ones that worked


def test_a_dockerconfigjson_pull_secret_authenticates(basic: peers.Registry, tmp_path: object) -> None:
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config = json.dumps({"auths": {f"http://{basic.host}": {"auth": auth}}}).encode()
    secret = Secret(ObjectMeta(name="regcred", namespace="default"), DOCKER_CONFIG_JSON, {".dockerconfigjson": config})
    assert resolver(tmp_path).pull(f"{basic.host}/lab/v2:v1", Keyring.from_secrets([secret])).record


def test_ambient_credentials_are_never_used(
    basic: peers.Registry, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """~/.docker/config.json, ORAS_USER/ORAS_PASS and ~/.netrc all hold valid credentials; a pull
    without credentials must still be refused (docs/pulling.md, oras-py gap 7), and a pull with the right
    credentials must not be overridden by a wrong config.json entry."""
    home = os.path.join(str(tmp_path), "home")
    os.makedirs(os.path.join(home, ".docker"))
    good = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    with open(os.path.join(home, ".docker", "config.json"), "w") as f:
        json.dump({"auths": {basic.host: {"auth": good}}}, f)
    with open(os.path.join(home, ".netrc"), "w") as f:
        f.write(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    os.chmod(os.path.join(home, ".netrc"), 0o600)
    monkeypatch.setenv("HOME", home)
    monkeypatch.setenv("DOCKER_CONFIG", os.path.join(home, ".docker"))
    monkeypatch.setenv("ORAS_USER", USER)
    monkeypatch.setenv("ORAS_PASS", PASSWORD)
    with pytest.raises(AuthenticationError):
        resolver(tmp_path).pull(f"{basic.host}/lab/v2:v1")
    bad = base64.b64encode(f"{USER}:wrong".encode()).decode()
    with open(os.path.join(home, ".docker", "config.json"), "w") as f:
        json.dump({"auths": {basic.host: {"auth": bad}}}, f)
    assert resolver(os.path.join(str(tmp_path), "2")).pull(f"{basic.host}/lab/v2:v1", creds(basic)).record


# --- Bearer tokens (distribution's token auth) ------------------------------------------------------


def test_bearer_token_auth_fetches_one_token_per_scope(bearer: peers.Registry, tmp_path: object) -> None:
    assert bearer.token_server is not None
    mark, tokens = bearer.mark(), len(bearer.token_server.requests)
    r = resolver(tmp_path, Platform("linux", "arm64", "v8"))
    record = r.pull(f"{bearer.host}/lab/multi:v1", creds(bearer)).record
    assert record.manifest_digest != record.target.digest
    assert bearer.token_server.requests[tokens:] == [("repository:lab/multi:pull", True)]
    entries = [e for e in bearer.access(mark) if e.user_agent == "imagevol"]
    assert [(e.path, e.status) for e in entries if e.status != 200] == [("/v2/", 401)]
    assert len({e.path for e in entries}) == len(entries)


def test_bearer_without_credentials_fails_to_get_a_token(bearer: peers.Registry, tmp_path: object) -> None:
    with pytest.raises(AuthenticationError) as exc:
        resolver(tmp_path).pull(f"{bearer.host}/lab/v2:v1")
    assert "failed to fetch anonymous token" in str(exc.value)


def test_bearer_with_wrong_credentials_fails(bearer: peers.Registry, tmp_path: object) -> None:
    with pytest.raises(AuthenticationError) as exc:
        resolver(tmp_path).pull(f"{bearer.host}/lab/v2:v1", creds(bearer, password="nope"))
    assert "failed to fetch oauth token" in str(exc.value)


def test_bearer_anonymous_pull_when_the_token_server_allows(fixtures_layout: str, tmp_path: object) -> None:
    with peers.registry(user=USER, password=PASSWORD, token=True, anonymous_pull=True) as reg:
        peers.push_fixtures(fixtures_layout, reg, ("v2",))
        assert reg.token_server is not None
        before = len(reg.token_server.requests)
        assert resolver(tmp_path).pull(f"{reg.host}/lab/v2:v1").record.auth == ("anonymous",)
        assert reg.token_server.requests[before:] == [("repository:lab/v2:pull", False)]


def test_oras_own_api_runs_through_the_safe_client(basic: peers.Registry, tmp_path: pathlib.Path) -> None:
    """oras-py's Registry API over RegistryClient (client.oras): its methods work, with our auth,
    Accept and timeouts, and the client still answers them itself, as when it was oras's Registry."""
    from imagevol.content.sources._client import RegistryClient

    client = RegistryClient(basic.host, plain_http=True, credentials=[Credentials(USER, PASSWORD)])
    mark = basic.mark()
    assert client.oras.get_tags(f"{basic.host}/lab/v2") == ["v1"]
    manifest = getattr(client, "get_manifest")(f"{basic.host}/lab/v2:v1")  # noqa: B009 (forwarded at run time)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    entries = basic.access(mark)
    assert [(e.path, e.status) for e in entries] == [
        ("/v2/", 401),
        ("/v2/lab/v2/tags/list", 200),
        ("/v2/lab/v2/manifests/v1", 200),
    ]
    # A streamed oras call (download_blob reads with iter_content) gets the exact bytes.
    layer = manifest["layers"][0]
    out = tmp_path / "blob"
    client.oras.download_blob(f"{basic.host}/lab/v2", layer["digest"], str(out))
    assert Digest.of(out.read_bytes()) == Digest.parse(layer["digest"])
    with pytest.raises(AttributeError):
        getattr(client, "no_such_method")  # noqa: B009 (only oras's own names are forwarded)
    client.close()
