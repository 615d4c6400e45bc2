"""The layer applier's and the sub-path resolver's rules, re-stated for trees that exist only as an
index: names (C2.1), whiteouts (C2.5), symlink targets (C2.7), modes and extended attributes (C2.9),
bounds (C2.12), and the sub-path string rules (C1.1) with their wording.

Every function here gives the same verdict, with the same error ``kind``, as its counterpart in the
applier (``clean_name`` and the entry checks of the changeset module) and in the fd-based resolver
(``validate``): the lazy index must refuse exactly what a full pull refuses, or the two views could
differ. ``clean_name`` and the whiteout names are the applier's own (``trees`` imports them from
here); the other checks are still stated twice, each next to the code that applies it.
"""

from __future__ import annotations

import os

from ..errors import LayerError, SubPathError

#: Linux limits, in bytes: a path (with its NUL) and one name.
PATH_MAX = 4096
NAME_MAX = 255
#: The kernel's MAXSYMLINKS: every walk gives up after this many symlink follows (``loop``).
MAX_SYMLINK_FOLLOWS = 40

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"

#: Set-uid and set-gid: stripped from every file and directory (privilege escalation).
SETID = 0o6000
#: (uid_t)-1 means "leave unchanged" to chown(2): never a real owner.
MAX_ID = 2**32 - 2
MAX_TIME_NS = 2**63 - 1
#: The only extended attributes the applier restores; every other namespace is dropped.
KEPT_XATTR_PREFIXES = ("user.",)

#: The applier's default bounds (``LayerLimits``): entries per layer, directories deep, bytes per layer.
MAX_ENTRIES = 2_000_000
MAX_DEPTH = 512
MAX_LAYER_BYTES = 64 * 1024**3


def clean_name(name: str, *, what: str = "name") -> tuple[str, ...]:
    """The components of a decoded member name (or hardlink target), validated (C2.1).

    A leading ``/`` and ``.``/empty elements are dropped (names are root-relative); NUL or any
    ``..`` element is refused (``invalid_name``, ``invalid_link`` for a link target): a name whose
    meaning depends on what is on disk cannot be checked once and used later. An element over 255
    bytes or a normalised path of 4096 bytes or more is ``toolong``."""
    if len(name) <= NAME_MAX // 4 and "\x00" not in name:
        # The common case (the unpack hot path), decided without building anything twice: a short
        # relative name with no empty, "." or ".." element is its own split.
        elements = name.split("/")
        if "" not in elements and "." not in elements and ".." not in elements:
            return tuple(elements)
    kind = "invalid_name" if what == "name" else "invalid_link"
    if "\x00" in name:
        raise LayerError(kind, f"{what} {name!r} contains NUL")
    parts = tuple(p for p in name.split("/") if p and p != ".")
    if ".." in parts:
        raise LayerError(kind, f"{what} {name!r} contains a '..' element")
    # A str of n characters encodes to at most 4n bytes, so short names need no encoding.
    if len(name) > NAME_MAX // 4 and (
        len(os.fsencode("/".join(parts))) >= PATH_MAX or any(len(os.fsencode(p)) > NAME_MAX for p in parts)
    ):
        raise LayerError("toolong", f"{what} {name[:80]!r}... is too long")
    return parts


def check_entry(name: str, parts: tuple[str, ...], *, uid: int, gid: int, mtime_ns: int, max_depth: int) -> None:
    """The checks the applier makes on every entry after its name, in its order: depth, owner
    range, time range (a uid of 2^32-1 would mean "unchanged" to chown; times beyond 64-bit
    nanoseconds cannot be set)."""
    if len(parts) > max_depth:
        raise LayerError("toolong", f"{name!r} is nested too deeply")
    if not (0 <= uid <= MAX_ID and 0 <= gid <= MAX_ID):
        raise LayerError("invalid_archive", f"{name!r}: uid/gid {uid}:{gid} out of range")
    if not -MAX_TIME_NS <= mtime_ns <= MAX_TIME_NS:
        raise LayerError("invalid_archive", f"{name!r}: modification time out of range")


def whiteout_of(name: str, parts: tuple[str, ...]) -> str | None:
    """For a whiteout entry, what it removes: ``""`` for an opaque marker, else the victim's name;
    None when the entry is no whiteout. A ``.wh.`` directory component is ``invalid_name`` (such a
    name cannot exist in a tree); ``.wh.``, ``.wh..`` and ``.wh...`` are ``invalid_whiteout``
    (they would name the directory itself or its parent). Whiteouts are recognised by name,
    whatever their type."""
    if WHITEOUT_PREFIX not in name or not parts:
        return None
    if any(p.startswith(WHITEOUT_PREFIX) for p in parts[:-1]):
        raise LayerError("invalid_name", f"{name!r}: a directory name cannot start with '.wh.'")
    base = parts[-1]
    if not base.startswith(WHITEOUT_PREFIX):
        return None
    if base == OPAQUE_WHITEOUT:
        return ""
    victim = base[len(WHITEOUT_PREFIX) :]
    if victim in ("", ".", ".."):
        raise LayerError("invalid_whiteout", f"invalid whiteout {'/'.join(parts)!r}")
    return victim


def check_symlink_target(name: str, target: str) -> None:
    """Symlink targets are stored verbatim and only ever interpreted in root (C2.7); an empty or
    NUL-containing target is ``invalid_link``, one of 4096 bytes or more ``toolong``."""
    if not target or "\x00" in target:
        raise LayerError("invalid_link", f"{name!r}: symlink with an empty or NUL-containing target")
    if len(os.fsencode(target)) >= PATH_MAX:
        raise LayerError("toolong", f"{name!r}: symlink target is too long")


def applied_mode(mode: int) -> int:
    """The mode the applier gives a file, FIFO or directory: permission bits, sticky kept,
    set-uid and set-gid stripped (defence in depth next to ``nosuid``)."""
    return mode & 0o7777 & ~SETID


def kept_xattrs(xattrs: dict[str, bytes] | None) -> dict[str, bytes] | None:
    """The extended attributes the applier restores: ``user.*`` only (``security.capability``
    would grant privileges, ``trusted.*`` and ACLs change access)."""
    if not xattrs:
        return None
    kept = {k: v for k, v in xattrs.items() if k.startswith(KEPT_XATTR_PREFIXES)}
    return kept or None


# --- sub paths ---------------------------------------------------------------------------------

#: Go's strerror wording (what upstream runtimes print), by kind, and the errno of each.
SUBPATH_MESSAGES = {
    "invalid": "invalid sub path",
    "escape": "path escapes from parent",
    "notfound": "no such file or directory",
    "notdir": "not a directory",
    "loop": "too many levels of symbolic links",
    "toolong": "file name too long",
    "denied": "permission denied",
}
SUBPATH_ERRNO = {
    "invalid": "EINVAL",
    "escape": "EXDEV",
    "notfound": "ENOENT",
    "notdir": "ENOTDIR",
    "loop": "ELOOP",
    "toolong": "ENAMETOOLONG",
    "denied": "EACCES",
}


def subpath_error(kind: str, shown: str, detail: str = "") -> SubPathError:
    """A sub-path error worded as the fd-based resolver words it (``openat PATH: MESSAGE``)."""
    message = f"openat {shown}: {SUBPATH_MESSAGES[kind]}{': ' + detail if detail else ''}"
    return SubPathError(kind, message, SUBPATH_ERRNO[kind])


def validate_sub_path(sub_path: str) -> str:
    """The sub-path string rules (C1.1), before any lookup: absolute paths, ``..`` elements and NUL
    are ``invalid``; an element over 255 bytes or a path of 4096 bytes or more is ``toolong``.
    Names are raw: no normalisation, ``\\`` is a character."""
    if "\x00" in sub_path:
        raise subpath_error("invalid", sub_path.replace("\x00", "\\x00"), "contains NUL")
    if sub_path[:1] == "/":
        raise subpath_error("invalid", sub_path, "must be a relative path")
    elements = sub_path.split("/")
    if ".." in elements:
        raise subpath_error("invalid", sub_path, "must not contain '..'")
    if len(os.fsencode(sub_path)) >= PATH_MAX or any(len(os.fsencode(e)) > NAME_MAX for e in elements):
        raise subpath_error("toolong", sub_path[:64] + ("..." if len(sub_path) > 64 else ""))
    return sub_path
