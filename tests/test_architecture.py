"""The package layout is enforced: the import-linter contracts of pyproject.toml hold (layers, the
CRI boundary, no cycles between siblings), no module imports another in a cycle, ``imagevol.cli``
starts without the registry stack, and a source module over 500 lines says why in its docstring.

Each check is shown to fail on a graph or a configuration that breaks it.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path

import grimp
import pytest

import imagevol

SRC = Path(imagevol.__file__).parent
REPO = SRC.parent.parent
LINT_IMPORTS = shutil.which("lint-imports", path=os.path.dirname(sys.executable))

#: A source module longer than this states why in its docstring, in a paragraph starting "Size:".
MAX_LINES = 500


def _lint_imports(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    if LINT_IMPORTS is None:
        pytest.fail("lint-imports is missing: scripts/setup installs it (import-linter, the test extra)")
    # The graph is built from the sources this test imports, whichever checkout runs it.
    env = {**os.environ, "PYTHONPATH": str(SRC.parent)}
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--no-logo", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


def test_the_import_contracts_are_kept() -> None:
    done = _lint_imports()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout or "broken" not in done.stdout


def test_a_broken_contract_fails_lint_imports(tmp_path: Path) -> None:
    """The same machinery with the layers upside down: every real import is a violation."""
    (tmp_path / ".importlinter").write_text(
        textwrap.dedent(
            """
            [importlinter]
            root_package = imagevol

            [importlinter:contract:upside-down]
            name = upside down
            type = layers
            layers =
                imagevol.errors
                imagevol.cli
            """
        )
    )
    done = _lint_imports(str(tmp_path / ".importlinter"), cwd=tmp_path)
    assert done.returncode != 0
    assert "imagevol.cli" in done.stdout and "BROKEN" in done.stdout


# --- no cycle at all -----------------------------------------------------------------------------------


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _module_graph() -> dict[str, set[str]]:
    graph = grimp.build_graph("imagevol", cache_dir=None)
    return {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}


def test_no_module_imports_another_in_a_cycle() -> None:
    """Module level, package ``__init__`` modules and imports under TYPE_CHECKING included."""
    graph = _module_graph()
    assert graph.get("imagevol.cli._main")
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert cycles({"p": {"p.x"}, "p.x": {"p"}}) == [["p", "p.x"]]


# --- start-up --------------------------------------------------------------------------------------------

#: What ``imagevol --help`` must not load: the registry stack, the content store's fsspec, YAML,
#: compression, metrics exposition, and every module that builds trees or runs containers.
HEAVY = ("oras", "requests", "urllib3", "fsspec", "yaml", "zstandard", "isal", "prometheus_client",
         "imagevol.node._node", "imagevol.trees", "imagevol.content", "imagevol.runtime.base",
         "imagevol.kubelet.pod_sync")  # fmt: skip


def _loaded_by(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


@pytest.mark.parametrize("code", ["import imagevol.cli", "import imagevol", "import imagevol.oci, imagevol.errors"])
def test_light_imports_load_nothing_heavy(code: str) -> None:
    loaded = _loaded_by(code)
    assert {m for m in loaded if m.split(".")[0] in HEAVY or m.startswith(HEAVY)} == set()


def test_the_heavy_probe_sees_heavy_imports() -> None:
    loaded = _loaded_by("import imagevol; imagevol.Node; import imagevol.content.sources._oras")
    assert {"imagevol.node._node", "imagevol.content", "oras", "requests"} <= loaded


# --- module size -----------------------------------------------------------------------------------------


def long_modules_without_a_reason(root: Path, limit: int = MAX_LINES) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") <= limit:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if not any(paragraph.startswith("Size:") for paragraph in doc.split("\n\n")):
            out.append(str(path.relative_to(root)))
    return out


def test_a_long_module_says_why_it_is_long() -> None:
    assert long_modules_without_a_reason(SRC) == []


def test_the_size_check_sees_a_long_module(tmp_path: Path) -> None:
    body = "x = 1\n" * (MAX_LINES + 1)
    (tmp_path / "long.py").write_text('"""A long module."""\n' + body)
    (tmp_path / "reasoned.py").write_text('"""A long module.\n\nSize: one table.\n"""\n' + body)
    (tmp_path / "short.py").write_text("x = 1\n")
    assert long_modules_without_a_reason(tmp_path) == ["long.py"]
