"""The SLURM backend: ``slurm_args`` (args), the batch and task scripts (batch), the shared
job poller (poller), sacct/scontrol records (records), and the executor."""

from pytest_madengine.executors.slurm.executor import SlurmExecutor, SlurmPlan

__all__ = ["SlurmExecutor", "SlurmPlan"]
