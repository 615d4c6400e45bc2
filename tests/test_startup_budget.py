"""What a command imports, counted, so that start-up cannot grow back silently.

Every CLI invocation pays for its imports (``imagevol --help`` would otherwise cost several times a
bare interpreter start), so the commands that answer without a node (``--help``, ``--version``,
``get pods`` on a node that never ran) import an exact list of imagevol modules and nothing from
outside the standard library, and ``pull`` imports only what a pull needs (the registry stack, not
YAML, fsspec or the metrics exposition). Each command runs in a fresh interpreter, as the console
script runs it, and lists the modules it added. Nothing here is timed: docs/benchmarks.md has the
times (``benchmarks/startup.py``, ``benchmarks/pull.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.helpers import peers

#: Runs ``imagevol ARGS`` as the console script does (``from imagevol.cli import main``) and
#: prints, as JSON on the last line of standard error, the modules the command added.
_PROBE = """
import json, sys
before = set(sys.modules)
from imagevol.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
sys.stderr.write("\\n" + json.dumps(sorted(set(sys.modules) - before)) + "\\n")
sys.exit(code)
"""

#: The imagevol modules of a command that needs no node: the package, the CLI's parser and the
#: defaults its options show.
LIGHT = {
    "imagevol", "imagevol._exports", "imagevol._text", "imagevol.api", "imagevol.api.constants", "imagevol.cli",
    "imagevol.cli._common", "imagevol.cli._main", "imagevol.node", "imagevol.node._defaults", "imagevol.runtime",
}  # fmt: skip
#: Standard-library modules these commands must not need (each is a sizeable share of start-up).
HEAVY_STDLIB = ("dataclasses", "inspect", "ast", "socket", "ssl", "http", "email", "asyncio", "json", "subprocess",
                "tarfile", "hashlib", "threading", "datetime", "calendar", "uuid", "tomllib", "ctypes")  # fmt: skip
#: How many standard-library modules they may add (43 on CPython 3.11: re, argparse, typing, enum,
#: shutil, gettext and what those import).
STDLIB_BUDGET = 50
#: What a pull never needs: YAML (only for a pull secret), fsspec (the store is on the local
#: disk), the metrics exposition and its HTTP server, the test kit, and oras-py with the HTTP
#: stack under it (the registry client is the standard library's http.client; oras-py's API is
#: an adapter only its users import), nor runc's driver or the OCI spec builder; nor what only
#: Pods and trees need (admission, Pod sync, the snapshotter, the lazy mode, the layer formats).
NOT_FOR_A_PULL = ("yaml", "fsspec", "asyncio", "prometheus_client", "http.server", "hypothesis",
                  "imagevol.api.bounded_yaml", "imagevol.testing", "imagevol.cli._pods",
                  "oras", "requests", "urllib3", "jsonschema", "jsonschema_specifications", "referencing",
                  "charset_normalizer", "idna", "certifi", "http.cookiejar",
                  "imagevol.content.sources._oras",
                  "imagevol.runtime.real", "imagevol.runtime.runc", "imagevol.runtime.oci_spec",
                  "imagevol.api.admission", "imagevol.api.models", "imagevol.kubelet.pod_sync",
                  "imagevol.trees.snapshots", "imagevol.runtime._lazy", "imagevol.lazy",
                  "uuid", "secrets", "tarfile", "zstandard", "isal")  # fmt: skip
#: The only packages from outside the standard library a pull may import: attrs.
PULL_THIRD_PARTY = {"attr", "attrs"}
#: The imagevol modules of a pull from a registry, exactly: the CLI's and the node's defaults, the
#: pull command, the content store (with its temporary names) and the puller with the registry
#: client, the CRI values, the kubelet's image manager (policy, events, metrics), the runtime
#: profiles (their pull and image status) and the node that builds them. Not the API server's
#: admission, defaults, validation or YAML, the kubelet's Pod sync and status, the snapshotter and
#: the layer applier (a pull makes no tree), the lazy mode (the runtime keeps a pull's keyring
#: itself) and its range reads, the OCI layout source (only for an ``oci-layout:`` mirror), nor
#: the test kit.
PULL = LIGHT | {
    "imagevol._gc", "imagevol._tempname", "imagevol.api.features", "imagevol.cli._images",
    "imagevol.content", "imagevol.content._localfs", "imagevol.content.image_db", "imagevol.content.locks",
    "imagevol.content.progress", "imagevol.content.pull", "imagevol.content.ranges", "imagevol.content.store",
    "imagevol.content.sources", "imagevol.content.sources._bounds", "imagevol.content.sources._challenge",
    "imagevol.content.sources._client",
    "imagevol.content.sources._neterrors", "imagevol.content.sources._transport", "imagevol.content.sources.auth",
    "imagevol.content.sources.base", "imagevol.content.sources.deferred",
    "imagevol.content.sources.mirrors", "imagevol.content.sources.registry",
    "imagevol.cri", "imagevol.cri._services", "imagevol.cri._values", "imagevol.errors",
    "imagevol.kubelet", "imagevol.kubelet.events", "imagevol.kubelet.image_manager", "imagevol.kubelet.metrics",
    "imagevol.node._config", "imagevol.node._node", "imagevol.node._state",
    "imagevol.oci", "imagevol.oci._model", "imagevol.oci.reference",
    "imagevol.runtime.base", "imagevol.runtime.containerd", "imagevol.runtime.crio", "imagevol.runtime.profiles",
    "imagevol.trees", "imagevol.trees._inroot", "imagevol.trees._openat2", "imagevol.trees.subpath",
}  # fmt: skip


#: The environment of the commands: without the session's IMAGEVOL_REGISTRIES (a mirror file is
#: configuration, so with it the node is built to check it, as it must be).
_ENV = {k: v for k, v in os.environ.items() if k != "IMAGEVOL_REGISTRIES"}


#: What only a pull that reaches a registry needs.
REGISTRY_STACK = ("oras", "requests", "urllib3", "jsonschema", "imagevol.content.sources.registry",
                  "imagevol.content.sources._client")  # fmt: skip


def added_modules(*args: str) -> tuple[int, str, list[str]]:
    """Run ``imagevol ARGS`` in a fresh interpreter: exit status, standard output, and the
    modules the command imported."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, check=False, timeout=120, env=_ENV
    )
    *_, last = done.stderr.rstrip("\n").rsplit("\n", 1)
    return done.returncode, done.stdout, json.loads(last)


def _outside_the_stdlib(modules: list[str]) -> list[str]:
    return [m for m in modules if not m.startswith("imagevol") and m.split(".")[0] not in sys.stdlib_module_names]


def _heavy(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return [m for m in modules if m in names or m.split(".")[0] in names or m.startswith(tuple(f"{n}." for n in names))]


@pytest.fixture
def fresh_root(tmp_path: pytest.TempPathFactory) -> str:
    return os.path.join(str(tmp_path), "node")  # never created: a node that never ran


_PODS = {"imagevol.cli._pods", "imagevol.cli._apply"}


@pytest.mark.parametrize(
    ("args", "output", "extra"),
    [
        (("--help",), "usage: imagevol", set()),
        (("--version",), "imagevol ", set()),
        (("get", "pods"), "", _PODS),
        (("get", "pods", "-A", "-o", "name"), "", _PODS),
    ],
    ids=["help", "version", "get-pods", "get-pods-all-namespaces"],
)
def test_commands_without_a_node_import_a_fixed_list(
    fresh_root: str, args: tuple[str, ...], output: str, extra: set[str]
) -> None:
    code, out, modules = added_modules("--root", fresh_root, *args)
    assert code == 0 and out.startswith(output) and (out != "") == (output != ""), out
    assert {m for m in modules if m.startswith("imagevol")} == LIGHT | extra
    assert _outside_the_stdlib(modules) == []
    assert _heavy(modules, HEAVY_STDLIB) == []
    assert len([m for m in modules if not m.startswith("imagevol")]) <= STDLIB_BUDGET


def test_get_pods_on_a_node_that_never_ran_lists_none_and_builds_nothing(fresh_root: str) -> None:
    code, _, modules = added_modules("--root", fresh_root, "get", "pods", "-o", "json")
    assert code == 0 and "imagevol.node._node" not in modules
    assert os.listdir(fresh_root) == []  # the root is made, as the node would make it, and nothing in it


def test_the_budget_sees_a_command_that_builds_the_node(tmp_path: pytest.TempPathFactory) -> None:
    # A root that is not empty: the node is built, and with it everything the light list leaves out.
    root = os.path.join(str(tmp_path), "node")
    os.makedirs(os.path.join(root, "pods"))
    code, _, modules = added_modules("--root", root, "get", "pods")
    assert code == 0
    assert "imagevol.node._node" in modules and "attr" in modules
    assert _heavy(modules, HEAVY_STDLIB) != []
    # A node that pulls nothing never loads the registry stack (oras-py, requests, urllib3).
    assert _heavy(modules, REGISTRY_STACK) == []
    # Options other than the defaults are checked by the node even on a root that never ran.
    code, _, modules = added_modules(
        "--root", os.path.join(str(tmp_path), "other"), "--k8s-version", "1.99", "get", "pods"
    )
    assert code == 1 and "imagevol.node._node" in modules


@pytest.fixture(scope="module")
def reg(fixtures_layout: str) -> Iterator[peers.Registry]:
    with peers.registry() as r:
        peers.push_fixtures(fixtures_layout, r, ("v2",))
        yield r


def test_a_pull_imports_only_what_a_pull_needs(reg: peers.Registry, fresh_root: str) -> None:
    code, out, modules = added_modules("--root", fresh_root, "pull", f"{reg.host}/lab/v2:v1", "--plain-http")
    assert code == 0 and out.startswith("sha256:")
    assert {"http.client", "imagevol.content.sources._client", "imagevol.content.store"} <= set(modules)
    assert {m for m in modules if m.startswith("imagevol")} == PULL
    assert _heavy(modules, NOT_FOR_A_PULL) == []
    assert {m.split(".")[0] for m in _outside_the_stdlib(modules)} <= PULL_THIRD_PARTY
    # Nothing of the trees is made either: the first command that mounts the image makes them.
    assert "snapshots" not in os.listdir(fresh_root)


def test_the_pull_budget_sees_the_oras_adapter() -> None:
    """The probe of the pull budget is not blind: oras-py's API, when used, loads what a pull must not."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys, imagevol.content.sources._oras; print(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True, timeout=120, env=_ENV,
    )  # fmt: skip
    assert {"oras", "requests", "urllib3", "jsonschema"} <= set(_heavy(done.stdout.split(), NOT_FOR_A_PULL))


def test_the_command_table_is_what_the_command_modules_define() -> None:
    """``--help`` lists the commands from the table without importing their modules: its names
    and one-line helps must be the commands' own."""
    from imagevol.cli import COMMANDS
    from imagevol.cli._main import COMMAND_TABLE

    assert [(name, text) for name, _, text in COMMAND_TABLE] == [(c.name, c.help) for c in COMMANDS.values()]
    assert all(
        c.run.__module__ == f"imagevol.cli.{module}"
        for (_, module, _), c in zip(COMMAND_TABLE, COMMANDS.values(), strict=True)
    )


@pytest.mark.parametrize("flags", [(), ("-o", "json"), ("-o", "yaml"), ("-o", "wide", "-n", "x"), ("-A", "-o", "name")])
def test_a_node_that_never_ran_lists_pods_as_a_built_node_with_none(
    tmp_path: pytest.TempPathFactory, flags: tuple[str, ...]
) -> None:
    """The shortcut answers exactly what the node answers when it holds no Pod."""
    from imagevol import Node, NodeConfig

    built = os.path.join(str(tmp_path), "built")
    Node(NodeConfig(root=built, hermetic=True))
    runs = []
    for root in (os.path.join(str(tmp_path), "fresh"), built):
        done = subprocess.run(
            [sys.executable, "-m", "imagevol.cli", "--root", root, "get", "pods", *flags],
            capture_output=True, text=True, check=False, timeout=120, env=_ENV,
        )  # fmt: skip
        runs.append((done.returncode, done.stdout, done.stderr))
    assert runs[0] == runs[1]
    assert runs[0][0] == 0 and (runs[0][1] or runs[0][2] or flags[-1] == "name")
