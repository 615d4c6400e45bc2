"""``benchmarks/run --update NAME``: one benchmark's parts of the report are replaced, every other
line (other benchmarks' sections, targets and notes) stays as it was. Synthetic results, nothing
timed."""

from __future__ import annotations

import os

import attrs
import pytest

from benchmarks import _report, _results, _runner, _update
from tests.test_bench_report import MACHINE, synthetic

LATER = attrs.evolve(MACHINE, date="2030-02-03 04:05 UTC", commit="fedcba987654")


def _faster_unpack() -> list[_results.Result]:
    """The synthetic results with unpack measured again: other numbers, its target missed."""
    results = synthetic()
    unpack = results[0]
    section = unpack.sections[0]
    rows = tuple(attrs.evolve(r, seconds=r.seconds * 3) if r.imagevol else r for r in section.rows)
    targets = tuple(attrs.evolve(t, value=1.5) for t in section.targets)
    return [attrs.evolve(unpack, sections=(attrs.evolve(section, rows=rows, targets=targets),)), *results[1:]]


def _chunks(text: str, name: str) -> list[str]:
    """The sections of benchmark ``name`` in a report, as text."""
    _, sections, _ = _update._split(text)
    return ["\n".join(lines) for owner, lines in sections if owner == name]


def _with_notes(text: str) -> str:
    for key in ("unpack.layer", "subpath.resolve"):
        text = text.replace(f"<!-- /notes:{key} -->", f"Notes on {key}.\n<!-- /notes:{key} -->")
    return text


def test_update_replaces_one_benchmark_and_keeps_the_rest() -> None:
    old = _with_notes(_report.render(synthetic(), MACHINE))
    fresh = _faster_unpack()
    new = _report.render(fresh[:1], LATER, notes=_report.extract_notes(old))
    updated = _update.update(old, new, ["unpack"], LATER)
    # The other benchmarks, their notes and their target rows: line for line as they were.
    for name in ("subpath", "pull"):
        assert _chunks(updated, name) == _chunks(old, name) != []
        assert [x for x in updated.splitlines() if x.startswith(f"| {name}:")] == [
            x for x in old.splitlines() if x.startswith(f"| {name}:")
        ]
    # unpack's section, target row and missed line are the new run's, with its notes kept.
    assert _chunks(updated, "unpack") == _chunks(
        _report.render(fresh, LATER, notes=_report.extract_notes(old)), "unpack"
    )
    assert _chunks(updated, "unpack") != _chunks(old, "unpack")
    assert "Notes on unpack.layer." in _chunks(updated, "unpack")[0]
    (row,) = [x for x in updated.splitlines() if x.startswith("| unpack:")]
    assert "1.50 ×" in row and "**MISS**" in row
    assert any(x.startswith("* unpack:") for x in updated.splitlines())
    # The order of the sections is the report's, and the header says what was refreshed.
    owners = [owner for owner, _ in _update._split(updated)[1]]
    assert owners == [owner for owner, _ in _update._split(old)[1]]
    assert "Updated by `benchmarks/run --update unpack` on 2030-02-03 04:05 UTC, commit fedcba987654" in updated
    assert updated.startswith(old.split("## Targets")[0].rstrip("\n").split("\n")[0])
    # Refreshing again with the same results changes nothing; an old stamp is replaced, not added.
    assert _update.update(updated, new, ["unpack"], LATER) == updated


def test_update_drops_a_missed_line_when_the_target_is_now_met() -> None:
    old = _report.render(_faster_unpack(), MACHINE)
    assert any(x.startswith("* unpack:") for x in old.splitlines())
    new = _report.render(synthetic()[:1], LATER)
    updated = _update.update(old, new, ["unpack"], LATER)
    assert not any(x.startswith("* unpack:") for x in updated.splitlines())


def test_the_runner_updates_from_stored_results(tmp_path: pytest.TempPathFactory) -> None:
    results_dir = os.path.join(str(tmp_path), "results")
    out = os.path.join(str(tmp_path), "benchmarks.md")
    os.makedirs(results_dir)
    with open(out, "w") as f:
        f.write(_with_notes(_report.render(synthetic(), MACHINE)))
    _results.write(os.path.join(results_dir, "unpack.json"), _faster_unpack()[0])
    _report.save_machine(os.path.join(results_dir, _runner.MACHINE_FILE), LATER)
    args = ["--render", "--update", "unpack", "--results", results_dir, "--out", out, "--no-plots"]
    assert _runner.main(args) == 0
    with open(out) as f:
        text = f.read()
    assert "Notes on subpath.resolve." in text and "Notes on unpack.layer." in text
    assert next(x for x in text.splitlines() if x.startswith("| unpack:")).count("1.50 ×") == 1
    assert "Updated by `benchmarks/run --update unpack`" in text
    with pytest.raises(SystemExit):
        _runner.main(["--render", "--update", "--results", results_dir, "--out", out])  # names are required


def test_each_updates_stamp_keeps_the_benchmarks_it_still_dates() -> None:
    old = _report.render(synthetic(), MACHINE)
    new = _report.render(synthetic()[:1], LATER)
    first = _update.update(old, new, ["unpack"], LATER)
    later = attrs.evolve(LATER, date="2030-02-04 05:06 UTC", commit="0123456789ab")
    both = _update.update(first, new, ["unpack", "pull"], later)
    stamps = [x for x in both.splitlines() if x.startswith(_update.UPDATED)]
    assert stamps == ["Updated by `benchmarks/run --update unpack pull` on 2030-02-04 05:06 UTC, commit 0123456789ab: "
                      "their sections and targets."]  # fmt: skip
    # A later update of another benchmark leaves the earlier stamp for the rest.
    third = _update.update(both, new, ["pull"], attrs.evolve(later, date="2030-02-05 06:07 UTC"))
    stamps = [x for x in third.splitlines() if x.startswith(_update.UPDATED)]
    assert stamps == [
        "Updated by `benchmarks/run --update pull` on 2030-02-05 06:07 UTC, commit 0123456789ab: "
        "their sections and targets.",
        "Updated by `benchmarks/run --update unpack` on 2030-02-04 05:06 UTC, commit 0123456789ab: "
        "their sections and targets.",
    ]
