"""Results: a model's result and its status, metrics from its output, perf.csv and JUnit,
baselines, merging runs, summaries. Imports nothing above it (no executor, no pytest hook)."""
