"""Benchmarks: ``python -m workbench.bench <name> ...``, one module per benchmark in this package."""
