"""Metric commands: ``metrics`` (print) and ``serve-metrics`` (serve ``/metrics`` on 127.0.0.1)."""

from __future__ import annotations

import argparse
from typing import TextIO

from .._text import strerror
from ._common import EXIT_OK, Command, CommandError, node_from_args, port


def metrics(args: argparse.Namespace, out: TextIO) -> int:
    node = node_from_args(args)
    out.write(node.metrics().exposition().decode())
    return EXIT_OK


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=port, default=10255)


def serve_metrics(args: argparse.Namespace, out: TextIO) -> int:
    from ..kubelet.metrics import serve

    node = node_from_args(args)
    try:
        serve(node.metrics, args.port, out)
    except OSError as exc:
        # The kubelet's words for the same failure: `listen tcp 127.0.0.1:10255: bind: ...`.
        raise CommandError(f"listen tcp 127.0.0.1:{args.port}: bind: {strerror(exc)}") from None
    return EXIT_OK


METRICS = Command("metrics", "print the kubelet metrics (Prometheus text format)", metrics)
SERVE_METRICS = Command(
    "serve-metrics", "serve /metrics on 127.0.0.1 (Prometheus text format)", serve_metrics, _serve_arguments
)
