"""Benchmarks: programs that print figures measured in one run, never tests."""
