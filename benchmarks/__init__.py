"""Benchmarks of omniq-tasks against the official OmniQ SDK: ``python -m benchmarks`` (see README.md)."""
