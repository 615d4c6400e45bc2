"""A registry as a content source: one repository's manifests and blobs over the OCI distribution
API, through :class:`~imagevol.content.sources._client.RegistryClient` (oras-py's request path,
made safe, over the standard library).

Every answer is hostile input. Manifests are read up to 4 MiB and refused beyond (announced or
actual), hashed, and checked against the digest asked for and against ``Docker-Content-Digest``.
Blobs are streamed in reads of up to 1 MiB (oras-py uses 8 KiB, gap 2), each straight from the
socket into one buffer the blob reuses (no allocation per read), with their ``Content-Length``,
``Content-Range`` and ``Content-Encoding`` checked and never more bytes than the descriptor
declares; the content store hashes and counts while writing, so a corrupt blob is never stored. A
dropped or stalled transfer is resumed with ``Range`` from the last byte received (gap 2), a bounded
number of times, and all of it within the blob's budget and low-speed meter: a resume gets no fresh
allowance, so a registry that sends a little and drops, over and over, is cut like a slow one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import attrs

from ...errors import (
    DigestMismatchError,
    ImageNotFoundError,
    ManifestError,
    PullError,
    RegistryUnavailableError,
    SizeMismatchError,
)
from ...oci import INDEX_TYPES, MANIFEST_ACCEPT, MANIFEST_TYPES, MAX_MANIFEST_BYTES, Descriptor, Digest
from ...oci.reference import Reference
from . import _bounds as bounds
from ._bounds import Deadline, SpeedMeter, duration
from ._client import DEADLINE_EXCEEDED, RegistryClient, Reply, RetryPolicy, Timeouts, TransportError
from .auth import Credentials, Keyring
from .mirrors import PullSource

if TYPE_CHECKING:
    # Range reads serve lazy sub paths only: a pull never loads them (nor their multipart parser).
    from .ranged import RegistryBlobReader

CHUNK = 1024 * 1024
DEFAULT_MAX_RESUMES = 5
#: Where ``docker.io`` references are served (the name is not the API host).
DOCKER_HUB_API = "registry-1.docker.io"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class RegistrySource:
    """Serves ``repository`` (tag or digest of ``reference``) from the registry behind ``client``."""

    def __init__(
        self,
        client: RegistryClient,
        repository: str,
        reference: Reference,
        *,
        max_resumes: int = DEFAULT_MAX_RESUMES,
        chunk_size: int = CHUNK,
    ) -> None:
        self.client = client
        self.repository = repository
        self.object = reference.object
        self.pinned = Digest.parse(reference.digest) if reference.digest else None
        self.max_resumes = max_resumes
        self.chunk_size = chunk_size
        at = f"@{reference.digest}" if reference.digest else f":{self.object}"
        self.description = f"{client.host}/{repository}{at}"
        self._raw: dict[Digest, bytes] = {}

    def _url(self, kind: str, ref: str) -> str:
        self.client.ping()  # the scheme is known after the ping
        return f"{self.client.base_url}/v2/{self.repository}/{kind}/{ref}"

    # --- manifests ------------------------------------------------------------------------------

    def resolve(self) -> Descriptor:
        """Ask the registry what the reference names (a HEAD, else GET, of the manifest)."""
        raw, media_type, digest = self._get_manifest(self.object, self.pinned)
        return Descriptor(media_type, digest, len(raw))

    def fetch_manifest(self, desc: Descriptor) -> bytes:
        """The bytes of the manifest or index ``desc``, within the manifest size limit."""
        cached = self._raw.get(desc.digest)
        if cached is not None:
            return cached
        raw, _, _ = self._get_manifest(str(desc.digest), desc.digest)
        return raw

    def _get_manifest(self, ref: str, expected: Digest | None) -> tuple[bytes, str, Digest]:
        url = self._url("manifests", ref)
        accept = {"Accept": ", ".join(MANIFEST_ACCEPT)}
        reply = self.client.request(url, "GET", headers=accept, body_limit=MAX_MANIFEST_BYTES)
        if reply.status_code == 404:
            raise ImageNotFoundError(f"{self.description}: not found")
        if reply.status_code != 200:
            raise _status_error(url, reply)
        length = _content_length(reply, url)
        if length is not None and length > MAX_MANIFEST_BYTES:
            raise ManifestError(
                f"{self.description}: manifest of {length} bytes exceeds the {MAX_MANIFEST_BYTES}-byte limit"
            )
        raw = reply.body
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{self.description}: manifest exceeds the {MAX_MANIFEST_BYTES}-byte limit")
        content_type = reply.headers.get("Content-Type", "").split(";", 1)[0].strip()
        media_type = content_type if content_type in MANIFEST_TYPES | INDEX_TYPES else ""
        digest = Digest.of(raw, expected.algorithm if expected else "sha256")
        if expected is not None and digest != expected:
            raise DigestMismatchError(
                f"{self.description}: manifest {expected} was served as content hashing to {digest}"
            )
        announced = reply.headers.get("Docker-Content-Digest", "")
        if announced:
            try:
                claimed = Digest.parse(announced.strip())
            except ManifestError:
                raise ManifestError(f"{self.description}: invalid Docker-Content-Digest {announced!r}") from None
            if claimed.algorithm == digest.algorithm and claimed != digest:
                raise DigestMismatchError(
                    f"{self.description}: registry says Docker-Content-Digest {claimed}, content hashes to {digest}"
                )
        self._raw[digest] = raw
        return raw, media_type, digest

    # --- blobs ----------------------------------------------------------------------------------

    def fetch_blob(self, desc: Descriptor) -> Iterator[bytes]:
        """The blob's bytes, resumed with ``Range`` after a dropped or stalled transfer (see
        :meth:`fetch_blob_views`; these chunks are copies, the caller may keep them)."""
        for view in self.fetch_blob_views(desc):
            yield bytes(view)

    def fetch_blob_views(self, desc: Descriptor) -> Iterator[memoryview]:
        """The blob's bytes as views of one buffer, each valid only until the next is asked for
        (the content store hashes and writes each before asking), resumed with ``Range`` after a
        dropped or stalled transfer.

        Bounded four ways, none of them reset by a resume: the blob's budget
        (:meth:`Timeouts.blob_budget`) and its low-speed meter, tries without a byte
        (``max_resumes``) and tries in all, and time without a byte (``RetryPolicy.deadline``)."""
        url = self._url("blobs", str(desc.digest))
        t = self.client.timeouts
        clock = bounds.WATCHDOG.clock
        budget = t.blob_budget(desc.size)
        deadline = Deadline.after(
            budget, f"{DEADLINE_EXCEEDED} (blob took longer than its {duration(budget)} budget)", clock
        )
        meter = SpeedMeter(t.low_speed_limit, t.low_speed_time, clock)
        offset = 0
        drops = stalled = 0
        progressed_at = clock()
        buf = memoryview(bytearray(min(self.chunk_size, max(1, desc.size))))
        while True:
            before = offset
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            reply = self.client.request(url, "GET", headers=headers, deadline=deadline, meter=meter)
            failure: TransportError | None = None
            with reply:
                skip = self._check_blob_response(reply, desc, offset, url)
                while True:
                    try:
                        n = reply.readinto(buf)
                    except TransportError as exc:
                        failure = exc
                        break
                    if not n:
                        break
                    chunk = buf[:n]
                    if skip:  # the server ignored Range and started over: drop what we have
                        cut = min(skip, n)
                        chunk, skip = chunk[cut:], skip - cut
                        if not chunk:
                            continue
                    offset += len(chunk)
                    if offset > desc.size:
                        raise SizeMismatchError(
                            f"failed to copy {desc.digest}: registry sent more than the {desc.size} bytes "
                            "its descriptor declares"
                        )
                    yield chunk
                if failure is None and offset == desc.size:
                    return
            why = failure.why if failure is not None else f"connection closed after {offset} of {desc.size} bytes"
            drops += 1
            stalled = 0 if offset > before else stalled + 1
            if offset > before:
                progressed_at = clock()
            starved = clock() - progressed_at > self.client.retry.deadline
            cut = failure is not None and failure.cut  # the budget or the meter: no resume can help
            if cut or stalled >= self.max_resumes or drops > 4 * self.max_resumes or starved:
                raise RegistryUnavailableError(
                    f"failed to copy {desc.digest}: {why} (gave up after {drops} attempts, "
                    f"{offset} of {desc.size} bytes received)"
                )
            self.client.sleep(self.client.retry.delay(stalled + 1))

    def _check_blob_response(self, resp: Reply, desc: Descriptor, offset: int, url: str) -> int:
        """Validate status and headers; return how many leading bytes to drop (a server that
        answers a Range request with the whole blob)."""
        if resp.status_code == 404:
            raise ImageNotFoundError(f"failed to copy: httpReadSeeker: failed open: content at {url} not found")
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise PullError(f"failed to copy {desc.digest}: registry applied Content-Encoding {encoding!r}")
        length = _content_length(resp, url)
        if resp.status_code == 200:
            if length is not None and length != desc.size:
                raise SizeMismatchError(
                    f"failed to copy {desc.digest}: registry announces {length} bytes, descriptor declares {desc.size}"
                )
            return offset
        if resp.status_code == 206 and offset:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", "").strip())
            want_end = desc.size - 1
            if (
                m is None
                or int(m.group(1)) != offset
                or int(m.group(2)) != want_end
                or m.group(3) not in ("*", str(desc.size))
                or (length is not None and length != desc.size - offset)
            ):
                raise PullError(
                    f"failed to copy {desc.digest}: asked for bytes {offset}-{want_end}, registry answered "
                    f"Content-Range {resp.headers.get('Content-Range', '')!r}"
                )
            return 0
        raise _status_error(url, resp)

    def ranged_reader(self, desc: Descriptor, on_fetch: Callable[[int], None] | None = None) -> RegistryBlobReader:
        """Byte ranges of the blob ``desc`` (lazy sub paths), through this source's client."""
        from .ranged import RegistryBlobReader

        return RegistryBlobReader(self.client, self._url("blobs", str(desc.digest)), desc.size, on_fetch=on_fetch)

    def credentials_used(self) -> Credentials | None:
        """The credentials the registry accepted, None when it asked for none."""
        auth = self.client.auth
        return auth.current if auth.challenge is not None else None

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()


def _status_error(url: str, resp: Reply) -> PullError:
    """containerd's wording; still overloaded or down after the retries means unavailable."""
    text = f"unexpected status from GET request to {url}: {resp.status_code} {resp.reason}"
    return RegistryUnavailableError(text) if resp.status_code in (429, 502, 503, 504) else PullError(text)


def _content_length(resp: Reply, url: str) -> int | None:
    value = resp.headers.get("Content-Length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise PullError(f"invalid Content-Length {value!r} from {url}")
    return int(value)


@attrs.frozen
class RegistryAccess:
    """The puller's registry factory: how this node reaches registries.

    ``plain_http`` sends every request over HTTP (the CLI's ``--plain-http``); otherwise HTTPS, or
    HTTPS-then-HTTP for registries.conf entries marked ``insecure``. Credentials for a host come
    from the keyring the pull was given, nothing else."""

    plain_http: bool = False
    timeouts: Timeouts = attrs.field(factory=Timeouts)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    max_resumes: int = DEFAULT_MAX_RESUMES
    sleep: Callable[[float], None] = time.sleep

    def __call__(self, spec: PullSource, keyring: Keyring) -> RegistrySource:
        """A source for one pull of ``spec``, with the keyring's credentials for its host."""
        host = spec.endpoint.location
        client = RegistryClient(
            DOCKER_HUB_API if host == "docker.io" else host,
            plain_http=self.plain_http,
            insecure=spec.endpoint.insecure,
            credentials=keyring.for_host(host),
            timeouts=self.timeouts,
            retry=self.retry,
            sleep=self.sleep,
        )
        return RegistrySource(client, spec.repository, spec.reference, max_resumes=self.max_resumes)
