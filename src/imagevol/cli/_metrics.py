"""Metric commands: ``metrics`` (print the exposition) and ``serve-metrics`` (serve ``/metrics``
where Prometheus scrapes it)."""

from __future__ import annotations

import argparse
import socket
from typing import TextIO

from .._text import strerror
from ._common import EXIT_OK, Command, CommandError, node_from_args, port


def metrics(args: argparse.Namespace, out: TextIO) -> int:
    """Print the kubelet metrics in the Prometheus text format."""
    node = node_from_args(args)
    out.write(node.metrics().exposition().decode())
    return EXIT_OK


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=port, default=10255, help="the TCP port; 0 picks a free one (default: %(default)s)")
    p.add_argument(
        "--address",
        default="127.0.0.1",
        metavar="HOST",
        help="the address to listen on, e.g. 0.0.0.0 for every IPv4 address (default: %(default)s)",
    )


def serve_metrics(args: argparse.Namespace, out: TextIO) -> int:
    """Serve ``/metrics`` on ``--address``:``--port`` until Ctrl-C (exit status 130)."""
    from ..kubelet.metrics import serve

    node = node_from_args(args)
    host = f"[{args.address}]" if ":" in args.address else args.address
    try:
        serve(node.metrics, args.port, out, args.address)
    except socket.gaierror:
        # Go's words for an address it cannot resolve: `listen tcp: lookup HOST: no such host`.
        raise CommandError(f"listen tcp: lookup {args.address}: no such host") from None
    except OSError as exc:
        # The kubelet's words for the same failure: `listen tcp 127.0.0.1:10255: bind: ...`.
        raise CommandError(f"listen tcp {host}:{args.port}: bind: {strerror(exc)}") from None
    return EXIT_OK


METRICS = Command(
    "metrics",
    "print the kubelet metrics (Prometheus text format)",
    metrics,
    description="Print the kubelet's image-volume metrics and image pull durations in the Prometheus text "
    "exposition format (docs/metrics.md).",
)
SERVE_METRICS = Command(
    "serve-metrics",
    "serve /metrics for Prometheus (127.0.0.1 by default; OpenMetrics when asked)",
    serve_metrics,
    _serve_arguments,
    description="Serve the kubelet metrics on http://ADDRESS:PORT/metrics with prometheus-client's HTTP server "
    "(the classic text format, or OpenMetrics when the scraper asks for it), reading the node's current values "
    "on every scrape, until interrupted (Ctrl-C: exit status 130). docs/metrics.md has a scrape config.",
)
