"""Mirrors with containers-registries.conf(5) semantics: prefix matching (Hypothesis), location
rewriting, mirrors in order then the location, ``insecure``, ``blocked``, digest/tag-only mirrors,
and ``oci-layout:`` mirrors for offline use. Integration tests use two real registries."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagevol.content.pull import ImagePuller
from imagevol.content.sources._client import RetryPolicy
from imagevol.content.sources.mirrors import RegistriesConfig, match_length
from imagevol.content.sources.registry import RegistryAccess
from imagevol.content.store import ContentStore
from imagevol.errors import BlockedRegistryError, ImageNotFoundError, PullError
from imagevol.oci.reference import parse, parse_normalized
from tests.helpers import peers

# --- matching, as containers/image does it ------------------------------------------------------------

component = st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)
hostname = st.lists(component, min_size=2, max_size=4).map(".".join)
port = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))
path = st.lists(component, min_size=1, max_size=4).map("/".join)


@given(host=hostname, port=port, repo=path, cut=st.integers(0, 10))
def test_a_prefix_matches_only_at_component_boundaries(host: str, port: str, repo: str, cut: int) -> None:
    name = f"{host}{port}/{repo}"
    parts = name.split("/")
    boundary = "/".join(parts[: 1 + cut % len(parts)])
    assert match_length(name, boundary) == len(boundary)
    # Cutting inside the last component of the prefix never matches.
    last = parts[cut % len(parts)]
    if len(last) > 1:
        inner = "/".join([*parts[: cut % len(parts)], last[:-1]])
        assert match_length(name, inner) == -1


@given(sub=st.lists(component, min_size=1, max_size=3).map(".".join), domain=hostname, repo=path)
def test_wildcards_match_subdomains_only(sub: str, domain: str, repo: str) -> None:
    wildcard = f"*.{domain}"
    assert match_length(f"{sub}.{domain}/{repo}", wildcard) == len(f"{sub}.{domain}")
    assert match_length(f"{domain}/{repo}", wildcard) == -1  # the domain itself is not a subdomain
    assert match_length(f"{sub}{domain}/{repo}", wildcard) == -1  # no dot: not a subdomain
    assert match_length(f"other.org/{sub}.{domain}/{repo}", wildcard) == -1  # not in the host
    assert match_length(f"{sub}.{domain}.evil.org/{repo}", wildcard) == -1


@given(host=hostname, repo=path, data=st.data())
def test_the_longest_prefix_wins_and_ties_go_to_the_first(host: str, repo: str, data: st.DataObject) -> None:
    name = f"{host}/{repo}"
    parts = name.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    chosen = data.draw(st.lists(st.sampled_from(prefixes), min_size=1, max_size=6))
    order = data.draw(st.permutations(chosen))
    conf = RegistriesConfig.from_dict(
        {"registry": [{"prefix": p, "location": f"loc{i}.test/x"} for i, p in enumerate(order)]}
    )
    found = conf.find(name)
    assert found is not None
    longest = max(len(p) for p in order)
    assert found.prefix == next(p for p in order if len(p) == longest)
    assert found.location == f"loc{order.index(found.prefix)}.test/x"


@given(host=hostname, repo=path, tag=st.from_regex(r"[a-z0-9][a-z0-9._-]{0,10}", fullmatch=True), data=st.data())
def test_rewriting_replaces_the_matched_prefix_and_stays_valid(
    host: str, repo: str, tag: str, data: st.DataObject
) -> None:
    name = f"{host}/{repo}"
    parts = name.split("/")
    prefix = "/".join(parts[: data.draw(st.integers(1, len(parts)))])
    conf = RegistriesConfig.from_dict(
        {
            "registry": [
                {"prefix": prefix, "location": "primary.test:5000/base", "mirror": [{"location": "mirror.test/m"}]}
            ]
        }
    )
    ref = parse(f"{name}:{tag}")
    sources = conf.pull_sources(ref)
    rest = name[len(prefix) :]
    assert [(s.endpoint.location, s.repository) for s in sources] == [
        ("mirror.test", f"m{rest}"),
        ("primary.test:5000", f"base{rest}"),
    ]
    for s in sources:
        assert parse(f"{s.endpoint.location}/{s.repository}:{tag}")  # a valid reference


def test_no_entry_means_the_reference_itself() -> None:
    ref = parse_normalized("busybox:1")
    [only] = RegistriesConfig().pull_sources(ref)
    assert (only.endpoint.location, only.repository, only.is_mirror) == ("docker.io", "library/busybox", False)


def test_digest_only_and_tag_only_mirrors() -> None:
    conf = RegistriesConfig.from_dict(
        {
            "registry": [
                {
                    "prefix": "r.test",
                    "mirror": [
                        {"location": "all.test"},
                        {"location": "digests.test", "pull-from-mirror": "digest-only"},
                        {"location": "tags.test", "pull-from-mirror": "tag-only"},
                    ],
                }
            ]
        }
    )
    by_tag = conf.pull_sources(parse("r.test/app:v1"))
    by_digest = conf.pull_sources(parse("r.test/app@sha256:" + "a" * 64))
    assert [s.endpoint.location for s in by_tag] == ["all.test", "tags.test", "r.test"]
    assert [s.endpoint.location for s in by_digest] == ["all.test", "digests.test", "r.test"]
    only_digests = RegistriesConfig.from_dict(
        {"registry": [{"prefix": "r.test", "mirror-by-digest-only": True, "mirror": [{"location": "m.test"}]}]}
    )
    assert [s.endpoint.location for s in only_digests.pull_sources(parse("r.test/app:v1"))] == ["r.test"]
    assert [s.endpoint.location for s in only_digests.pull_sources(parse("r.test/app@sha256:" + "a" * 64))] == [
        "m.test",
        "r.test",
    ]


def test_wildcard_entries_keep_the_host_or_move_it() -> None:
    conf = RegistriesConfig.from_dict(
        {"registry": [{"prefix": "*.corp.test", "mirror": [{"location": "cache.test/corp"}]}]}
    )
    sources = conf.pull_sources(parse("eu.corp.test/team/app:v1"))
    assert [(s.endpoint.location, s.repository) for s in sources] == [
        ("cache.test", "corp/team/app"),
        ("eu.corp.test", "team/app"),
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"prefix": "*.corp.test/team"}, "wildcarded prefix"),
        ({"prefix": "r.test", "location": "https://r.test"}, "URI schemes are not supported"),
        ({"location": ""}, "needs a prefix or a location"),
        ({"prefix": "r.test", "mirror": [{"location": "m.test", "pull-from-mirror": "sometimes"}]}, "pull-from-mirror"),
    ],
)
def test_invalid_entries_are_refused(entry: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RegistriesConfig.from_dict({"registry": [entry]})


def test_blocked_registries_refuse_every_reference_they_match() -> None:
    conf = RegistriesConfig.from_dict({"registry": [{"prefix": "bad.test", "blocked": True}]}, source="r.conf")
    with pytest.raises(BlockedRegistryError, match=r"registry bad\.test is blocked in r\.conf"):
        conf.pull_sources(parse("bad.test/app:v1"))
    assert [s.endpoint.location for s in conf.pull_sources(parse("good.test/app:v1"))] == ["good.test"]


# --- against real registries -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def primary(fixtures_layout: str) -> Iterator[peers.Registry]:
    with peers.registry() as reg:
        peers.push_fixtures(fixtures_layout, reg, ("v2", "kitten"))
        yield reg


@pytest.fixture(scope="module")
def mirror(fixtures_layout: str) -> Iterator[peers.Registry]:
    with peers.registry() as reg:
        peers.push_fixtures(fixtures_layout, reg, ("v2",), repo_prefix="cache/lab")
        yield reg


def resolver(tmp_path: object, conf: str, *, plain_http: bool = False) -> ImagePuller:
    os.makedirs(str(tmp_path), exist_ok=True)
    path = os.path.join(str(tmp_path), "registries.conf")
    with open(path, "w") as f:
        f.write(conf)
    access = RegistryAccess(plain_http=plain_http, retry=RetryPolicy(attempts=1))
    store = ContentStore(os.path.join(str(tmp_path), "content"))
    return ImagePuller(store, RegistriesConfig.load(path), registry_factory=access)


def two_registries(primary: peers.Registry, mirror: peers.Registry, extra: str = "") -> str:
    return (
        f'[[registry]]\nprefix = "example.test/lab"\nlocation = "{primary.host}/lab"\ninsecure = true\n{extra}'
        f'[[registry.mirror]]\nlocation = "{mirror.host}/cache/lab"\ninsecure = true\n'
    )


def manifest_gets(reg: peers.Registry, mark: int) -> list[str]:
    return [e.path for e in reg.access(mark) if e.is_manifest and e.method == "GET"]


def test_the_mirror_serves_first(primary: peers.Registry, mirror: peers.Registry, tmp_path: object) -> None:
    r = resolver(tmp_path, two_registries(primary, mirror))
    marks = primary.mark(), mirror.mark()
    record = r.pull("example.test/lab/v2:v1").record
    assert record.name == "example.test/lab/v2:v1"  # named by the logical reference
    assert manifest_gets(mirror, marks[1]) == ["/v2/cache/lab/v2/manifests/v1"]
    assert manifest_gets(primary, marks[0]) == []


def test_what_the_mirror_lacks_comes_from_the_location(
    primary: peers.Registry, mirror: peers.Registry, tmp_path: object
) -> None:
    r = resolver(tmp_path, two_registries(primary, mirror))
    marks = primary.mark(), mirror.mark()
    assert r.pull("example.test/lab/kitten:v1").record
    assert manifest_gets(mirror, marks[1]) == ["/v2/cache/lab/kitten/manifests/v1"]
    assert manifest_gets(primary, marks[0]) == ["/v2/lab/kitten/manifests/v1"]


def test_an_unreachable_mirror_is_skipped(primary: peers.Registry, tmp_path: object) -> None:
    conf = (
        f'[[registry]]\nprefix = "example.test/lab"\nlocation = "{primary.host}/lab"\ninsecure = true\n'
        f'[[registry.mirror]]\nlocation = "127.0.0.1:{peers.free_port()}/x"\ninsecure = true\n'
    )
    assert resolver(tmp_path, conf).pull("example.test/lab/v2:v1").record


def test_when_everything_fails_every_source_is_named(
    primary: peers.Registry, mirror: peers.Registry, tmp_path: object
) -> None:
    with pytest.raises(ImageNotFoundError) as exc:
        resolver(tmp_path, two_registries(primary, mirror)).pull("example.test/lab/nothing:v1")
    text = str(exc.value)
    assert f"{mirror.host}/cache/lab/nothing:v1: not found" in text
    assert f"{primary.host}/lab/nothing:v1: not found" in text


def test_a_digest_only_mirror_is_not_asked_for_tags(
    primary: peers.Registry, mirror: peers.Registry, tmp_path: object
) -> None:
    r = resolver(tmp_path, two_registries(primary, mirror, "mirror-by-digest-only = true\n"))
    mark = mirror.mark()
    record = r.pull("example.test/lab/v2:v1").record
    assert manifest_gets(mirror, mark) == []
    r.pull(f"example.test/lab/v2@{record.target.digest}")
    assert manifest_gets(mirror, mark) == [f"/v2/cache/lab/v2/manifests/{record.target.digest}"]


def test_insecure_falls_back_from_https_to_http(primary: peers.Registry, tmp_path: object) -> None:
    conf = f'[[registry]]\nprefix = "example.test"\nlocation = "{primary.host}"\ninsecure = true\n'
    assert resolver(tmp_path, conf).pull("example.test/lab/v2:v1").record
    secure = f'[[registry]]\nprefix = "example.test"\nlocation = "{primary.host}"\n'
    with pytest.raises(PullError):  # HTTPS only: the plain-HTTP registry cannot answer
        resolver(os.path.join(str(tmp_path), "2"), secure).pull("example.test/lab/v2:v1")


def test_a_blocked_registry_is_never_contacted(primary: peers.Registry, tmp_path: object) -> None:
    conf = f'[[registry]]\nprefix = "{primary.host}/lab"\nblocked = true\n'
    mark = primary.mark()
    with pytest.raises(BlockedRegistryError) as exc:
        resolver(tmp_path, conf, plain_http=True).pull(f"{primary.host}/lab/v2:v1")
    assert str(exc.value).startswith(f'failed to pull and unpack image "{primary.host}/lab/v2:v1": registry ')
    assert primary.access(mark) == []
    # Other repositories of the same registry are not blocked: asked, and not found there.
    with pytest.raises(ImageNotFoundError):
        resolver(tmp_path, conf, plain_http=True).pull(f"{primary.host}/lab-other/x:v1")


def test_an_oci_layout_mirror_works_offline(fixtures_layout: str, tmp_path: object) -> None:
    closed = peers.free_port()
    conf = (
        f'[[registry]]\nprefix = "offline.test/lab"\nlocation = "127.0.0.1:{closed}/lab"\n'
        f'[[registry.mirror]]\nlocation = "oci-layout:{fixtures_layout}"\n'
    )
    r = resolver(tmp_path, conf, plain_http=True)
    for tag in ("v2", "multi", "artifact-raw", "layers-mix"):
        assert r.pull(f"offline.test/lab:{tag}").record.name == f"offline.test/lab:{tag}"
    assert r.store.fsck().clean
