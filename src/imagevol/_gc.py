"""The cyclic garbage collector held off while many long-lived objects are built.

Parsing a table of contents, building the merged index of a lazy mount and reading the node's Pod
index allocate tens or hundreds of thousands of small objects that all stay alive (entries,
chunks, digests, inodes, Pod summaries) and form no reference cycles. Each allocation burst makes
the collector walk every young object again, and every few bursts every object the process holds:
measured on 20,000-entry images, about a fifth to a third of the time went there. Nothing
collectable is made meanwhile, so pausing it loses nothing; reference counting still frees
everything else at once.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Hold off the cyclic collector for the block (a no-op when it is off already, so nested
    blocks and callers that turned it off themselves are left as they were)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
