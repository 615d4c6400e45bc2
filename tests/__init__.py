"""imagevol's test suite (a package, so that ``tests.helpers`` imports the same way from every test
and from the benchmarks)."""
