"""The plugin is registered through its pytest11 entry point; this file only keeps the
project's own pytest runs away from run artefacts."""

collect_ignore = ["mad_logs", "mad_work", "benchmarks"]
