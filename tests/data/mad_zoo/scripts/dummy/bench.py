"""A Python zoo model: madengine runs .py scripts with python3."""
import argparse

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=1)
ns = parser.parse_args()
print(f"performance: {ns.steps * 10.5} steps_per_second")
