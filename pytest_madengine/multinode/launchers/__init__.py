"""Launchers: pure functions from multi-node settings to a runner command line."""
