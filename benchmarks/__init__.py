"""Benchmarks: speed and memory of the separation core, measured against demucs itself."""
