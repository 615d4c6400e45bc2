"""CLI start-up: ``imagevol --help``, ``--version`` and ``get pods`` on a fresh root, against ``python -c pass``.

Every command runs as a whole process, interleaved run by run with the others; the peer is the same
interpreter that runs imagevol doing nothing (``python -c pass``), so the ratio is what imagevol adds
to a bare interpreter start. ``python -c 'import imagevol'`` is shown beside them, and so are the
interpreter without the ``site`` module (``-S``: no site-packages, no ``.pth`` files) and isolated
(``-I``), to show what the environment's start-up costs before imagevol runs; the heaviest imports
of ``imagevol --help`` (``-X importtime``, one run) are listed to show where the time goes. The
package's bytecode is written first, as pip writes it when it installs the wheel.

    .venv/bin/python -m benchmarks.startup [--runs 10] [--json PATH]

Target (the project's performance goals): each command at most 4 x ``python -c pass``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _measure, _results
from benchmarks._measure import Candidate, Series

TARGET = 4.0
PYTHON = "python -c pass"
HELP = "imagevol --help"
VERSION = "imagevol --version"
GET_PODS = "imagevol get pods, fresh root"
IMPORT = "python -c 'import imagevol'"
NO_SITE = "python -S -c pass"
ISOLATED = "python -I -c pass"
#: The commands with the target, in the order of the report.
COMMANDS = (HELP, VERSION, GET_PODS)


def heaviest_imports(argv: Sequence[str], top: int = 12) -> list[tuple[str, float]]:
    """Where the import time of ``argv`` (a Python program) goes: the ``top`` heaviest imports by
    cumulative time in seconds, among the program's own imports and two levels below them (names
    indented by two spaces a level), from one run under ``python -X importtime``."""
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    done = subprocess.run(list(argv), env=env, capture_output=True, text=True, check=False, timeout=120)
    found = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        _, cumulative, name = line.split("|")
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2  # one space, then two per level
        if depth <= 2 and cumulative.strip().isdigit():
            found.append(("  " * depth + name.strip(), int(cumulative) / 1e6))
    return sorted(found, key=lambda x: -x[1])[:top]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per command, interleaved; the median counts")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the results document to PATH")
    args = parser.parse_args(argv)
    _measure.check_runs(args.runs)
    imagevol = _measure.imagevol_command()
    _measure.compile_imagevol()
    py = sys.executable
    scratch = tempfile.mkdtemp(prefix="imagevol-bench-startup-")
    tools = [
        Candidate(PYTHON, lambda d: [py, "-c", "pass"]),
        Candidate(HELP, lambda d: [*imagevol, "--help"]),
        Candidate(VERSION, lambda d: [*imagevol, "--version"]),
        Candidate(GET_PODS, lambda d: [*imagevol, "--root", f"{d}/root", "get", "pods"]),
        Candidate(IMPORT, lambda d: [py, "-c", "import imagevol"]),
        Candidate(NO_SITE, lambda d: [py, "-S", "-c", "pass"]),
        Candidate(ISOLATED, lambda d: [py, "-I", "-c", "pass"]),
    ]
    try:
        print(f"start-up: {args.runs} interleaved runs of each command")
        with _measure.load_window() as load:
            series = _measure.interleave(tools, args.runs, scratch=scratch)
        imports = heaviest_imports([*imagevol, "--help"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = _document(args, series, load.span, imports)
    for t in result.sections[0].targets:
        print(f"  {'PASS' if t.met else 'MISS'} {t.what}: {t.value:.2f} × (target {t.design})")
    if args.json:
        _results.write(args.json, result)
    return 0 if all(t.met for t in result.sections[0].targets) else 1


def _document(
    args: argparse.Namespace,
    series: dict[str, Series],
    load: tuple[float, float],
    imports: list[tuple[str, float]],
) -> _results.Result:
    base = series[PYTHON]
    notes = {
        HELP: "parses the command line, prints the usage",
        VERSION: "parses the command line, prints the version",
        GET_PODS: "a root that does not exist yet: lists its (no) Pods",
        PYTHON: "the interpreter imagevol runs on, doing nothing",
        IMPORT: "the package import alone",
        NO_SITE: "the same interpreter without site-packages and their .pth files",
        ISOLATED: "isolated: no environment variables, no user site-packages",
    }
    names = (*COMMANDS, PYTHON, IMPORT, NO_SITE, ISOLATED)
    rows = [series[n].row(imagevol=n in (*COMMANDS, IMPORT), note=notes[n]) for n in names if n in series]
    targets = tuple(
        _measure.paired(series[n], base).target(f"{n} ÷ {PYTHON}", f"≤ {TARGET:g} × python3 -c pass", TARGET)
        for n in COMMANDS
    )
    table = _results.Table(
        f"Heaviest imports of `{HELP}` (level 1: imported by the command itself; one run, `-X importtime`,"
        " cumulative, so a module's time includes what it imports)",
        ("module", "level", "import time (ms)"),
        tuple(
            (f"`{name.strip()}`", str(1 + (len(name) - len(name.lstrip())) // 2), f"{seconds * 1000:,.0f}")
            for name, seconds in imports
        ),
    )
    section = _results.Section(
        id="cli",
        title="CLI start-up",
        text=(
            f"Whole processes, {args.runs} interleaved runs of each command, wall time, the package's bytecode"
            " written first (as pip writes it). The peer is the interpreter imagevol is installed on running"
            " `pass`: the ratio is what imagevol costs on top of starting Python. Every CLI call pays it, so a job"
            " running fifty commands pays it fifty times. `-S` and `-I` show what the environment's `site`"
            " start-up (site-packages, `.pth` files) costs before any imagevol code runs."
        ),
        unit="ms",
        primary=HELP,
        rows=tuple(rows),
        targets=targets,
        tables=(table,) if imports else (),
        load=load,
    )
    shown = (PYTHON, IMPORT, HELP, VERSION, GET_PODS)
    plot = _results.Plot(
        id="startup",
        section="cli",
        title="CLI start-up, whole processes (median, fastest–slowest)",
        x_label="command",
        y_label="wall time (s)",
        x=tuple(float(i) for i in range(len(shown))),
        x_labels=("python -c pass", "import imagevol", "--help", "--version", "get pods"),
        kind="bar",
        lines=(_measure.line("wall time", [series[n] for n in shown]),),
    )
    return _results.Result(
        "startup",
        f"python -m benchmarks.startup --runs {args.runs}",
        (section,),
        plots=(plot,),
        raw={name: _measure.raw(s) for name, s in series.items()},
    )


if __name__ == "__main__":
    sys.exit(main())
