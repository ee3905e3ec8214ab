"""Benchmarks that run simdex and its peers side by side: ``python -m simdex.bench --help``."""
