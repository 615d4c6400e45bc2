"""Render benchmark results (``benchmarks._results``) as ``docs/benchmarks.md`` and its plots.

The report is regenerated as a whole, except hand-written prose between notes markers::

    <!-- notes:unpack.layer -->
    ...kept verbatim by every regeneration...
    <!-- /notes:unpack.layer -->

Every section gets its (possibly empty) markers; notes whose section did not run this time are kept
at the end of the report. Plots need matplotlib (the optional ``bench`` extra, Agg backend); without
it the report says that a plot was not drawn, and everything else is written as usual.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from benchmarks._results import UNITS, Line, Plot, Result, Section, Target, ratio_rows

NOTES_RE = re.compile(r"^<!-- notes:([\w.-]+) -->\n(.*?)^<!-- /notes:\1 -->\n?", re.MULTILINE | re.DOTALL)
PLOT_PREFIX = "benchmarks-"
INSTALL_HINT = ".venv/bin/pip install -e '.[bench]'"
OP_SIGNS = {"<=": "≤", "<": "<"}


class PlotUnavailableError(RuntimeError):
    """Plots cannot be drawn here (matplotlib is not installed)."""


@attrs.frozen
class Machine:
    cpus: int
    cpu_model: str
    memory_gib: float
    kernel: str
    python: str
    date: str
    commit: str
    load: float = -1.0
    """The 1-minute load average when the run started (other work on the machine skews ratios)."""

    def describe(self) -> str:
        cpu = f"{self.cpus} CPUs" + (f" ({self.cpu_model})" if self.cpu_model else "")
        memory = f", {self.memory_gib:.1f} GiB memory" if self.memory_gib else ""
        load = f"; load average {self.load:.2f} when the run started" if self.load >= 0 else ""
        return f"{cpu}{memory}, Linux {self.kernel}, {self.python}{load}"


def _read_first(path: str, prefix: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _git(repo: str, *args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def machine_info(repo: str, now: datetime.datetime | None = None, ignore: Sequence[str] = ()) -> Machine:
    """The machine, interpreter, date and commit that a run's numbers belong to. Changes to the
    paths (or glob patterns) in ``ignore``, relative to ``repo``, do not count as uncommitted
    changes: they are the report being regenerated."""
    memory_kib = _read_first("/proc/meminfo", "MemTotal:").split()
    commit = _git(repo, "rev-parse", "--short=12", "HEAD")
    excluded = [f":(exclude,glob){path}" for path in ignore]
    if commit and _git(repo, "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded):
        commit += " with uncommitted changes"
    when = (now or datetime.datetime.now(datetime.UTC)).astimezone(datetime.UTC)
    return Machine(
        cpus=os.cpu_count() or 0,
        cpu_model=_read_first("/proc/cpuinfo", "model name"),
        memory_gib=int(memory_kib[0]) / 1024 / 1024 if memory_kib else 0.0,
        kernel=platform.release(),
        python=f"{platform.python_implementation()} {platform.python_version()}",
        date=when.strftime("%Y-%m-%d %H:%M UTC"),
        commit=commit or "unknown",
        load=os.getloadavg()[0],
    )


def save_machine(path: str, machine: Machine) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(attrs.asdict(machine), f, indent=1)


def load_machine(path: str) -> Machine:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    names = {a.name for a in attrs.fields(Machine)}
    if not isinstance(doc, dict) or not names - {"load"} <= set(doc) <= names:
        raise ValueError(f"{path}: not a machine description")
    return Machine(
        cpus=int(doc["cpus"]),
        cpu_model=str(doc["cpu_model"]),
        memory_gib=float(doc["memory_gib"]),
        kernel=str(doc["kernel"]),
        python=str(doc["python"]),
        date=str(doc["date"]),
        commit=str(doc["commit"]),
        load=float(doc.get("load", -1.0)),
    )


# --- notes ------------------------------------------------------------------------------------------


def extract_notes(markdown: str) -> dict[str, str]:
    """The hand-written notes of an earlier report, by section key (``benchmark.section``)."""
    return {m.group(1): m.group(2) for m in NOTES_RE.finditer(markdown)}


def _notes_block(key: str, body: str) -> list[str]:
    body = body if not body or body.endswith("\n") else body + "\n"
    return [f"<!-- notes:{key} -->\n{body}<!-- /notes:{key} -->"]


# --- markdown ---------------------------------------------------------------------------------------


def fmt_time(seconds: float, unit: str) -> str:
    value = seconds * UNITS[unit]
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def fmt_ratio(ratio: float) -> str:
    """``0.64``; below 0.1 as a fraction (``1/2,500``) so that tiny ratios keep their size."""
    return f"{ratio:.2f}" if ratio >= 0.1 else f"1/{1 / ratio:,.0f}"


def fmt_target(target: Target) -> str:
    if target.unit == "×":
        return f"{target.value:.2f} ×"
    if target.value.is_integer() and target.limit.is_integer() and target.unit not in UNITS:
        return f"{target.value:,.0f} {target.unit}"  # a count (files)
    return f"{target.value:.2f} {target.unit}"


def verdict(target: Target) -> str:
    return "**PASS**" if target.met else "**MISS**"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def section_key(result: Result, section: Section) -> str:
    return f"{result.benchmark}.{section.id}"


def fmt_spread(low: float | None, high: float | None, unit: str) -> str:
    """The fastest and the slowest run, as ``0.91-1.20`` with an en dash (a dash when not measured)."""
    if low is None or high is None:
        return "—"
    return f"{fmt_time(low, unit)}–{fmt_time(high, unit)}"


def _tool_table(section: Section) -> list[str]:
    spread = any(row.low is not None for row in section.rows)
    cpu = any(row.cpu_seconds is not None for row in section.rows)
    runs = {row.runs for row in section.rows if row.runs}
    rows = []
    for row, ratio in ratio_rows(section):
        name = f"**{row.tool}**" if row.tool == section.primary else row.tool
        kind = "imagevol" if row.imagevol else "peer"
        rss = f"{row.rss_mib:.1f} MiB" if row.rss_mib is not None else "—"
        cells = [name, kind, fmt_time(row.seconds, section.unit)]
        if spread:
            cells.append(fmt_spread(row.low, row.high, section.unit))
        if cpu:
            cells.append(fmt_time(row.cpu_seconds, "s") if row.cpu_seconds is not None else "—")
        cells += [fmt_ratio(ratio), rss, row.note]
        rows.append(cells)
    median = "median" if runs else "time"
    columns = ["tool", "kind", f"{median} ({section.unit})"]
    if spread:
        columns.append(f"spread ({section.unit})")
    if cpu:
        columns.append("CPU (s)")
    columns += ["imagevol ÷ tool", "peak RSS", "note"]
    return _table(columns, rows)


def fmt_target_spread(target: Target) -> str:
    if target.low is None or target.high is None:
        return "—"
    return f"{target.low:.2f}–{target.high:.2f}"


def _target_table(section: Section) -> list[str]:
    spread = any(t.low is not None for t in section.targets)
    notes = any(t.note for t in section.targets)
    rows = []
    for t in section.targets:
        cells = [t.what, fmt_target(t)]
        if spread:
            cells.append(fmt_target_spread(t))
        cells += [f"{OP_SIGNS[t.op]} {t.limit:g} {t.unit}", t.design, verdict(t)]
        if notes:
            cells.append(t.note)
        rows.append(cells)
    columns = ["target", "measured"]
    if spread:
        columns.append("spread")
    columns += ["limit", "goal", "result"]
    if notes:
        columns.append("depends on")
    return _table(columns, rows)


def _plot_lines(plot: Plot, images: Mapping[str, str | None], reason: str | None) -> list[str]:
    image = images.get(plot.id)
    if image:
        return [f"![{plot.title}]({image})"]
    return [f"*Plot “{plot.title}” not drawn: {reason or 'matplotlib is not installed'}.*"]


def render(
    results: Sequence[Result],
    machine: Machine,
    images: Mapping[str, str | None] | None = None,
    notes: Mapping[str, str] | None = None,
    failures: Sequence[tuple[str, str]] = (),
    plot_reason: str | None = None,
) -> str:
    """The whole report. ``images`` maps plot ids to image paths relative to the report (None or
    missing: not drawn, for ``plot_reason``); ``notes`` are the hand-written notes to keep;
    ``failures`` are benchmarks that produced no result, with the reason."""
    images = images or {}
    notes = dict(notes or {})
    out = [
        "# Benchmarks",
        "",
        "<!-- Generated by benchmarks/run. Only the text between notes markers is kept when it runs again. -->",
        "",
        f"Generated by `benchmarks/run` on {machine.date}, commit {machine.commit}.",
        f"Machine: {machine.describe()}.",
        "",
        "Every number compares imagevol with real peers measured in the same run on the same machine.",
        "Where the peer is a whole process (`tar`, `curl`, `python3 -c pass`), imagevol is timed as a whole",
        "process too, interpreter start and imports included; rows timed inside a process say so. The",
        "tools are run in turn, one run each per round, so that a change in the machine's load hits them",
        "alike; each time is the median of the rounds with the spread (fastest–slowest) beside it, and",
        "each section gives the load average during its runs. A ratio target is the median of the",
        "per-round ratios. In each table, *imagevol ÷ tool* is the median time of imagevol's bold row",
        "divided by the tool's (below 1: imagevol is faster). Speed is never asserted by a timed test.",
        "Regenerate with `sudo benchmarks/run` (root: the unpack benchmark mounts a tmpfs; several",
        "minutes); `benchmarks/README.md` describes the scripts and how one plugs into the runner.",
        "",
        "## Targets",
        "",
    ]
    summary = [
        [f"{r.benchmark}: {s.title}", t.what, fmt_target(t), t.design, verdict(t)]
        for r in results
        for s in r.sections
        for t in s.targets
    ]
    if summary:
        out += _table(["benchmark", "target", "measured", "goal", "result"], summary)
        missed = [
            f"* {r.benchmark}: {t.what}: {fmt_target(t)}, goal {t.design}"
            + (f"; depends on {t.note}" if t.note else "")
            for r in results
            for s in r.sections
            for t in s.targets
            if not t.met
        ]
        out += ["", *(["Missed in this run:", "", *missed] if missed else ["Every target was met in this run."])]
    else:
        out.append("No target was measured in this run.")
    if failures:
        out += ["", "Not measured in this run:", ""]
        out += [f"* `{name}`: {reason}" for name, reason in failures]
    for result in results:
        trailing = [p for p in result.plots if not p.section]
        for index, section in enumerate(result.sections):
            out += ["", f"## {section.title}", ""]
            if section.text:
                out += [section.text.rstrip(), ""]
            command = f"`{result.command}`" if result.command else f"`benchmarks/{result.benchmark}.py`"
            versions = ", ".join(f"{k} {v}" for k, v in result.versions)
            out += [f"Measured by {command}" + (f"; {versions}." if versions else "."), ""]
            if section.load is not None:
                start, end = section.load
                out += [f"Load average (1 minute): {start:.2f} when these runs started, {end:.2f} when they ended.", ""]
            out += _tool_table(section)
            if section.targets:
                out += ["", *_target_table(section)]
            for table in section.tables:
                out += ["", f"**{table.title}**", "", *_table(table.columns, table.rows)]
            plots = [p for p in result.plots if p.section == section.id]
            if index == len(result.sections) - 1:
                plots += trailing
            for plot in plots:
                out += ["", *_plot_lines(plot, images, plot_reason)]
            key = section_key(result, section)
            out += ["", *_notes_block(key, notes.pop(key, ""))]
    if notes:
        out += ["", "## Notes kept from earlier reports", ""]
        out += ["These sections did not run this time; their notes are kept as they were.", ""]
        for key in sorted(notes):
            out += [*_notes_block(key, notes[key]), ""]
    return "\n".join(out).rstrip("\n") + "\n"


# --- plots --------------------------------------------------------------------------------------------


def draw(plot: Plot, path: str) -> None:
    """Draw ``plot`` as a PNG at ``path`` (matplotlib, Agg backend, no pyplot state)."""
    try:
        import matplotlib
    except ImportError as e:
        raise PlotUnavailableError(f"matplotlib is not installed (`{INSTALL_HINT}`)") from e
    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    fig = Figure(figsize=(7.5, 4.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if plot.kind == "bar":
        # Grouped bars, one group per label; the error bars span the fastest and slowest run.
        width = 0.8 / max(1, len(plot.lines))
        for i, line in enumerate(plot.lines):
            xs = [g + (i - (len(plot.lines) - 1) / 2) * width for g in range(len(plot.x))]
            ax.bar(xs, line.values, width, label=line.label, **_error_bars(line))
        ax.set_xticks(range(len(plot.x)), labels=list(plot.x_labels))
    else:
        markers = "osD^vx"
        for i, line in enumerate(plot.lines):
            ax.errorbar(
                plot.x, line.values, marker=markers[i % len(markers)], label=line.label, capsize=3, **_error_bars(line)
            )
        # Linear axes from 0: time proportional to size is a straight line through the origin, and a
        # fixed cost (interpreter start, imports) is the line's intercept.
        labels = list(plot.x_labels) or [f"{x:,.0f}" if x >= 10 else f"{x:.2g}" for x in plot.x]
        ax.set_xticks(plot.x, labels=_spaced(plot.x, labels))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_title(plot.title)
    ax.set_xlabel(plot.x_label)
    ax.set_ylabel(plot.y_label)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.savefig(path, format="png", metadata={"Software": None})


def _spaced(xs: Sequence[float], labels: Sequence[str]) -> list[str]:
    """The tick labels, leaving out those that would overlap the one shown before them."""
    out, last = [], None
    span = (max(xs) - min(0.0, *xs)) or 1.0
    for x, label in zip(xs, labels, strict=True):
        if last is not None and (x - last) / span < 0.04:
            out.append("")
            continue
        out.append(label)
        last = x
    return out


def _error_bars(line: Line) -> dict[str, Any]:
    if not line.low:
        return {}
    below = [max(0.0, v - lo) for v, lo in zip(line.values, line.low, strict=True)]
    above = [max(0.0, hi - v) for v, hi in zip(line.values, line.high, strict=True)]
    return {"yerr": [below, above]}


def draw_all(results: Sequence[Result], directory: str) -> tuple[dict[str, str | None], str | None]:
    """Draw every plot into ``directory`` as ``benchmarks-<id>.png``: (image names by plot id, the
    reason no plot was drawn or None). Images of earlier runs that are not redrawn are removed so
    the report never shows a stale plot."""
    images: dict[str, str | None] = {}
    reason = None
    for result in results:
        for plot in result.plots:
            name = f"{PLOT_PREFIX}{plot.id}.png"
            path = os.path.join(directory, name)
            try:
                draw(plot, path)
            except PlotUnavailableError as e:
                reason = str(e)
                images[plot.id] = None
                if os.path.exists(path):
                    os.unlink(path)
            else:
                images[plot.id] = name
    return images, reason


def write_report(
    path: str,
    results: Sequence[Result],
    machine: Machine,
    failures: Sequence[tuple[str, str]] = (),
    plots: bool = True,
) -> tuple[dict[str, str | None], str | None]:
    """Write the report at ``path`` (keeping the notes of the one there) and, with ``plots``, its
    images beside it. Returns what ``draw_all`` returned."""
    notes: dict[str, str] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            notes = extract_notes(f.read())
    images: dict[str, str | None]
    reason: str | None
    if plots:
        images, reason = draw_all(results, os.path.dirname(os.path.abspath(path)))
    else:
        images, reason = {}, "plots were not requested"
    text = render(results, machine, images, notes, failures, reason)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return images, reason
