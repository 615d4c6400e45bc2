"""Whole-process measurements for the benchmarks: interleaved runs, medians with their spread, CPU
time, peak RSS and the load average.

The machines these run on have two CPUs shared with other work, so a single timing says little.
Every benchmark therefore

* times **whole processes** where the peer is a whole process (:func:`run`: wall time, the CPU time
  of the process and of the children it waited for, its peak RSS through GNU time);
* **interleaves** the tools (:func:`interleave`): one run of each per round, the order rotated from
  round to round, so that a change in the load hits every tool alike;
* reports the **median** of at least five runs with the **spread** (fastest and slowest run), and a
  ratio target as the median of the **per-round ratios** (:func:`paired`);
* records the **load average** while it ran (:class:`LoadWindow`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import attrs

from benchmarks import _results

#: Fewer runs than this is not a measurement the report will show without saying so.
MIN_RUNS = 5
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


class MeasureError(RuntimeError):
    """A measured command failed: the benchmark stops rather than report a failure's timing."""


@attrs.frozen
class Sample:
    """One run of one process."""

    wall: float
    #: User + system time of the process and of every child it waited for (gzip under tar).
    cpu: float
    #: Peak RSS of the process in KiB (0 when GNU time is not installed).
    rss_kib: int = 0
    #: The last line of the process's standard output as a number (an in-process timing), if any.
    inner: float | None = None
    #: A second number on that line: the in-process CPU time, if the process printed it.
    inner_cpu: float | None = None


def pinned(argv: Sequence[str], cpus: str) -> list[str]:
    """``argv`` run on the CPUs ``cpus`` only (``taskset -c``): with one CPU, a helper thread or
    process can no longer run beside the main one."""
    return ["taskset", "-c", cpus, *argv]


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float = 900,
) -> Sample:
    """Run ``argv`` to its end and measure it.

    The peak RSS comes from GNU time (a tiny parent): ``ru_maxrss`` of a child started by this
    Python process would start at this process's own high-water mark (the kernel carries it over at
    ``exec``). The CPU time comes from ``wait4``; GNU time's own share of it is well under 1 ms."""
    rss_path = ""
    cmd = list(argv)
    if GNU_TIME:
        fd, rss_path = tempfile.mkstemp(prefix="bench-rss-")
        os.close(fd)
        cmd = [GNU_TIME, "-f", "%M", "-o", rss_path, *cmd]
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=dict(env) if env is not None else None, cwd=cwd)
            # A blocking wait (no polling: this process must not compete for the CPUs it measures);
            # a timer kills a command that hangs.
            killer = threading.Timer(timeout, proc.kill)
            killer.start()
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            finally:
                killer.cancel()
            wall = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
            if wall >= timeout:
                raise MeasureError(f"{argv[0]} did not finish within {timeout:.0f} s")
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        if proc.returncode != 0:
            raise MeasureError(f"{' '.join(argv[:3])}... exited with status {proc.returncode}: {stderr[-2000:]}")
        rss = 0
        if rss_path:
            with open(rss_path) as f:
                fields = f.read().split()
            rss = int(fields[-1]) if fields and fields[-1].isdigit() else 0
    finally:
        if rss_path:
            os.unlink(rss_path)
    numbers: list[float] = []
    with contextlib.suppress(ValueError, IndexError):
        numbers = [float(word) for word in stdout.strip().splitlines()[-1].split()[:2]]
    return Sample(
        wall,
        usage.ru_utime + usage.ru_stime,
        rss,
        numbers[0] if numbers else None,
        numbers[1] if len(numbers) > 1 else None,
    )


@attrs.define
class Series:
    """The runs of one tool, in round order."""

    name: str
    samples: list[Sample] = attrs.field(factory=list)

    def _values(self, what: str) -> list[float]:
        if not self.samples:
            raise MeasureError(f"{self.name}: no runs")
        return [float(getattr(s, what)) for s in self.samples]

    @property
    def wall(self) -> float:
        return statistics.median(self._values("wall"))

    @property
    def low(self) -> float:
        return min(self._values("wall"))

    @property
    def high(self) -> float:
        return max(self._values("wall"))

    @property
    def cpu(self) -> float:
        return statistics.median(self._values("cpu"))

    @property
    def rss_mib(self) -> float | None:
        peak = max(s.rss_kib for s in self.samples)
        return peak / 1024 if peak else None

    @property
    def inner(self) -> float | None:
        values = [s.inner for s in self.samples if s.inner is not None]
        return statistics.median(values) if values else None

    @property
    def inner_cpu(self) -> float | None:
        values = [s.inner_cpu for s in self.samples if s.inner_cpu is not None]
        return statistics.median(values) if values else None

    def row(self, *, imagevol: bool = False, note: str = "", tool: str | None = None, cpu: bool = True) -> _results.Row:
        """This series as a report row: median, spread, runs, CPU time and peak RSS."""
        return _results.Row(
            tool or self.name,
            self.wall,
            imagevol=imagevol,
            rss_mib=self.rss_mib,
            note=note,
            low=self.low,
            high=self.high,
            runs=len(self.samples),
            cpu_seconds=self.cpu if cpu else None,
        )


def line(label: str, series: Sequence[Series]) -> _results.Line:
    """A plot line of the wall-time medians of ``series``, with their fastest-to-slowest spread."""
    return _results.Line(
        label,
        tuple(s.wall for s in series),
        low=tuple(s.low for s in series),
        high=tuple(s.high for s in series),
    )


def raw(series: Series) -> dict[str, list[float | int | None]]:
    """Every run of ``series``, for the results document's ``raw`` part."""
    return {
        "wall_s": [x.wall for x in series.samples],
        "cpu_s": [x.cpu for x in series.samples],
        "inner_s": [x.inner for x in series.samples],
        "inner_cpu_s": [x.inner_cpu for x in series.samples],
        "peak_rss_kib": [x.rss_kib for x in series.samples],
    }


@attrs.frozen
class Candidate:
    """A tool to run: ``argv(dst)`` gives its command for a fresh scratch directory ``dst``."""

    name: str
    argv: Callable[[str], Sequence[str]]
    env: Mapping[str, str] | None = None


def interleave(
    candidates: Sequence[Candidate],
    runs: int,
    *,
    scratch: str | None = None,
    before: Callable[[], None] | None = None,
    progress: bool = True,
) -> dict[str, Series]:
    """Run every candidate ``runs`` times, one run each per round, the order rotated each round.

    With ``scratch``, each run gets a fresh empty directory below it (removed after the run, not
    timed); ``before()`` runs before each run, untimed (resetting state a tool changed)."""
    out = {c.name: Series(c.name) for c in candidates}
    for r in range(runs):
        order = [*candidates[r % len(candidates) :], *candidates[: r % len(candidates)]]
        for c in order:
            dst = ""
            if scratch is not None:
                dst = tempfile.mkdtemp(prefix="run-", dir=scratch)
            if before is not None:
                before()
            try:
                out[c.name].samples.append(run(c.argv(dst), env=c.env))
            finally:
                if dst:
                    _remove(dst)
        if progress:
            print(
                f"  round {r + 1}/{runs}: "
                + ", ".join(f"{c.name} {out[c.name].samples[-1].wall:.3f} s" for c in candidates)
            )
    return out


def _remove(path: str) -> None:
    # rm -rf is faster than shutil.rmtree on 20,000 files and copes with 0000 directories as root.
    if subprocess.run(["rm", "-rf", path], check=False).returncode != 0:
        shutil.rmtree(path, ignore_errors=True)


@attrs.frozen
class Ratio:
    """The median of per-round ratios and their spread."""

    median: float
    low: float
    high: float

    def target(self, what: str, design: str, limit: float, note: str = "") -> _results.Target:
        return _results.Target(what, design, self.median, limit, low=self.low, high=self.high, note=note)


def paired(a: Series, b: Series, what: str = "wall") -> Ratio:
    """``a`` over ``b``, round by round (both measured in the same rounds)."""
    values_a, values_b = a._values(what), b._values(what)
    if len(values_a) != len(values_b):
        raise MeasureError(f"{a.name} and {b.name} were not measured in the same rounds")
    ratios = [x / y for x, y in zip(values_a, values_b, strict=True)]
    return Ratio(statistics.median(ratios), min(ratios), max(ratios))


class LoadWindow:
    """The 1-minute load average when a block of runs started and when it ended."""

    def __init__(self) -> None:
        self.start = os.getloadavg()[0]
        self.end = self.start

    def close(self) -> tuple[float, float]:
        self.end = os.getloadavg()[0]
        return self.start, self.end

    @property
    def span(self) -> tuple[float, float]:
        return self.start, self.end


@contextlib.contextmanager
def load_window() -> Iterator[LoadWindow]:
    window = LoadWindow()
    try:
        yield window
    finally:
        window.close()


def check_runs(runs: int) -> None:
    if runs < 1:
        raise ValueError("--runs must be at least 1")
    if runs < MIN_RUNS:
        print(f"note: {runs} runs per tool; the report asks for at least {MIN_RUNS}")


def versions_of(argv: Sequence[str]) -> str:
    """The last word of the first line ``argv`` prints (``tar --version``), or ``?``."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.splitlines()[0].split()[-1] if out.strip() else "?"


def compile_imagevol() -> None:
    """Write the bytecode of the imagevol package, as pip does when it installs the wheel. A
    source checkout (an editable install) gets it on first import, unless the environment sets
    ``PYTHONDONTWRITEBYTECODE``: then every run would compile every module again, and the start-up
    measured would be the compiler's."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("imagevol")
    for directory in (spec.submodule_search_locations or []) if spec is not None else []:
        compileall.compile_dir(directory, quiet=1)


def imagevol_command() -> list[str]:
    """How to run the ``imagevol`` CLI of this environment: its console script beside the running
    interpreter (installed by ``scripts/setup``), else the one on ``PATH``."""
    script = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "imagevol")
    if os.access(script, os.X_OK):
        return [script]
    found = shutil.which("imagevol")
    if found is None:
        raise MeasureError("the imagevol command is not installed: run scripts/setup")
    return [found]
