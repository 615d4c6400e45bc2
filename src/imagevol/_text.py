"""Small text helpers shared by modules that reproduce upstream (Go) messages."""

from __future__ import annotations

import os


def goquote(text: str) -> str:
    """Quote like Go's ``strconv.Quote`` (what ``%q`` prints in Kubernetes messages): double quotes,
    ``\\a \\b \\f \\n \\r \\t \\v`` escapes, other control bytes as ``\\xNN``, printable
    non-ASCII kept as is, anything else as ``\\uNNNN`` / ``\\UNNNNNNNN`` (a lone surrogate, which
    YAML's ``"\\ud800"`` decodes to, included: the result can always be printed as UTF-8)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return '"' + "".join(_quote_char(c) for c in text) + '"'


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
               '"': '\\"', "\\": "\\\\"}  # fmt: skip


def _quote_char(c: str) -> str:
    escaped = _GO_ESCAPES.get(c)
    if escaped is not None:
        return escaped
    if c.isprintable():
        return c
    code = ord(c)
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def escape_controls(text: str) -> str:
    """``text`` with every character that is not printable (control bytes, C1 controls such as
    U+0085, line and paragraph separators, lone surrogates) escaped as :func:`goquote` escapes it,
    and nothing else changed: a line built from hostile text (a Pod file, a registry's answer)
    cannot move the cursor, start a terminal escape sequence or forge a line of its own."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _quote_char(c) for c in text)


def strerror(exc: OSError) -> str:
    """An OS error as Go prints a ``syscall.Errno`` (``no space left on device``): the C library's
    text in lower case, without ``[Errno N]`` and without the file name Python attaches."""
    if exc.errno is None:
        return str(exc.strerror or exc).lower()
    return os.strerror(exc.errno).lower()
