"""Benchmarks run by `make bench`: each prints its figures with ratios against a baseline run in
the same command."""
