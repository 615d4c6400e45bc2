"""Refresh some benchmarks' parts of an existing ``docs/benchmarks.md`` and keep the rest as it is.

``benchmarks/run --refresh NAME...`` runs only those benchmarks (``--render --refresh NAME`` takes
their saved results) and replaces, in the report already there, their sections, their rows of the
targets table and their lines among the missed targets; every other section, row and note stays
byte for byte, and a line under the header says which benchmarks were refreshed, when and at which
commit (the header's date and commit stay those of the full run).

The report is split on what ``_report.render`` writes: the ``## Targets`` table (a row's first cell
starts with ``NAME:``), the missed list (``* NAME: ...``) and one ``## `` section per benchmark
section, each closed by its ``<!-- /notes:NAME.SECTION -->`` marker.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from benchmarks import _report
from benchmarks._results import Result

_NOTES_KEY = re.compile(r"^<!-- notes:([\w-]+)\.[\w.-]+ -->$", re.MULTILINE)
_REFRESHED = "Refreshed since: "
_MISSED = "Missed in this run:"
_ALL_MET = "Every target was met in this run."
_KEPT = "## Notes kept from earlier reports"
T = TypeVar("T")


class _Parts:
    """A rendered report cut into the pieces a refresh replaces."""

    def __init__(self, text: str) -> None:
        lines = text.rstrip("\n").split("\n")
        start = lines.index("## Targets")
        self.head = lines[:start]
        rest = lines[start + 1 :]
        first = next((i for i, line in enumerate(rest) if line.startswith("## ")), len(rest))
        summary, body = rest[:first], rest[first:]
        self.table_head = [line for line in summary[:3] if line.startswith("|")][:2]
        self.rows = [line for line in summary if line.startswith("| ") and line not in self.table_head]
        failed_at = next((i for i, line in enumerate(summary) if line.startswith("Not measured")), len(summary))
        self.missed = [line for line in summary[:failed_at] if line.startswith("* ")]
        self.failures = [line for line in summary[failed_at:] if line.startswith("* `")]
        self.sections: list[tuple[str, list[str]]] = []
        for line in body:
            if line.startswith("## "):
                self.sections.append(("", []))
            bench, block = self.sections[-1]
            block.append(line)
            found = _NOTES_KEY.match(line)
            if found and not bench and block[0] != _KEPT:
                self.sections[-1] = (found.group(1), block)


def _bench(line: str, prefix: str) -> str:
    """The benchmark a targets row (``| NAME: ``) or a missed line (``* NAME: ``) belongs to."""
    return line[len(prefix) :].split(":", 1)[0]


def splice(old: str, new: str, names: Sequence[str], order: Sequence[str], stamp: str) -> str:
    """``old`` with the parts of benchmarks ``names`` taken from ``new`` (a report rendered from
    their results alone), ordered by ``order``; ``stamp`` says when and where they were measured."""
    was, now = _Parts(old), _Parts(new)
    wanted = set(names)

    def rank(bench: str) -> int:
        # Sections without a benchmark (the notes kept from earlier reports) stay last.
        return order.index(bench) if bench in order else len(order) + (0 if bench else 1)

    def merge(old_items: list[T], new_items: list[T], bench_of: Callable[[T], str]) -> list[T]:
        """``old_items`` with those of ``wanted`` replaced in place by ``new_items``; a benchmark
        the report did not have goes before the first that follows it in ``order``."""
        fresh: dict[str, list[T]] = {}
        for item in new_items:
            if bench_of(item) in wanted:
                fresh.setdefault(bench_of(item), []).append(item)
        out: list[T] = []
        for item in old_items:
            bench = bench_of(item)
            if bench not in wanted:
                out.append(item)
            elif bench in fresh:
                out += fresh.pop(bench)
        for bench, items in fresh.items():
            at = next((i for i, item in enumerate(out) if rank(bench_of(item)) > rank(bench)), len(out))
            out[at:at] = items
        return out

    rows = merge(was.rows, now.rows, lambda r: _bench(r, "| "))
    missed = merge(was.missed, now.missed, lambda m: _bench(m, "* "))
    failures = [f for f in was.failures if f.split("`")[1] not in wanted] + now.failures
    sections = merge(was.sections, now.sections, lambda s: s[0])

    head = [line for line in was.head if not (line.startswith(_REFRESHED) and _bench(line, _REFRESHED) in wanted)]
    at = max((i for i, line in enumerate(head) if line.startswith(("Machine:", _REFRESHED))), default=len(head) - 1)
    head[at + 1 : at + 1] = [f"{_REFRESHED}{', '.join(sorted(wanted, key=rank))}: {stamp}"]
    out = [*head, "## Targets", ""]
    if rows:
        out += [*(was.table_head or now.table_head), *rows, ""]
        out += [_MISSED, "", *missed] if missed else [_ALL_MET]
    else:
        out.append("No target was measured in this run.")
    if failures:
        out += ["", "Not measured in this run:", "", *failures]
    for _, block in sections:
        end = len(block)
        while end and block[end - 1] == "":
            end -= 1
        out += ["", *block[:end]]
    return "\n".join(out).rstrip("\n") + "\n"


def refresh_report(
    path: str,
    results: Sequence[Result],
    machine: _report.Machine,
    failures: Sequence[tuple[str, str]],
    names: Sequence[str],
    order: Sequence[str],
    plots: bool = True,
) -> tuple[dict[str, str | None], str | None]:
    """Refresh the parts of benchmarks ``names`` in the report at ``path`` (written whole when
    there is none yet), with their plots. Returns what ``_report.draw_all`` returned."""
    if not os.path.exists(path):
        return _report.write_report(path, results, machine, failures, plots=plots)
    with open(path, encoding="utf-8") as f:
        old = f.read()
    if plots:
        images, reason = _report.draw_all(results, os.path.dirname(os.path.abspath(path)))
    else:
        images, reason = {}, "plots were not requested"
    new = _report.render(results, machine, images, _report.extract_notes(old), failures, reason)
    stamp = f"{machine.date}, commit {machine.commit} (`benchmarks/run --refresh`)"
    text = splice(old, new, names, order, stamp)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return images, reason
