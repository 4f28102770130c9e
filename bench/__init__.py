"""Benchmarks: scripts that print figures, each next to a bare baseline measured in the same run."""
