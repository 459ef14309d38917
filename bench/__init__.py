"""torchwire benchmarks: `make bench` (python -m bench) writes BENCHMARKS.md."""
