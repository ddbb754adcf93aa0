"""Benchmarks: each `bench_*.py` module has `run() -> dict`; `python -m benchmarks` merges them into
benchmarks/results.json."""
