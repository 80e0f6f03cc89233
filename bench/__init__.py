"""Benchmarks: run the daemon against the simulators and print figures (never asserted)."""
