"""The kubelet's image manager: ``EnsureImageExists`` for image volumes (R3.5 to R3.7, R7.4).

Pull policy, the ``ErrImageNeverPull`` / ``ImagePullBackOff`` / ``InvalidImageName`` outcomes, pull
events against the Pod, and the per ``<podUID>_<image>`` backoff (10 s doubling to 300 s) on an
injectable clock. The runtime is reached through the CRI ``ImageService`` only (:mod:`imagevol.cri`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs

from .._text import goquote, strerror
from ..cri import ANONYMOUS, Image, ImageService, Keyring
from ..errors import ImageVolError, InvalidReferenceError, PullError, RegistryUnavailableError
from ..oci.reference import apply_default_tag
from .events import NORMAL, WARNING, EventRecorder
from .metrics import KubeletMetrics

INITIAL_BACKOFF = 10.0
MAX_BACKOFF = 300.0
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


def should_pull(policy: str, present: bool) -> bool:
    """The kubelet's ``shouldPullImage``: ``Always`` pulls, ``IfNotPresent`` pulls what is absent,
    ``Never`` (and any other value, which validation normally rejects) never pulls."""
    return policy == "Always" or (policy == "IfNotPresent" and not present)


@attrs.define
class Backoff:
    """``flowcontrol.Backoff`` with the kubelet's image settings and no jitter."""

    initial: float = INITIAL_BACKOFF
    maximum: float = MAX_BACKOFF
    #: key -> (current backoff, last update)
    entries: dict[str, tuple[float, float]] = attrs.field(factory=dict)

    def in_backoff(self, key: str, now: float) -> bool:
        """Whether pulls of ``key`` are backing off at ``now``."""
        entry = self.entries.get(key)
        return entry is not None and now - entry[1] < entry[0]

    def next(self, key: str, now: float) -> float:
        """Start or double the backoff of ``key`` after a failure at ``now``; the new duration."""
        entry = self.entries.get(key)
        if entry is None or now - entry[1] > 2 * self.maximum:
            duration = self.initial
        else:
            duration = min(entry[0] * 2, self.maximum)
        self.entries[key] = (duration, now)
        return duration

    def gc(self, now: float) -> None:
        """Forget entries not touched for twice the maximum backoff."""
        for key in [k for k, (_, last) in self.entries.items() if now - last > 2 * self.maximum]:
            del self.entries[key]

    def to_json(self) -> dict[str, Any]:
        """The backoff as node state stores it."""
        return {k: list(v) for k, v in self.entries.items()}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Backoff:
        """The backoff :meth:`to_json` stored."""
        return cls(entries={k: (float(v[0]), float(v[1])) for k, v in obj.items()})


@attrs.frozen
class EnsureResult:
    """``image_ref`` (and the image's status) on success; else ``reason`` (the error name) and
    ``message``."""

    image_ref: str = ""
    message: str = ""
    reason: str = ""
    image: Image | None = None

    @property
    def ok(self) -> bool:
        """Whether the image is there to use."""
        return not self.reason


class ImageManager:
    """The kubelet's image manager (``EnsureImageExists``): pull policy, backoff, pull events and metrics, over the CRI
    image service."""

    def __init__(
        self,
        runtime: ImageService,
        backoff: Backoff,
        metrics: KubeletMetrics,
        *,
        clock: Callable[[], float] = time.time,
        ensure_secret_pulled_images: bool = False,
    ) -> None:
        self.runtime = runtime
        self.backoff = backoff
        self.metrics = metrics
        self.clock = clock
        self.ensure_secret_pulled_images = ensure_secret_pulled_images

    def _must_reverify(self, image: Image, keyring: Keyring) -> bool:
        """KEP-2535 (R7.4): an image first pulled with credentials is only handed to a Pod whose
        own credentials (or anonymous access) have been verified against the registry for it."""
        if not self.ensure_secret_pulled_images or not image.auth or ANONYMOUS in image.auth:
            return False
        # Any host: with mirrors, the credentials that proved access may be a mirror's.
        return not (keyring.fingerprints() & set(image.auth))

    def ensure(
        self,
        pod_uid: str,
        requested: str,
        policy: str,
        keyring: Keyring,
        recorder: EventRecorder,
        field_path: str = "",
    ) -> EnsureResult:
        """Make the image ``reference`` present as ``policy`` asks, recording the kubelet's events on ``recorder``;
        never raises for a pull failure (the result carries it)."""

        def log(type_: str, reason: str, message: str) -> None:
            recorder.record(type_, reason, message, field_path)

        try:
            image = apply_default_tag(requested)
        except InvalidReferenceError as exc:
            msg = f"Failed to apply default image tag {goquote(requested)}: {exc}"
            log(WARNING, "InspectFailed", msg)
            return EnsureResult(message=msg, reason="InvalidImageName")
        status = self.runtime.image_status(image)
        present = status is not None
        if present and status is not None and policy != "Always" and self._must_reverify(status, keyring):
            present = False  # treated as absent for this Pod: the registry must be asked again
        if not should_pull(policy, present):
            if present and status is not None:
                log(NORMAL, "Pulled", f"Container image {goquote(requested)} already present on machine")
                return EnsureResult(status.id, image=status)
            if status is not None:
                msg = (
                    f"Container image {goquote(requested)} is not present with pull policy of Never "
                    "(pulled with other credentials; this Pod's credentials are not verified)"
                )
            else:
                msg = f"Container image {goquote(requested)} is not present with pull policy of Never"
            log(WARNING, "ErrImageNeverPull", msg)
            return EnsureResult(message=msg, reason="ErrImageNeverPull")
        key = f"{pod_uid}_{image}"
        now = self.clock()
        if self.backoff.in_backoff(key, now):
            msg = f"Back-off pulling image {goquote(requested)}"
            log(NORMAL, "BackOff", msg)
            return EnsureResult(message=msg, reason="ImagePullBackOff")
        log(NORMAL, "Pulling", f"Pulling image {goquote(requested)}")
        started = time.monotonic()
        try:
            result = self.runtime.pull_image(image, keyring)
        except (ImageVolError, OSError) as raised:
            failure = raised if isinstance(raised, ImageVolError) else _local_pull_error(image, raised)
            log(WARNING, "Failed", f"Failed to pull image {goquote(requested)}: {failure}")
            self.backoff.next(key, self.clock())
            return self._pull_error(requested, failure)
        waited = time.monotonic() - started
        size = result.image.size
        self.metrics.observe_pull(result.duration, size)
        log(
            NORMAL,
            "Pulled",
            f"Successfully pulled image {goquote(requested)} in {_go_duration(result.duration)} "
            f"({_go_duration(waited)} including waiting). Image size: {size} bytes.",
        )
        self.backoff.gc(self.clock())
        return EnsureResult(result.image_ref, image=result.image)

    @staticmethod
    def _pull_error(requested: str, exc: ImageVolError) -> EnsureResult:
        """``evalCRIPullErr``: a message starting with the ``RegistryUnavailable`` sentinel maps to
        that reason, anything else to ``ErrImagePull``."""
        text = str(exc)
        if isinstance(exc, RegistryUnavailableError) or text.startswith("RegistryUnavailable"):
            rest = text.removeprefix("RegistryUnavailable") if text.startswith("RegistryUnavailable") else f": {text}"
            return EnsureResult(
                message=f"image pull failed for {requested} because the registry is unavailable{rest}",
                reason="RegistryUnavailable",
            )
        if isinstance(exc, InvalidReferenceError):
            return EnsureResult(message=text, reason="InvalidImageName")
        return EnsureResult(message=text, reason="ErrImagePull")


def _local_pull_error(image: str, exc: OSError) -> PullError:
    """A pull that failed on this node (disk full, read-only or unreadable store), worded as
    containerd words it but without the host path it would print: Pod authors read this."""
    return PullError(f"failed to pull and unpack image {goquote(image)}: {strerror(exc)}")


def _go_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()`` after ``Truncate(time.Millisecond)``."""
    ms = int(seconds * 1000)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    total_s, ms_rem = divmod(ms, 1000)
    h, rem = divmod(total_s, 3600)
    m, s = divmod(rem, 60)
    frac = f".{ms_rem:03d}".rstrip("0").rstrip(".") if ms_rem else ""
    out = ""
    if h:
        out += f"{h}h"
    if h or m:
        out += f"{m}m"
    return out + f"{s}{frac}s"
