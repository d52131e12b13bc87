"""Servers the benchmark compares ours with, started by the same harness."""
