"""Small text helpers shared by modules that reproduce upstream (Go) messages."""

from __future__ import annotations

import json


def goquote(text: str) -> str:
    """Quote like Go's ``%q`` for the strings that appear in Kubernetes messages: double quotes,
    backslash escapes, non-ASCII kept as is."""
    return json.dumps(text, ensure_ascii=False)
