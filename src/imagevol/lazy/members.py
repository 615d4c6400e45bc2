"""Tar members as index entries, and the check that a TOC describes exactly a tar's members.

This package does not read tar itself: it is handed the members a tar reader decoded (the
project's streaming reader, which decodes names exactly as the layer applier sees them), through
:data:`MemberReader`. Two uses:

* a plain (TOC-less) layer is indexed by one streaming pass over its blob that writes nothing:
  :func:`entries_from_members` keeps each member's metadata and its ordinal, from which a later
  pass extracts only the members a sub path needs;
* a TOC is held against a tar (the tar-split of a zstd:chunked layer, or the whole blob when it
  is completed in the background): :func:`check_members_match` refuses any difference in order,
  name, type, link, mode, owner, size, device numbers, extended attributes or time. A TOC that
  disagrees with its tar would make the lazy view differ from what a full pull shows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from ..errors import LazyFormatError
from .toc import Entry


class MemberLike(Protocol):
    """What the project's tar reader decodes of a member (``type`` is the tar type flag)."""

    @property
    def type(self) -> str:
        """The tar type flag."""

    @property
    def name(self) -> str:
        """The member's path in the layer."""

    @property
    def linkname(self) -> str:
        """A link's target."""

    @property
    def size(self) -> int:
        """A regular file's size in bytes."""

    @property
    def mode(self) -> int:
        """Permission bits (and setuid, setgid, sticky)."""

    @property
    def uid(self) -> int:
        """Owner."""

    @property
    def gid(self) -> int:
        """Group."""

    @property
    def mtime_ns(self) -> int:
        """Modification time in nanoseconds."""

    @property
    def devmajor(self) -> int:
        """A device's major number."""

    @property
    def devminor(self) -> int:
        """A device's minor number."""

    @property
    def xattrs(self) -> Mapping[str, bytes] | None:
        """Extended attributes, None for none."""


#: A tar member reader: given a source of uncompressed tar bytes (a callable returning the next
#: chunk, ``b""`` at the end), the members up to the end-of-archive marker. The project's is
#: ``lambda src: iter(TarReader(src).next, None)``.
MemberReader = Callable[[Callable[[], bytes]], Iterator[MemberLike]]

#: Tar type flags in the TOC vocabulary.
TAR_TYPES = {"0": "reg", "1": "hardlink", "2": "symlink", "3": "char", "4": "block", "5": "dir", "6": "fifo"}


def entry_of(member: MemberLike) -> Entry:
    """The index entry of one decoded member (its payload stays in the blob)."""
    try:
        kind = TAR_TYPES[member.type]
    except KeyError:
        raise LazyFormatError("unsupported", f"{member.name!r}: unsupported tar entry type {member.type!r}") from None
    return Entry(
        name=member.name,
        type=kind,
        linkname=member.linkname,
        mode=member.mode,
        uid=member.uid,
        gid=member.gid,
        mtime_ns=member.mtime_ns,
        size=member.size if kind == "reg" else 0,
        devmajor=member.devmajor,
        devminor=member.devminor,
        xattrs=dict(member.xattrs) if member.xattrs else None,
    )


def entries_from_members(members: Iterable[MemberLike]) -> list[Entry]:
    """The entries of a plain layer, in tar order (an entry's position is its member ordinal)."""
    return [entry_of(m) for m in members]


def check_members_match(entries: Sequence[Entry], members: Iterable[MemberLike], *, time_slack_ns: int = 0) -> None:
    """Refuse (``mismatch``) unless ``members`` are exactly ``entries``, one for one, in order.
    ``time_slack_ns``: how far apart times may be (eStargz TOCs keep whole seconds only)."""
    count = 0
    for m in members:
        if count >= len(entries):
            raise LazyFormatError("mismatch", f"the tar has an entry {m.name!r} that the TOC does not list")
        _same(entries[count], m, time_slack_ns)
        count += 1
    if count != len(entries):
        raise LazyFormatError("mismatch", f"the TOC lists {entries[count].name!r}, which the tar does not have")


def _same(entry: Entry, member: MemberLike, time_slack_ns: int) -> None:
    kind = TAR_TYPES.get(member.type)
    size = member.size if kind == "reg" else 0
    # The common case in one comparison, without building an entry per member; any difference
    # (or an unsupported type) goes the long way, which names what differs.
    if (
        kind is not None
        and entry.name == member.name
        and entry.type == kind
        and entry.linkname == member.linkname
        and entry.mode == member.mode
        and entry.uid == member.uid
        and entry.gid == member.gid
        and entry.size == size
        and kind not in ("char", "block")
        and not entry.xattrs
        and not member.xattrs
        and abs(entry.mtime_ns - member.mtime_ns) <= time_slack_ns
    ):
        return
    _differences(entry, member, time_slack_ns)


def _differences(entry: Entry, member: MemberLike, time_slack_ns: int) -> None:
    got = entry_of(member)
    fields = ["name", "type", "linkname", "mode", "uid", "gid", "size"]
    if got.type in ("char", "block"):
        fields += ["devmajor", "devminor"]
    for field in fields:
        if getattr(entry, field) != getattr(got, field):
            raise LazyFormatError("mismatch", f"TOC and tar disagree on the {field} of {entry.name!r}")
    if dict(entry.xattrs or {}) != dict(got.xattrs or {}):
        raise LazyFormatError("mismatch", f"TOC and tar disagree on the extended attributes of {entry.name!r}")
    if abs(entry.mtime_ns - got.mtime_ns) > time_slack_ns:
        raise LazyFormatError("mismatch", f"TOC and tar disagree on the modification time of {entry.name!r}")
