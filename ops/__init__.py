"""Operator tooling: start the whole stack locally, run the demo, run the benchmark."""
