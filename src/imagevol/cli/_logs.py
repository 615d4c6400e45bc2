"""``logs``: what a container wrote to its standard output and error (containers run for real)."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from ._common import EXIT_OK, Command, CommandError, node_from_args


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pod")
    p.add_argument("-c", "--container", default=None)
    p.add_argument("-p", "--previous", action="store_true", help="the previous instance of the container")


def logs(args: argparse.Namespace, out: TextIO) -> int:
    """Print the container's log, as ``kubectl logs`` does; a simulated container wrote nothing."""
    node = node_from_args(args)
    record = node.get_pod(args.pod, args.namespace)
    name = args.container or record.pod.spec.containers[0].name
    try:
        state = record.state(name)
    except KeyError:
        raise CommandError(f"container {name} is not valid for pod {args.pod}") from None
    container_id = state.previous_id if args.previous else state.container_id
    if not container_id:
        if args.previous:
            raise CommandError(f'previous terminated container "{name}" in pod "{args.pod}" not found')
        raise CommandError(
            f'container "{name}" in pod "{args.pod}" is waiting to start: {state.reason or "ContainerCreating"}'
        )
    status = node.runtime.container_status(container_id)
    if status is None or not status.log_path:
        return EXIT_OK
    try:
        with open(status.log_path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return EXIT_OK
    out.flush()
    if out is sys.stdout:
        sys.stdout.buffer.write(data)
    else:
        out.write(data.decode(errors="replace"))
    return EXIT_OK


LOGS = Command("logs", "print what a container wrote (containers run with --run-containers)", logs, _arguments)
