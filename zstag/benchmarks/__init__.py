"""Builders that turn public data on this machine into zstag benchmark sets (manifests + vocabularies).

Each builder is a module runnable with `python -m zstag.benchmarks.<name>`; docs/benchmarks.md
documents the rules each one applies and the counts they produce.
"""
