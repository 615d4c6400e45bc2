"""The installed package is self-sufficient: a wheel built from a copy of the checkout (in a private
directory whose path has a space), installed into a fresh virtual environment, runs the README's
"From a package" block, the vector runner and its pytest plugin, without the checkout or a network.

No network beyond what ``scripts/setup`` used: the wheel is built by pip with the build backend
from the same package sources ``scripts/setup`` installed from (pip's configuration: a local
mirror on CI), installed with ``--no-index --no-deps``, and the fresh environment sees its
dependencies through a ``.pth`` line naming this environment's site-packages. A plain path line
in a ``.pth`` is appended to ``sys.path`` after the fresh environment's own site-packages, and the
``.pth`` files in that directory are not processed: the checkout's editable install stays invisible,
which the test asserts (``imagevol.__file__`` is the wheel's).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

pytestmark = pytest.mark.slow

#: What the wheel is built from: what a clone has that packaging reads.
_SOURCES = ("pyproject.toml", "README.md", "src")


def _env(venv: Path, root: Path) -> dict[str, str]:
    """A clean environment for the installed package: its own bin first, no variable of ours or of
    the outer pytest, the node's state under ``root``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "PYTEST", "IMAGEVOL", "VIRTUAL_ENV", "COV_", "HYPOTHESIS"))
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["IMAGEVOL_ROOT"] = str(root)
    env["VIRTUAL_ENV"] = str(venv)
    return env


def _run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtual environment with the wheel built from a private copy of the checkout."""
    base = tmp_path_factory.mktemp("wheel")
    clone = base / "a clone"
    clone.mkdir(mode=0o700)
    for name in _SOURCES:
        src = os.path.join(REPO, name)
        if os.path.isdir(src):
            shutil.copytree(src, clone / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, clone / name)
    os.chmod(clone, 0o700)
    dist = base / "dist"
    build = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(clone)],
        dict(os.environ),
        base,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("imagevol-*.whl")
    _check_metadata(wheel)

    venv = base / "fresh venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], dict(os.environ), base)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], {}, base)
    site_packages = Path(purelib.stdout.strip())
    install = _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index", "--no-deps",
         str(wheel)],
        dict(os.environ),
        base,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    # The dependencies (and pytest) from this environment, after the wheel on sys.path.
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), *site.getsitepackages()])
    (site_packages / "zz_test_dependencies.pth").write_text("".join(f"{p}\n" for p in ours if os.path.isdir(p)))
    yield venv


def _check_metadata(wheel: Path) -> None:
    """The wheel declares the ``testing`` extra (Hypothesis, what imagevol.testing needs beyond
    imagevol), the console script and the pytest plugin, and carries the vector files."""
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        meta, eps = z.read(metadata).decode(), z.read(entry_points).decode()
    assert "Provides-Extra: testing" in meta
    testing = [ln for ln in meta.splitlines() if ln.startswith("Requires-Dist:") and 'extra == "testing"' in ln]
    assert [ln.split()[1].split(">")[0].split(";")[0] for ln in testing] == ["hypothesis"], testing
    assert re.search(r"\[console_scripts\]\nimagevol = imagevol\.cli:run", eps), eps
    assert re.search(r"\[pytest11\]\nimagevol = imagevol\.testing\.pytest_plugin", eps), eps
    shipped = {"imagevol/testing/data/layers.json", "imagevol/testing/data/subpath.json", "imagevol/py.typed"}
    assert shipped <= set(names)


def _readme_block() -> list[str]:
    """The commands of the README's "From a package" block that run the installed package."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    m = re.search(r"### From a package\n.*?```sh\n(.*?)```", text, re.S)
    assert m is not None, "README.md lost its 'From a package' block"
    return [line.split("#")[0].strip() for line in m.group(1).splitlines() if line.startswith("imagevol ")]


def test_the_readme_quick_start_runs_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    env = _env(installed, tmp_path / "node state")
    where = _run([str(installed / "bin" / "python"), "-c", "import imagevol; print(imagevol.__file__)"], env, tmp_path)
    assert where.stdout.startswith(str(installed)), where.stdout + where.stderr  # the wheel's, not the checkout's

    commands = _readme_block()
    assert [c.split()[1] for c in commands][:2] == ["demo", "--registries"]
    outputs = []
    for command in commands:
        argv = shlex.split(command)
        argv[0] = str(installed / "bin" / "imagevol")  # the console script pip wrote, shebang and all
        r = _run(argv, env, tmp_path)
        assert r.returncode == 0, f"{command}: {r.stdout}{r.stderr}"
        assert "Traceback" not in r.stderr
        outputs.append(r.stdout)
    assert (tmp_path / "demo" / "registries.conf").is_file()
    assert (tmp_path / "demo" / "pod.yaml").is_file()
    assert re.search(r"^image-volume\s+1/1\s+Running\s", outputs[-2], re.M), outputs[-2]
    assert outputs[-1] == "1\n"


def test_the_vector_runner_uses_the_files_in_the_wheel(installed: Path, tmp_path: Path) -> None:
    env = _env(installed, tmp_path / "node")
    r = _run([str(installed / "bin" / "python"), "-m", "imagevol.testing.vectors", "layers"], env, tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    last = r.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", last)
    assert passed is not None and int(passed.group(1)) > 50, last
    assert "failed" not in last or re.search(r"\b0 failed", last), last


def test_the_pytest_plugin_gives_users_a_node(installed: Path, tmp_path: Path) -> None:
    suite = tmp_path / "my suite"
    suite.mkdir()
    (suite / "test_mine.py").write_text(
        "import os\n"
        "from imagevol.testing.pods import container, image_volume, pod_doc, to_pod\n"
        "\n"
        "def test_fresh_node(node, tmp_path):\n"
        "    assert node.pods() == []\n"
        "    assert str(node.config.root).startswith(str(tmp_path))\n"
        "\n"
        "def test_demo_pod(demo_node):\n"
        "    pod = to_pod(pod_doc('p', [container('c', ('v', '/v', 'dir'))],\n"
        "                         [image_volume('v', 'quay.io/crio/artifact:v2')]))\n"
        "    assert demo_node.create_pod(pod).phase == 'Running'\n"
    )
    env = _env(installed, tmp_path / "unused")
    r = _run(
        [str(installed / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)], env, suite
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed" in r.stdout
