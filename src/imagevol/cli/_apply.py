"""``apply``: the objects of the files ``-f`` names, each admitted (API server) and run (kubelet)
and reported on its own line, as ``kubectl apply`` reports them.

kubectl's semantics: every file is read and decoded first (a path that does not exist or cannot be
read stops everything before anything is applied); then each object is applied on its own, and one
that is invalid, of an unsupported kind or in a file that stops parsing half-way is reported on
standard error while the rest still apply; the exit status is 1 at the end if anything failed.
Secrets are applied before Pods, so that a Pod's pull secret is there when the kubelet first
syncs it (the simulated kubelet syncs once per apply, where a real one would retry).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, TextIO

from ._common import (
    EXIT_FAIL,
    EXIT_OK,
    Command,
    CommandError,
    Document,
    add_output_option,
    node_from_args,
    object_namespace,
    read_documents,
)

if TYPE_CHECKING:
    from ..node import Applied, Node


def add_filename_options(p: argparse.ArgumentParser, verb: str, *, required: bool = True) -> None:
    """``-f`` (repeatable) and ``-R``, as kubectl spells them."""
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=required,
        metavar="PATH",
        help=f"a YAML or JSON file, a directory of them (.yaml, .yml, .json) or - for standard input, "
        f"holding the objects to {verb}; repeat for more",
    )
    p.add_argument(
        "-R", "--recursive", action="store_true", help="read the directories -f names recursively (default: not)"
    )


def _arguments(p: argparse.ArgumentParser) -> None:
    add_filename_options(p, "apply")
    add_output_option(p)


def apply(args: argparse.Namespace, out: TextIO) -> int:
    """Admit (API server) and sync (kubelet) the Pods of the files, store their Secrets; exit 0
    when every object applied and every regular container runs."""
    from ..api.models import Secret
    from ._errors import fail, message

    node = node_from_args(args)
    documents = list(read_documents(args.filename, args.recursive))
    if not documents:
        raise CommandError("no objects passed to apply")
    failed = False

    def report(exc: BaseException) -> None:
        nonlocal failed
        found = message(exc, node.root)
        if found is None:
            raise exc
        failed = True
        out.flush()  # the lines of the objects before it come first
        fail(found[0], root=node.root)

    for doc in documents:
        if doc.error is not None:
            report(doc.error)
    applied: list[Applied] = []
    ordered = [d for d in documents if isinstance(d.obj, Secret)] + [
        d for d in documents if d.obj is not None and not isinstance(d.obj, Secret)
    ]
    for doc in ordered:
        try:
            result = _apply_one(node, doc, args)
        except Exception as exc:
            report(exc)
            continue
        applied.append(result)
        _print_applied(result, args.output, out)
    if args.output in ("json", "yaml") and applied:
        from ._output import as_list, dump

        objects = [_api_object(node, a) for a in applied]
        out.write(dump(objects[0] if len(objects) == 1 else as_list(objects), args.output))
    running = all(
        s.state == "running"
        for a in applied
        if a.record is not None
        for s in a.record.containers
        if s.kind == "containers"
    )
    return EXIT_FAIL if failed or not running else EXIT_OK


def _apply_one(node: Node, doc: Document, args: argparse.Namespace) -> Applied:
    import attrs

    obj = doc.obj
    if obj is None:  # pragma: no cover - only decoded documents are applied
        raise CommandError("nothing to apply")
    ns = object_namespace(obj, args)
    if obj.metadata.namespace != ns:
        obj = attrs.evolve(obj, metadata=attrs.evolve(obj.metadata, namespace=ns))
    return node.apply_object(obj)


def _print_applied(result: Applied, fmt: str, out: TextIO) -> None:
    """One object's report as it is applied: ``pod/NAME created`` with the Pod's events and
    container states (``-o name``: ``pod/NAME`` alone; JSON and YAML come at the end)."""
    from ._output import format_event_line

    if fmt == "name":
        out.write(result.resource + "\n")
    if fmt in ("name", "json", "yaml"):
        return
    out.write(f"{result}\n")
    record = result.record
    if record is None:
        return
    out.write("Events:\n")
    for event in record.events:
        out.write("  " + format_event_line(event, record) + "\n")
    out.write("Containers:\n")
    for state in record.containers:
        detail = state.reason + (f": {state.message}" if state.message else "")
        suffix = f" ({detail})" if state.state != "running" and detail else ""
        out.write(f"  {state.name}: {state.state.capitalize()}{suffix}\n")
    out.flush()


def _api_object(node: Node, result: Applied) -> dict[str, Any]:
    if result.record is not None:
        return node.pod_object(result.record)
    secret = node.state.get_secret(result.name, result.namespace)
    return secret_object(secret) if secret is not None else {}


def secret_object(secret: Any) -> dict[str, Any]:
    """A Secret as the API server returns it (``data`` base64-encoded)."""
    import base64

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret.metadata.name, "namespace": secret.metadata.namespace},
        "type": secret.type,
        "data": {k: base64.b64encode(v).decode() for k, v in sorted(secret.data.items())},
    }


APPLY = Command(
    "apply",
    "admit and run the Pods (and store the Secrets) of YAML or JSON files",
    apply,
    _arguments,
    description="Apply the Pods and Secrets of YAML or JSON files, as kubectl apply does: each object is "
    "admitted (defaulting, validation), a Pod is run by the kubelet once, and each is reported on its own "
    "line as it is processed (pod/NAME created|unchanged). An invalid or unsupported document is reported "
    "and the rest still apply. Exit status 1 if anything failed or a Pod's container is not running.",
)
