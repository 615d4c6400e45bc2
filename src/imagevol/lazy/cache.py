"""Where lazily fetched bytes are kept: one directory per layer blob that is not in the content store.

``<content>/lazy/<alg>/<layer hex>/`` holds, for a layer that was not pulled whole:

* ``range-<offset>-<length>``: the exact byte ranges read to find and verify its TOC (and
  tar-split). They are kept as read, unverified, and verified again (against the digest the
  manifest pins) every time a TOC is parsed from them: a second sub path of the same image costs
  no TOC request, and a corrupted cache can only make the lazy mount fall back to a full pull;
* ``files/<alg>-<hex>``: file payloads, named by the digest the TOC gives them, written only after
  they decoded within their size and matched that digest (temporary name, then rename). Two files
  of one layer with the same content are fetched once.

Nothing here is ever served to a container directly: a partial tree copies what it needs. A
layer's directory goes away when garbage collection finds no image reaching the layer, and when the
layer's blob is in the store (pulled or completed): then the blob is the source of truth.
Temporary files carry their writer's pid and are removed when found after that process is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Sequence

from .._tempname import nonce
from ..content.locks import process_alive
from ..content.ranges import ByteRange, RangedReader
from ..oci import Digest

_RANGE = re.compile(r"range-(\d+)-(\d+)")
_TMP = re.compile(r"\.tmp-(\d+)-[0-9a-f]+")


class LayerCache:
    """The lazy directory of a content store rooted at ``root`` (``<content>/lazy``)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def layer_dir(self, layer: Digest) -> str:
        """The cache directory of one layer (its TOC ranges and file payloads)."""
        return os.path.join(self.root, layer.algorithm, layer.hex)

    def reader(self, layer: Digest, inner: RangedReader | None, size: int) -> CachedReader:
        """A reader of ``layer`` that answers ranges read before from the cache and asks
        ``inner`` (None: nothing may be fetched) for the others, keeping what it gets."""
        return CachedReader(self.layer_dir(layer), inner, size)

    # --- payloads -----------------------------------------------------------------------------

    def payload_path(self, layer: Digest, digest: Digest) -> str:
        """Where the verified payload ``digest`` of the layer is kept."""
        return os.path.join(self.layer_dir(layer), "files", f"{digest.algorithm}-{digest.hex}")

    def has_payload(self, layer: Digest, digest: Digest) -> bool:
        """Whether that payload is cached."""
        return os.path.isfile(self.payload_path(layer, digest))

    def put_payload(self, layer: Digest, digest: Digest, pieces: Iterable[bytes]) -> str:
        """Write ``pieces`` (a verifying iterator: it raises at the end if the bytes do not match)
        under ``digest``; visible only once the iterator finished without error."""
        final = self.payload_path(layer, digest)
        os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
        _write_atomic(final, pieces)
        return final

    # --- garbage collection --------------------------------------------------------------------

    def layers(self) -> list[Digest]:
        """The layers the cache holds something of (for garbage collection)."""
        out = []
        for alg in _listdir(self.root):
            for hex_ in _listdir(os.path.join(self.root, alg)):
                with contextlib.suppress(Exception):
                    out.append(Digest(alg, hex_))
        return out

    def prune(self, keep: Iterable[Digest]) -> list[Digest]:
        """Remove the directory of every layer not in ``keep``, and temporary files of writers
        that are gone. Returns the layers removed."""
        wanted = set(keep)
        removed = []
        for layer in self.layers():
            if layer not in wanted:
                _remove_dir(self.layer_dir(layer))
                removed.append(layer)
                continue
            for sub in (self.layer_dir(layer), os.path.join(self.layer_dir(layer), "files")):
                for name in _listdir(sub):
                    m = _TMP.fullmatch(name)
                    if m is not None and not process_alive(int(m.group(1))):
                        with contextlib.suppress(OSError):
                            os.unlink(os.path.join(sub, name))
        return removed


class CachedReader:
    """A :class:`RangedReader` over one layer that keeps every range it fetched (exactly as
    fetched, by offset and length) and answers those ranges from disk afterwards."""

    def __init__(self, directory: str, inner: RangedReader | None, size: int) -> None:
        self.directory = directory
        self.inner = inner
        self._size = size
        #: Bytes asked of ``inner`` (what the network cost).
        self.fetched = 0

    @property
    def size(self) -> int:
        """The size of the blob in bytes."""
        return self._size

    def _path(self, r: ByteRange) -> str:
        return os.path.join(self.directory, f"range-{r.offset}-{r.length}")

    def read_ranges(self, ranges: Sequence[ByteRange]) -> list[bytes]:
        """The bytes of each range, from the cache when held, else from the registry (then kept)."""
        out: list[bytes | None] = []
        for r in ranges:
            try:
                with open(self._path(r), "rb") as f:
                    data = f.read(r.length + 1)
                out.append(data if len(data) == r.length else None)
            except FileNotFoundError:
                out.append(None)
        missing = [r for r, data in zip(ranges, out, strict=True) if data is None]
        if missing:
            if self.inner is None:
                raise FileNotFoundError("range not cached")
            got = self.inner.read_ranges(missing)
            self.fetched += sum(len(g) for g in got)
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            for r, data in zip(missing, got, strict=True):
                if len(data) == r.length:
                    _write_atomic(self._path(r), [data])
            fetched = iter(got)
            out = [data if data is not None else next(fetched) for data in out]
        return [b for b in out if b is not None]


def _write_atomic(final: str, pieces: Iterable[bytes]) -> None:
    tmp = os.path.join(os.path.dirname(final), f".tmp-{os.getpid()}-{nonce()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            for piece in pieces:
                f.write(piece)
        os.rename(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []

    return True


def _remove_dir(path: str) -> None:
    for top, dirs, files in os.walk(path, topdown=False):
        for name in files:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(top, name))
        for name in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(top, name))
    with contextlib.suppress(OSError):
        os.rmdir(path)
