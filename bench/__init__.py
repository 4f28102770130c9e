"""Benchmarks: run `python -m bench.<name> --help`; `make bench` runs them all."""
