"""Pod commands: ``apply``, ``get``, ``describe``, ``delete`` and ``sync``."""

from __future__ import annotations

import argparse
import time
from typing import TextIO

from .._text import goquote
from ..errors import DecodeError
from ._common import EXIT_FAIL, EXIT_OK, Command, CommandError, duration, node_from_args, read_manifest
from ._output import describe_pod, format_event_line, get_pods

#: The names kubectl accepts for Pods.
_POD = ("pod", "pods", "po")


def _apply_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--filename", required=True, help="YAML file, or - for standard input")


def apply(args: argparse.Namespace, out: TextIO) -> int:
    """Admit (API server) and sync (kubelet) the Pods of a file, store its Secrets; exit 0 when
    every regular container runs."""
    node = node_from_args(args)
    body, source = read_manifest(args.filename)
    try:
        results = node.apply(body)
    except DecodeError as exc:
        raise CommandError(f"error parsing {source}: {exc}") from None
    code = EXIT_OK
    for what, record in results:
        out.write(what + "\n")
        if record is None:
            continue
        out.write("Events:\n")
        for event in record.events:
            out.write("  " + format_event_line(event, record) + "\n")
        out.write("Containers:\n")
        for state in record.containers:
            detail = state.reason + (f": {state.message}" if state.message else "")
            out.write(
                f"  {state.name}: {state.state.capitalize()}"
                + (f" ({detail})" if state.state != "running" and detail else "")
                + "\n"
            )
            if state.kind == "containers" and state.state != "running":
                code = EXIT_FAIL
    return code


def _get_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=("pods", "pod", "po", "images"))


def get(args: argparse.Namespace, out: TextIO) -> int:
    """``get pods`` in kubectl's table, or ``get images`` (reference, image ID, size)."""
    node = node_from_args(args)
    if args.kind == "images":
        for image in node.runtime.list_images():
            out.write(f"{image.reference}\t{image.id}\t{image.size}\n")
        return EXIT_OK
    out.write(get_pods(node.pods()))
    return EXIT_OK


def _named_pod_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=_POD)
    p.add_argument("name")


def describe(args: argparse.Namespace, out: TextIO) -> int:
    node = node_from_args(args)
    record = node.get_pod(args.name, args.namespace)
    mounts = {}
    for state in record.containers:
        status = node.runtime.container_status(state.container_id) if state.container_id else None
        for m in status.mounts if status is not None else ():
            mounts[(state.name, m.container_path)] = m
    out.write(describe_pod(record, node.now(), mounts))
    return EXIT_OK


def delete(args: argparse.Namespace, out: TextIO) -> int:
    node = node_from_args(args)
    node.delete_pod(args.name, args.namespace)
    out.write(f"pod {goquote(args.name)} deleted\n")
    return EXIT_OK


def _sync_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--advance", type=duration, default=0.0, help="advance the node clock first (e.g. 30s)")
    p.add_argument("--watch", action="store_true", help="keep syncing every --interval")
    p.add_argument("--interval", type=duration, default=10.0)


def sync(args: argparse.Namespace, out: TextIO) -> int:
    """One kubelet pass over every Pod (or one every ``--interval`` with ``--watch``); exit 0 when
    every Pod runs."""
    node = node_from_args(args)
    while True:
        if args.advance:
            node.advance(args.advance)
        records = node.sync()
        out.write(get_pods(records))
        if not args.watch:
            return EXIT_OK if all(r.phase == "Running" for r in records) else EXIT_FAIL
        out.flush()
        time.sleep(args.interval)


APPLY = Command("apply", "admit and run the Pods (and Secrets) of a YAML file", apply, _apply_arguments)
GET = Command("get", "list objects", get, _get_arguments)
DESCRIBE = Command("describe", "show a Pod as kubectl describe would", describe, _named_pod_arguments)
DELETE = Command("delete", "delete a Pod (its mounts are released)", delete, _named_pod_arguments)
SYNC = Command("sync", "run one kubelet pass over every Pod (retries, backoff)", sync, _sync_arguments)
