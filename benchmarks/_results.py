"""The machine-readable result of one benchmark script: what ``--json PATH`` writes.

``benchmarks/run`` reads one such document per script and renders it into ``docs/benchmarks.md``
(see ``benchmarks/README.md`` for the contract). A document holds one or more *sections* (one table
each in the report); every section compares imagevol's rows with its peers' rows, all measured in the
same run, and carries the design targets it is checked against. Times are always stored in seconds;
``Section.unit`` only chooses how they are shown.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

SCHEMA = 1
UNITS = {"s": 1.0, "ms": 1e3, "µs": 1e6}
OPS = ("<=", "<")


class ResultError(ValueError):
    """A benchmark wrote a document that does not follow the schema."""


@attrs.frozen
class Row:
    """One tool's measurement. ``imagevol`` marks imagevol's own rows (the others are peers).

    ``seconds`` is the median of ``runs`` runs (0: not stated), ``low`` and ``high`` the fastest
    and the slowest of them (the spread), ``cpu_seconds`` the median CPU time (user + system) of
    the whole process where it was measured."""

    tool: str
    seconds: float
    imagevol: bool = False
    rss_mib: float | None = None
    note: str = ""
    low: float | None = None
    high: float | None = None
    runs: int = 0
    cpu_seconds: float | None = None


@attrs.frozen
class Target:
    """A performance goal: met when ``value <op> limit``. ``low`` and ``high`` give the spread
    of ``value`` over the runs (for a ratio: of the per-round ratios of interleaved runs); ``note``
    says what the result depends on (an idle second CPU, work not done yet)."""

    what: str
    design: str
    value: float
    limit: float
    unit: str = "×"
    op: str = "<="
    low: float | None = None
    high: float | None = None
    note: str = ""

    @property
    def met(self) -> bool:
        return self.value <= self.limit if self.op == "<=" else self.value < self.limit


@attrs.frozen
class Table:
    """A free-form extra table (already formatted cells)."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@attrs.frozen
class Line:
    """One series: a value per x, with optional error bars from ``low`` to ``high`` (the spread)."""

    label: str
    values: tuple[float, ...]
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()


PLOT_KINDS = ("line", "bar")


@attrs.frozen
class Plot:
    """A plot, written as ``docs/benchmarks-<id>.png`` when matplotlib is installed and shown in
    the section ``section`` (after the benchmark's last section when empty). ``kind`` is ``line``
    (numeric ``x``) or ``bar`` (one group of bars per ``x_labels`` entry, one bar per line; ``x``
    then only numbers the groups)."""

    id: str
    section: str
    title: str
    x_label: str
    y_label: str
    x: tuple[float, ...]
    lines: tuple[Line, ...]
    kind: str = "line"
    x_labels: tuple[str, ...] = ()


@attrs.frozen
class Section:
    """One comparison: ratios are ``primary``'s time divided by each row's time."""

    id: str
    title: str
    text: str
    unit: str
    primary: str
    rows: tuple[Row, ...]
    targets: tuple[Target, ...] = ()
    tables: tuple[Table, ...] = ()
    #: The 1-minute load average when the section's runs started and when they ended.
    load: tuple[float, float] | None = None

    def primary_row(self) -> Row:
        for row in self.rows:
            if row.tool == self.primary:
                return row
        raise ResultError(f"section {self.id!r}: no row for its primary tool {self.primary!r}")


@attrs.frozen
class Result:
    """Everything one benchmark script measured in one run."""

    benchmark: str
    command: str
    sections: tuple[Section, ...]
    plots: tuple[Plot, ...] = ()
    versions: tuple[tuple[str, str], ...] = ()
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, hash=False)
    """The benchmark's own numbers, free-form (kept for later analysis, not rendered)."""


# --- JSON ---------------------------------------------------------------------------------------------


def to_json(result: Result) -> dict[str, Any]:
    doc = attrs.asdict(result)
    doc["schema"] = SCHEMA
    doc["versions"] = dict(result.versions)
    doc["raw"] = dict(result.raw)
    return doc


def write(path: str, result: Result) -> None:
    """Write ``result`` to ``path`` atomically (``-`` prints it)."""
    validate(result)
    text = json.dumps(to_json(result), indent=1, ensure_ascii=False) + "\n"
    if path == "-":
        print(text, end="")
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".bench-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read(path: str) -> Result:
    with open(path, encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ResultError(f"{path}: not JSON: {e}") from None
    try:
        return from_json(doc)
    except ResultError as e:
        raise ResultError(f"{path}: {e}") from None


def _get(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in doc:
        raise ResultError(f"{where}: missing {key!r}")
    value = doc[key]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ResultError(f"{where}: {key!r} must not be a boolean")
    if not isinstance(value, kind):
        raise ResultError(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def _opt(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any) -> Any:
    return _get(doc, key, kind, where) if doc.get(key) is not None else default


def _list(doc: Mapping[str, Any], key: str, where: str, required: bool = True) -> list[Any]:
    if not required and key not in doc:
        return []
    value: list[Any] = _get(doc, key, list, where)
    return value


def _num(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ResultError(f"{where}: not a number: {value!r}")
    return float(value)


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


def from_json(doc: Any) -> Result:
    if not isinstance(doc, dict):
        raise ResultError("the document is not a JSON object")
    if doc.get("schema") != SCHEMA:
        raise ResultError(f"schema {doc.get('schema')!r}, expected {SCHEMA}")
    sections = []
    for i, s in enumerate(_list(doc, "sections", "document")):
        where = f"sections[{i}]"
        if not isinstance(s, dict):
            raise ResultError(f"{where}: not an object")
        rows = tuple(
            Row(
                tool=_get(r, "tool", str, f"{where}.rows[{j}]"),
                seconds=_num(_get(r, "seconds", (int, float), f"{where}.rows[{j}]"), where),
                imagevol=_opt(r, "imagevol", bool, f"{where}.rows[{j}]", False),
                rss_mib=_float_or_none(_opt(r, "rss_mib", (int, float), f"{where}.rows[{j}]", None)),
                note=_opt(r, "note", str, f"{where}.rows[{j}]", ""),
                low=_float_or_none(_opt(r, "low", (int, float), f"{where}.rows[{j}]", None)),
                high=_float_or_none(_opt(r, "high", (int, float), f"{where}.rows[{j}]", None)),
                runs=_opt(r, "runs", int, f"{where}.rows[{j}]", 0),
                cpu_seconds=_float_or_none(_opt(r, "cpu_seconds", (int, float), f"{where}.rows[{j}]", None)),
            )
            for j, r in enumerate(_list(s, "rows", where))
        )
        targets = tuple(
            Target(
                what=_get(t, "what", str, f"{where}.targets[{j}]"),
                design=_get(t, "design", str, f"{where}.targets[{j}]"),
                value=_num(_get(t, "value", (int, float), f"{where}.targets[{j}]"), where),
                limit=_num(_get(t, "limit", (int, float), f"{where}.targets[{j}]"), where),
                unit=_opt(t, "unit", str, f"{where}.targets[{j}]", "×"),
                op=_opt(t, "op", str, f"{where}.targets[{j}]", "<="),
                low=_float_or_none(_opt(t, "low", (int, float), f"{where}.targets[{j}]", None)),
                high=_float_or_none(_opt(t, "high", (int, float), f"{where}.targets[{j}]", None)),
                note=_opt(t, "note", str, f"{where}.targets[{j}]", ""),
            )
            for j, t in enumerate(_list(s, "targets", where, required=False))
        )
        tables = tuple(
            Table(
                title=_get(t, "title", str, f"{where}.tables[{j}]"),
                columns=tuple(str(c) for c in _get(t, "columns", list, f"{where}.tables[{j}]")),
                rows=tuple(tuple(str(c) for c in r) for r in _get(t, "rows", list, f"{where}.tables[{j}]")),
            )
            for j, t in enumerate(_list(s, "tables", where, required=False))
        )
        sections.append(
            Section(
                id=_get(s, "id", str, where),
                title=_get(s, "title", str, where),
                text=_opt(s, "text", str, where, ""),
                unit=_get(s, "unit", str, where),
                primary=_get(s, "primary", str, where),
                rows=rows,
                targets=targets,
                tables=tables,
                load=_load(s.get("load"), where),
            )
        )
    plots = []
    for i, p in enumerate(_list(doc, "plots", "document", required=False)):
        where = f"plots[{i}]"
        plots.append(
            Plot(
                id=_get(p, "id", str, where),
                section=_opt(p, "section", str, where, ""),
                title=_get(p, "title", str, where),
                x_label=_get(p, "x_label", str, where),
                y_label=_get(p, "y_label", str, where),
                x=tuple(_num(v, where) for v in _get(p, "x", list, where)),
                lines=tuple(
                    Line(
                        label=_get(line, "label", str, f"{where}.lines[{j}]"),
                        values=tuple(_num(v, where) for v in _get(line, "values", list, f"{where}.lines[{j}]")),
                        low=tuple(_num(v, where) for v in _opt(line, "low", list, f"{where}.lines[{j}]", [])),
                        high=tuple(_num(v, where) for v in _opt(line, "high", list, f"{where}.lines[{j}]", [])),
                    )
                    for j, line in enumerate(_get(p, "lines", list, where))
                ),
                kind=_opt(p, "kind", str, where, "line"),
                x_labels=tuple(str(v) for v in _opt(p, "x_labels", list, where, [])),
            )
        )
    versions = _opt(doc, "versions", dict, "document", {})
    result = Result(
        benchmark=_get(doc, "benchmark", str, "document"),
        command=_opt(doc, "command", str, "document", ""),
        sections=tuple(sections),
        plots=tuple(plots),
        versions=tuple((str(k), str(v)) for k, v in versions.items()),
        raw=_opt(doc, "raw", dict, "document", {}),
    )
    validate(result)
    return result


def _load(value: Any, where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise ResultError(f"{where}: 'load' must be [start, end]")
    return _num(value[0], where), _num(value[1], where)


def validate(result: Result) -> None:
    """Check what the types cannot: known units and operators, a primary row, plot shapes."""
    if not result.sections:
        raise ResultError(f"{result.benchmark}: no sections")
    ids = [s.id for s in result.sections]
    if len(set(ids)) != len(ids):
        raise ResultError(f"{result.benchmark}: duplicate section ids {ids}")
    for section in result.sections:
        if section.unit not in UNITS:
            raise ResultError(f"section {section.id!r}: unit {section.unit!r} is not one of {sorted(UNITS)}")
        if not section.primary_row().imagevol:
            raise ResultError(f"section {section.id!r}: the primary row must be one of imagevol's")
        for row in section.rows:
            if not row.seconds > 0:
                raise ResultError(f"section {section.id!r}: {row.tool!r} has a non-positive time")
            if (row.low is None) != (row.high is None) or (
                row.low is not None and row.high is not None and not row.low <= row.seconds <= row.high
            ):
                raise ResultError(f"section {section.id!r}: {row.tool!r}: the spread must hold the median")
            if row.runs < 0:
                raise ResultError(f"section {section.id!r}: {row.tool!r} has a negative number of runs")
        for target in section.targets:
            if target.op not in OPS:
                raise ResultError(f"section {section.id!r}: operator {target.op!r} is not one of {OPS}")
        for table in section.tables:
            for row_cells in table.rows:
                if len(row_cells) != len(table.columns):
                    raise ResultError(f"table {table.title!r}: a row has {len(row_cells)} cells")
    for plot in result.plots:
        if plot.section and plot.section not in ids:
            raise ResultError(f"plot {plot.id!r}: no section {plot.section!r}")
        if not plot.id.replace("-", "").replace("_", "").isalnum():
            raise ResultError(f"plot id {plot.id!r}: use letters, digits, '-' and '_' only")
        if plot.kind not in PLOT_KINDS:
            raise ResultError(f"plot {plot.id!r}: kind {plot.kind!r} is not one of {PLOT_KINDS}")
        if plot.x_labels and len(plot.x_labels) != len(plot.x):
            raise ResultError(f"plot {plot.id!r}: {len(plot.x_labels)} labels for {len(plot.x)} points")
        if plot.kind == "bar" and not plot.x_labels:
            raise ResultError(f"plot {plot.id!r}: a bar plot needs x_labels")
        for line in plot.lines:
            if len(line.values) != len(plot.x):
                raise ResultError(f"plot {plot.id!r}: line {line.label!r} has {len(line.values)} points")
            if len(line.low) != len(line.high) or (line.low and len(line.low) != len(plot.x)):
                raise ResultError(f"plot {plot.id!r}: line {line.label!r}: the spread needs a point per x")


def ratio_rows(section: Section) -> Sequence[tuple[Row, float]]:
    """Each row with imagevol's (the primary row's) time divided by the row's time."""
    primary = section.primary_row().seconds
    return [(row, primary / row.seconds) for row in section.rows]
