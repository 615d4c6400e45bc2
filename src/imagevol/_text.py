"""Small text helpers shared by modules that reproduce upstream (Go) messages."""

from __future__ import annotations

import json
import os


def goquote(text: str) -> str:
    """Quote like Go's ``%q`` for the strings that appear in Kubernetes messages: double quotes,
    backslash escapes, non-ASCII kept as is. A lone surrogate (YAML's ``"\\ud800"`` decodes to one)
    is escaped, so the result can always be printed as UTF-8."""
    quoted = json.dumps(text, ensure_ascii=False)
    if quoted.isascii():
        return quoted
    return quoted.encode("utf-8", "backslashreplace").decode("utf-8")


def strerror(exc: OSError) -> str:
    """An OS error as Go prints a ``syscall.Errno`` (``no space left on device``): the C library's
    text in lower case, without ``[Errno N]`` and without the file name Python attaches."""
    if exc.errno is None:
        return str(exc.strerror or exc).lower()
    return os.strerror(exc.errno).lower()
