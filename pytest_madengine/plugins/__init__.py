"""The pytest plugin classes: models files and items, the controller's reporter, largest-first
ordering, the baseline check and summaries, SLURM submit-ahead, terminal output."""
