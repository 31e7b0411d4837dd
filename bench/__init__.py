"""Benchmarks: `make bench` (python -m bench) runs them all, prints a table, writes bench/results.json.

Each benchmark module has ``run() -> list[Record]``. Benchmarks measure; they
never gate CI on an absolute time.
"""
