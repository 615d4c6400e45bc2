"""Run every benchmark and write docs/benchmarks.md with its plots.

    sudo benchmarks/run                       # every benchmark, then the report (several minutes)
    sudo benchmarks/run unpack                # only these benchmarks (the report holds only them)
    benchmarks/run --update pull startup      # only these; replace their parts of the report, keep the rest
    benchmarks/run --render --update pull     # the same from the last run's results, without running
    benchmarks/run --render                   # re-render the report from the last run's results
    sudo benchmarks/run --args unpack='--runs 5 --scales 0.5,1'

A benchmark is every ``benchmarks/NAME.py`` (names starting with ``_`` are helpers) whose ``--help``
documents a ``--json PATH`` option. Each runs in its own process as ``python -m benchmarks.NAME
--json PATH [ARGS]``; PATH receives a document of ``benchmarks._results``. The documents are kept in
``out/benchmarks/`` (``--results``) for ``--render``. Needs root, because the unpack benchmark mounts
a tmpfs; ``--unprivileged`` runs as another user when every benchmark that needs root is given a
directory of its own (``--args unpack='--dir DIR'``, DIR on a tmpfs).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from benchmarks import _report, _results, _update

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(REPO, "benchmarks")
JSON_OPTION = re.compile(r"--json[ =]\[?PATH\]?")
MACHINE_FILE = "machine.json"
#: The order of the report (and of the runs): the benchmarks of the goals first, the others after.
ORDER = ("unpack", "pull", "startup", "pods", "fleet", "subpath")


def discover(directory: str = BENCH_DIR, python: str = sys.executable) -> list[str]:
    """The benchmark names in ``directory``: modules whose ``--help`` documents ``--json PATH``."""
    names = []
    for entry in sorted(os.listdir(directory)):
        name, ext = os.path.splitext(entry)
        if ext != ".py" or name.startswith("_") or not name.isidentifier():
            continue
        package = os.path.basename(os.path.abspath(directory))
        try:
            done = subprocess.run(
                [python, "-m", f"{package}.{name}", "--help"],
                check=False,
                cwd=os.path.dirname(os.path.abspath(directory)),
                capture_output=True,
                text=True,
                timeout=120,
            )
        except subprocess.TimeoutExpired:
            print(f"benchmarks/run: {entry}: --help did not return; not a benchmark", file=sys.stderr)
            continue
        if done.returncode == 0 and JSON_OPTION.search(done.stdout):
            names.append(name)
    return names


def parse_args_option(values: Sequence[str], known: Sequence[str]) -> dict[str, list[str]]:
    """``--args NAME='ARGS'`` options as argument lists by benchmark name."""
    out: dict[str, list[str]] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or name not in known:
            raise ValueError(f"--args {value!r}: expected NAME='ARGS' with NAME one of {', '.join(known)}")
        out.setdefault(name, []).extend(shlex.split(rest))
    return out


def ensure_matplotlib(install: bool) -> bool:
    """Whether matplotlib can be imported, installing the ``bench`` extra first when allowed."""
    if importlib.util.find_spec("matplotlib") is not None:
        return True
    if not install:
        return False
    print("benchmarks/run: installing the bench extra (matplotlib) for the plots", file=sys.stderr)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", f"{REPO}[bench]"],
        check=False,
    )
    importlib.invalidate_caches()
    if done.returncode != 0 or importlib.util.find_spec("matplotlib") is None:
        print("benchmarks/run: could not install matplotlib; the report will have no plot", file=sys.stderr)
        return False
    return True


def run_one(name: str, json_path: str, args: Sequence[str], timeout: float) -> tuple[_results.Result | None, str]:
    """Run benchmark ``name``: (its result or None, what went wrong or a remark, "" if nothing)."""
    if os.path.exists(json_path):
        os.unlink(json_path)
    argv = [sys.executable, "-m", f"benchmarks.{name}", "--json", json_path, *args]
    print(f"\n=== {name}: {shlex.join(argv[1:])}", flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # lets it clean up (unpack unmounts its tmpfs)
        _reap(proc)
        return None, f"did not finish within {timeout:.0f} s"
    except KeyboardInterrupt:
        # ^C reached the benchmark too (same process group): give it the time to clean up.
        _reap(proc)
        raise
    print(f"=== {name}: {time.monotonic() - start:.0f} s, exit status {code}", flush=True)
    if not os.path.exists(json_path):
        return None, f"exited with status {code} and wrote no results"
    try:
        result = _results.read(json_path)
    except _results.ResultError as e:
        return None, f"wrote invalid results: {e}"
    return result, "" if code == 0 else f"exited with status {code} (results kept)"


def _reap(proc: subprocess.Popen[bytes], grace: float = 60) -> None:
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: every one found)")
    parser.add_argument("--out", default=os.path.join(REPO, "docs", "benchmarks.md"), help="report to write")
    parser.add_argument("--results", default=os.path.join(REPO, "out", "benchmarks"), help="JSON results dir")
    parser.add_argument("--render", action="store_true", help="only re-render the report from --results")
    parser.add_argument(
        "--update",
        action="store_true",
        help="run only the named benchmarks and replace their sections and targets in the existing report",
    )
    parser.add_argument("--args", action="append", default=[], metavar="NAME=ARGS", help="extra arguments")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark (default 3600)")
    parser.add_argument("--no-plots", action="store_true", help="write the report without plots")
    parser.add_argument("--no-install", action="store_true", help="never pip-install matplotlib")
    parser.add_argument("--unprivileged", action="store_true", help="run without root (see above)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks found and exit")
    args = parser.parse_args(argv)
    os.makedirs(args.results, exist_ok=True)
    machine_path = os.path.join(args.results, MACHINE_FILE)

    if args.update and not args.names:
        parser.error("--update needs the names of the benchmarks to refresh")
    if args.render:
        results = []
        for entry in sorted(os.listdir(args.results)):
            name = entry.removesuffix(".json")
            if entry.endswith(".json") and entry != MACHINE_FILE and (not args.names or name in args.names):
                results.append(_results.read(os.path.join(args.results, entry)))
        results.sort(key=lambda r: (ORDER.index(r.benchmark) if r.benchmark in ORDER else len(ORDER), r.benchmark))
        if not results:
            parser.error(f"no results in {args.results}: run the benchmarks first")
        machine = _report.load_machine(machine_path) if os.path.exists(machine_path) else _report.machine_info(REPO)
        return _write(args, results, machine, [])

    if args.list:
        print("\n".join(discover()))
        return 0
    if os.geteuid() != 0 and not args.unprivileged and (not args.update or "unpack" in args.names):
        parser.error(
            "needs root: the unpack benchmark mounts a tmpfs for its layers (on a disk filesystem the kernel"
            " reclaiming the previous tree dominates the timings). Run `sudo benchmarks/run`, or give it a"
            " tmpfs directory you can write: benchmarks/run --unprivileged --args unpack='--dir DIR'"
        )
    found = discover()
    unknown = [n for n in args.names if n not in found]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; found: {', '.join(found)}")
    try:
        extra = parse_args_option(args.args, found)
    except ValueError as e:
        parser.error(str(e))
    if not args.no_plots:
        ensure_matplotlib(install=not args.no_install)
    names = args.names or sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    print(f"benchmarks/run: {', '.join(names)}", flush=True)
    for entry in os.listdir(args.results):  # --render shows this run only (--update: the others stay)
        if (
            entry.endswith(".json")
            and entry != MACHINE_FILE
            and (not args.update or entry.removesuffix(".json") in names)
        ):
            os.unlink(os.path.join(args.results, entry))
    outputs = os.path.relpath(os.path.abspath(args.out), REPO)
    images = os.path.join(os.path.dirname(outputs), f"{_report.PLOT_PREFIX}*.png")
    machine = _report.machine_info(REPO, ignore=(outputs, images))
    _report.save_machine(machine_path, machine)
    results, failures = [], []
    for name in names:
        result, remark = run_one(name, os.path.join(args.results, f"{name}.json"), extra.get(name, []), args.timeout)
        if result is None:
            failures.append((name, remark))
        else:
            results.append(result)
        if remark:
            print(f"benchmarks/run: {name} {remark}", file=sys.stderr)
    status = _write(args, results, machine, failures)
    return status if not failures else 1


def _write(
    args: argparse.Namespace,
    results: Sequence[_results.Result],
    machine: _report.Machine,
    failures: Sequence[tuple[str, str]],
) -> int:
    if args.update and results:
        images, reason = _update_report(args, results, machine)
    else:
        images, reason = _report.write_report(args.out, results, machine, failures, plots=not args.no_plots)
    print(f"\nbenchmarks/run: wrote {os.path.relpath(args.out)}", end="")
    drawn = [name for name in images.values() if name]
    print(f" and {', '.join(drawn)}" if drawn else f" (no plot: {reason})" if images else "")
    for result in results:
        for section in result.sections:
            for target in section.targets:
                print(f"  {_report.verdict(target).strip('*')}  {target.what}: {_report.fmt_target(target)}")
    for name, reason_ in failures:
        print(f"  FAILED {name}: {reason_}")
    return 0


def _update_report(
    args: argparse.Namespace, results: Sequence[_results.Result], machine: _report.Machine
) -> tuple[dict[str, str | None], str | None]:
    """Replace the parts of ``results``' benchmarks in the report at ``args.out`` (their notes
    kept), and draw their plots."""
    with open(args.out, encoding="utf-8") as f:
        old = f.read()
    images: dict[str, str | None]
    reason: str | None
    if args.no_plots:
        images, reason = {}, "plots were not requested"
    else:
        images, reason = _report.draw_all(results, os.path.dirname(os.path.abspath(args.out)))
    new = _report.render(results, machine, images, _report.extract_notes(old), (), reason)
    text = _update.update(old, new, [r.benchmark for r in results], machine)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, args.out)
    return images, reason


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nbenchmarks/run: interrupted", file=sys.stderr)
        sys.exit(130)
