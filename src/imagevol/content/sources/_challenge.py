"""``WWW-Authenticate`` challenges (RFC 7235), as registries send them.

oras-py reads only ``key="value"`` pairs out of the header and never looks at the scheme, which is
why its token backend mistakes a Basic realm for a token server (oras-py gap 5 in docs/pulling.md).
This parser keeps the scheme, accepts several challenges in one header, tokens as well as quoted
strings (with ``\\`` escapes, and commas inside quotes as in ``scope="repository:a:pull,push"``),
and never raises: a malformed header yields what could be read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import attrs

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_SPACE = " \t"


@attrs.frozen
class Challenge:
    """One challenge: a lower-case ``scheme`` (``basic``, ``bearer``) and its parameters (keys
    lower-case, values as sent)."""

    scheme: str
    params: Mapping[str, str] = attrs.field(factory=dict)

    def get(self, key: str) -> str:
        return self.params.get(key, "")


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge in one ``WWW-Authenticate`` header value, in order."""
    out: list[tuple[str, dict[str, str]]] = []
    i, n = 0, len(header)
    while i < n:
        while i < n and header[i] in _SPACE + ",":
            i += 1
        m = _TOKEN.match(header, i)
        if m is None:
            i += 1  # not a token: skip one character and resynchronise
            continue
        name, j = m.group(0), m.end()
        k = j
        while k < n and header[k] in _SPACE:
            k += 1
        if not (k < n and header[k] == "=" and out):
            out.append((name.lower(), {}))
            i = j
            continue
        value, i = _value(header, k + 1)
        out[-1][1].setdefault(name.lower(), value)
    return [Challenge(scheme, params) for scheme, params in out]


def _value(header: str, i: int) -> tuple[str, int]:
    n = len(header)
    while i < n and header[i] in _SPACE:
        i += 1
    if i < n and header[i] == '"':
        i += 1
        chars: list[str] = []
        while i < n and header[i] != '"':
            if header[i] == "\\" and i + 1 < n:
                i += 1
            chars.append(header[i])
            i += 1
        return "".join(chars), i + 1
    j = i
    while j < n and header[j] not in _SPACE + ",":
        j += 1
    return header[i:j], j


def quote(value: str) -> str:
    """``value`` as an RFC 7230 quoted-string (used by tests to build headers)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(challenges: list[Challenge]) -> str:
    """The header value for ``challenges`` (the inverse of :func:`parse_challenges`)."""
    parts = []
    for ch in challenges:
        params = ",".join(f"{k}={quote(v)}" for k, v in ch.params.items())
        parts.append(f"{ch.scheme} {params}".rstrip())
    return ", ".join(parts)
