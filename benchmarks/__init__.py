"""Benchmark commands: `.venv/bin/python -m benchmarks.<name>`; their output fills docs/BENCHMARKS.md."""
