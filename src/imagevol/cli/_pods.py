"""Commands that read and remove what the node holds, as kubectl and crictl do: ``get`` (Pods,
images, events), ``describe``, ``delete``, ``logs``, and ``sync`` (one kubelet pass)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from .._text import goquote
from ._apply import add_filename_options
from ._common import (
    EXIT_FAIL,
    EXIT_OK,
    Command,
    CommandError,
    add_output_option,
    all_namespaces,
    default_container,
    duration,
    get_pods,
    namespace,
    no_all_namespaces,
    node_from_args,
    node_never_ran,
    object_namespace,
    read_documents,
    server_error,
    split_kind,
)

if TYPE_CHECKING:
    from ..kubelet.pod_sync import PodRecord
    from ..node import Node

#: The names kubectl accepts for each kind (``imagevol get po``, ``get pod/NAME``).
_POD_KINDS = {"pod": "pods", "pods": "pods", "po": "pods"}
_GET_KINDS = {**_POD_KINDS, "image": "images", "images": "images", "img": "images",
              "event": "events", "events": "events", "ev": "events"}  # fmt: skip
_DELETE_KINDS = {**_POD_KINDS, "secret": "secrets", "secrets": "secrets"}


def _all_namespaces_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-A", "--all-namespaces", action="store_true", help=f"{what} in every namespace (-n is ignored)")


def _errors_after(errors: list[BaseException], root: str) -> int:
    """Report what could not be found after what could (as kubectl does); the exit status."""
    from ._errors import report

    code = EXIT_OK
    for exc in errors:
        code = report(exc, root)
    return code


def _lookup(node: Node, args: argparse.Namespace, names: list[str]) -> tuple[list[PodRecord], list[BaseException]]:
    from ..errors import PodNotFoundError

    if not names:
        return get_pods(node, args), []
    no_all_namespaces(args)
    found: list[PodRecord] = []
    missing: list[BaseException] = []
    for name in names:
        try:
            found.append(node.get_pod(name, namespace(args)))
        except PodNotFoundError as exc:
            missing.append(exc)
    return found, missing


def _no_resources(args: argparse.Namespace) -> None:
    """kubectl's note on standard error when a list is empty."""
    where = "" if all_namespaces(args) else f" in {namespace(args)} namespace"
    sys.stderr.write(f"No resources found{where}.\n")


# --- get ---------------------------------------------------------------------------------------------


def _get_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "kind", metavar="KIND", help="pods (pod, po), images (image, img) or events (event, ev); or KIND/NAME"
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="Pod names, image references or event names")
    add_output_option(p)
    _all_namespaces_option(p, "list Pods or events")


def get(args: argparse.Namespace, out: TextIO) -> int:
    """``get pods`` / ``get pod NAME`` in kubectl's shapes, ``get images`` in crictl's, ``get
    events`` as ``kubectl get events``."""
    kind, names = split_kind([args.kind, *args.names], _GET_KINDS)
    if kind == "pods" and not names and node_never_ran(args):
        # A node that never ran holds no Pod, whatever the layout of its state: list none without
        # building the node (its imports are most of a command's start-up, and building it would
        # create the root). The listing is the same as for a node with no Pods left.
        return _list_pods(args, names, [], time.time, out)
    node = node_from_args(args)
    if kind == "images":
        return _get_images(node, names, args.output, out)
    if kind == "events":
        return _get_events(node, args, names, out)
    missing: list[BaseException] = []
    if not names and args.output in ("", "wide", "name"):
        # A list shows only what the node's Pod index keeps: no record is read unless it changed.
        objects = [s.view for s in node.pod_summaries(None if all_namespaces(args) else namespace(args))]
    else:
        records, missing = _lookup(node, args, names)
        objects = [node.pod_object(r) for r in records]
    _list_pods(args, names, objects, node.now, out)
    return _errors_after(missing, node.root)


def _list_pods(
    args: argparse.Namespace, names: list[str], objects: list[dict[str, Any]], now: Callable[[], float], out: TextIO
) -> int:
    """Print Pod objects as ``-o`` asks (kubectl's table by default; ``now`` is the node's clock,
    read only for a table's ages)."""
    if args.output in ("json", "yaml"):
        from ._output import as_list, dump

        if objects or not names:
            single = len(names) == 1 and len(objects) == 1
            out.write(dump(objects[0] if single else as_list(objects), args.output))
    elif args.output == "name":
        out.write("".join(f"pod/{o['metadata']['name']}\n" for o in objects))
    elif objects:
        from ._output import pods_table

        out.write(pods_table(objects, now(), wide=args.output == "wide", namespaces=all_namespaces(args)))
    elif not names:
        _no_resources(args)
    return EXIT_OK


def _get_images(node: Node, names: list[str], fmt: str, out: TextIO) -> int:
    from ._output import dump, images_object, images_table

    images = node.runtime.list_images()
    if names:
        wanted = set(names)
        images = [i for i in images if wanted & {i.reference, i.id, *i.repo_tags, *i.repo_digests}]
    if fmt in ("json", "yaml"):
        out.write(dump(images_object(images), fmt))
    elif fmt == "name":
        out.write("".join(f"{i.reference}\n" for i in images))
    else:
        out.write(images_table(images, wide=fmt == "wide"))
    return EXIT_OK


def _get_events(node: Node, args: argparse.Namespace, names: list[str], out: TextIO) -> int:
    from ._output import as_list, dump, events_table

    events: list[dict[str, Any]] = []
    for record in get_pods(node, args):
        events += node.event_objects(record)
    events.sort(key=lambda e: (e["lastTimestamp"] or "", e["metadata"]["namespace"], e["metadata"]["name"]))
    missing: list[str] = []
    if names:
        by_name = {e["metadata"]["name"]: e for e in events}
        missing = [n for n in names if n not in by_name]
        events = [by_name[n] for n in names if n in by_name]
    if args.output in ("json", "yaml"):
        single = len(names) == 1 and len(events) == 1
        out.write(dump(events[0] if single else as_list(events, "EventList"), args.output))
    elif args.output == "name":
        out.write("".join(f"event/{e['metadata']['name']}\n" for e in events))
    elif events:
        out.write(events_table(events, node.now(), wide=args.output == "wide", namespaces=all_namespaces(args)))
    elif not names:
        _no_resources(args)
    out.flush()
    for name in missing:
        sys.stderr.write(f"Error from server (NotFound): events {goquote(name)} not found\n")
    return EXIT_FAIL if missing else EXIT_OK


# --- describe ----------------------------------------------------------------------------------------


def _describe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", metavar="pod", help="pods (pod, po); or pod/NAME")
    p.add_argument("names", nargs="*", metavar="NAME", help="Pod names (every Pod of the namespace without one)")
    _all_namespaces_option(p, "describe the Pods")


def describe(args: argparse.Namespace, out: TextIO) -> int:
    """``kubectl describe pod``: containers, mounts, conditions, image volumes (reference,
    digest, where each is mounted and how) and events."""
    from ._output import describe_pod

    _, names = split_kind([args.kind, *args.names], _POD_KINDS)
    node = node_from_args(args)
    records, missing = _lookup(node, args, names)
    for i, record in enumerate(records):
        mounts = {}
        for state in record.containers:
            status = node.runtime.container_status(state.container_id) if state.container_id else None
            if status is not None:
                mounts[state.name] = status.mounts
        digests = {}
        for v in record.pod.spec.volumes:
            image = node.runtime.image_status(v.image.reference) if v.image is not None else None
            if image is not None:
                digests[v.name] = image.digest or image.id
        text = describe_pod(record, node.pod_object(record), node.now(), mounts, digests)
        out.write(("\n\n" if i else "") + text)
    if not records and not names:
        _no_resources(args)
    return _errors_after(missing, node.root)


# --- delete ------------------------------------------------------------------------------------------


def _delete_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", nargs="?", metavar="KIND", help="pods (pod, po) or secrets; or KIND/NAME (not with -f)")
    p.add_argument("names", nargs="*", metavar="NAME", help="the names of the objects to delete")
    add_filename_options(p, "delete", required=False)
    p.add_argument("--all", action="store_true", help="delete every object of the kind in the namespace")
    _all_namespaces_option(p, "with --all, delete")
    p.add_argument("--ignore-not-found", action="store_true", help="an object that does not exist is no error")
    p.add_argument(
        "--grace-period",
        type=duration,
        default=None,
        metavar="SECONDS",
        help="time a running container gets between SIGTERM and SIGKILL (default 30s, as kubectl)",
    )
    add_output_option(p, ("name",))


def delete(args: argparse.Namespace, out: TextIO) -> int:
    """``kubectl delete``: by kind and names, every object of a kind with ``--all``, or the
    objects of files with ``-f``. A Pod's containers release their mounts."""
    targets = _delete_targets(args)
    node = node_from_args(args)
    if targets is None:
        kind, names = split_kind([args.kind, *args.names], _DELETE_KINDS)
        if args.all:
            if kind == "secrets":
                raise CommandError("--all deletes Pods only")
            targets = [("pods", r.pod.name, r.pod.namespace, "") for r in get_pods(node, args)]
        else:
            no_all_namespaces(args)
            targets = [(kind, n, namespace(args), "") for n in names]
    errors: list[BaseException] = []
    for kind, name, ns, source in targets:
        try:
            if kind == "pods":
                node.delete_pod(name, ns, grace=args.grace_period)
            else:
                node.delete_secret(name, ns)
        except Exception as exc:
            from ..errors import PodNotFoundError, SecretNotFoundError

            if isinstance(exc, PodNotFoundError | SecretNotFoundError):
                if args.ignore_not_found:
                    continue
                if source:
                    exc = type(exc)(f"error when deleting {goquote(source)}: {exc}")
            errors.append(exc)
            continue
        singular = kind.removesuffix("s")
        out.write(f"{singular}/{name}\n" if args.output == "name" else f"{singular} {goquote(name)} deleted\n")
    out.flush()
    return _errors_after(errors, node.root)


def _delete_targets(args: argparse.Namespace) -> list[tuple[str, str, str, str]] | None:
    """What ``-f`` names: ``(kind, name, namespace, source)`` per object (None without ``-f``)."""
    from ..api.models import Secret

    if not args.filename:
        if not args.kind:
            raise CommandError("you must provide one or more resources by argument or filename")
        if not args.all and not args.names and "/" not in args.kind:
            raise CommandError("resource(s) were provided, but no name was specified")
        return None
    if args.kind or args.all:
        raise CommandError("there is no need to specify a resource type as a separate argument when passing -f")
    targets = []
    for doc in read_documents(args.filename, args.recursive):
        if doc.error is not None:
            raise doc.error
        assert doc.obj is not None
        kind = "secrets" if isinstance(doc.obj, Secret) else "pods"
        targets.append((kind, doc.obj.metadata.name, object_namespace(doc.obj, args), doc.source))
    return targets


# --- logs --------------------------------------------------------------------------------------------


def _logs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pod", metavar="POD", help="the Pod (or pod/POD)")
    p.add_argument("-c", "--container", default=None, help="the container (default: the Pod's default container)")
    p.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="accepted as kubectl accepts it, and refused: logs name one Pod",
    )
    p.add_argument("-p", "--previous", action="store_true", help="the previous instance of the container")


def logs(args: argparse.Namespace, out: TextIO) -> int:
    """``kubectl logs``: what a container wrote to its standard output and error. A simulated
    container runs no process, so it has logged nothing (containers run with ``--run-containers``
    log for real); one that has not started is refused in the API server's words (``container "c"
    in pod "p" is waiting to start: ...``)."""
    no_all_namespaces(args)
    _, names = split_kind([args.pod] if "/" in args.pod else ["pod", args.pod], _POD_KINDS)
    node = node_from_args(args)
    record = node.get_pod(names[0], namespace(args))
    name = default_container(record, args.container, sys.stderr)
    try:
        state = record.state(name)
    except KeyError:
        raise server_error("BadRequest", f"container {name} is not valid for pod {record.pod.name}") from None
    container_id = state.previous_id if args.previous else state.container_id
    if args.previous and not container_id:
        raise server_error(
            "BadRequest", f"previous terminated container {goquote(name)} in pod {goquote(record.pod.name)} not found"
        )
    if state.state == "waiting" and not container_id:
        why = {"ErrImagePull": "image can't be pulled", "ImagePullBackOff": "trying and failing to pull image"}
        raise server_error(
            "BadRequest",
            f"container {goquote(name)} in pod {goquote(record.pod.name)} is waiting to start: "
            f"{why.get(state.reason or 'ContainerCreating', state.reason or 'ContainerCreating')}",
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
    sys.stdout.buffer.write(data) if out is sys.stdout else out.write(data.decode(errors="replace"))
    return EXIT_OK


# --- sync --------------------------------------------------------------------------------------------


def _sync_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--advance", type=duration, default=0.0, help="advance the node clock first (e.g. 30s)")
    p.add_argument("--watch", action="store_true", help="keep syncing every --interval until Ctrl-C (exit 130)")
    p.add_argument("--interval", type=duration, default=10.0, help="time between passes with --watch (default: 10s)")


def sync(args: argparse.Namespace, out: TextIO) -> int:
    """One kubelet pass over every Pod (or one every ``--interval`` with ``--watch``), then every
    Pod of the node as ``get pods -A`` shows it; exit 0 when every Pod runs (or, its containers run
    for real, completed)."""
    from ._output import pods_table

    node = node_from_args(args)
    while True:
        if args.advance:
            node.advance(args.advance)
        pods = node.sync_pass()
        if pods:
            out.write(pods_table([p.view for p in pods], node.now(), namespaces=True))
        if not args.watch:
            return EXIT_OK if all(p.phase in ("Running", "Succeeded") for p in pods) else EXIT_FAIL
        out.flush()
        time.sleep(args.interval)


GET = Command(
    "get",
    "list Pods, images or events (tables, or -o json|yaml|wide|name)",
    get,
    _get_arguments,
    description="List Pods (kubectl's columns and Pod objects), images (crictl's columns and JSON) or "
    "events (kubectl get events). -n picks the namespace, -A lists every namespace with a NAMESPACE column; "
    "-o json|yaml prints the objects as the API server returns them (a v1 List for several).",
)
DESCRIBE = Command(
    "describe",
    "show Pods as kubectl describe would, image volumes included",
    describe,
    _describe_arguments,
    description="Describe Pods as kubectl describe does: containers and their mounts, conditions, each image "
    "volume with its reference, digest, where it is mounted (sub path, mount options) and the events.",
)
DELETE = Command(
    "delete",
    "delete Pods (containers stopped, mounts released) or Secrets, by name, --all or -f",
    delete,
    _delete_arguments,
    description="Delete Pods or Secrets as kubectl delete does: by kind and names, every Pod of the namespace "
    "with --all (every namespace with -A), or the objects of the files -f names. A Pod's containers release "
    "their image-volume mounts.",
)
LOGS = Command(
    "logs",
    "print a container's logs (empty for a simulated container)",
    logs,
    _logs_arguments,
    description="Print a container's logs, as kubectl logs does (-p: its previous instance). A simulated "
    "container runs no process, so it has logged nothing; with --run-containers the container's own output is "
    "printed. A container that has not started is refused with the reason it is waiting.",
)
SYNC = Command(
    "sync",
    "run one kubelet pass over every Pod (retries, backoff)",
    sync,
    _sync_arguments,
    description="Run one kubelet pass over every Pod of the node (retries of failed starts, pulls per policy and "
    "backoff), then print every Pod as get pods -A does. Exit status 0 when every Pod runs. With --watch, "
    "pass again every --interval until interrupted (Ctrl-C: exit 130).",
)
