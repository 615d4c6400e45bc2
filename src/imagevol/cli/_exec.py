"""``exec``: what a container sees through its image-volume mounts, from the read-only view, or with
``--real`` a real command inside the container on the OCI runtime."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from ._common import EXIT_OK, Command, CommandError, node_from_args


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pod")
    p.add_argument("-c", "--container", default=None)
    p.add_argument(
        "--real",
        action="store_true",
        help="run a real command inside the container with runc (as root): in the running container when "
        "the node runs containers, else in a one-off container with the same root filesystem and mounts",
    )
    # `main` cuts everything after `--` off before parsing, so options may follow POD (`-c`, `--real`).
    p.add_argument("argv", nargs="*", help="-- COMMAND ARGS...")


def exec_(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``args.argv`` in the container's view (or for real); the exit status is the command's."""
    from ..errors import ImageVolError
    from ..exec.view import ContainerView, ViewError

    node = node_from_args(args)
    argv = list(args.argv)
    record = node.get_pod(args.pod, args.namespace)
    name = args.container or record.pod.spec.containers[0].name
    try:
        state = record.state(name)
    except KeyError:
        raise ViewError(f"container {name} is not valid for pod {args.pod}") from None
    if state.state != "running" or not state.container_id:
        raise ViewError(
            f"container {name!r} is not running ({state.reason or state.state}"
            + (f": {state.message}" if state.message else "")
            + ")"
        )
    container = node.runtime.container_status(state.container_id)
    if container is None:
        raise ViewError(f"container {name!r} has no runtime record")
    if args.real:
        out.flush()
        try:
            return node.runtime.exec_real(state.container_id, argv)
        except ImageVolError as exc:
            raise CommandError(
                f"exec --real: {exc}. Without --real, exec shows the container's view of its image volumes."
            ) from None
    view = ContainerView(name, container.mounts, node.runtime.open_mount)
    for chunk in view.run(argv):
        out.flush()
        sys.stdout.buffer.write(chunk) if out is sys.stdout else out.write(chunk.decode(errors="replace"))
    return EXIT_OK


EXEC = Command(
    "exec",
    "run cat/ls/stat/readlink in a container's view of its mounts (or, with --real, any command)",
    exec_,
    _arguments,
)
