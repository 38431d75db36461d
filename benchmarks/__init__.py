"""progan_fast's benchmarks (`python -m pytest benchmarks`) and their harness (`benchmarks.harness`); a package so
that the harness imports as `benchmarks.harness` from the repository root, where the tests run too."""
