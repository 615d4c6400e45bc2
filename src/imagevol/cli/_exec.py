"""What a container sees through its image-volume mounts: ``exec`` (file commands in the read-only
view, or with ``--real`` a real command inside the container on the OCI runtime) and ``tree`` (the
mounts drawn: entries, modes, symlink targets, where each mount and its sub path start)."""

from __future__ import annotations

import argparse
import stat
import sys
from typing import TYPE_CHECKING, TextIO

from .._text import escape_controls, goquote
from ._common import (
    EXIT_FAIL,
    EXIT_OK,
    Command,
    CommandError,
    default_container,
    namespace,
    no_all_namespaces,
    node_from_args,
)

if TYPE_CHECKING:
    from ..cri import ContainerStatus, MountStatus
    from ..exec.view import TreeEntry
    from ..node import Node


def _container_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("pod", metavar="POD", help="the Pod")
    p.add_argument("-c", "--container", default=None, help="the container (default: the Pod's default container)")
    p.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="accepted as kubectl accepts it, and refused: a container is named in one namespace",
    )


def _running_container(node: Node, args: argparse.Namespace) -> tuple[str, ContainerStatus]:
    """The container ``POD [-c C]`` names, which must be running; its runtime status."""
    from ..exec.view import ViewError

    no_all_namespaces(args)
    record = node.get_pod(args.pod, namespace(args))
    name = default_container(record, args.container, sys.stderr)
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
    return name, container


# --- exec --------------------------------------------------------------------------------------------


def _exec_arguments(p: argparse.ArgumentParser) -> None:
    _container_options(p)
    p.add_argument(
        "--real",
        action="store_true",
        help="run a real command inside the container with runc (as root): in the running container when "
        "the node runs containers, else in a one-off container with the same root filesystem and mounts",
    )
    # `main` cuts everything after `--` off before parsing, so options may follow POD (`-c`, `--real`).
    p.add_argument(
        "argv",
        nargs="*",
        metavar="-- COMMAND ARGS",
        help="cat, ls, stat or readlink and paths (any command with --real)",
    )


def exec_(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``args.argv`` in the container's view (or for real); the exit status is the command's."""
    from ..errors import ImageVolError
    from ..exec.view import CommandFailedError, ContainerView

    node = node_from_args(args)
    name, container = _running_container(node, args)
    argv = list(args.argv)
    if args.real:
        out.flush()
        try:
            return _terminated(node.runtime.exec_real(container.id, argv))
        except ImageVolError as exc:
            raise CommandError(
                f"exec --real: {exc}. Without --real, exec shows the container's view of its image volumes."
            ) from None
    view = ContainerView(name, container.mounts, node.runtime.open_mount)
    try:
        for chunk in view.run(argv):
            out.flush()
            sys.stdout.buffer.write(chunk) if out is sys.stdout else out.write(chunk.decode(errors="replace"))
    except CommandFailedError as exc:
        out.flush()
        # The command's own error lines, as its stderr would carry them (escaped: they quote paths).
        sys.stderr.write("".join(escape_controls(line) + "\n" for line in str(exc).split("\n")))
        return _terminated(EXIT_FAIL)
    return EXIT_OK


def _terminated(code: int) -> int:
    """kubectl's trailer for a command that exited non-zero; its exit status becomes kubectl's."""
    if code != 0:
        sys.stderr.write(f"command terminated with exit code {code}\n")
    return code


# --- tree --------------------------------------------------------------------------------------------


def _tree_arguments(p: argparse.ArgumentParser) -> None:
    _container_options(p)
    p.add_argument("path", nargs="?", default=None, metavar="PATH", help="where to start (default: every mount)")
    p.add_argument("-L", "--level", type=int, default=None, metavar="N", help="descend at most N levels")


def tree(args: argparse.Namespace, out: TextIO) -> int:
    """Draw what the container sees under its image-volume mounts, as ``tree -p`` draws a
    directory: modes, names, symlink targets (never followed), and at each mount point the image,
    digest and sub path it shows."""
    from ..exec.view import ContainerView

    if args.level is not None and args.level < 0:
        raise CommandError(f"invalid level {args.level}: must be 0 or more")
    node = node_from_args(args)
    name, container = _running_container(node, args)
    view = ContainerView(name, container.mounts, node.runtime.open_mount)
    starts = [args.path] if args.path else [m.container_path for m in view.mount_points()]
    if not starts:
        out.write(f"container {name!r} has no image-volume mounts\n")
    dirs = files = 0
    for i, start in enumerate(starts):
        if i:
            out.write("\n")
        for entry in view.tree(start, args.level):
            out.write(_tree_line(entry) + "\n")
            if entry.depth:
                is_dir = stat.S_ISDIR(entry.mode)
                dirs, files = dirs + is_dir, files + (not is_dir)
    out.write(f"\n{dirs} director{'y' if dirs == 1 else 'ies'}, {files} file{'' if files == 1 else 's'}\n")
    return EXIT_OK


def _tree_line(entry: TreeEntry) -> str:
    branches = "".join("    " if last else "│   " for last in entry.last[:-1])
    if entry.depth:
        branches += "└── " if entry.last[-1] else "├── "
    mode = stat.filemode(entry.mode)
    line = f"{branches}[{mode}]  {shown(entry.name)}"
    if entry.target:
        line += f" -> {shown(entry.target)}"
    if entry.mount is not None:
        line += f"  {_mount_label(entry.mount)}"
    if entry.note:
        line += f"  [{entry.note}]"
    return line


def _mount_label(m: MountStatus) -> str:
    """Where a mount starts: the image, the exact digest and the sub path it shows."""
    digest = m.image_ref.rpartition("@")[2] or m.image_id
    sub = f", sub path {goquote(m.sub_path)}" if m.sub_path else ", whole image"
    kind = "artifact" if m.artifact else "image"
    return f"<- {kind} {m.user_specified_image} ({digest}{sub}; ro,nosuid,nodev)"


def shown(name: str) -> str:
    """A file name as it can be printed safely: as is when printable, else quoted as Go quotes
    it (a raw byte that is not UTF-8 as ``\\xNN``), so that a name holding a newline or a terminal
    escape cannot forge lines of the drawing."""
    if name.isprintable():
        return name
    out = []
    for c in name:
        code = ord(c)
        if 0xDC80 <= code <= 0xDCFF:  # a byte os.listdir could not decode (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif c.isprintable() and c not in '"\\':
            out.append(c)
        else:
            out.append(goquote(c)[1:-1])
    return '"' + "".join(out) + '"'


EXEC = Command(
    "exec",
    "run cat/ls/stat/readlink in a container's view of its mounts (or, with --real, any command)",
    exec_,
    _exec_arguments,
    description="Run a file command (cat, ls, stat, readlink) in the read-only view of a container's image-volume "
    "mounts, or with --real any command inside the container on runc (as root: the running container when the "
    "node runs containers, else a one-off container with the same root filesystem and mounts). The exit status "
    "is the command's. Usage: imagevol exec POD [-c C] -- COMMAND ARGS.",
)
TREE = Command(
    "tree",
    "draw what a container sees under its image-volume mounts",
    tree,
    _tree_arguments,
    description="Draw the entries a container sees under its image-volume mounts (or under PATH), with modes "
    "and symlink targets (never followed), marking where each mount starts: the image, its digest and the sub "
    "path it shows.",
)
