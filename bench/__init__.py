"""Fan-out benchmark: python -m bench run --all (see bench/RESULTS.md)."""
