"""Benchmarks of flowext's layers against the same formulas written by hand and in other libraries.

Run `python -m benchmarks.bench_layers --help` from the repository root, or `make bench`.
"""
