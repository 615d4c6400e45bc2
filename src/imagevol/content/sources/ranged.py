"""Byte ranges of one blob from a registry: the :class:`~imagevol.content.ranges.RangedReader`
that lazy sub paths fetch TOCs and file payloads through.

It rides on the registry client (:mod:`._client`), so a ranged request has what every request has:
authentication learnt once, the network bounds (a deadline per try, a budget for the bytes asked,
the low-speed meter), bounded retries, redirects followed without their bodies and without
``Authorization`` off the registry's host (the ``Range`` header is kept). What a registry answers
to ``Range`` varies, so the reader goes by behaviour (RFC 9110 section 14, the distribution spec
only says "SHOULD support"):

* several ranges are asked for in one ``GET`` (at most ``max_ranges`` per request); a ``206``
  ``multipart/byteranges`` answer is parsed within bounds (:mod:`._multipart`: at most one part
  per range, at most the bytes asked for plus a small allowance per part);
* a ``416`` or ``400`` to a multi-range request, or a ``206`` with a single part, means the
  registry will not do several ranges at once (zot answers 416, GCR 400, some CDNs one part): the
  answer is closed unread and the reader switches to one range per request from then on;
* a ``200`` means the registry ignores ``Range`` altogether and is sending the whole blob: the
  answer is closed at once, without reading its body (a 2 GB answer for a 10 KiB need,
  containers/image#2792), and the read fails with ``LazyFormatError`` (``range``), which makes
  the lazy mount fall back to a full pull;
* a single range must come back as ``206`` with exactly the ``Content-Range`` asked for and
  exactly that many bytes.

Nothing is verified here but lengths and positions: every byte is checked by the caller against a
digest the manifest pins (the TOC) or the TOC pins (a file).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

from ...errors import ImageNotFoundError, ImageVolError, LazyFormatError, PullError, RegistryUnavailableError
from ..ranges import ByteRange, coalesce
from . import _bounds as bounds
from . import _multipart as multipart
from ._bounds import Deadline, SpeedMeter, duration
from ._client import DEADLINE_EXCEEDED, RegistryClient, Reply

#: Ranges per request: a Range header of ~100 ranges stays well under the 8 KiB header limit of
#: common servers (containers/storage sends up to 1024 and halves on a 400).
DEFAULT_MAX_RANGES = 100


class RegistryBlobReader:
    """The ranges of one blob (``url``, ``size`` bytes) behind ``client``. ``on_fetch`` is told the
    body bytes of every answer used (the lazy-fetch metric); ``bytes_fetched`` and ``requests``
    count them too."""

    def __init__(
        self,
        client: RegistryClient,
        url: str,
        size: int,
        *,
        max_ranges: int = DEFAULT_MAX_RANGES,
        on_fetch: Callable[[int], None] | None = None,
    ) -> None:
        self.client = client
        self.url = url
        self._size = size
        self.max_ranges = max(1, max_ranges)
        self.on_fetch = on_fetch
        #: False once the registry showed it will not serve several ranges in one answer.
        self.multi = True
        self.bytes_fetched = 0
        self.requests = 0

    @property
    def size(self) -> int:
        """The size of the blob in bytes, as its descriptor gives it."""
        return self._size

    def check(self) -> None:
        """``HEAD`` the blob: it must exist with the size its descriptor declares (mirrors are
        tried in order by the caller; a mirror without the blob is skipped before any range)."""
        with self.client.request(self.url, "HEAD") as reply:
            if reply.status_code == 404:
                raise ImageNotFoundError(f"blob at {self.url} not found")
            if reply.status_code != 200:
                raise _status_error(self.url, reply)
            length = reply.announced_length()
            if length is not None and length != self._size:
                raise LazyFormatError(
                    "range", f"the registry has {length} bytes for a blob whose descriptor declares {self._size}"
                )

    def read_ranges(self, ranges: Sequence[ByteRange]) -> list[bytes]:
        """The bytes of each range, in order: one multi-range GET where the registry allows it,
        else one GET per range."""
        out: list[bytes | None] = [None] * len(ranges)
        if self.multi and len(ranges) > 1:
            order = sorted(range(len(ranges)), key=lambda i: ranges[i])
            for start in range(0, len(order), self.max_ranges):
                batch = order[start : start + self.max_ranges]
                if len(batch) == 1:
                    break
                answers = self._multi([ranges[i] for i in batch])
                if answers is None:
                    self.multi = False
                    break
                for i, data in zip(batch, answers, strict=True):
                    out[i] = data
        for i, r in enumerate(ranges):
            if out[i] is None:
                out[i] = self._single(r)
        return [b for b in out if b is not None]

    # --- one request --------------------------------------------------------------------------

    def _get(self, header: str, want: int) -> Reply:
        t = self.client.timeouts
        clock = bounds.WATCHDOG.clock
        budget = t.blob_budget(want)
        deadline = Deadline.after(
            budget, f"{DEADLINE_EXCEEDED} (range request took longer than its {duration(budget)} budget)", clock
        )
        meter = SpeedMeter(t.low_speed_limit, t.low_speed_time, clock)
        self.requests += 1
        reply = self.client.request(self.url, "GET", headers={"Range": header}, deadline=deadline, meter=meter)
        encoding = reply.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            reply.close()
            raise PullError(f"{self.url}: registry applied Content-Encoding {encoding!r}")
        if reply.status_code == 200:
            # The whole blob is coming: abandon it unread (the connection is closed, not drained).
            reply.close()
            raise LazyFormatError(
                "range", "the registry answered a Range request with the whole blob (200); the answer was abandoned"
            )
        return reply

    def _body(self, reply: Reply, limit: int) -> bytes:
        length = reply.announced_length()
        if length is not None and length > limit:
            raise LazyFormatError("range", f"the registry announces {length} bytes where at most {limit} were asked")
        data = reply.read_all(limit)
        if len(data) > limit:
            raise LazyFormatError("range", f"the registry sent more than the {limit} bytes asked for")
        self.bytes_fetched += len(data)
        if self.on_fetch is not None:
            self.on_fetch(len(data))
        return data

    def _single(self, r: ByteRange) -> bytes:
        if r.end > self._size:
            raise LazyFormatError("range", f"range {r.header()} lies outside the {self._size}-byte blob")
        with self._get(f"bytes={r.header()}", r.length) as reply:
            if reply.status_code != 206:
                raise _status_error(self.url, reply)
            first, last = multipart.content_range(reply.headers.get("Content-Range", ""), self._size)
            if (first, last) != (r.offset, r.end - 1):
                raise LazyFormatError(
                    "range", f"asked for bytes {r.header()}, the registry answered bytes {first}-{last}"
                )
            data = self._body(reply, r.length)
        if len(data) != r.length:
            raise LazyFormatError("range", f"range {r.header()}: got {len(data)} bytes instead of {r.length}")
        return data

    def _multi(self, batch: Sequence[ByteRange]) -> list[bytes] | None:
        """The answers for ``batch`` (sorted) from one request, or None when the registry showed
        it does not serve several ranges at once."""
        spans = coalesce(batch, gap=1)  # a Range header lists disjoint ranges: touching ones merge
        if len(spans) == 1:
            # Touching ranges (a TOC and the tar-split behind it) are one span: a single range,
            # whose plain 206 answer says nothing about the registry's multi-range support.
            (span,) = spans
            data = self._single(span)
            return [data[r.offset - span.offset : r.end - span.offset] for r in batch]
        asked = sum(s.length for s in spans)
        header = "bytes=" + ",".join(s.header() for s in spans)
        with self._get(header, asked) as reply:
            if reply.status_code in (400, 416):
                return None
            if reply.status_code != 206:
                raise _status_error(self.url, reply)
            mark = multipart.boundary(reply.headers.get("Content-Type", ""))
            if mark is None:
                return None  # one part: a registry that merges everything (or does one range only)
            body = self._body(reply, asked + multipart.PART_OVERHEAD * len(spans) + 1024)
        parts = multipart.parse(body, mark, self._size, max_parts=len(spans))
        parts.sort()
        starts = [p[0] for p in parts]
        out = []
        for r in batch:
            i = bisect.bisect_right(starts, r.offset) - 1
            if i < 0 or parts[i][0] + len(parts[i][1]) < r.end:
                raise LazyFormatError("range", f"the registry's answer does not cover bytes {r.header()}")
            base, data = parts[i]
            out.append(data[r.offset - base : r.end - base])
        return out


def _status_error(url: str, reply: Reply) -> ImageVolError:
    text = f"unexpected status from GET request to {url}: {reply.status_code} {reply.reason}"
    if reply.status_code == 404:
        return ImageNotFoundError(text)
    if reply.status_code == 416:
        return LazyFormatError("range", text)
    return RegistryUnavailableError(text) if reply.status_code in (429, 502, 503, 504) else PullError(text)
