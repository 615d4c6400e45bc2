"""The unique part of a temporary name: what an atomic write renames into place, a staging
directory, a scratch directory. Unique without a lock, across processes and threads; crash
recovery recognises such names by their place, never by this part."""

from __future__ import annotations

import os


def nonce() -> str:
    """128 random bits in hex: as long as ``uuid.uuid4().hex``, without importing ``uuid`` (which a
    pull would load for nothing else)."""
    return os.urandom(16).hex()
