"""Go's quoting (``strconv.Quote``), which every upstream message that prints a user string uses."""

from __future__ import annotations

import ast

from hypothesis import given
from hypothesis import strategies as st

from imagevol._text import escape_controls, goquote


def test_known_cases_match_go() -> None:
    # Expected values as Go 1.22's strconv.Quote prints them.
    assert goquote("busybox") == '"busybox"'
    assert goquote('a"b\\c') == '"a\\"b\\\\c"'
    assert goquote("a\x1eb") == '"a\\x1eb"'
    assert goquote("\x7f\x00") == '"\\x7f\\x00"'
    assert goquote("\a\b\f\n\r\t\v") == '"\\a\\b\\f\\n\\r\\t\\v"'
    assert goquote("naïve 😀") == '"naïve 😀"'
    assert goquote("\u2028\u0085") == '"\\u2028\\u0085"'
    assert goquote("\U000e0001") == '"\\U000e0001"'


@given(st.text())
def test_quoted_text_is_one_printable_line_that_decodes_back(text: str) -> None:
    quoted = goquote(text)
    assert quoted.isprintable()
    quoted.encode("utf-8")  # never a lone surrogate
    assert quoted[0] == quoted[-1] == '"'
    # Go's escapes are a subset of Python's string-literal escapes: the quoted text reads back.
    assert ast.literal_eval(quoted) == text


def test_escape_controls_escapes_only_what_is_not_printable() -> None:
    assert escape_controls('pods "a\\b" not found') == 'pods "a\\b" not found'
    assert escape_controls("v\x1b[2J\r\u0085\u2028x") == "v\\x1b[2J\\r\\u0085\\u2028x"


@given(st.text())
def test_escaped_text_is_printable_and_keeps_every_printable_character(text: str) -> None:
    escaped = escape_controls(text)
    assert escaped.isprintable()
    escaped.encode("utf-8")  # never a lone surrogate
    if text.isprintable():
        assert escaped == text
    # The printable characters of the text appear in the escaped text, in order.
    rest = iter(escaped)
    assert all(c in rest for c in text if c.isprintable())
