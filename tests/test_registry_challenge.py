"""``WWW-Authenticate`` parsing: the scheme is kept (oras-py drops it, gap 5), several challenges
per header, quoted strings with escapes and commas, and no exception on any input."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from imagevol.content.sources._challenge import Challenge, parse_challenges, render

token = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,10}", fullmatch=True)
value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
challenge = st.builds(
    Challenge,
    token.map(str.lower),
    st.dictionaries(token.map(str.lower), value, max_size=4),
)


@given(st.lists(challenge, min_size=1, max_size=3))
def test_rendered_challenges_parse_back(challenges: list[Challenge]) -> None:
    assert parse_challenges(render(challenges)) == challenges


@given(st.text(max_size=200))
def test_any_header_parses_without_error(header: str) -> None:
    for ch in parse_challenges(header):
        assert ch.scheme == ch.scheme.lower()


def test_what_registries_send() -> None:
    assert parse_challenges('Basic realm="test-realm"') == [Challenge("basic", {"realm": "test-realm"})]
    header = (
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:team/app:pull,push",error="insufficient_scope"'
    )
    [bearer] = parse_challenges(header)
    assert bearer.scheme == "bearer"
    assert bearer.get("scope") == "repository:team/app:pull,push"
    assert bearer.get("error") == "insufficient_scope"
    both = parse_challenges('Basic realm=x, Bearer realm="y", Negotiate')
    assert [c.scheme for c in both] == ["basic", "bearer", "negotiate"]
    assert both[0].get("realm") == "x"
