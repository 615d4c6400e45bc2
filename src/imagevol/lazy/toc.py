"""Tables of contents: the entries of a layer as its TOC (zstd:chunked or eStargz) describes them,
and the strict parser that turns TOC JSON into them.

A TOC is as hostile as a tar header, and more: it also says where each file's bytes are. The
parser therefore refuses, before anything is fetched or indexed:

* JSON that two parsers could read differently: invalid UTF-8, a lone surrogate, a duplicate or
  unknown key (Go's decoder matches keys case-insensitively, so ``"Name"`` would be a second name
  to containers/storage), numbers that are not integers, ``NaN``;
* names and link targets the applier would refuse, with the applier's own rules and kinds
  (:mod:`.rules`): ``..`` elements, NUL, ``.wh.`` directories, bad whiteouts, empty or overlong
  symlink targets, a root entry that is not a directory;
* payload descriptions that do not add up: a non-empty regular file without a digest, offsets
  outside the blob's payload area, chunks that are not contiguous in the file, compressed ranges
  that overlap or go backwards, sizes that do not sum to the file's size, a layer larger than the
  applier's byte limit. Digests then verify every byte fetched against what the TOC promised;
  these checks make sure the promises themselves are coherent, so no range can reach into the TOC,
  another file's bytes, or past the end of the blob.

Size: over 500 lines, because the three lists above are one parser's: every field is typed in one
pass and then read once by the rule that needs it (a TOC holds tens of thousands of entries, so
the parser is written for speed), and splitting the rules from the reading would put each check
in a module apart from the field it guards.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import enum
import functools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..errors import LayerError, LazyFormatError, ManifestError
from ..oci import Digest
from . import rules


class TocFormat(enum.Enum):
    """The table-of-contents formats imagevol reads."""

    ZSTD_CHUNKED = "zstd:chunked"
    ESTARGZ = "estargz"


#: Entry types, as both TOC formats name them (``chunk`` entries are folded into their file).
TYPES = ("reg", "dir", "symlink", "hardlink", "char", "block", "fifo")
EMPTY_SHA256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@attrs.frozen
class TocLimits:
    """Bounds on what a TOC may make us fetch, decompress, parse and hold."""

    #: Compressed and decompressed TOC bytes (containers/storage refuses TOCs over 150 MiB).
    max_toc_bytes: int = 150 * 1024**2
    #: Decompressed tar-split bytes (streamed, never held whole).
    max_tar_split_bytes: int = 4 * 1024**3
    #: Entries, chunk entries included.
    max_entries: int = 4_000_000
    max_depth: int = rules.MAX_DEPTH
    #: Sum of the file sizes (the applier's per-layer limit on uncompressed bytes).
    max_layer_bytes: int = rules.MAX_LAYER_BYTES


DEFAULT_LIMITS = TocLimits()


@attrs.frozen(slots=True)
class Chunk:
    """Where one piece of a file lives in the blob: the compressed bytes ``[offset, end)`` decode
    to the file's bytes ``[chunk_offset, chunk_offset + size)`` after skipping ``inner_offset``
    decoded bytes (eStargz only). A ``zeros`` chunk (zstd:chunked) is never fetched."""

    offset: int
    end: int
    chunk_offset: int
    size: int
    digest: Digest | None = None
    zeros: bool = False
    inner_offset: int = 0


@attrs.frozen(slots=True)
class Entry:
    """One layer entry in tar order: what a tar member says (name as decoded, type in the TOC
    vocabulary of :data:`TYPES`, metadata), and for a regular file where its bytes are (``chunks``)
    and what they hash to (``digest``). ``inline`` holds content already in hand (the TOC member
    ``stargz.index.json`` of an eStargz layer)."""

    name: str
    type: str
    linkname: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    size: int = 0
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] | None = attrs.field(default=None, eq=False)
    digest: Digest | None = None
    chunks: tuple[Chunk, ...] = ()
    inline: bytes | None = attrs.field(default=None, repr=False)


@attrs.frozen
class LayerToc:
    """A verified TOC: its entries, the digest that pinned it, and where the payload area ends."""

    format: TocFormat
    #: ``current`` or ``legacy`` (zstd:chunked dialects), ``estargz``.
    dialect: str
    toc_digest: Digest
    entries: tuple[Entry, ...] = attrs.field(repr=False)
    blob_size: int
    #: Every payload range lies below this offset (where the TOC's frame or member starts).
    payload_end: int
    #: Whether the TOC was checked against the layer's tar-split (zstd:chunked, current dialect).
    tar_split_checked: bool = False
    #: Bytes read from the blob to get and verify the TOC.
    bytes_read: int = 0


# --- JSON, read one way only -------------------------------------------------------------------------

_INT64_MAX = 2**63 - 1
_COMMON_KEYS = frozenset(
    {
        "name", "type", "size", "modtime", "linkName", "mode", "uid", "gid", "devMajor", "devMinor", "xattrs",
        "digest", "offset", "chunkOffset", "chunkSize", "chunkDigest",
    }
)  # fmt: skip
_ENTRY_KEYS = {
    TocFormat.ZSTD_CHUNKED: _COMMON_KEYS | {"accesstime", "changetime", "endOffset", "chunkType"},
    TocFormat.ESTARGZ: _COMMON_KEYS | {"userName", "groupName", "innerOffset"},
}
_TOP_KEYS = {
    TocFormat.ZSTD_CHUNKED: frozenset({"version", "entries", "tarSplitDigest"}),
    TocFormat.ESTARGZ: frozenset({"version", "entries"}),
}


def bad(message: str, kind: str = "invalid_toc") -> LazyFormatError:
    """A :class:`~imagevol.errors.LazyFormatError` of ``kind`` for a malformed table of contents."""
    return LazyFormatError(kind, message)


class _DuplicateKeyError(ValueError):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: One strict decoder for every document: ``json.loads`` with hooks builds a new one per call,
#: which costs more than decoding a tar-split line.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique, parse_constant=_no_constant)


def load_json(raw: bytes, what: str) -> Any:
    """Parse JSON strictly: UTF-8 only, no duplicate keys, no ``NaN``/``Infinity``."""
    try:
        return _DECODER.decode(raw.decode("utf-8"))
    except _DuplicateKeyError as exc:
        raise bad(f"{what} has a duplicate key {exc.args[0]!r}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad(f"{what} is not valid JSON: {type(exc).__name__}") from None


def _text(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key, "")
    if type(value) is str and value.isascii():
        return value  # the common case: nothing to check further
    if not isinstance(value, str):
        raise bad(f"{where}: {key!r} is not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # JSON can spell a lone surrogate; Go reads it as U+FFFD, Python keeps it: two readings.
        raise bad(f"{where}: {key!r} is not valid Unicode") from None
    return value


def _int(obj: Mapping[str, Any], key: str, where: str, *, minimum: int = 0) -> int:
    value = obj.get(key, 0)
    # type() rather than isinstance(): JSON's true and false are bools, which are ints to Python.
    if type(value) is not int or not minimum <= value <= _INT64_MAX:
        raise bad(f"{where}: {key!r} is not an integer in range")
    return value


#: The digest nearly every TOC uses, recognised without the general parser.
_SHA256_TEXT = re.compile(r"sha256:[0-9a-f]{64}")


def _sha256(text: str) -> Digest | None:
    """The digest ``text`` spells when it is a well-formed sha256 one, else None."""
    if len(text) == 71 and _SHA256_TEXT.fullmatch(text):
        return Digest("sha256", text[7:])
    return None


def _digest(obj: Mapping[str, Any], key: str, where: str) -> Digest | None:
    text = obj.get(key, "")
    found = _sha256(text) if type(text) is str else None
    if found is not None:
        return found
    text = _text(obj, key, where)
    if not text:
        return None
    try:
        return Digest.parse(text)
    except ManifestError:
        raise bad(f"{where}: {key!r} is not a digest") from None


_TIME_RE = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def parse_time(text: str, where: str) -> int:
    """An RFC 3339 time in nanoseconds since the epoch; empty and Go's zero time are 0, as a tar
    header with no time says."""
    if not text or text == "0001-01-01T00:00:00Z":
        return 0
    try:
        return _time_ns(text)
    except ValueError:
        raise bad(f"{where}: invalid time {text!r}") from None


@functools.lru_cache(maxsize=4096)
def _time_ns(text: str) -> int:
    """The nanoseconds of one RFC 3339 text (cached: the entries of a layer share few times)."""
    m = _TIME_RE.fullmatch(text)
    if m is None:
        raise ValueError(text)
    year, month, day, hour, minute, second, frac, zone = m.groups()
    tz = datetime.UTC
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        tz = datetime.timezone(sign * datetime.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    when = datetime.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=tz)
    delta = when - _EPOCH
    seconds = delta.days * 86400 + delta.seconds
    return seconds * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


def _xattrs(obj: Mapping[str, Any], where: str) -> dict[str, bytes] | None:
    raw = obj.get("xattrs")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise bad(f"{where}: 'xattrs' is not an object")
    out = {}
    for key in raw:
        value = _text(raw, key, where)
        _text({"k": key}, "k", where)
        try:
            out[key] = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise bad(f"{where}: xattr {key!r} is not base64") from None
    return out or None


# --- entries -------------------------------------------------------------------------------------


@attrs.define
class _Piece:
    offset: int
    chunk_offset: int
    size: int  # 0: to the end of the file (eStargz)
    digest: Digest | None
    zeros: bool
    inner_offset: int
    end: int = 0


#: An entry's fields in :class:`Entry` order, up to ``digest`` (a file's chunks come later).
_Fields = tuple[str, str, str, int, int, int, int, int, int, int, "dict[str, bytes] | None", "Digest | None"]


@attrs.define
class _File:
    fields: _Fields
    end_offset: int  # zstd:chunked endOffset
    pieces: list[_Piece]

    @property
    def name(self) -> str:
        return self.fields[0]

    @property
    def size(self) -> int:
        return self.fields[7]


#: The type of every known entry field: JSON strings and integers (Go decodes TOCs into a typed
#: struct, so a value of another type refuses the whole TOC there too). ``xattrs`` is checked apart.
_STRING_KEYS = frozenset(
    {"name", "type", "modtime", "linkName", "digest", "chunkDigest", "accesstime", "changetime", "chunkType",
     "userName", "groupName"}
)  # fmt: skip
_INT_KEYS = frozenset(
    {"size", "mode", "uid", "gid", "devMajor", "devMinor", "offset", "endOffset", "chunkOffset", "chunkSize",
     "innerOffset"}
)  # fmt: skip


def _check_types(item: dict[str, Any], i: int) -> None:
    """Every field of ``item`` has its type: strings valid Unicode, integers within 64 bits. One
    pass over the fields present, so the code that reads them needs no checks of its own but the
    range of each number."""
    for key, value in item.items():
        kind = type(value)
        if kind is str:
            if key in _STRING_KEYS and (value.isascii() or _unicode_ok(value)):
                continue
        elif kind is int:
            if key in _INT_KEYS and -_INT64_MAX <= value <= _INT64_MAX:
                continue
        elif key == "xattrs":
            continue
        where = f"TOC entry {i}"
        if key in _STRING_KEYS:
            _text(item, key, where)  # raises, naming what is wrong
        raise bad(f"{where}: {key!r} is not an integer in range")


def _unicode_ok(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_toc(
    raw: bytes, fmt: TocFormat, *, payload_end: int, limits: TocLimits = DEFAULT_LIMITS
) -> tuple[list[Entry], Digest | None]:
    """The entries of TOC JSON ``raw`` (and, for zstd:chunked, the tar-split digest it names),
    every rule of the module docstring checked. ``payload_end`` is where the payload area ends."""
    doc = load_json(raw, "TOC")
    if not isinstance(doc, dict) or set(doc) - _TOP_KEYS[fmt]:
        raise bad("TOC is not an object of the known fields")
    if doc.get("version") != 1 or isinstance(doc.get("version"), bool):
        raise bad(f"unsupported TOC version {doc.get('version')!r}", "unsupported")
    items = doc.get("entries")
    if not isinstance(items, list):
        raise bad("TOC has no entry list")
    if len(items) > limits.max_entries:
        raise bad(f"TOC has more than {limits.max_entries} entries", "too_large")
    tar_split = _digest(doc, "tarSplitDigest", "TOC") if fmt is TocFormat.ZSTD_CHUNKED else None
    files: list[_File | Entry] = []
    current: _File | None = None
    keys = _ENTRY_KEYS[fmt]
    total = 0
    for i, item in enumerate(items):
        if type(item) is not dict or not item.keys() <= keys:
            raise bad(f"TOC entry {i} is not an object of the known fields")
        _check_types(item, i)
        kind = item.get("type", "")
        if kind == "chunk":
            if current is None or item.get("name", "") != current.name:
                raise bad(f"TOC entry {i}: chunk entry that does not follow its regular file")
            current.pieces.append(_piece(item, i))
            continue
        current = None
        fields = _fields(item, kind, i, limits)
        size = fields[7]
        if kind == "reg" and size > 0:
            total += size
            if total > limits.max_layer_bytes:
                raise bad(f"the files of the layer add up to more than {limits.max_layer_bytes} bytes", "too_large")
            if fields[11] is None:
                raise bad(f"TOC entry {i}: regular file {fields[0]!r} without a digest")
            end_offset: int = item.get("endOffset", 0)
            if end_offset < 0:
                raise bad(f"TOC entry {i}: 'endOffset' is not an integer in range")
            current = _File(fields, end_offset, [_piece(item, i)])
            files.append(current)
        else:
            entry = Entry(*fields)
            _no_payload(item, entry, f"TOC entry {i}")
            files.append(entry)
    data = [f for f in files if isinstance(f, _File)]
    if fmt is TocFormat.ZSTD_CHUNKED:
        _zstd_ranges(data, payload_end)
    else:
        _estargz_ranges(data, payload_end)
    return [f if isinstance(f, Entry) else _finish(f) for f in files], tar_split


def _fields(item: dict[str, Any], kind: str, i: int, limits: TocLimits) -> _Fields:
    """The fields of a non-chunk entry whose types :func:`_check_types` checked."""
    where = f"TOC entry {i}"
    if kind not in TYPES:
        raise bad(f"{where}: unknown entry type {kind!r}")
    get = item.get
    name: str = get("name", "")
    linkname: str = get("linkName", "")
    size = 0
    if kind == "reg":
        size = get("size", 0)
        if size < 0:
            raise bad(f"{where}: 'size' is not an integer in range")
    devmajor: int = get("devMajor", 0)
    devminor: int = get("devMinor", 0)
    if devmajor < 0 or devminor < 0:
        raise bad(f"{where}: {'devMajor' if devmajor < 0 else 'devMinor'!r} is not an integer in range")
    uid: int = get("uid", 0)
    gid: int = get("gid", 0)
    mtime_ns = parse_time(get("modtime", ""), where)
    xattrs = _xattrs(item, where) if "xattrs" in item else None
    digest = _digest(item, "digest", where)
    # Checked although unused, as containers/storage decodes them.
    if "accesstime" in item:
        parse_time(item["accesstime"], where)
    if "changetime" in item:
        parse_time(item["changetime"], where)
    try:
        _check_names(name, kind, linkname, uid, gid, mtime_ns, limits.max_depth)
    except LayerError as exc:
        raise LazyFormatError(exc.kind, f"{where}: {exc}") from None
    return (name, kind, linkname, get("mode", 0), uid, gid, mtime_ns, size, devmajor, devminor, xattrs, digest)


def check_names(entry: Entry, max_depth: int) -> None:
    """The applier's per-entry rules (:mod:`.rules`), which need no tree: raises ``LayerError``."""
    _check_names(entry.name, entry.type, entry.linkname, entry.uid, entry.gid, entry.mtime_ns, max_depth)


def _check_names(name: str, kind: str, linkname: str, uid: int, gid: int, mtime_ns: int, max_depth: int) -> None:
    parts = rules.clean_name(name)
    rules.check_entry(name, parts, uid=uid, gid=gid, mtime_ns=mtime_ns, max_depth=max_depth)
    if not parts:
        if kind != "dir":
            raise LayerError("invalid_name", f"{name!r}: refusing to change the type of the root directory")
        return
    if rules.whiteout_of(name, parts) is not None:
        return
    if kind == "symlink":
        rules.check_symlink_target(name, linkname)
    elif kind == "hardlink" and not rules.clean_name(linkname, what="link target"):
        raise LayerError("invalid_link", f"{name!r}: hardlink to the root directory")


def _no_payload(item: Mapping[str, Any], entry: Entry, where: str) -> None:
    """Entries with no bytes may not point anywhere in the blob."""
    for key in ("offset", "endOffset", "chunkOffset", "chunkSize", "innerOffset"):
        if _int(item, key, where):
            raise bad(f"{where}: {entry.type} entry {entry.name!r} with a payload {key!r}")
    if _text(item, "chunkDigest", where) or _text(item, "chunkType", where):
        raise bad(f"{where}: {entry.type} entry {entry.name!r} with a chunk")
    if entry.digest is not None and str(entry.digest) != EMPTY_SHA256:
        raise bad(f"{where}: empty {entry.type} entry {entry.name!r} with a content digest")


def _piece(item: dict[str, Any], i: int) -> _Piece:
    """One chunk of a file (its first, from the file's own entry, or a ``chunk`` entry)."""
    get = item.get
    chunk_type = get("chunkType", "")
    if chunk_type not in ("", "zeros"):
        raise bad(f"TOC entry {i}: unknown chunk type {chunk_type!r}")
    offset: int = get("offset", 0)
    if offset < 0:
        raise bad(f"TOC entry {i}: 'offset' is not an integer in range")
    if offset == 0:
        raise bad(f"TOC entry {i}: payload without an offset")
    chunk_offset: int = get("chunkOffset", 0)
    size: int = get("chunkSize", 0)
    if chunk_offset < 0 or size < 0:
        raise bad(f"TOC entry {i}: {'chunkOffset' if chunk_offset < 0 else 'chunkSize'!r} is not an integer in range")
    digest = _digest(item, "chunkDigest", f"TOC entry {i}")
    inner_offset: int = get("innerOffset", 0)
    if inner_offset < 0:
        raise bad(f"TOC entry {i}: 'innerOffset' is not an integer in range")
    return _Piece(offset, chunk_offset, size, digest, chunk_type == "zeros", inner_offset)


def _sizes(f: _File, *, open_end: bool) -> None:
    """Chunks must tile the file: the first at 0, each where the previous ended, the sizes adding
    up to the file's size. ``open_end``: a size of 0 means "to the end of the file" (eStargz)."""
    pieces = f.pieces
    name = f.name
    if len(pieces) == 1 and pieces[0].size in (0, f.size):
        pieces[0].size = f.size
    pos = 0
    for i, p in enumerate(pieces):
        if p.chunk_offset != pos:
            raise bad(f"chunks of {name!r} do not tile the file")
        if p.size == 0 and open_end and i == len(pieces) - 1:
            p.size = f.size - pos
        if p.size <= 0:
            raise bad(f"chunk of {name!r} with no size")
        pos += p.size
    if pos != f.size:
        raise bad(f"chunks of {name!r} add up to {pos} bytes, not {f.size}")


def _zstd_ranges(files: Sequence[_File], payload_end: int) -> None:
    """zstd:chunked: each file's frames ``[offset, endOffset)`` follow the previous file's, lie in
    the payload area, and are cut by its chunks' offsets, which strictly increase."""
    previous = 0
    for f in files:
        name = f.name
        if len(f.pieces) > 1 and not f.pieces[0].size:
            raise bad(f"chunk entries after {name!r}, which declares no chunk size")
        _sizes(f, open_end=False)
        if len(f.pieces) > 1 and any(p.digest is None for p in f.pieces):
            raise bad(f"chunk of {name!r} without a digest")
        if f.pieces[0].offset < previous:
            raise bad(f"payload of {name!r} overlaps an earlier file's")
        for p, nxt in zip(f.pieces, [*f.pieces[1:], None], strict=True):
            p.end = nxt.offset if nxt is not None else f.end_offset
            if p.end <= p.offset:
                raise bad(f"chunks of {name!r} overlap or go backwards")
        if f.end_offset > payload_end:
            raise bad(f"payload of {name!r} reaches past the payload area")
        previous = f.end_offset


def _estargz_ranges(files: Sequence[_File], payload_end: int) -> None:
    """eStargz: every chunk names the gzip member it starts in (``offset``) and where in its
    decoded bytes it starts (``innerOffset``); those strictly increase through the TOC, every
    chunk has a digest (the format requires it), and a chunk's range ends where the next member
    starts (or where the TOC does)."""
    pieces: list[_Piece] = []
    for f in files:
        _sizes(f, open_end=True)
        for p in f.pieces:
            if p.digest is None:
                raise bad(f"chunk of {f.name!r} without a digest")
            if p.zeros:
                raise bad(f"chunk of {f.name!r} has a zstd:chunked chunk type")
            if pieces and (p.offset, p.inner_offset) <= (pieces[-1].offset, pieces[-1].inner_offset):
                raise bad(f"chunks of {f.name!r} overlap or go backwards")
            pieces.append(p)
    if pieces and pieces[-1].offset >= payload_end:
        raise bad("a chunk lies past the payload area")
    _member_ends(pieces, payload_end)


def _member_ends(pieces: Sequence[_Piece], payload_end: int) -> None:
    """A chunk's compressed range runs from its member's start to the next member's start (the
    next distinct offset), or to the start of the TOC for the last one."""
    end = payload_end
    for i in range(len(pieces) - 1, -1, -1):
        p = pieces[i]
        p.end = end
        if i == 0 or pieces[i - 1].offset != p.offset:
            end = p.offset


def _finish(f: _File) -> Entry:
    chunks = tuple(
        [Chunk(p.offset, p.end, p.chunk_offset, p.size, p.digest, p.zeros, p.inner_offset) for p in f.pieces]
    )
    return Entry(*f.fields, chunks)
