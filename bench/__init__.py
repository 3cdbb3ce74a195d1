"""Benchmarks: each module prints a table; `python -m bench` runs the quick ones."""
