"""benchmarks/run's machinery on small synthetic results, so that it cannot rot between real runs:
the result documents, the markdown report, the notes it keeps, the plots, discovery, and the
``--json PATH`` output of each benchmark on tiny inputs. No timing is asserted (speed is measured by
``benchmarks/run``, as ratios, never by tests); nothing here is skipped: without matplotlib the plot
test checks that the report says the plot was not drawn."""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import shutil
import struct
import sys
import textwrap

import pytest

from benchmarks import _measure, _report, _results, _runner, pods, startup, subpath, unpack
from benchmarks._results import Line, Plot, Result, ResultError, Row, Section, Table, Target

MACHINE = _report.Machine(
    cpus=2,
    cpu_model="Test CPU",
    memory_gib=24.0,
    kernel="6.1.0-test",
    python="CPython 3.11.7",
    date="2030-01-02 03:04 UTC",
    commit="0123456789ab",
)


def synthetic() -> list[Result]:
    unpack_result = Result(
        benchmark="unpack",
        command="benchmarks/unpack.py --runs 3",
        sections=(
            Section(
                id="layer",
                title="Materialise a layer",
                text="A synthetic layer.",
                unit="s",
                primary="imagevol",
                rows=(
                    Row("tar -xzf", 1.0, rss_mib=2.5),
                    Row("umoci raw unpack", 2.5, rss_mib=29.0, note="peer note"),
                    Row("imagevol", 0.5, imagevol=True, rss_mib=38.0),
                    Row("imagevol (zlib)", 0.75, imagevol=True, rss_mib=36.0),
                ),
                targets=(Target("imagevol ÷ GNU tar", "≤ 1 × GNU tar", 0.5, 1.0),),
                tables=(Table("By layer size", ("tar (MB)", "imagevol (s)"), (("27", "0.10"), ("219", "0.50"))),),
            ),
        ),
        plots=(
            Plot(
                id="unpack",
                section="layer",
                title="Materialising a layer",
                x_label="MB",
                y_label="s",
                x=(27.0, 55.0, 110.0, 219.0, 438.0),
                lines=(
                    Line("imagevol", (0.1, 0.15, 0.27, 0.5, 1.0)),
                    Line("GNU tar -xzf", (0.15, 0.3, 0.55, 1.0, 2.1)),
                    Line("umoci raw unpack", (0.4, 0.7, 1.3, 2.5, 5.0)),
                ),
            ),
        ),
        versions=(("GNU tar", "1.35"),),
        raw={"runs": 3},
    )
    resolve = Result(
        benchmark="subpath",
        command="python -m benchmarks.subpath",
        sections=(
            Section(
                id="resolve",
                title="Resolve a sub path",
                text="",
                unit="µs",
                primary="imagevol resolve",
                rows=(Row("imagevol resolve", 9e-6, imagevol=True), Row("bare openat2", 2.5e-6)),
                targets=(Target("imagevol ÷ bare openat2", "≤ 3 × raw openat2", 3.6, 3.0),),
            ),
            Section(
                id="mount",
                title="Second mount",
                text="",
                unit="ms",
                primary="second mount",
                rows=(Row("second mount", 8e-5, imagevol=True), Row("first mount", 2.4, imagevol=True)),
                targets=(Target("slowest second mount", "under 5 ms", 0.08, 5.0, unit="ms", op="<"),),
            ),
        ),
    )
    pull = Result(
        benchmark="pull",
        command="python -m benchmarks.pull --runs 5",
        sections=(
            Section(
                id="blob",
                title="Pull a blob",
                text="Whole processes.",
                unit="s",
                primary="imagevol pull",
                rows=(
                    Row("imagevol pull", 0.6, imagevol=True, rss_mib=48.0, low=0.5, high=0.9, runs=5, cpu_seconds=0.55),
                    Row("curl -o", 0.2, low=0.15, high=0.3, runs=5, cpu_seconds=0.1, note="verifies nothing"),
                ),
                targets=(
                    Target("imagevol ÷ curl", "≤ 2 × curl", 3.0, 2.0, low=2.5, high=4.0, note="the start-up work"),
                ),
                load=(1.5, 1.75),
            ),
        ),
        plots=(
            Plot(
                id="pull",
                section="blob",
                title="Pulling a blob",
                x_label="tool",
                y_label="s",
                x=(0.0, 1.0),
                lines=(Line("whole process", (0.2, 0.6), low=(0.15, 0.5), high=(0.3, 0.9)),),
                kind="bar",
                x_labels=("curl", "imagevol"),
            ),
        ),
    )
    return [unpack_result, resolve, pull]


def test_report_has_a_table_per_section_with_ratios_rss_targets_and_machine() -> None:
    text = _report.render(synthetic(), MACHINE, failures=[("pull", "exited with status 1 and wrote no results")])
    assert "2030-01-02 03:04 UTC, commit 0123456789ab" in text
    assert "2 CPUs (Test CPU), 24.0 GiB memory, Linux 6.1.0-test, CPython 3.11.7" in text
    for title in ("## Materialise a layer", "## Resolve a sub path", "## Second mount"):
        assert title in text
    # imagevol's time over each tool's: 0.5 / 1.0 and 0.5 / 2.5; the primary row is bold.
    assert "| tar -xzf | peer | 1.00 | 0.50 | 2.5 MiB |  |" in text
    assert "| umoci raw unpack | peer | 2.50 | 0.20 | 29.0 MiB | peer note |" in text
    assert "| **imagevol** | imagevol | 0.500 | 1.00 | 38.0 MiB |  |" in text
    # Units are applied, tiny ratios keep their size, absent RSS is a dash.
    assert "| bare openat2 | peer | 2.50 | 3.60 | — |  |" in text
    assert "| first mount | imagevol | 2,400 | 1/30,000 | — |  |" in text
    # Targets: per section and in the summary, PASS and MISS.
    assert "| imagevol ÷ GNU tar | 0.50 × | ≤ 1 × | ≤ 1 × GNU tar | **PASS** |" in text
    assert "| imagevol ÷ bare openat2 | 3.60 × | ≤ 3 × | ≤ 3 × raw openat2 | **MISS** |" in text
    assert "| slowest second mount | 0.08 ms | < 5 ms | under 5 ms | **PASS** |" in text
    assert "| unpack: Materialise a layer | imagevol ÷ GNU tar | 0.50 × | ≤ 1 × GNU tar | **PASS** |" in text
    assert "**By layer size**" in text and "| 219 | 0.50 |" in text
    assert "`benchmarks/unpack.py --runs 3`; GNU tar 1.35." in text
    assert "* `pull`: exited with status 1 and wrote no results" in text
    # Medians with their spread, CPU time, runs and load; targets with the spread of the per-round
    # ratios and what they depend on; missed targets listed by name.
    assert "| tool | kind | median (s) | spread (s) | CPU (s) | imagevol ÷ tool | peak RSS | note |" in text
    assert "| **imagevol pull** | imagevol | 0.600 | 0.500–0.900 | 0.550 | 1.00 | 48.0 MiB |  |" in text
    assert "| curl -o | peer | 0.200 | 0.150–0.300 | 0.100 | 3.00 | — | verifies nothing |" in text
    assert "| imagevol ÷ curl | 3.00 × | 2.50–4.00 | ≤ 2 × | ≤ 2 × curl | **MISS** | the start-up work |" in text
    assert "Load average (1 minute): 1.50 when these runs started, 1.75 when they ended." in text
    assert "Missed in this run:\n\n" in text
    assert "* pull: imagevol ÷ curl: 3.00 ×, goal ≤ 2 × curl; depends on the start-up work\n" in text
    assert _report.fmt_target(Target("files written", "writes nothing", 5002.0, 0.0, unit="files")) == "5,002 files"
    assert _report.fmt_target(Target("get pods", "under 1 s", 1.0, 1.0, unit="s", op="<")) == "1.00 s"
    # Sections without spread keep the short table.
    assert "| tool | kind | time (s) | imagevol ÷ tool | peak RSS | note |" in text
    # No image was drawn: the report says so instead of linking one.
    assert "not drawn" in text and "](benchmarks-unpack.png)" not in text
    linked = _report.render(synthetic(), MACHINE, images={"unpack": "benchmarks-unpack.png"})
    assert "![Materialising a layer](benchmarks-unpack.png)" in linked
    # Every table row has as many cells as its header.
    for block in linked.split("\n\n"):
        lines = [line for line in block.splitlines() if line.startswith("|")]
        if lines:
            assert len({line.count(" | ") for line in lines if not line.startswith("|---")}) == 1, block


def test_notes_are_kept_across_regenerations(tmp_path: pytest.TempPathFactory) -> None:
    path = os.path.join(str(tmp_path), "benchmarks.md")
    _report.write_report(path, synthetic(), MACHINE, plots=False)
    with open(path) as f:
        first = f.read()
    assert "<!-- notes:unpack.layer -->\n<!-- /notes:unpack.layer -->" in first
    notes = "What made it fast:\n\n* no `tarfile` | a pipe\n"
    orphan = "<!-- notes:gone.section -->\nKept although gone.\n<!-- /notes:gone.section -->\n"
    with open(path, "w") as f:
        f.write(first.replace("<!-- /notes:unpack.layer -->", notes + "<!-- /notes:unpack.layer -->") + orphan)
    _report.write_report(path, synthetic(), MACHINE, plots=False)
    with open(path) as f:
        second = f.read()
    assert f"<!-- notes:unpack.layer -->\n{notes}<!-- /notes:unpack.layer -->" in second
    assert "## Notes kept from earlier reports" in second and "Kept although gone." in second
    assert "plots were not requested" in second
    _report.write_report(path, synthetic(), MACHINE, plots=False)
    with open(path) as f:
        assert f.read() == second  # stable: regenerating changes nothing


def _png_size(path: str) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_plot_is_drawn_when_matplotlib_is_installed_and_reported_missing_otherwise(
    tmp_path: pytest.TempPathFactory,
) -> None:
    path = os.path.join(str(tmp_path), "benchmarks.md")
    images, reason = _report.write_report(path, synthetic(), MACHINE)
    with open(path) as f:
        text = f.read()
    png = os.path.join(str(tmp_path), "benchmarks-unpack.png")
    if importlib.util.find_spec("matplotlib") is not None:
        assert images == {"unpack": "benchmarks-unpack.png", "pull": "benchmarks-pull.png"} and reason is None
        for name in ("unpack", "pull"):  # a line plot and a bar plot, both with error bars
            width, height = _png_size(os.path.join(str(tmp_path), f"benchmarks-{name}.png"))
            assert width > 400 and height > 200
        assert "![Materialising a layer](benchmarks-unpack.png)" in text
        assert "![Pulling a blob](benchmarks-pull.png)" in text
    else:
        assert images == {"unpack": None, "pull": None} and reason is not None and "matplotlib" in reason
        assert not os.path.exists(png)
        assert "not drawn: matplotlib is not installed" in text
        with pytest.raises(_report.PlotUnavailableError):
            _report.draw(synthetic()[0].plots[0], png)


def test_result_documents_round_trip_and_are_validated(tmp_path: pytest.TempPathFactory) -> None:
    for result in synthetic():
        path = os.path.join(str(tmp_path), f"{result.benchmark}.json")
        _results.write(path, result)
        back = _results.read(path)
        assert back == result and back.raw == result.raw
    doc = _results.to_json(synthetic()[0])
    broken: list[tuple[str, object]] = [
        ("sections.0.unit", "min"),
        ("sections.0.primary", "tar -xzf"),  # a peer cannot be the primary row
        ("sections.0.primary", "nobody"),
        ("sections.0.rows.0.seconds", 0),
        ("sections.0.rows.0.seconds", "fast"),
        ("sections.0.targets.0.op", ">"),
        ("plots.0.x", [1.0, 2.0]),
        ("plots.0.section", "elsewhere"),
        ("plots.0.kind", "pie"),
        ("plots.0.lines.0.low", [0.1]),
        ("sections.0.rows.0.low", 2.0),  # the spread must hold the median
        ("sections.0.rows.0.runs", -1),
        ("sections.0.load", [1.0]),
        ("schema", 99),
    ]
    for where, value in broken:
        bad = json.loads(json.dumps(doc))
        *parents, last = where.split(".")
        node = bad
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[last] = value
        with pytest.raises(ResultError):
            _results.from_json(bad)
    bar = json.loads(json.dumps(_results.to_json(synthetic()[2])))
    bar["plots"][0]["x_labels"] = []
    with pytest.raises(ResultError, match="x_labels"):
        _results.from_json(bar)


def test_runner_renders_saved_results(tmp_path: pytest.TempPathFactory) -> None:
    results_dir = os.path.join(str(tmp_path), "results")
    os.mkdir(results_dir)
    for result in synthetic():
        _results.write(os.path.join(results_dir, f"{result.benchmark}.json"), result)
    _report.save_machine(os.path.join(results_dir, _runner.MACHINE_FILE), MACHINE)
    out = os.path.join(str(tmp_path), "report.md")
    assert _report.load_machine(os.path.join(results_dir, _runner.MACHINE_FILE)) == MACHINE
    assert _runner.main(["--render", "--results", results_dir, "--out", out, "--no-plots"]) == 0
    with open(out) as f:
        text = f.read()
    assert "2030-01-02 03:04 UTC" in text and "## Resolve a sub path" in text
    assert _runner.parse_args_option(["unpack=--runs 5 --dir '/a b'"], ["unpack"]) == {
        "unpack": ["--runs", "5", "--dir", "/a b"]
    }
    with pytest.raises(ValueError, match="NAME='ARGS'"):
        _runner.parse_args_option(["nope=--x"], ["unpack"])


def test_discovery_takes_modules_documenting_json_path(tmp_path: pytest.TempPathFactory) -> None:
    package = os.path.join(str(tmp_path), "fakebench")
    os.mkdir(package)
    with open(os.path.join(package, "__init__.py"), "w"):
        pass
    cli = textwrap.dedent(
        """
        import argparse
        parser = argparse.ArgumentParser()
        parser.add_argument({option!r}, metavar="PATH", help="write the results")
        parser.parse_args()
        """
    )
    for name, option in (("good", "--json"), ("other", "--output"), ("_helper", "--json")):
        with open(os.path.join(package, f"{name}.py"), "w") as f:
            f.write(cli.format(option=option))
    with open(os.path.join(package, "broken.py"), "w") as f:
        f.write("raise SystemExit(3)\n")
    assert _runner.discover(package) == ["good"]
    assert {"unpack", "subpath", "pull", "fleet", "startup", "pods"} <= set(_runner.discover())


def test_subpath_writes_its_document(tmp_path: pytest.TempPathFactory) -> None:
    path = os.path.join(str(tmp_path), "subpath.json")
    status = subpath.main(["--files", "30", "--number", "50", "--mounts", "3", "--json", path])
    assert status in (0, 1)  # 1: a target missed (no timing is asserted here)
    result = _results.read(path)
    assert [s.id for s in result.sections] == ["resolve", "second-mount"]
    assert all(s.targets for s in result.sections)
    assert result.raw["second_mount"]["files"] == 30


def test_unpack_writes_its_document(tmp_path: pytest.TempPathFactory) -> None:
    path = os.path.join(str(tmp_path), "unpack.json")
    work = os.path.join(str(tmp_path), "work")
    os.mkdir(work)
    argv = ["--dir", work, "--runs", "1", "--scales", "0.005,0.01", "--main-scale", "0.005", "--entries", "200"]
    assert unpack.main([*argv, "--json", path]) in (0, 1)  # 1: a target missed (no timing is asserted)
    assert os.listdir(work) == []  # the layers are removed
    result = _results.read(path)
    assert [s.id for s in result.sections] == ["layer", "pinned", "formats", "entries"]
    layer, pinned, formats, entries = result.sections
    names = [row.tool for row in layer.rows]
    assert names[0] == unpack.TAR and layer.primary in names and unpack.TARFILE in names
    assert (unpack.UMOCI in names) == (shutil.which("umoci") is not None)
    assert all(row.runs == 1 and row.low == row.seconds == row.high and row.cpu_seconds for row in layer.rows)
    assert all(section.load is not None for section in result.sections)
    assert layer.targets[0].what == "imagevol ÷ GNU tar, wall, 2 CPUs"
    assert layer.targets[0].note  # depends on an idle second CPU
    assert pinned.targets[0].what == "imagevol ÷ GNU tar, CPU time, one CPU"
    assert all(row.tool.endswith("on one CPU") for row in pinned.rows)
    assert {row.tool for row in formats.rows} == {unpack.TAR_ZSTD, unpack.TAR_PLAIN, "imagevol, zstd",
                                                   "imagevol, uncompressed"}  # fmt: skip
    assert entries.unit == "µs" and entries.primary == "imagevol applier, per entry"
    plots = {plot.id: plot for plot in result.plots}
    assert set(plots) == {"unpack", "unpack-format"}
    assert len(plots["unpack"].x) == 2 and plots["unpack"].x[0] < plots["unpack"].x[1]
    assert len(plots["unpack"].lines) == 2 + (shutil.which("umoci") is not None)
    assert plots["unpack-format"].kind == "bar" and plots["unpack-format"].x_labels[1] == "zstd -3"
    assert {"gzip", "gzip@0.01", "gzip-pinned", "formats", "entries"} <= set(result.raw)


def test_startup_writes_its_document(tmp_path: pytest.TempPathFactory) -> None:
    path = os.path.join(str(tmp_path), "startup.json")
    assert startup.main(["--runs", "1", "--json", path]) in (0, 1)
    result = _results.read(path)
    (section,) = result.sections
    assert {row.tool for row in section.rows} == {
        startup.PYTHON, startup.HELP, startup.VERSION, startup.GET_PODS, startup.IMPORT, startup.NO_SITE,
        startup.ISOLATED,
    }  # fmt: skip
    assert [t.what for t in section.targets] == [
        f"{startup.HELP} ÷ {startup.PYTHON}",
        f"{startup.VERSION} ÷ {startup.PYTHON}",
        f"{startup.GET_PODS} ÷ {startup.PYTHON}",
    ]
    (table,) = section.tables
    assert table.rows and table.rows[0][1] == "1"  # the heaviest import is one the command makes itself
    (plot,) = result.plots
    assert plot.kind == "bar" and len(plot.x_labels) == 5


def test_pods_writes_its_document(tmp_path: pytest.TempPathFactory) -> None:
    path = os.path.join(str(tmp_path), "pods.json")
    assert pods.main(["--pods", "1,3", "--runs", "1", "--dir", str(tmp_path), "--json", path]) in (0, 1)
    result = _results.read(path)
    (section,) = result.sections
    assert [row.tool for row in section.rows] == [
        "get pods, 3 Pods",
        "sync, 3 Pods",
        "get pods, 1 Pod",
        "sync, 1 Pod",
    ]
    writes = section.targets[2]
    assert writes.unit == "files" and writes.value == result.raw["writes"]["3"]
    assert [row[0] for row in section.tables[0].rows] == ["1", "3"]
    assert os.listdir(str(tmp_path)) == ["pods.json"]  # the node roots are removed


def test_files_written_counts_new_replaced_and_removed_files(tmp_path: pytest.TempPathFactory) -> None:
    root = str(tmp_path)
    for name in ("same", "rewritten", "removed"):
        with open(os.path.join(root, name), "w") as f:
            f.write(name)
    before = pods.snapshot(root)
    with open(os.path.join(root, "rewritten.tmp"), "w") as f:
        f.write("rewritten")
    os.replace(os.path.join(root, "rewritten.tmp"), os.path.join(root, "rewritten"))  # a new inode
    os.unlink(os.path.join(root, "removed"))
    os.mkdir(os.path.join(root, "dir"))  # a directory alone is not a file written
    with open(os.path.join(root, "dir", "new"), "w") as f:
        f.write("new")
    assert pods.changed(before, pods.snapshot(root)) == 3
    assert pods.changed(before, before) == 0


def test_runs_are_interleaved_rotated_and_measured(tmp_path: pytest.TempPathFactory) -> None:
    log = os.path.join(str(tmp_path), "log")
    scratch = os.path.join(str(tmp_path), "scratch")
    os.mkdir(scratch)

    def tool(name: str) -> _measure.Candidate:
        # Each run appends its name and whether its scratch directory was fresh and empty.
        script = f'test -z "$(ls -A "$1")" && echo {name} >> {log}; echo 0.25'
        return _measure.Candidate(name, lambda d: ["sh", "-c", script, "sh", d])

    series = _measure.interleave([tool("a"), tool("b"), tool("c")], 3, scratch=scratch, progress=False)
    with open(log) as f:
        assert f.read().split() == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert os.listdir(scratch) == []  # every run's directory is removed
    a = series["a"]
    assert len(a.samples) == 3 and all(s.inner == 0.25 and s.wall > 0 and s.cpu >= 0 for s in a.samples)
    assert a.low <= a.wall <= a.high
    row = a.row(imagevol=True)
    assert row.runs == 3 and row.low == a.low and row.high == a.high
    if _measure.GNU_TIME:
        assert a.rss_mib is not None and a.rss_mib > 0
    ratio = _measure.paired(a, a)
    assert ratio.median == ratio.low == ratio.high == 1.0
    with pytest.raises(_measure.MeasureError, match="exited with status 3"):
        _measure.run(["sh", "-c", "echo broken >&2; exit 3"])


def test_machine_info_describes_this_machine() -> None:
    now = datetime.datetime(2030, 1, 2, 3, 4, tzinfo=datetime.UTC)
    machine = _report.machine_info(_runner.REPO, now)
    assert machine.date == "2030-01-02 03:04 UTC"
    assert machine.cpus == os.cpu_count()
    assert machine.python.endswith(".".join(map(str, sys.version_info[:3])))
    assert machine.load >= 0 and "load average" in machine.describe()
