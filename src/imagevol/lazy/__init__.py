"""Lazy sub paths: mount a sub path of an image by materialising, and fetching, only what it needs.

The foundation, in the order a lazy mount uses it:

1. :func:`toc_format`, :func:`read_layer_toc`: which table of contents a layer descriptor
   announces (zstd:chunked in both dialects, eStargz), fetched through a :class:`RangedReader` and
   verified against the digest the manifest pins, parsed strictly (:mod:`.toc`);
2. :func:`entries_from_members`: the entries of a plain layer, from one streaming pass of a tar
   reader over its blob (nothing written);
3. :func:`build_index`: the merged tree of all layers, by the layer applier's rules;
4. :func:`resolve`, :func:`closure`: the sub path resolved on the index by the resolver's rules,
   and the entries a partial tree needs;
5. :func:`payload_ranges`, :func:`decode_payload`, :func:`read_payload`: one file's byte ranges,
   and its bytes decoded with a hard cap and verified against the TOC.

Trust: a TOC is trusted only through the manifest's annotation, every byte fetched through the
TOC; the layer's blob digest and diff ID are *not* proven by any of this (a tree built this way is
``toc-verified``, not ``verified``), which :func:`check_members_match` can settle once the whole
blob is in hand. Any error here is a reason to fall back to a full pull, never a mount failure.

The names below are imported on first use (PEP 562, :mod:`imagevol._exports`): the layer applier
imports :mod:`.rules` from here, and an unpack must not pay for the TOC parsers, the index and
the fetchers it never uses.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from .._exports import lazy_exports

if TYPE_CHECKING:
    from .fetch import decode_payload, payload_ranges, read_layer_toc, read_payload, toc_format
    from .index import IndexLimits, MergedIndex, Node, Source, build_index
    from .members import MemberLike, MemberReader, check_members_match, entries_from_members, entry_of
    from .ranges import ByteRange, BytesReader, FileReader, RangedReader, coalesce, read_coalesced, read_exact
    from .resolve import Closure, Follower, Policy, Resolution, closure, resolve
    from .toc import Chunk, Entry, LayerToc, TocFormat, TocLimits

_WHERE = {
    ".fetch": ("decode_payload", "payload_ranges", "read_layer_toc", "read_payload", "toc_format"),
    ".index": ("IndexLimits", "MergedIndex", "Node", "Source", "build_index"),
    ".members": ("MemberLike", "MemberReader", "check_members_match", "entries_from_members", "entry_of"),
    ".ranges": ("ByteRange", "BytesReader", "FileReader", "RangedReader", "coalesce", "read_coalesced", "read_exact"),
    ".resolve": ("Closure", "Follower", "Policy", "Resolution", "closure", "resolve"),
    ".toc": ("Chunk", "Entry", "LayerToc", "TocFormat", "TocLimits"),
}  # fmt: skip

__getattr__, __dir__ = lazy_exports(globals(), {name: module for module, names in _WHERE.items() for name in names})


class _Package(types.ModuleType):
    """``resolve`` names both a submodule and the function this package exports. Loading the
    submodule binds its name in the package (the import system does that, whoever imports it), so
    the binding is redirected to the function, as the package's eager imports used to leave it."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "resolve" and isinstance(value, types.ModuleType):
            value = value.resolve
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "ByteRange",
    "BytesReader",
    "Chunk",
    "Closure",
    "Entry",
    "FileReader",
    "Follower",
    "IndexLimits",
    "LayerToc",
    "MemberLike",
    "MemberReader",
    "MergedIndex",
    "Node",
    "Policy",
    "RangedReader",
    "Resolution",
    "Source",
    "TocFormat",
    "TocLimits",
    "build_index",
    "check_members_match",
    "closure",
    "coalesce",
    "decode_payload",
    "entries_from_members",
    "entry_of",
    "payload_ranges",
    "read_coalesced",
    "read_exact",
    "read_layer_toc",
    "read_payload",
    "resolve",
    "toc_format",
]
