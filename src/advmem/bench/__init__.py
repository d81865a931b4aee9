"""Benchmark harness: `python -m advmem.bench` (see __main__.py and docs/performance.md)."""
