"""The kubelet's image-volume metrics (R6.1 to R6.4) and ``kubelet_image_pull_duration_seconds``.

Counts are plain numbers kept in node state (so separate CLI invocations add up); exposition goes
through prometheus-client in the classic text format that ``promtool check metrics`` lints. Help
texts carry the stability level the way Kubernetes' component-base prints it (``[ALPHA] ...``).
prometheus-client (and the HTTP server and e-mail parser it brings) is imported only by exposition:
every Pod sync and pull counts here, and only ``metrics`` and ``serve-metrics`` print.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TextIO

import attrs

if TYPE_CHECKING:
    from prometheus_client.core import Metric

REQUESTED = "kubelet_image_volume_requested"
SUCCEEDED = "kubelet_image_volume_mounted_succeed"
ERRORS = "kubelet_image_volume_mounted_errors"
PULL_DURATION = "kubelet_image_pull_duration_seconds"

#: How image-volume mounts are counted (``--metrics-mode``). R6.4: ``upstream`` reproduces the
#: known over-count of kubernetes PR #138460, ``fixed`` counts only start attempts that reached the
#: runtime's CreateContainer (:class:`~imagevol.kubelet.pod_sync.Kubelet`).
METRICS_MODES = ("upstream", "fixed")

_HELP = {
    REQUESTED: "Number of requested image volumes.",
    SUCCEEDED: "Number of successful image volume mounts.",
    ERRORS: "Number of failed image volume mounts.",
}

#: Buckets and size labels of kubelet_image_pull_duration_seconds (pkg/kubelet/metrics).
PULL_BUCKETS = (1.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 240.0, 300.0, 360.0, 480.0, 600.0, 900.0,
                1200.0, 1800.0, 2700.0, 3600.0)  # fmt: skip
_SIZE_LABELS = ((10 * 1024**2, "0-10MB"), (100 * 1024**2, "10MB-100MB"), (500 * 1024**2, "100MB-500MB"),
                (1024**3, "500MB-1GB"), (5 * 1024**3, "1GB-5GB"), (10 * 1024**3, "5GB-10GB"),
                (20 * 1024**3, "10GB-20GB"), (50 * 1024**3, "20GB-50GB"), (100 * 1024**3, "50GB-100GB"))  # fmt: skip


def size_label(size: int) -> str:
    """The ``image_size_in_bytes`` label of a pull of ``size`` bytes."""
    for limit, label in _SIZE_LABELS:
        if size < limit:
            return label
    return "100GB+"


@attrs.define
class _Histogram:
    buckets: list[int] = attrs.field(factory=lambda: [0] * len(PULL_BUCKETS))
    count: int = 0
    sum: float = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(PULL_BUCKETS):
            if value <= bound:
                self.buckets[i] += 1
        self.count += 1
        self.sum += value


@attrs.define
class KubeletMetrics:
    """Counter values and the pull-duration histogram of one node."""

    requested: int = 0
    succeeded: int = 0
    errors: int = 0
    pull_durations: dict[str, _Histogram] = attrs.field(factory=dict)
    #: ``ALPHA`` (1.33, 1.34), ``BETA`` (1.35+), or empty when the version has no such metrics.
    stability: str = "ALPHA"
    #: More families exposed after the kubelet's (the runtime's ``imagevol_lazy_*``); not stored.
    collectors: tuple[Callable[[], Iterable[Metric]], ...] = ()

    def observe_pull(self, seconds: float, size: int) -> None:
        """Count a pull of ``size`` bytes that took ``seconds``."""
        self.pull_durations.setdefault(size_label(size), _Histogram()).observe(seconds)

    # --- persistence ---

    def to_json(self) -> dict[str, Any]:
        """The values as node state stores them."""
        return {
            "requested": self.requested,
            "succeeded": self.succeeded,
            "errors": self.errors,
            "pull_durations": {k: attrs.asdict(v) for k, v in self.pull_durations.items()},
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], stability: str = "ALPHA") -> KubeletMetrics:
        """The values :meth:`to_json` stored, exposed at ``stability`` (empty: before 1.33, none)."""
        return cls(
            int(obj.get("requested", 0)),
            int(obj.get("succeeded", 0)),
            int(obj.get("errors", 0)),
            {k: _Histogram(**v) for k, v in obj.get("pull_durations", {}).items()},
            stability,
        )

    # --- exposition ---

    def collect(self) -> Iterator[Metric]:
        """The metric families, as a prometheus-client collector yields them."""
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        if self.stability:
            for name, value in (
                (REQUESTED, self.requested),
                (SUCCEEDED, self.succeeded),
                (ERRORS, self.errors),
            ):
                family = CounterMetricFamily(name, f"[{self.stability}] {_HELP[name]}")
                family.add_metric([], value)
                yield family
        hist = HistogramMetricFamily(
            PULL_DURATION,
            "[ALPHA] Duration in seconds to pull an image.",
            labels=["image_size_in_bytes"],
        )
        for label, h in sorted(self.pull_durations.items()):
            buckets = [(_fmt(b), float(c)) for b, c in zip(PULL_BUCKETS, h.buckets, strict=True)]
            buckets.append(("+Inf", float(h.count)))
            hist.add_metric([label], buckets, h.sum)
        yield hist
        for collector in self.collectors:
            yield from collector()

    def exposition(self) -> bytes:
        """The Prometheus classic text exposition of these metrics."""
        from prometheus_client.core import CollectorRegistry
        from prometheus_client.exposition import generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(lambda: self))
        return bytes(generate_latest(registry))


def _fmt(bound: float) -> str:
    return str(int(bound)) if bound == int(bound) else str(bound)


class _Collector:
    """Collects the node's current values on every scrape (``source`` reads node state)."""

    def __init__(self, source: Callable[[], KubeletMetrics]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        return self.source().collect()


def serve(
    source: Callable[[], KubeletMetrics], port: int, log: TextIO | None = None, address: str = "127.0.0.1"
) -> None:
    """Serve the metrics on ``http://ADDRESS:PORT/metrics`` until interrupted (Ctrl-C raises
    ``KeyboardInterrupt`` here, after the server is closed). This is prometheus-client's own HTTP
    server, so a scraper that asks for OpenMetrics (``Accept: application/openmetrics-text``) gets
    it, and the classic text format otherwise; every scrape reads the node's current values
    through ``source``. Binding fails with ``OSError`` (a busy port, an unknown address)."""
    import threading

    from prometheus_client.core import CollectorRegistry
    from prometheus_client.exposition import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(source))
    server, thread = start_http_server(port, addr=address, registry=registry)
    try:
        if log is not None:
            bound = server.server_address[1]
            host = f"[{address}]" if ":" in address else address
            log.write(f"serving metrics on http://{host}:{bound}/metrics\n")
            log.flush()
        threading.Event().wait()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
