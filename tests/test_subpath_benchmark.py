"""The sub-path benchmark still runs (tiny sizes; no timing is asserted: speed is measured in
``benchmarks/``, as ratios, never in tests)."""

from __future__ import annotations

from benchmarks import subpath as bench


def test_resolver_benchmark_runs() -> None:
    numbers = bench.bench_resolve(number=50, repeat=3)
    times = ("openat2_us", "imagevol_kernel_us", "imagevol_userspace_us", "kernel_ratio", "userspace_ratio")
    assert set(numbers) == {*times, "spread_us", "kernel_ratio_spread", "repeat", "load"}
    assert all(numbers[k] > 0 for k in times)
    assert numbers["repeat"] == 3 and len(numbers["load"]) == 2
    for name, spread in numbers["spread_us"].items():  # the median of the rounds lies in their spread
        assert spread["low"] <= spread["median"] <= spread["high"], name
    low, high = numbers["kernel_ratio_spread"]
    assert low <= numbers["kernel_ratio"] <= high


def test_second_mount_benchmark_runs() -> None:
    numbers = bench.bench_second_mount(files=30, number=3)
    assert numbers["files"] == 30
    for key in ("small", "small_subpath", "big", "big_subpath"):
        row = numbers[key]
        assert 0 < row["second_mount_ms_min"] <= row["second_mount_ms_median"] <= row["second_mount_ms_max"]
