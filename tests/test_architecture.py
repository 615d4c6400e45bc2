"""The CRI boundary is real: the kubelet side reaches the runtime only through ``imagevol.cri``.

A static check of every import statement (module level, in functions and under ``TYPE_CHECKING``
alike), read with ``ast`` from the sources: the kubelet-side modules import the CRI module, the API
values, ``oci``/``reference`` values, errors and each other, never the runtime side, directly or
through anything they import. The import-linter contract of the package layout supersedes it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import imagevol

SRC = Path(imagevol.__file__).parent

#: The kubelet side of the CRI boundary.
KUBELET_SIDE = frozenset({"kubelet", "image_manager", "image_gc", "envvars", "metrics", "events", "describe", "view"})
#: What they may import besides each other.
VALUES = frozenset({"cri", "api", "oci", "reference", "errors", "_text"})
#: The exec view resolves paths inside a mount fd with the sub-path resolver, a library of fd
#: operations that holds no node state (it moves with the view to the exec side of the layout).
EXTRA = {"view": frozenset({"trees"})}
#: The runtime side and the composition root: never reached from the kubelet side.
RUNTIME_SIDE = frozenset(
    {"runtime", "resolver", "images", "store", "snapshots", "sources", "layers", "artifacts", "decompress",
     "tarstream", "locks", "progress", "node", "cli", "mounts", "testing"}
)  # fmt: skip


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split("."))
    return (SRC.parent / rel.with_suffix(".py")).is_file() or (SRC.parent / rel / "__init__.py").is_file()


def imports_of(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """The imagevol modules ``source`` (the text of ``module``) imports, wherever the statement is."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "imagevol")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "imagevol":
                continue
            # `from . import subpath` imports a module; `from .cri import Mount` a name of one.
            submodules = {f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}")}
            found.update(submodules or {target})
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in SRC.rglob("*.py"):
        name = _module_name(path)
        graph[name] = imports_of(path.read_text(), name, is_package=path.name == "__init__.py")
    return graph


GRAPH = _graph()


def component(module: str) -> str:
    """``imagevol.api.dump`` -> ``api``; the package root itself -> ``imagevol``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _closure(start: str) -> Iterator[tuple[str, list[str]]]:
    """Every module reachable from ``start``, with one import chain that reaches it."""
    seen = {start}
    pending = [(start, [start])]
    while pending:
        module, chain = pending.pop()
        yield module, chain
        for dep in sorted(GRAPH.get(module, ())):
            if dep not in seen:
                seen.add(dep)
                pending.append((dep, [*chain, dep]))


def test_the_scanner_sees_every_kind_of_import() -> None:
    """The check below can fail: imports in functions, under TYPE_CHECKING, relative, absolute and
    of sibling modules by name are all found."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from .cri import Mount\n"
        "from . import trees as sp\n"
        "if TYPE_CHECKING:\n    from .images import ImageRecord\n"
        "def f():\n    from .sources.auth import Keyring\n    import imagevol.store\n"
    )
    found = imports_of(source, "imagevol.kubelet")
    assert found == {"imagevol.cri", "imagevol.trees", "imagevol.images", "imagevol.sources.auth", "imagevol.store"}
    assert {component(m) for m in found} - VALUES == {"trees", "images", "sources", "store"}
    assert imports_of("from ..cri import Keyring\n", "imagevol.sources.auth") == {"imagevol.cri"}
    assert imports_of("from .auth import Credentials\n", "imagevol.sources", is_package=True) == {
        "imagevol.sources.auth"
    }


@pytest.mark.parametrize("module", sorted(KUBELET_SIDE))
def test_kubelet_side_imports_only_the_cri_and_values(module: str) -> None:
    allowed = VALUES | KUBELET_SIDE | EXTRA.get(module, frozenset())
    assert f"imagevol.{module}" in GRAPH
    direct = GRAPH[f"imagevol.{module}"]
    assert {m for m in direct if component(m) not in allowed} == set()


@pytest.mark.parametrize("module", sorted(KUBELET_SIDE))
def test_kubelet_side_never_reaches_the_runtime_side(module: str) -> None:
    reached = {m: chain for m, chain in _closure(f"imagevol.{module}") if component(m) in RUNTIME_SIDE | {"imagevol"}}
    assert reached == {}, " ; ".join(" -> ".join(chain) for chain in reached.values())


def test_the_cri_module_imports_no_other_part_of_imagevol() -> None:
    """Only text helpers (and the API's ``Secret`` type, for parsing pull secrets): no cycle with
    the runtime, and either side can be replaced."""
    assert {component(m) for m in GRAPH["imagevol.cri"]} <= {"_text", "api", "cri"}
    assert not any(component(m) in RUNTIME_SIDE | KUBELET_SIDE for m, _ in _closure("imagevol.cri"))


def test_the_runtime_side_does_not_import_the_kubelet_side() -> None:
    for module, deps in GRAPH.items():
        if component(module) in {"runtime", "resolver", "images", "store", "snapshots", "sources"}:
            assert {component(d) for d in deps} & KUBELET_SIDE == set(), module
