"""The sub-path benchmark still runs (tiny sizes; no timing is asserted: speed is measured in
``benchmarks/``, as ratios, never in tests)."""

from __future__ import annotations

from benchmarks import subpath as bench


def test_resolver_benchmark_runs() -> None:
    numbers = bench.bench_resolve(number=50, repeat=1)
    assert set(numbers) == {
        "openat2_us",
        "imagevol_kernel_us",
        "imagevol_userspace_us",
        "kernel_ratio",
        "userspace_ratio",
    }
    assert all(v > 0 for v in numbers.values())


def test_second_mount_benchmark_runs() -> None:
    numbers = bench.bench_second_mount(files=30, number=3)
    assert numbers["files"] == 30
    for key in ("small", "small_subpath", "big", "big_subpath"):
        assert numbers[key]["second_mount_ms_median"] > 0
